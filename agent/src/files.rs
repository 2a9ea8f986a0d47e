//! Files the agent and the CLI keep (node key, generation, meta-data, host name, wanted counts): written so
//! that a power cut leaves the old or the new content, never a mix, and read only as what they should
//! be: a regular file of bounded size, never through a symbolic link (a state directory another user
//! can write to must not make the agent read a FIFO, a device or another file, or write through a link).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes `path` so that a power cut leaves either the old or the new content: temporary file, fsync,
/// rename, fsync of the directory. The temporary file is made new (`O_EXCL`: a link or file planted
/// under its name is removed, never written through) and the rename replaces `path` itself, so a
/// symbolic link there is replaced, not followed.
pub fn write_atomic(path: &Path, content: &str) -> anyhow::Result<()> {
    write_atomic_mode(path, content, 0o666)
}

/// [`write_atomic`] for a secret: the file is made readable and writable by its owner only, whatever
/// the umask.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    write_atomic_mode(path, content, 0o600)
}

fn write_atomic_mode(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().context("path has no directory")?;
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Why a state file was not read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{0}: is a symbolic link; state files are read only as regular files (remove it)")]
    Link(PathBuf),
    #[error("{0}: is {1}, not a regular file (remove it)")]
    NotRegular(PathBuf, &'static str),
    #[error("{0}: {1} bytes, more than the {2} this file may hold")]
    TooLarge(PathBuf, u64, u64),
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Reads the state file `path`: not through a symbolic link, only a regular file (opening never waits,
/// so a FIFO is refused rather than hung on), at most `limit` bytes. `None` when there is none.
pub fn read_state(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, StateFileError> {
    use nix::fcntl::OFlag;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Err(StateFileError::Link(path.into()))
        }
        Err(e) => return Err(StateFileError::Io(path.into(), e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| StateFileError::Io(path.into(), e))?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(StateFileError::NotRegular(path.into(), kind));
    }
    if meta.len() > limit {
        return Err(StateFileError::TooLarge(path.into(), meta.len(), limit));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StateFileError::Io(path.into(), e))?;
    if bytes.len() as u64 > limit {
        return Err(StateFileError::TooLarge(
            path.into(),
            bytes.len() as u64,
            limit,
        ));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_directories_and_large_files_are_refused_and_links_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let outside = d.join("outside");
        std::fs::write(&outside, "precious\n").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir(d.join("dir")).unwrap();
        std::fs::write(d.join("big"), vec![b'x'; 101]).unwrap();
        std::fs::write(d.join("ok"), "1\n").unwrap();
        let err = |name: &str| read_state(&d.join(name), 100).unwrap_err().to_string();
        assert!(err("link").contains("symbolic link"), "{}", err("link"));
        assert!(err("fifo").contains("a FIFO"));
        assert!(err("dir").contains("a directory"));
        assert!(err("big").contains("101 bytes"));
        assert_eq!(read_state(&d.join("ok"), 100).unwrap().unwrap(), b"1\n");
        assert!(read_state(&d.join("none"), 100).unwrap().is_none());

        // A link at the temporary file's name or at the file itself: replaced, the target untouched.
        std::os::unix::fs::symlink(&outside, d.join("state.tmp")).unwrap();
        write_atomic(&d.join("state"), "new\n").unwrap();
        write_atomic(&d.join("link"), "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious\n");
        assert_eq!(std::fs::read_to_string(d.join("state")).unwrap(), "new\n");
        assert!(!d.join("link").is_symlink());
    }
}
