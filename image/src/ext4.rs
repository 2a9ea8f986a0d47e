//! The ext4 root partition, edited by driving e2fsprogs' `debugfs` on the image file at the partition's
//! byte offset (`image?offset=N`): no mount, no root. debugfs exits 0 even when a command fails, so every
//! line it writes to stderr other than its banner is treated as an error and returned with the command.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// Something to put into the root filesystem.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Created, or replaced when it exists.
    File {
        path: String,
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Created, or replaced when it exists.
    Symlink { path: String, target: String },
}

impl Entry {
    /// A file owned by root (most of what an image carries).
    pub fn root_file(path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        Entry::File {
            path: path.into(),
            contents: contents.into(),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// What `stat` says of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// `regular`, `directory`, `symlink`, …
    pub kind: String,
    /// Permission bits (e.g. 0o755).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// For a symlink, where it points.
    pub link: Option<String>,
}

/// The root filesystem of an image.
#[derive(Debug, Clone)]
pub struct Root {
    image: PathBuf,
    offset: u64,
}

fn check_path(p: &str) -> Result<()> {
    if !p.starts_with('/')
        || p.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control())
        || p.split('/').any(|c| c == "..")
    {
        return Err(Error::Invalid(format!(
            "{p:?}: root filesystem paths must be absolute, without spaces, quotes or '..'"
        )));
    }
    Ok(())
}

impl Root {
    pub fn new(image: &Path, offset: u64) -> Root {
        Root {
            image: image.into(),
            offset,
        }
    }

    /// The `image?offset=N` spec that e2fsprogs tools accept.
    pub fn spec(&self) -> String {
        format!("{}?offset={}", self.image.display(), self.offset)
    }

    /// Runs debugfs with one request (`-R`); returns stdout, or the error output.
    fn request(&self, request: &str) -> Result<Vec<u8>> {
        self.debugfs(
            &["-R", request],
            &format!("debugfs -R {request:?} {}", self.spec()),
        )
    }

    /// Runs debugfs with `args` on this filesystem; any stderr line but the banner is an error, reported
    /// as `what` with those lines.
    fn debugfs(&self, args: &[&str], what: &str) -> Result<Vec<u8>> {
        let out = crate::nosync::without_sync(&mut Command::new("debugfs"))
            .args(args)
            .arg(self.spec())
            .output()
            .map_err(|e| Error::Tool {
                what: "debugfs (apt-get install e2fsprogs)".into(),
                output: e.to_string(),
            })?;
        let errors = error_lines(&out.stderr);
        if !out.status.success() || !errors.is_empty() {
            return Err(Error::Tool {
                what: what.to_string(),
                output: errors.join("\n"),
            });
        }
        Ok(out.stdout)
    }

    /// The contents of a regular file.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        check_path(path)?;
        let st = self.stat(path)?;
        if st.kind != "regular" {
            return Err(Error::Invalid(format!(
                "{path} is a {}, not a file",
                st.kind
            )));
        }
        self.request(&format!("cat {path}"))
    }

    /// `stat` of a path (not following a final symlink).
    pub fn stat(&self, path: &str) -> Result<Stat> {
        check_path(path)?;
        let text = String::from_utf8_lossy(&self.request(&format!("stat {path}"))?).into_owned();
        parse_stat(&text).ok_or_else(|| Error::Tool {
            what: format!("debugfs stat {path}"),
            output: text,
        })
    }

    pub fn exists(&self, path: &str) -> bool {
        self.stat(path).is_ok()
    }

    /// The names in a directory (without `.` and `..`), in no particular order; empty when `dir` does
    /// not exist.
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        check_path(dir)?;
        if !self.stat(dir).is_ok_and(|s| s.kind == "directory") {
            return Ok(Vec::new());
        }
        // `ls -p`: one `/inode/mode/uid/gid/name/size/` line per entry; a name holds no '/'.
        let text = String::from_utf8_lossy(&self.request(&format!("ls -p {dir}"))?).into_owned();
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix('/')?.split('/').nth(4))
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .map(String::from)
            .collect())
    }

    /// Follows symlinks (in every component) to a real path.
    pub fn resolve(&self, path: &str) -> Result<String> {
        check_path(path)?;
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(String::from)
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == "." {
                continue;
            }
            if c == ".." {
                done.pop();
                continue;
            }
            let candidate = format!(
                "/{}",
                done.iter()
                    .chain([&c])
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("/")
            );
            let st = self.stat(&candidate)?;
            match st.link {
                Some(target) => {
                    hops += 1;
                    if hops > 16 {
                        return Err(Error::Invalid(format!("{path}: too many symlinks")));
                    }
                    if target.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(
                        target
                            .split('/')
                            .filter(|c| !c.is_empty())
                            .rev()
                            .map(String::from),
                    );
                }
                None => done.push(c),
            }
        }
        Ok(format!("/{}", done.join("/")))
    }

    /// Reads a file, following symlinks.
    pub fn read_resolved(&self, path: &str) -> Result<Vec<u8>> {
        let real = self.resolve(path)?;
        self.read(&real)
    }

    /// Free bytes, from the superblock.
    pub fn free(&self) -> Result<u64> {
        let text = String::from_utf8_lossy(&self.request("stats -h")?).into_owned();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match (field("Free blocks:"), field("Block size:")) {
            (Some(free), Some(size)) => Ok(free * size),
            _ => Err(Error::Tool {
                what: "debugfs stats".into(),
                output: text,
            }),
        }
    }

    /// Whether the filesystem was not cleanly unmounted (its journal needs recovery).
    pub fn needs_recovery(&self) -> Result<bool> {
        let text = String::from_utf8_lossy(&self.request("stats -h")?).into_owned();
        Ok(text
            .lines()
            .find(|l| l.starts_with("Filesystem features:"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "needs_recovery")))
    }

    /// Puts `entries` into the filesystem in one debugfs session: parents are created as needed (root
    /// owned, 0755), existing files and symlinks are replaced. Checks free space first.
    pub fn apply(&self, entries: &[Entry]) -> Result<()> {
        let plan = self.plan(entries)?;
        self.run(&plan)
    }

    /// Everything [`apply`](Self::apply) does short of writing: the free-space check, which paths exist,
    /// and the debugfs script with its files. Only reads, so it can run on the base image while the copy
    /// that [`run`](Self::run) will write is still being made: the two filesystems are identical.
    pub fn plan(&self, entries: &[Entry]) -> Result<Plan> {
        let mut needed = 0u64;
        for e in entries {
            check_path(e.path())?;
            needed += 4096;
            if let Entry::File { contents, .. } = e {
                needed += (contents.len() as u64).div_ceil(4096) * 4096 + 4096;
            }
        }
        let free = self.free()?;
        // Keep a margin: the reserved blocks are not ours, and a full root filesystem does not boot well.
        if needed + (1 << 20) > free {
            return Err(Error::RootFull { needed, free });
        }
        // Which directories exist already.
        let mut dirs: BTreeSet<String> = BTreeSet::new();
        for e in entries {
            let mut p = Path::new(e.path()).parent();
            while let Some(d) = p {
                let s = d.to_string_lossy().to_string();
                if s != "/" && !s.is_empty() {
                    dirs.insert(s);
                }
                p = d.parent();
            }
            if let Entry::Dir { path, .. } = e {
                dirs.insert(path.clone());
            }
        }
        let missing: BTreeSet<String> = dirs.into_iter().filter(|d| !self.exists(d)).collect();

        let tmp =
            tempfile::tempdir().map_err(|e| Error::Invalid(format!("temporary directory: {e}")))?;
        let mut script = String::new();
        // BTreeSet order puts parents before children.
        for d in &missing {
            script.push_str(&format!(
                "mkdir {d}\nsif {d} mode 040755\nsif {d} uid 0\nsif {d} gid 0\n"
            ));
        }
        for (i, e) in entries.iter().enumerate() {
            match e {
                Entry::Dir {
                    path,
                    mode,
                    uid,
                    gid,
                } => {
                    script.push_str(&format!(
                        "sif {path} mode 0{:o}\nsif {path} uid {uid}\nsif {path} gid {gid}\n",
                        0o040000 | (mode & 0o7777)
                    ));
                }
                Entry::File {
                    path,
                    contents,
                    mode,
                    uid,
                    gid,
                } => {
                    let host = tmp.path().join(format!("f{i}"));
                    std::fs::write(&host, contents).map_err(crate::io(&host))?;
                    if self.exists(path) {
                        script.push_str(&format!("rm {path}\n"));
                    }
                    script.push_str(&format!(
                        "write {} {path}\nsif {path} mode 0{:o}\nsif {path} uid {uid}\nsif {path} gid {gid}\n",
                        host.display(),
                        0o100000 | (mode & 0o7777)
                    ));
                }
                Entry::Symlink { path, target } => {
                    if target.contains(|c: char| c.is_whitespace() || c == '"') {
                        return Err(Error::Invalid(format!("symlink target {target:?}")));
                    }
                    if self.exists(path) {
                        script.push_str(&format!("rm {path}\n"));
                    }
                    script.push_str(&format!("symlink {path} {target}\n"));
                }
            }
        }
        let commands = tmp.path().join("commands");
        std::fs::write(&commands, &script).map_err(crate::io(&commands))?;
        Ok(Plan {
            _files: tmp,
            commands,
        })
    }

    /// Runs a [`plan`](Self::plan) made on this filesystem (or an identical copy) in one write session.
    pub fn run(&self, plan: &Plan) -> Result<()> {
        let cmds = plan.commands.to_string_lossy();
        self.debugfs(
            &["-w", "-f", &cmds],
            &format!("debugfs -w on {}", self.spec()),
        )?;
        Ok(())
    }
}

/// A prepared debugfs write session: its command file and the host files it writes.
#[derive(Debug)]
pub struct Plan {
    _files: tempfile::TempDir,
    commands: PathBuf,
}

/// debugfs's stderr without its version banner.
fn error_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !(l.starts_with("debugfs ")
                && l.split_whitespace()
                    .nth(1)
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())))
        })
        .map(String::from)
        .collect()
}

fn parse_stat(text: &str) -> Option<Stat> {
    let after = |key: &str| -> Option<&str> {
        let i = text.find(key)? + key.len();
        text[i..].split_whitespace().next()
    };
    let kind = after("Type:")?.to_string();
    let mode = u32::from_str_radix(after("Mode:")?, 8).ok()?;
    let uid = after("User:")?.parse().ok()?;
    let gid = after("Group:")?.parse().ok()?;
    let size = after("Size:")?.parse().ok()?;
    let link = text.find("Fast link dest: \"").map(|i| {
        let rest = &text[i + "Fast link dest: \"".len()..];
        rest[..rest.find('"').unwrap_or(rest.len())].to_string()
    });
    Some(Stat {
        kind,
        mode,
        uid,
        gid,
        size,
        link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_output_parses() {
        let text = "Inode: 12   Type: symlink    Mode:  0777   Flags: 0x0\nGeneration: 1    Version: 0x00000000:00000001\nUser:     0   Group:     0   Project:     0   Size: 7\nFast link dest: \"usr/bin\"\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.kind, "symlink");
        assert_eq!(s.mode, 0o777);
        assert_eq!(s.link.as_deref(), Some("usr/bin"));
        assert!(check_path("/etc/a b").is_err());
        assert!(check_path("etc").is_err());
        assert!(check_path("/etc/../x").is_err());
        assert_eq!(
            error_lines(b"debugfs 1.47.0 (5-Feb-2023)\nwrite: Could not allocate block\n"),
            ["write: Could not allocate block"]
        );
    }
}
