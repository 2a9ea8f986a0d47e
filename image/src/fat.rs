//! The FAT boot partition, edited in-process with `fatfs` through a window on the image file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{io, Error, Partition, Result};

/// A byte range of a file, seen as a whole device.
pub struct Slice {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Slice {
    pub fn new(file: File, start: u64, len: u64) -> Slice {
        Slice {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Slice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Slice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if pos < 0 || pos > self.len as i128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            ));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// The boot partition of an image, open for reading and writing.
pub struct Boot {
    fs: fatfs::FileSystem<Slice>,
    path: std::path::PathBuf,
}

impl Boot {
    pub fn open(image: &Path, p: Partition) -> Result<Boot> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(io(image))?;
        let fs = fatfs::FileSystem::new(Slice::new(file, p.start, p.size), fatfs::FsOptions::new())
            .map_err(|e| Error::Invalid(format!("{}: boot partition: {e}", image.display())))?;
        Ok(Boot {
            fs,
            path: image.into(),
        })
    }

    /// The volume label as blkid reports it (the root directory's label entry, else the boot sector's),
    /// without its padding.
    pub fn label(&self) -> String {
        let label = match self.fs.read_volume_label_from_root_dir() {
            Ok(Some(l)) => l,
            _ => self.fs.volume_label(),
        };
        label.trim_end().to_string()
    }

    fn err(&self, what: &str, e: io::Error) -> Error {
        Error::Invalid(format!(
            "{}: boot partition: {what}: {e}",
            self.path.display()
        ))
    }

    /// Creates or replaces the file at `path` (`/` separated, from the partition's root).
    pub fn write(&self, path: &str, contents: &[u8]) -> Result<()> {
        let root = self.fs.root_dir();
        let mut f = root
            .create_file(path.trim_start_matches('/'))
            .map_err(|e| self.err(path, e))?;
        f.truncate().map_err(|e| self.err(path, e))?;
        f.write_all(contents).map_err(|e| self.err(path, e))?;
        f.flush().map_err(|e| self.err(path, e))
    }

    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut f = self
            .fs
            .root_dir()
            .open_file(path.trim_start_matches('/'))
            .map_err(|e| self.err(path, e))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| self.err(path, e))?;
        Ok(out)
    }

    pub fn exists(&self, path: &str) -> bool {
        self.fs
            .root_dir()
            .open_file(path.trim_start_matches('/'))
            .is_ok()
    }

    /// Free bytes on the partition.
    pub fn free(&self) -> Result<u64> {
        let s = self.fs.stats().map_err(|e| self.err("stats", e))?;
        Ok(s.free_clusters() as u64 * s.cluster_size() as u64)
    }

    /// Flushes everything and closes the filesystem.
    pub fn close(self) -> Result<()> {
        let path = self.path.clone();
        self.fs
            .unmount()
            .map_err(|e| Error::Invalid(format!("{}: boot partition: {e}", path.display())))
    }
}

/// Adds `token` to a `cmdline.txt` line, replacing a token with the same key (`key=…`), keeping it one line.
pub fn set_cmdline_token(cmdline: &str, token: &str) -> String {
    let key = token.split('=').next().unwrap_or(token);
    let mut tokens: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|t| t.split('=').next() != Some(key))
        .collect();
    tokens.push(token);
    format!("{}\n", tokens.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_tokens_are_replaced_not_duplicated() {
        let line = "console=serial0,115200 root=PARTUUID=abcd-02 rootwait quiet\n";
        assert_eq!(
            set_cmdline_token(line, "quiet"),
            "console=serial0,115200 root=PARTUUID=abcd-02 rootwait quiet\n"
        );
        assert_eq!(
            set_cmdline_token(line, "root=PARTUUID=1234-02"),
            "console=serial0,115200 rootwait quiet root=PARTUUID=1234-02\n"
        );
    }
}
