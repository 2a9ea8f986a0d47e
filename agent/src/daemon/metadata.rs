//! The node's service meta-data: the set of services it runs, persisted in `state_dir/meta-data.json` and
//! gossiped under the key `services`.
//!
//! A Pi can lose power at any instant, so every change is written atomically and durably (temporary file,
//! fsync, rename, fsync of the directory) before it is acknowledged. A file that cannot be parsed never
//! stops the agent: it is moved aside, the error is logged, and the agent starts with no services; one
//! that cannot be read at all (a disk fault) stops it with the error, rather than announce a false "none".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::files::{read_state, write_atomic, StateFileError};
pub use crate::model::published::{check_service_name, MAX_SERVICES_BYTES, SERVICES_KEY};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    services: BTreeSet<String>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    BadName(String),
    #[error("too many services: their names must fit in {MAX_SERVICES_BYTES} bytes of gossip")]
    TooMany,
    #[error("cannot save the meta-data: {0:#}")]
    Io(anyhow::Error),
}

/// The largest meta-data file read: far more than gossip carries ([`MAX_SERVICES_BYTES`]).
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The persisted set of services.
#[derive(Debug)]
pub struct MetaData {
    path: PathBuf,
    services: BTreeSet<String>,
}

impl MetaData {
    /// Loads `state_dir/meta-data.json`. A missing file is an empty set; a corrupt one is moved aside to
    /// `meta-data.json.corrupt-<unix time>` and logged, and the set starts empty. A set larger than gossip
    /// carries (written by hand, or by another version) is copied aside whole to
    /// `meta-data.json.over-limit-<unix time>` and the services that fit, in name order, are kept. A file
    /// that exists but cannot be read (permissions, I/O error) is an error: the node must not announce
    /// "no services" because of a disk fault, and `herd launch --reconcile` would act on that.
    pub fn load(state_dir: &Path) -> anyhow::Result<MetaData> {
        let path = state_dir.join("meta-data.json");
        // Far more than gossip carries, yet small enough to log and set aside without harm.
        let read = match read_state(&path, MAX_FILE_BYTES) {
            Ok(bytes) => bytes.map(|b| parse(&b)),
            // Too large is corrupt: moved aside once, not copied and logged on every start.
            Err(e @ StateFileError::TooLarge(..)) => Some(Err(e.into())),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read the meta-data file {} (fix its permissions or the disk; it is \
                         not replaced)",
                        path.display()
                    )
                })
            }
        };
        let services = match read {
            None => BTreeSet::new(),
            Some(Ok(services)) => services,
            Some(Err(e)) => {
                let aside = set_aside(&path, "corrupt", false);
                tracing::error!(
                    file = %path.display(),
                    moved_to = %aside,
                    error = %format!("{e:#}"),
                    "corrupt meta-data file moved aside; starting with no services"
                );
                BTreeSet::new()
            }
        };
        let mut kept = BTreeSet::new();
        let mut dropped = Vec::new();
        for s in services {
            let mut next = kept.clone();
            next.insert(s.clone());
            if serde_json::to_string(&next).map_or(0, |t| t.len()) > MAX_SERVICES_BYTES {
                dropped.push(s);
            } else {
                kept = next;
            }
        }
        let mut data = MetaData {
            path,
            services: BTreeSet::new(),
        };
        if dropped.is_empty() {
            data.services = kept;
        } else {
            let copy = set_aside(&data.path, "over-limit", true);
            // The set that is published is saved, so the next start neither copies nor logs it again.
            let published = kept.clone();
            if let Err(e) = data.save(kept) {
                tracing::error!(error = %e, "cannot save the meta-data");
                data.services = published;
            }
            let shown: Vec<&str> = dropped.iter().take(5).map(String::as_str).collect();
            tracing::error!(
                file = %data.path.display(),
                copied_to = %copy,
                dropped = dropped.len(),
                first_dropped = %shown.join(","),
                "the meta-data lists more services than gossip carries ({MAX_SERVICES_BYTES} bytes); \
                 publishing those that fit"
            );
        }
        Ok(data)
    }

    pub fn services(&self) -> &BTreeSet<String> {
        &self.services
    }

    /// The gossip value for [`SERVICES_KEY`].
    pub fn gossip_value(&self) -> String {
        serde_json::to_string(&self.services).expect("strings serialize")
    }

    /// Adds a service and saves; `Ok(false)` when it was already there.
    pub fn add(&mut self, name: &str) -> Result<bool, ChangeError> {
        check_service_name(name).map_err(ChangeError::BadName)?;
        if self.services.contains(name) {
            return Ok(false);
        }
        let mut next = self.services.clone();
        next.insert(name.to_string());
        if serde_json::to_string(&next).map_or(0, |s| s.len()) > MAX_SERVICES_BYTES {
            return Err(ChangeError::TooMany);
        }
        self.save(next)?;
        Ok(true)
    }

    /// Removes a service and saves; `Ok(false)` when it was not there.
    pub fn remove(&mut self, name: &str) -> Result<bool, ChangeError> {
        check_service_name(name).map_err(ChangeError::BadName)?;
        if !self.services.contains(name) {
            return Ok(false);
        }
        let mut next = self.services.clone();
        next.remove(name);
        self.save(next)?;
        Ok(true)
    }

    /// Writes `next` durably, then adopts it: on failure nothing changes.
    fn save(&mut self, next: BTreeSet<String>) -> Result<(), ChangeError> {
        let text = serde_json::to_string_pretty(&File {
            services: next.clone(),
        })
        .expect("strings serialize");
        write_atomic(&self.path, &format!("{text}\n")).map_err(ChangeError::Io)?;
        self.services = next;
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> anyhow::Result<BTreeSet<String>> {
    let file: File = serde_json::from_slice(bytes).context("not a meta-data JSON document")?;
    for s in &file.services {
        check_service_name(s).map_err(anyhow::Error::msg)?;
    }
    Ok(file.services)
}

/// Renames (or copies) a file out of the way, to `<name>.<what>-<unix time>`; returns where it went (or
/// why it could not).
fn set_aside(path: &Path, what: &str, copy: bool) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = path.with_extension(format!("json.{what}-{secs}"));
    let done = if copy {
        std::fs::copy(path, &aside).map(drop)
    } else {
        std::fs::rename(path, &aside)
    };
    match done {
        Ok(()) => aside.display().to_string(),
        Err(e) => format!("(not moved: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in [
            "nginx_webserver",
            "postgres-16",
            "a",
            "x.y",
            &"a".repeat(63),
        ] {
            assert!(check_service_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "ü", &"a".repeat(64), "a\n"] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn changes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetaData::load(dir.path()).unwrap();
        assert!(m.services().is_empty());
        assert!(m.add("web").unwrap());
        assert!(!m.add("web").unwrap());
        assert!(m.add("db").unwrap());
        assert!(m.remove("web").unwrap());
        assert!(!m.remove("web").unwrap());
        let again = MetaData::load(dir.path()).unwrap();
        assert_eq!(again.services().iter().collect::<Vec<_>>(), ["db"]);
        assert_eq!(again.gossip_value(), r#"["db"]"#);
        assert!(matches!(m.add("bad name"), Err(ChangeError::BadName(_))));
    }

    #[test]
    fn the_set_is_bounded_by_what_gossip_carries() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetaData::load(dir.path()).unwrap();
        let mut added = 0;
        loop {
            match m.add(&format!("service-number-{added:04}")) {
                Ok(_) => added += 1,
                Err(ChangeError::TooMany) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(added > 10 && m.gossip_value().len() <= MAX_SERVICES_BYTES);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        for garbage in [
            &b"{\"services\": [\"ok\", "[..],
            b"\x00\xff",
            b"{\"services\":[\"a b\"]}",
        ] {
            std::fs::write(dir.path().join("meta-data.json"), garbage).unwrap();
            let mut m = MetaData::load(dir.path()).unwrap();
            assert!(m.services().is_empty());
            assert!(!dir.path().join("meta-data.json").exists());
            m.add("fresh").unwrap();
            assert_eq!(MetaData::load(dir.path()).unwrap().services().len(), 1);
            std::fs::remove_file(dir.path().join("meta-data.json")).unwrap();
        }
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("corrupt")
            })
            .count();
        assert!(aside >= 1);
    }

    #[test]
    fn an_over_limit_file_keeps_what_fits_and_a_copy_of_all() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..200).map(|i| format!("service-{i:03}")).collect();
        let text = serde_json::json!({ "services": names }).to_string();
        std::fs::write(dir.path().join("meta-data.json"), &text).unwrap();
        let m = MetaData::load(dir.path()).unwrap();
        assert!(!m.services().is_empty() && m.services().len() < 200);
        assert!(m.gossip_value().len() <= MAX_SERVICES_BYTES);
        let copies: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("over-limit"))
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(std::fs::read_to_string(&copies[0]).unwrap(), text);
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails with EISDIR, as EIO or EACCES would.
        std::fs::create_dir(dir.path().join("meta-data.json")).unwrap();
        let e = MetaData::load(dir.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read the meta-data file"),
            "{e:#}"
        );
        assert!(dir.path().join("meta-data.json").is_dir(), "left as it was");
    }
}
