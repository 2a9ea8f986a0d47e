//! The shapes of `herd upgrade`: what the operator's CLI asks a node (`POST /api/v1/upgrade/install`),
//! what the agent hands the card's root installer (`request.json` in its state directory), what the
//! installer reports back (`status.json`, world-readable), and what `GET /api/v1/upgrade` shows. Every
//! field is checked where it is received ([`InstallRequest::check`], [`Handoff::check`]).

use serde::{Deserialize, Serialize};

/// Largest artifact a node accepts (upload or fetch): three agents of a few MB each fit many times.
pub const MAX_ARTIFACT: u64 = 32 << 20;
/// Bounds of `--timeout`: long enough for a Pi Zero on Wi-Fi to restart and rejoin, short enough that a
/// bad agent is not left running for long.
pub const MIN_TIMEOUT_S: u64 = 10;
pub const MAX_TIMEOUT_S: u64 = 3600;
/// Nodes named as artifact sources in one request.
pub const MAX_SOURCES: usize = 64;
/// Peers the installer waits on (alive members when the agent handed over).
pub const MAX_PEERS: usize = 4096;

/// `POST /api/v1/upgrade/install`: install the artifact `sha256` (fetched from `sources`, other nodes'
/// APIs, if this node does not have it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    pub sha256: String,
    /// Names this install in the installer's report, so the operator's tool knows the report is about
    /// its request (not an earlier one) without comparing clocks: a Pi has no clock until NTP answers.
    #[serde(default)]
    pub rollout: String,
    #[serde(default)]
    pub sources: Vec<String>,
    /// Sent by CLIs before permits; it allows nothing by itself.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// The operator's permit to install this older artifact on a node running its version, signed
    /// with the cluster's signing key (`release::SigningKey::permit_downgrade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade_permit: Option<String>,
    pub timeout_s: u64,
}

impl InstallRequest {
    pub fn check(&self) -> Result<(), String> {
        check_sha(&self.sha256)?;
        check_rollout(&self.rollout)?;
        check_timeout(self.timeout_s)?;
        check_permit(self.downgrade_permit.as_deref())?;
        if self.sources.len() > MAX_SOURCES {
            return Err(format!("sources: more than {MAX_SOURCES}"));
        }
        for s in &self.sources {
            check_source(s)?;
        }
        Ok(())
    }
}

/// `request.json`: what the agent, once it verified the artifact, asks of the root installer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub sha256: String,
    #[serde(default)]
    pub rollout: String,
    /// The operator's downgrade permit, which the installer checks itself with the configured key:
    /// nothing else the agent writes here lets it install an older agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade_permit: Option<String>,
    pub timeout_s: u64,
    /// Node ids of the other alive members: each must see this node alive with the new version.
    pub peers: Vec<String>,
}

impl Handoff {
    pub fn check(&self) -> Result<(), String> {
        check_sha(&self.sha256)?;
        check_rollout(&self.rollout)?;
        check_timeout(self.timeout_s)?;
        check_permit(self.downgrade_permit.as_deref())?;
        if self.peers.len() > MAX_PEERS {
            return Err(format!("peers: more than {MAX_PEERS}"));
        }
        for p in &self.peers {
            if p.len() != 16 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("peers: {p:?} is not a node id (16 hex digits)"));
            }
        }
        Ok(())
    }
}

/// Where an upgrade stands, as the installer last wrote it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The new agent is in place and restarting; not yet seen alive by every other node.
    Proving,
    /// Seen alive with the new version by every other alive node: kept.
    Upgraded,
    /// Not proven in time: the previous agent is back.
    RolledBack,
    /// The installer refused the artifact (it checks everything the agent checked, again).
    Refused,
    /// The card lost power before the new agent was in place: the previous one runs.
    Interrupted,
}

/// `/var/lib/herd-upgrade/status.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub sha256: String,
    /// The install request's `rollout`.
    #[serde(default)]
    pub rollout: String,
    pub from: String,
    pub to: String,
    pub stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// An artifact a node keeps (and serves to the others).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredView {
    pub sha256: String,
    pub version: String,
    pub size: u64,
}

/// `GET /api/v1/upgrade`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpgradeView {
    pub id: String,
    pub name: String,
    pub version: String,
    pub arch: Option<String>,
    /// Whether the node has a signing key (`upgrade.public_key` in its configuration).
    #[serde(default)]
    pub has_key: bool,
    pub artifact: Option<StoredView>,
    /// An install handed to the installer and not finished yet.
    pub busy: bool,
    pub last: Option<Outcome>,
}

pub fn check_sha(sha: &str) -> Result<(), String> {
    if sha.len() != 64 || !sha.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "sha256: {:?} is not 64 lower-case hex digits",
            sha.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// A rollout's name: up to 32 hex digits (empty: unnamed).
pub fn check_rollout(r: &str) -> Result<(), String> {
    if r.len() > 32 || !r.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "rollout: {:?} is not up to 32 hex digits",
            r.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

/// A permit is the base64 of a 64-byte signature (88 characters); what it signs is checked with the key.
fn check_permit(p: Option<&str>) -> Result<(), String> {
    match p {
        Some(p)
            if p.len() != 88
                || !p
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) =>
        {
            Err("downgrade_permit: not a signature (88 base64 characters)".into())
        }
        _ => Ok(()),
    }
}

fn check_timeout(t: u64) -> Result<(), String> {
    if !(MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&t) {
        return Err(format!(
            "timeout_s: {t} is not between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S}"
        ));
    }
    Ok(())
}

/// A source is another node's API, `http://HOST:PORT`, nothing more (no path, no user, no query).
pub fn check_source(s: &str) -> Result<(), String> {
    let bad = || format!("sources: {s:?} is not http://HOST:PORT");
    let rest = s.strip_prefix("http://").ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || host.len() > 253
        || port.parse::<u16>().map_or(true, |p| p == 0)
        || !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'))
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> InstallRequest {
        InstallRequest {
            sha256: "a".repeat(64),
            rollout: "0123abcd".into(),
            sources: vec![
                "http://10.0.0.5:8080".into(),
                "http://[fe80::1]:8080".into(),
            ],
            allow_downgrade: false,
            downgrade_permit: None,
            timeout_s: 120,
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        assert_eq!(request().check(), Ok(()));
        let bad = |f: fn(&mut InstallRequest), what: &str| {
            let mut r = request();
            f(&mut r);
            let err = r.check().unwrap_err();
            assert!(err.contains(what), "{err}");
        };
        bad(|r| r.sha256 = "A".repeat(64), "sha256");
        bad(|r| r.sha256 = "a".repeat(63), "sha256");
        bad(|r| r.timeout_s = 5, "timeout_s");
        bad(|r| r.rollout = "x; rm -rf /".into(), "rollout");
        bad(|r| r.timeout_s = 99_999, "timeout_s");
        bad(
            |r| r.sources = vec!["http://x:8080/etc/passwd".into()],
            "sources",
        );
        bad(|r| r.sources = vec!["file:///etc/passwd".into()], "sources");
        bad(|r| r.sources = vec!["http://user@x:80".into()], "sources");
        bad(|r| r.sources = vec!["http://x:0".into()], "sources");
        bad(|r| r.sources = vec!["http://x:80".into(); 65], "sources");
        bad(
            |r| r.downgrade_permit = Some("yes".into()),
            "downgrade_permit",
        );
        bad(
            |r| r.downgrade_permit = Some(format!("{}\n", "A".repeat(87))),
            "downgrade_permit",
        );
        let unknown = r#"{"sha256":"aa","timeout_s":10,"run":"rm -rf /"}"#;
        assert!(serde_json::from_str::<InstallRequest>(unknown).is_err());
    }

    #[test]
    fn handoffs_name_peers_by_id_only() {
        let mut h = Handoff {
            sha256: "0".repeat(64),
            rollout: String::new(),
            downgrade_permit: Some("A".repeat(86) + "=="),
            timeout_s: 60,
            peers: vec!["0123456789abcdef".into()],
        };
        assert_eq!(h.check(), Ok(()));
        // A request written before permits, which said "allow_downgrade" itself, is refused whole.
        let old =
            r#"{"sha256":"00","rollout":"","allow_downgrade":true,"timeout_s":60,"peers":[]}"#;
        assert!(serde_json::from_str::<Handoff>(old).is_err());
        h.peers.push("../../etc".into());
        assert!(h.check().unwrap_err().contains("peers"));
    }
}
