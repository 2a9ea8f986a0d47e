//! The packages `cargo xtask image --packages` puts on the boot partition for the card to install at
//! first boot: the manifest the image pipeline writes and `herd packages-apply` reads. Here because both
//! sides need the same shape.

use serde::{Deserialize, Serialize};

/// The packages lie in the boot partition's top directory, each named this prefix and its file name
/// (`herd-packages.nginx_1.22.1-9_arm64.deb`): fatfs 0.3.6 writes a new directory's `.` and `..` with
/// long-name entries, which fsck.fat then "repairs" at boot, so herd makes no directory there.
pub const FILE_PREFIX: &str = "herd-packages.";
/// The list of what is there (see [`Manifest`]), written last, in the top directory too.
pub const MANIFEST: &str = "herd-packages.json";
/// A manifest is at most this long (a thousand packages take a fifth of it).
pub const MANIFEST_MAX: u64 = 1 << 20;

/// One `.deb` on the boot partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deb {
    pub package: String,
    pub version: String,
    pub arch: String,
    /// Its file name after [`FILE_PREFIX`] (apt's archive name, e.g. `nginx_1.22.1-9_arm64.deb`).
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

impl Deb {
    /// Whether `file` is a plain `.deb` name: no directory, nothing hidden, nothing a shell or apt
    /// would read as an option.
    pub fn file_is_plain(&self) -> bool {
        let f = &self.file;
        f.ends_with(".deb")
            && !f.starts_with(['.', '-'])
            && f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.~_%".contains(&b))
    }
}

/// What the card reads at first boot: the names asked for, and every file with its checksum, in the
/// order apt planned to unpack them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub requested: Vec<String>,
    pub debs: Vec<Deb>,
}
