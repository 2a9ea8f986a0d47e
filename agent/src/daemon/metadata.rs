//! The node's service meta-data: the set of services it runs, persisted in `state_dir/meta-data.json` and
//! gossiped under the key `services`.
//!
//! A Pi can lose power at any instant, so every change is written atomically and durably (temporary file,
//! fsync, rename, fsync of the directory) before it is acknowledged. A file that cannot be read or parsed
//! never stops the agent: it is moved aside, the error is logged, and the agent starts with no services.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::files::write_atomic;
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

/// The persisted set of services.
#[derive(Debug)]
pub struct MetaData {
    path: PathBuf,
    services: BTreeSet<String>,
}

impl MetaData {
    /// Loads `state_dir/meta-data.json`. A missing file is an empty set; a corrupt one is moved aside to
    /// `meta-data.json.corrupt-<unix time>` and logged, and the set starts empty.
    pub fn load(state_dir: &Path) -> MetaData {
        let path = state_dir.join("meta-data.json");
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|e| ("corrupt", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(("unreadable", e.into())),
        };
        let services = loaded.unwrap_or_else(|(what, e)| {
            let aside = set_aside(&path);
            tracing::error!(
                file = %path.display(),
                moved_to = %aside,
                error = %e,
                "{what} meta-data file moved aside; starting with no services"
            );
            BTreeSet::new()
        });
        MetaData { path, services }
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

/// Renames a bad file out of the way; returns where it went (or why it could not move).
fn set_aside(path: &Path) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = path.with_extension(format!("json.corrupt-{secs}"));
    match std::fs::rename(path, &aside) {
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
        let mut m = MetaData::load(dir.path());
        assert!(m.services().is_empty());
        assert!(m.add("web").unwrap());
        assert!(!m.add("web").unwrap());
        assert!(m.add("db").unwrap());
        assert!(m.remove("web").unwrap());
        assert!(!m.remove("web").unwrap());
        let again = MetaData::load(dir.path());
        assert_eq!(again.services().iter().collect::<Vec<_>>(), ["db"]);
        assert_eq!(again.gossip_value(), r#"["db"]"#);
        assert!(matches!(m.add("bad name"), Err(ChangeError::BadName(_))));
    }

    #[test]
    fn the_set_is_bounded_by_what_gossip_carries() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetaData::load(dir.path());
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
            let mut m = MetaData::load(dir.path());
            assert!(m.services().is_empty());
            assert!(!dir.path().join("meta-data.json").exists());
            m.add("fresh").unwrap();
            assert_eq!(MetaData::load(dir.path()).services().len(), 1);
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
}
