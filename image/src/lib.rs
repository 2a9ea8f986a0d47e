//! Rootless editing of Raspberry Pi OS–style disk images: an MBR partition table, a FAT boot partition and
//! an ext4 root partition, edited in place in the image file with no mounts, no loop devices and no root.
//!
//! - [`Image::open`] reads the partition table and finds the boot and root partitions by type and by
//!   filesystem signature (never by offset: Raspberry Pi OS moved them in 2025).
//! - [`Boot`] edits the FAT partition in-process with `fatfs`.
//! - [`Root`] edits the ext4 partition by driving e2fsprogs' `debugfs -w` at the partition's byte offset.
//! - [`bake`] puts the herd overlay into an image (see [`overlay`]).

pub mod bake;
pub mod cloudinit;
pub mod ext4;
pub mod fat;
pub mod fixture;
pub mod imager;
pub mod nosync;
pub mod overlay;
pub mod packages;
pub mod pipeline;
pub mod wifi;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use bake::{bake, BakeOptions, Baked};
pub use ext4::Root;
pub use fat::Boot;

/// What can go wrong, each naming the image and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0}: no MBR partition table (no 0x55AA signature at byte 510); is this a disk image?"
    )]
    NoPartitionTable(PathBuf),
    #[error("{0}: GPT partition tables are not supported; Raspberry Pi OS images use MBR")]
    Gpt(PathBuf),
    #[error("{path}: partition {index} ends at byte {end}, past the end of the image ({len} bytes): truncated image?")]
    Truncated {
        path: PathBuf,
        index: usize,
        end: u64,
        len: u64,
    },
    #[error("{0}: no FAT boot partition (type 0x0b/0x0c/0x0e with a FAT boot sector)")]
    NoBoot(PathBuf),
    #[error("{0}: no ext4 root partition (type 0x83 with an ext2/3/4 superblock)")]
    NoRoot(PathBuf),
    #[error("{path}: cannot tell the architecture: {why}")]
    UnknownArch { path: PathBuf, why: String },
    #[error("{what} failed: {output}")]
    Tool { what: String, output: String },
    #[error("the root filesystem is too full: the overlay needs {needed} bytes, {free} are free")]
    RootFull { needed: u64, free: u64 },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A partition: where it lies in the image, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as in `p1`, `p2`.
    pub number: usize,
    pub kind: u8,
    pub start: u64,
    pub size: u64,
}

/// The CPU family of an image's root filesystem (Debian's names): one of [`Arch::PI`].
pub use herd_release::Arch;

/// herd's cache: `$XDG_CACHE_HOME/herd`, else `~/.cache/herd` (outside the repository, so fresh clones
/// share it): the downloaded base images, the Debian bases, the pinned zig, slow test fixtures.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("herd")
}

/// Where `cargo xtask build` leaves the release agent for `arch` in this workspace (the image tests,
/// benchmarks and harnesses take it from there).
pub fn built_agent(arch: Arch) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the image crate lives in the workspace")
        .join("target")
        .join(arch.agent_target())
        .join("release/herd")
}

/// An image file with its boot and root partitions found.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    pub boot: Partition,
    pub root: Partition,
    pub disk_signature: [u8; 4],
    /// No partition lies after the root, so it can grow into a longer file ([`Image::grow_root`]).
    pub root_is_last: bool,
}

const SECTOR: u64 = 512;

impl Image {
    /// Reads the partition table of `path` and finds the partitions.
    pub fn open(path: &Path) -> Result<Image> {
        let mut f = File::open(path).map_err(io(path))?;
        let len = f.metadata().map_err(io(path))?.len();
        let mut head = [0u8; 512];
        if len < 512 {
            return Err(Error::NoPartitionTable(path.into()));
        }
        f.read_exact(&mut head).map_err(io(path))?;
        if head[510..512] != [0x55, 0xAA] {
            return Err(Error::NoPartitionTable(path.into()));
        }
        f.seek(SeekFrom::Start(0)).map_err(io(path))?;
        let mbr = mbrman::MBR::read_from(&mut f, SECTOR as u32)
            .map_err(|e| Error::Invalid(format!("{}: bad MBR: {e}", path.display())))?;
        let mut parts = Vec::new();
        for (i, p) in mbr.iter() {
            if !p.is_used() {
                continue;
            }
            if p.sys == 0xEE {
                return Err(Error::Gpt(path.into()));
            }
            let part = Partition {
                number: i,
                kind: p.sys,
                start: p.starting_lba as u64 * SECTOR,
                size: p.sectors as u64 * SECTOR,
            };
            if part.start + part.size > len {
                return Err(Error::Truncated {
                    path: path.into(),
                    index: i,
                    end: part.start + part.size,
                    len,
                });
            }
            parts.push(part);
        }
        let mut boot = None;
        let mut root: Option<Partition> = None;
        for &p in &parts {
            if boot.is_none() && matches!(p.kind, 0x0b | 0x0c | 0x0e) && is_fat(&mut f, &p, path)? {
                boot = Some(p);
            } else if root.is_none() && p.kind == 0x83 && is_ext(&mut f, &p, path)? {
                root = Some(p);
            }
        }
        let root = root.ok_or_else(|| Error::NoRoot(path.into()))?;
        Ok(Image {
            path: path.into(),
            boot: boot.ok_or_else(|| Error::NoBoot(path.into()))?,
            root,
            disk_signature: mbr.header.disk_signature,
            root_is_last: parts.iter().all(|p| p.start <= root.start),
        })
    }

    /// Makes the root partition `by` bytes larger (rounded up to whole MiB), the file longer to hold it
    /// and the ext4 file system inside it as large as the partition (`resize2fs` at the partition's
    /// offset, like the ext4 editing). Only for a root that is the last partition. Returns the image
    /// reopened.
    pub fn grow_root(self, by: u64) -> Result<Image> {
        const MIB: u64 = 1 << 20;
        if !self.root_is_last || self.root.number > 4 {
            return Err(Error::Invalid(format!(
                "{}: the root partition cannot grow: it is a logical partition or another lies after it",
                self.path.display()
            )));
        }
        let by = by.div_ceil(MIB) * MIB;
        let sectors = u32::try_from((self.root.size + by) / SECTOR).map_err(|_| {
            Error::Invalid(format!(
                "{}: a root partition of {} bytes is past what an MBR can hold",
                self.path.display(),
                self.root.size + by
            ))
        })?;
        let path = &self.path;
        // resize2fs cannot work at an offset in a regular file: it truncates the file to the file
        // system's new size, offset not counted (e2fsprogs 1.47), which would cut the image. So the
        // partition is copied out beside the image, grown there and copied back; the partition table
        // changes last, once the file system it describes is in place.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let part = path.with_file_name(format!(".{name}.root.partial"));
        let guard = RemoveOnDrop(&part);
        copy_range(path, self.root.start, self.root.size, &part, 0)?;
        // -f: the base was checked clean (no journal to recover) before anything was written.
        let out = std::process::Command::new("resize2fs")
            .arg("-f")
            .arg(&part)
            .arg(format!("{}K", (self.root.size + by) / 1024))
            .output()
            .map_err(|source| Error::Io {
                path: "resize2fs (Debian package e2fsprogs)".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Tool {
                what: format!("resize2fs on {}'s root partition", path.display()),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        copy_range(&part, 0, self.root.size + by, path, self.root.start)?;
        drop(guard);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let mut mbr = mbrman::MBR::read_from(&mut f, SECTOR as u32)
            .map_err(|e| Error::Invalid(format!("{}: bad MBR: {e}", path.display())))?;
        mbr[self.root.number].sectors = sectors;
        mbr.write_into(&mut f)
            .map_err(|e| Error::Invalid(format!("{}: writing the MBR: {e}", path.display())))?;
        f.sync_all().map_err(io(path))?;
        drop(f);
        Image::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The FAT boot partition, opened for editing.
    pub fn boot(&self) -> Result<Boot> {
        Boot::open(&self.path, self.boot)
    }

    /// The ext4 root partition.
    pub fn root(&self) -> Root {
        Root::new(&self.path, self.root.start)
    }

    /// The architecture of the root filesystem: the ELF header of `/bin/sh` (symlinks followed), else
    /// dpkg's status file.
    pub fn arch(&self) -> Result<Arch> {
        let root = self.root();
        let elf = root.read_resolved("/bin/sh");
        if let Ok(bytes) = &elf {
            if bytes.len() >= 20 && bytes[..4] == *b"\x7fELF" {
                let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
                return match machine {
                    0xB7 => Ok(Arch::Arm64),
                    0x28 => Ok(Arch::Armhf),
                    m => Err(Error::UnknownArch {
                        path: self.path.clone(),
                        why: format!("/bin/sh is an ELF for machine {m:#x}, not arm64 or armhf"),
                    }),
                };
            }
        }
        if let Ok(status) = root.read("/var/lib/dpkg/status") {
            let text = String::from_utf8_lossy(&status);
            for arch in text
                .lines()
                .filter_map(|l| l.strip_prefix("Architecture: "))
            {
                match arch.trim() {
                    "arm64" => return Ok(Arch::Arm64),
                    "armhf" => return Ok(Arch::Armhf),
                    _ => {}
                }
            }
        }
        Err(Error::UnknownArch {
            path: self.path.clone(),
            why: match elf {
                Ok(_) => {
                    "/bin/sh is not an ELF file and dpkg names no arm64 or armhf package".into()
                }
                Err(e) => format!("no /bin/sh ({e}) and no dpkg status"),
            },
        })
    }
}

/// Removes a scratch file when dropped, so no error path leaves it behind.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Copies `len` bytes of `from` at `at` into `to` at `to_at` (created when missing, never truncated),
/// through the kernel (`copy_file_range`, which shares blocks where the file system can).
fn copy_range(from: &Path, at: u64, len: u64, to: &Path, to_at: u64) -> Result<()> {
    let mut src = File::open(from).map_err(io(from))?;
    src.seek(SeekFrom::Start(at)).map_err(io(from))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(to)
        .map_err(io(to))?;
    dst.seek(SeekFrom::Start(to_at)).map_err(io(to))?;
    let copied = std::io::copy(&mut src.take(len), &mut dst).map_err(io(to))?;
    if copied != len {
        return Err(Error::Invalid(format!(
            "{}: {len} bytes expected at byte {at}, {copied} read",
            from.display()
        )));
    }
    dst.sync_all().map_err(io(to))
}

fn read_at(f: &mut File, at: u64, buf: &mut [u8], path: &Path) -> Result<()> {
    f.seek(SeekFrom::Start(at)).map_err(io(path))?;
    f.read_exact(buf).map_err(io(path))
}

/// A FAT boot sector: 0x55AA at 510 and a FAT type string or a sane bytes-per-sector.
fn is_fat(f: &mut File, p: &Partition, path: &Path) -> Result<bool> {
    let mut bs = [0u8; 512];
    read_at(f, p.start, &mut bs, path)?;
    let bps = u16::from_le_bytes([bs[11], bs[12]]);
    Ok(bs[510..512] == [0x55, 0xAA]
        && (bs[82..87] == *b"FAT32" || bs[54..59] == *b"FAT16" || bs[54..59] == *b"FAT12")
        && matches!(bps, 512 | 1024 | 2048 | 4096))
}

/// An ext2/3/4 superblock: magic 0xEF53 at byte 1024 + 56.
fn is_ext(f: &mut File, p: &Partition, path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    read_at(f, p.start + 1024 + 56, &mut magic, path)?;
    Ok(magic == [0x53, 0xEF])
}
