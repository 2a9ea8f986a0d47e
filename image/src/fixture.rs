//! Pi-layout images built from scratch, rootless, for tests and benchmarks: an MBR with a FAT32 `bootfs`
//! (holding `cmdline.txt` and `config.txt`) and an ext4 `rootfs` made like Raspberry Pi OS's
//! (`mke2fs -O ^huge_file,^64bit,metadata_csum -d DIR`), holding `/etc`, `/usr/local/bin`,
//! `/etc/systemd/system`, dpkg's status and an ELF `/usr/bin/dash` behind `/bin/sh` → `/usr/bin/sh`.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;

use crate::fat::Slice;
use crate::{Arch, Error, Result};

const MIB: u64 = 1 << 20;

/// How to lay out a fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// First partition at sector 16384 (Raspberry Pi OS since 2025) instead of 8192.
    pub aligned_2025: bool,
    pub arch: Arch,
    pub boot_mib: u64,
    pub root_mib: u64,
    /// Extra data in the root filesystem, as (path, size) files: pseudo-random bytes (like binaries), or
    /// text (like documentation and configuration, compressible) for paths ending in `.txt`.
    pub fill: Vec<(String, u64)>,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture {
            aligned_2025: true,
            arch: Arch::Arm64,
            boot_mib: 64,
            root_mib: 64,
            fill: Vec::new(),
        }
    }
}

/// A 64-byte ELF header for `arch`: enough for anything that reads the machine field.
pub fn elf_header(arch: Arch) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if arch == Arch::Arm64 { 2 } else { 1 }; // class
    h[5] = 1; // little endian
    h[6] = 1; // version
    h[16] = 3; // ET_DYN
    let machine: u16 = if arch == Arch::Arm64 { 0xB7 } else { 0x28 };
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20] = 1;
    h
}

impl Fixture {
    /// Writes the image to `path` (replacing it).
    pub fn build(&self, path: &Path) -> Result<()> {
        let start = if self.aligned_2025 { 16384u64 } else { 8192 };
        let boot_sectors = self.boot_mib * MIB / 512;
        let root_start = start + boot_sectors;
        let root_sectors = self.root_mib * MIB / 512;
        let total = (root_start + root_sectors) * 512;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .map_err(crate::io(path))?;
        f.set_len(total).map_err(crate::io(path))?;

        let sig: [u8; 4] = rand_signature();
        let mut mbr = mbrman::MBR::new_from(&mut f, 512, sig)
            .map_err(|e| Error::Invalid(format!("fixture MBR: {e}")))?;
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x0c,
            last_chs: mbrman::CHS::empty(),
            starting_lba: start as u32,
            sectors: boot_sectors as u32,
        };
        mbr[2] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: root_start as u32,
            sectors: root_sectors as u32,
        };
        mbr.write_into(&mut f)
            .map_err(|e| Error::Invalid(format!("fixture MBR: {e}")))?;

        // Boot: FAT32, label bootfs.
        let slice = Slice::new(
            f.try_clone().map_err(crate::io(path))?,
            start * 512,
            boot_sectors * 512,
        );
        fatfs::format_volume(
            slice,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat32)
                .volume_label(*b"bootfs     "),
        )
        .map_err(|e| Error::Invalid(format!("fixture FAT: {e}")))?;
        drop(f);
        let partuuid = format!("{:08x}", u32::from_le_bytes(sig));
        let boot = crate::Boot::open(
            path,
            crate::Partition {
                number: 1,
                kind: 0x0c,
                start: start * 512,
                size: boot_sectors * 512,
            },
        )?;
        boot.write(
            "cmdline.txt",
            format!(
                "console=serial0,115200 console=tty1 root=PARTUUID={partuuid}-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
            )
            .as_bytes(),
        )?;
        boot.write(
            "config.txt",
            b"# fixture\ndtparam=audio=on\ncamera_auto_detect=1\ndisplay_auto_detect=1\narm_64bit=1\n",
        )?;
        boot.close()?;

        // Root: a tree like Raspberry Pi OS's, packed by mke2fs.
        let stage = tempfile::tempdir().map_err(|e| Error::Invalid(format!("tempdir: {e}")))?;
        let s = stage.path();
        for d in [
            "etc/systemd/system/multi-user.target.wants",
            "usr/local/bin",
            "usr/bin",
            "var/lib/dpkg",
            "boot/firmware",
            "home",
        ] {
            std::fs::create_dir_all(s.join(d)).map_err(crate::io(s))?;
        }
        let w = |p: &str, c: &[u8]| std::fs::write(s.join(p), c).map_err(crate::io(&s.join(p)));
        w("usr/bin/dash", &elf_header(self.arch))?;
        w("usr/bin/bash", &elf_header(self.arch))?;
        std::os::unix::fs::symlink("dash", s.join("usr/bin/sh")).map_err(crate::io(s))?;
        std::os::unix::fs::symlink("usr/bin", s.join("bin")).map_err(crate::io(s))?;
        w("etc/hostname", b"raspberrypi\n")?;
        // The first user as Raspberry Pi OS Trixie has made it since February 2026: no login shell
        // (`adduser --disabled-login`), renamed at first boot by userconf.
        w(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/bash\nmessagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n\
              pi:x:1000:1000:,,,:/home/pi:/usr/sbin/nologin\n",
        )?;
        w("etc/machine-id", b"")?;
        w(
            "etc/os-release",
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        )?;
        w(
            "etc/fstab",
            format!("proc /proc proc defaults 0 0\nPARTUUID={partuuid}-01 /boot/firmware vfat defaults 0 2\nPARTUUID={partuuid}-02 / ext4 defaults,noatime 0 1\n").as_bytes(),
        )?;
        w(
            "var/lib/dpkg/status",
            format!(
                "Package: base-files\nStatus: install ok installed\nArchitecture: {}\nVersion: 12.4\n\n",
                self.arch.name()
            )
            .as_bytes(),
        )?;
        for (p, size) in &self.fill {
            let full = s.join(p.trim_start_matches('/'));
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(crate::io(parent))?;
            }
            if p.ends_with(".txt") {
                write_text(&full, *size)?;
            } else {
                write_noise(&full, *size)?;
            }
        }
        let out = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "rootfs"])
            .args(["-O", "^huge_file,^64bit,metadata_csum", "-E"])
            .arg(format!("offset={},nodiscard", root_start * 512))
            .arg("-d")
            .arg(s)
            .arg(path)
            .arg(format!("{}", root_sectors * 512 / 4096))
            .output()
            .map_err(|e| Error::Tool {
                what: "mke2fs (apt-get install e2fsprogs)".into(),
                output: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(Error::Tool {
                what: "mke2fs".into(),
                output: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(())
    }
}

fn rand_signature() -> [u8; 4] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0x1234_5678);
    (t ^ std::process::id().rotate_left(16)).to_le_bytes()
}

/// Pseudo-random bytes (xorshift): incompressible like most of a real root filesystem's binaries.
fn write_noise(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let f = std::fs::File::create(path).map_err(crate::io(path))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ size;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).map_err(crate::io(path))?;
        left -= n as u64;
    }
    w.flush().map_err(crate::io(path))
}

/// Text made of words: compresses about as well as documentation does.
fn write_text(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    const WORDS: &[&str] = &[
        "the",
        "cluster",
        "node",
        "gossip",
        "agent",
        "raspberry",
        "image",
        "kernel",
        "module",
        "service",
        "network",
        "config",
        "option",
        "default",
        "value",
        "package",
        "debian",
        "system",
        "boot",
        "file",
    ];
    let f = std::fs::File::create(path).map_err(crate::io(path))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ size;
    let mut written = 0u64;
    let mut line = String::new();
    while written < size {
        line.clear();
        for _ in 0..12 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
            line.push(' ');
        }
        line.push_str(&format!("{}\n", x % 100_000));
        let n = (line.len() as u64).min(size - written) as usize;
        w.write_all(&line.as_bytes()[..n])
            .map_err(crate::io(path))?;
        written += n as u64;
    }
    w.flush().map_err(crate::io(path))
}
