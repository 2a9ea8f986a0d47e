//! The agent's side of `herd upgrade`. It takes a signed artifact (uploaded by the operator, or fetched
//! from another node that has it), checks it whole (signature, cluster, every binary's hash), keeps it
//! in `STATE_DIR/upgrade/` to serve to the other nodes, and, asked to install it, checks that it has a
//! binary for this CPU and a version this card takes, then hands it to the card's root installer by
//! writing `request.json` (which `herd-upgrade.path` watches). The agent itself runs sandboxed and never
//! touches the installed binary: the installer ([`crate::installer`]) checks it all again.
//!
//! Everything here blocks (files, fsync, HTTP fetches): the API runs it on blocking threads, one
//! upload or install at a time.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::installer::{read_small, INSTALLER_DIR, PENDING, REQUEST, STATUS};
use crate::model::upgrade::{Handoff, InstallRequest, Outcome, StoredView, MAX_ARTIFACT};
use crate::release::{self, Arch, PublicKey, Refusal};

/// The artifact kept: `<sha256>.herd`, described by `artifact.json`.
const KEPT: &str = "artifact.json";
/// How long fetching an artifact may take, from all its sources together: the one upgrade slot is not
/// held longer, however many slow sources a request names.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// A refusal with the HTTP status it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        let status = match r {
            Refusal::SameVersion(_) | Refusal::Downgrade { .. } => 409,
            _ => 422,
        };
        refused(status, format!("artifact refused: {r}"))
    }
}

/// The agent's upgrade state: where it keeps artifacts, and what it checks them with.
pub struct Upgrades {
    dir: PathBuf,
    installer_dir: PathBuf,
    key: Option<PublicKey>,
    cluster: String,
}

impl std::fmt::Debug for Upgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrades")
            .field("dir", &self.dir)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Upgrades {
    pub fn new(config: &Config) -> anyhow::Result<Upgrades> {
        Ok(Upgrades::at(
            config.state_dir.join("upgrade"),
            PathBuf::from(INSTALLER_DIR),
            config.upgrade.key()?,
            &config.cluster,
        ))
    }

    pub fn at(
        dir: PathBuf,
        installer_dir: PathBuf,
        key: Option<PublicKey>,
        cluster: &str,
    ) -> Upgrades {
        Upgrades {
            dir,
            installer_dir,
            key,
            cluster: cluster.to_string(),
        }
    }

    fn artifact_path(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}.herd"))
    }

    /// The signing key: the configuration's, the only one the installer trusts.
    pub fn key(&self) -> Option<PublicKey> {
        self.key
    }

    /// Checks an artifact whole and keeps it (the one kept before is dropped).
    pub fn accept(&self, bytes: &[u8]) -> Result<StoredView, Refused> {
        let key = self.key().ok_or_else(|| {
            refused(
                409,
                "this node has no signing key (upgrade.public_key in /etc/herd/herd.toml): herd upgrade \
                 --secrets gives it the cluster's",
            )
        })?;
        let key = &key;
        if bytes.len() as u64 > MAX_ARTIFACT {
            return Err(refused(
                413,
                format!(
                    "the artifact is {} bytes, more than {MAX_ARTIFACT}",
                    bytes.len()
                ),
            ));
        }
        let artifact = release::open(bytes, key, &self.cluster)?;
        artifact.check_binaries()?;
        let view = StoredView {
            sha256: release::sha256_hex(bytes),
            version: artifact.manifest.version.clone(),
            size: bytes.len() as u64,
        };
        if self.kept().as_ref() == Some(&view) {
            return Ok(view);
        }
        self.keep(bytes, &view).map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "cannot keep an artifact");
            refused(507, format!("cannot keep the artifact on this node: {e:#}"))
        })?;
        tracing::info!(version = %view.version, sha256 = %view.sha256, "artifact accepted");
        Ok(view)
    }

    fn keep(&self, bytes: &[u8], view: &StoredView) -> anyhow::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.artifact_path(&view.sha256);
        let tmp = self.dir.join("incoming.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::files::write_atomic(&self.dir.join(KEPT), &serde_json::to_string(view)?)?;
        // One artifact at a time: a Pi's card is small.
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "herd") && p != path {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }

    /// The artifact this node keeps, if any.
    pub fn kept(&self) -> Option<StoredView> {
        let text = std::fs::read_to_string(self.dir.join(KEPT)).ok()?;
        let view: StoredView = serde_json::from_str(&text).ok()?;
        crate::model::upgrade::check_sha(&view.sha256).ok()?;
        self.artifact_path(&view.sha256).exists().then_some(view)
    }

    /// The kept artifact's bytes, if it is `sha`.
    pub fn read(&self, sha: &str) -> Option<Vec<u8>> {
        crate::model::upgrade::check_sha(sha).ok()?;
        (self.kept()?.sha256 == sha)
            .then(|| std::fs::read(self.artifact_path(sha)).ok())
            .flatten()
    }

    /// Whether an install is under way: handed over and not finished, or a new agent proving itself.
    pub fn busy(&self) -> bool {
        self.dir.join(REQUEST).exists() || self.installer_dir.join(PENDING).exists()
    }

    /// The installer's last report.
    pub fn last(&self) -> Option<Outcome> {
        let text = read_small(&self.installer_dir.join(STATUS), 64 << 10)?;
        serde_json::from_str(&text).ok()
    }

    /// `POST /api/v1/upgrade/install`: gets the artifact (kept, or from a source), checks it is for this
    /// card, and hands it to the installer. `peers`: the ids of the other alive members; `members_apis`:
    /// the API addresses (`http://IP:PORT`) of this node and those, the only sources it fetches from, so
    /// a request cannot make it probe other hosts and ports and report what it found.
    pub fn install(
        &self,
        req: &InstallRequest,
        peers: Vec<String>,
        members_apis: &[String],
    ) -> Result<String, Refused> {
        req.check().map_err(|e| refused(400, e))?;
        if let Some(other) = req.sources.iter().find(|s| !members_apis.contains(s)) {
            return Err(refused(
                400,
                format!(
                    "sources: {other} is not the API address of an alive member of this cluster \
                     (as its gossip lists it: http://IP:PORT)"
                ),
            ));
        }
        if self.busy() {
            return Err(refused(
                409,
                "an upgrade is already under way on this node (see GET /api/v1/upgrade)",
            ));
        }
        let bytes = match self.read(&req.sha256) {
            Some(b) => b,
            None => self.fetch(&req.sha256, &req.sources)?,
        };
        // Checked again whole: the kept file is the agent's own, but a card can rot.
        self.accept(&bytes)?;
        let key = self.key().expect("accept checked there is a key");
        let artifact = release::open(&bytes, &key, &self.cluster)?;
        let arch = Arch::this_machine()
            .ok_or_else(|| refused(422, "this node's CPU family is not one herd builds for"))?;
        artifact.binary(arch)?;
        artifact.check_version(crate::VERSION, req.downgrade_permit.as_deref())?;
        let handoff = Handoff {
            sha256: req.sha256.clone(),
            rollout: req.rollout.clone(),
            downgrade_permit: req.downgrade_permit.clone(),
            timeout_s: req.timeout_s,
            peers,
        };
        let text = serde_json::to_string(&handoff).expect("a handoff serializes");
        crate::files::write_atomic(&self.dir.join(REQUEST), &text)
            .map_err(|e| refused(507, format!("{e:#}")))?;
        tracing::info!(
            from = crate::VERSION,
            to = %artifact.manifest.version,
            "upgrade handed to the installer"
        );
        Ok(artifact.manifest.version.clone())
    }

    /// Fetches artifact `sha` from the first source that has it.
    fn fetch(&self, sha: &str, sources: &[String]) -> Result<Vec<u8>, Refused> {
        if sources.is_empty() {
            return Err(refused(
                404,
                format!("this node does not have artifact {sha} and no source was given"),
            ));
        }
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(10)))
            .max_redirects(0)
            .build()
            .into();
        let mut order: Vec<&String> = sources.iter().collect();
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::thread_rng());
        let mut failures = Vec::new();
        let deadline = std::time::Instant::now() + FETCH_TIMEOUT;
        for source in order {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                failures.push(format!(
                    "the others untried: {} s spent",
                    FETCH_TIMEOUT.as_secs()
                ));
                break;
            }
            let url = format!("{source}/api/v1/upgrade/artifact/{sha}");
            // Never with the API token: a source is an address gossip or the operator named, and
            // what comes back is checked by its SHA-256 and, before any install, its signature.
            let result = http
                .get(&url)
                .config()
                .timeout_global(Some(left))
                .build()
                .call()
                .map_err(|e| e.to_string())
                .and_then(|mut resp| {
                    if resp.status() != 200 {
                        return Err(format!("HTTP {}", resp.status().as_u16()));
                    }
                    resp.body_mut()
                        .with_config()
                        .limit(MAX_ARTIFACT)
                        .read_to_vec()
                        .map_err(|e| e.to_string())
                })
                .and_then(|bytes| {
                    if release::sha256_hex(&bytes) == sha {
                        Ok(bytes)
                    } else {
                        Err("sent other bytes than the artifact asked for".to_string())
                    }
                });
            match result {
                Ok(bytes) => {
                    tracing::info!(%source, size = bytes.len(), "artifact fetched");
                    return Ok(bytes);
                }
                Err(e) => {
                    tracing::warn!(%source, error = %e, "cannot fetch the artifact");
                    failures.push(format!("{source}: {e}"));
                }
            }
        }
        Err(refused(
            502,
            format!(
                "cannot fetch artifact {sha} from any source: {}",
                failures.join("; ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::SigningKey;
    use std::path::Path;

    fn setup(dir: &Path) -> (Upgrades, SigningKey) {
        let key = SigningKey::from_base64(&base64_seed(7)).unwrap();
        let u = Upgrades::at(
            dir.join("upgrade"),
            dir.join("installer"),
            Some(key.public()),
            "pis",
        );
        (u, key)
    }

    fn base64_seed(b: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    }

    fn artifact(key: &SigningKey, version: &str) -> Vec<u8> {
        let arch = Arch::this_machine().unwrap();
        release::pack(key, "pis", version, &[(arch, b"new agent".as_slice())]).unwrap()
    }

    #[test]
    fn an_accepted_artifact_is_kept_alone_and_handed_over_once() {
        let dir = tempfile::tempdir().unwrap();
        let (u, key) = setup(dir.path());
        let a = artifact(&key, "99.0");
        let view = u.accept(&a).unwrap();
        assert_eq!(view.version, "99.0");
        assert_eq!(u.read(&view.sha256).as_deref(), Some(a.as_slice()));
        let b = artifact(&key, "99.1");
        let second = u.accept(&b).unwrap();
        assert_eq!(u.read(&view.sha256), None, "the first one was dropped");
        assert_eq!(u.kept(), Some(second.clone()));
        let req = InstallRequest {
            sha256: second.sha256.clone(),
            rollout: String::new(),
            sources: vec![],
            allow_downgrade: false,
            downgrade_permit: None,
            timeout_s: 60,
        };
        assert_eq!(
            u.install(&req, vec!["0123456789abcdef".into()], &[]),
            Ok("99.1".into())
        );
        let handoff: Handoff = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("upgrade/request.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(handoff.sha256, second.sha256);
        assert_eq!(handoff.peers, vec!["0123456789abcdef".to_string()]);
        let again = u.install(&req, vec![], &[]).unwrap_err();
        assert_eq!(again.status, 409, "{again:?}");
    }

    #[test]
    fn refusals_keep_nothing_and_name_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (u, key) = setup(dir.path());
        let other = SigningKey::from_base64(&base64_seed(9)).unwrap();
        let e = u.accept(&artifact(&other, "99.0")).unwrap_err();
        assert!(e.message.contains("signing key"), "{e:?}");
        let mut bad = artifact(&key, "99.0");
        *bad.last_mut().unwrap() ^= 1;
        let e = u.accept(&bad).unwrap_err();
        assert!(e.message.contains("SHA-256"), "{e:?}");
        assert_eq!(u.kept(), None);
        // Older than what runs: refused at install, unless allowed.
        let old = u.accept(&artifact(&key, "0.0.1")).unwrap();
        let mut req = InstallRequest {
            sha256: old.sha256,
            rollout: String::new(),
            sources: vec![],
            allow_downgrade: false,
            downgrade_permit: None,
            timeout_s: 60,
        };
        let e = u.install(&req, vec![], &[]).unwrap_err();
        assert_eq!(e.status, 409);
        assert!(e.message.contains("older"), "{e:?}");
        assert!(!u.busy());
        // Asking is not enough (issue 31, 3): only the operator's permit, signed for this artifact
        // and the running version, is.
        req.allow_downgrade = true;
        let e = u.install(&req, vec![], &[]).unwrap_err();
        assert_eq!(e.status, 409, "{e:?}");
        let other = SigningKey::from_base64(&base64_seed(9)).unwrap();
        req.downgrade_permit = Some(other.permit_downgrade("pis", &req.sha256, crate::VERSION));
        let e = u.install(&req, vec![], &[]).unwrap_err();
        assert!(e.message.contains("downgrade permit"), "{e:?}");
        assert!(!dir.path().join("upgrade/request.json").exists());
        req.downgrade_permit = Some(key.permit_downgrade("pis", &req.sha256, crate::VERSION));
        assert!(u.install(&req, vec![], &[]).is_ok());
        let handoff: Handoff = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("upgrade/request.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(handoff.downgrade_permit, req.downgrade_permit);
        req.downgrade_permit = None;
        // Unknown artifact, no source.
        req.sha256 = "f".repeat(64);
        std::fs::remove_file(dir.path().join("upgrade/request.json")).unwrap();
        assert_eq!(u.install(&req, vec![], &[]).unwrap_err().status, 404);
        // A source that is no member's API: refused before anything is asked of it.
        req.sources = vec!["http://10.9.9.9:22".into()];
        let members = ["http://10.0.0.5:8080".to_string()];
        let e = u.install(&req, vec![], &members).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("10.9.9.9:22 is not the API address"),
            "{e:?}"
        );
    }

    #[test]
    fn a_node_without_a_configured_key_takes_no_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = setup(dir.path());
        let u = Upgrades::at(dir.path().join("u"), dir.path().join("i"), None, "pis");
        // A key planted in its state directory (as the removed PUT /api/v1/upgrade/key kept one) is
        // not one: only the configuration's counts.
        std::fs::create_dir_all(dir.path().join("u")).unwrap();
        std::fs::write(dir.path().join("u/public_key"), key.public().to_base64()).unwrap();
        let e = u.accept(&artifact(&key, "99.0")).unwrap_err();
        assert_eq!(e.status, 409);
        assert!(e.message.contains("no signing key"), "{e:?}");
    }
}
