//! What a node publishes in the gossip, under which keys and in which JSON shape: its monitoring sample
//! and facts, and its services (and the mDNS service type it announces). The daemon writes these, the API and the operator's tools read them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::gossip::SERVICES_KEY;

/// The DNS-SD service type every agent announces (the daemon's discovery, the CLI's search).
pub const SERVICE_TYPE: &str = "_herd._udp.local.";

/// Gossip key of the latest published [`Sample`].
pub const SAMPLE_KEY: &str = "mon";
/// Gossip key of the node's [`Facts`].
pub const FACTS_KEY: &str = "sys";

/// One reading of the machine's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// CPU use over the last interval, percent of all cores.
    pub cpu: f32,
    pub mem_used: u64,
    pub mem_total: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// SoC temperature, °C, where the machine has a thermal zone.
    pub temp: Option<f32>,
    /// Root filesystem, bytes.
    pub disk_used: u64,
    pub disk_total: u64,
}

impl Sample {
    /// Whether `self` differs enough from `published` to be gossiped again: 5 points of CPU, 1% of memory or
    /// disk, 0.1 of a load average, 1 °C.
    pub fn differs_from(&self, published: &Sample) -> bool {
        let share =
            |a: u64, b: u64, total: u64| a.abs_diff(b) as f64 >= total.max(1) as f64 / 100.0;
        (self.cpu - published.cpu).abs() >= 5.0
            || share(self.mem_used, published.mem_used, self.mem_total)
            || self.mem_total != published.mem_total
            || self
                .load
                .iter()
                .zip(published.load)
                .any(|(a, b)| (a - b).abs() >= 0.1)
            || match (self.temp, published.temp) {
                (Some(a), Some(b)) => (a - b).abs() >= 1.0,
                (a, b) => a.is_some() != b.is_some(),
            }
            || share(self.disk_used, published.disk_used, self.disk_total)
            || self.disk_total != published.disk_total
    }

    /// The gossip value: compact JSON with rounded figures (well under 200 bytes).
    pub fn to_gossip(&self) -> String {
        let mut s = self.clone();
        s.cpu = (s.cpu * 10.0).round() / 10.0;
        s.load = s.load.map(|l| (l * 100.0).round() / 100.0);
        s.temp = s.temp.map(|t| (t * 10.0).round() / 10.0);
        serde_json::to_string(&s).expect("numbers serialize")
    }
}

/// What does not change while the node runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// Board model from the device tree, e.g. "Raspberry Pi 4 Model B Rev 1.5".
    pub model: Option<String>,
    pub arch: String,
    /// OS name and version, e.g. "Debian GNU/Linux 12 (bookworm)".
    pub os: Option<String>,
    /// Boot time, seconds since the Unix epoch (uptime = now − boot).
    pub boot: u64,
    pub agent: String,
    /// CPU cores (load averages are read against it); absent from agents before 0.1.1.
    #[serde(default)]
    pub cpus: Option<u32>,
}

impl Facts {
    pub fn to_gossip(&self) -> String {
        serde_json::to_string(self).expect("strings serialize")
    }
}

/// Uptime of a node whose facts say it booted at `boot`.
pub fn uptime(boot: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(now.saturating_sub(boot))
}

/// The largest number of bytes the JSON array of services may take (a gossip value holds 1024).
pub const MAX_SERVICES_BYTES: usize = 1000;

/// A service name: 1 to 63 characters of `a-z`, `A-Z`, `0-9`, `_`, `-` and `.`, starting with a letter or
/// a digit (`nginx_webserver`, `postgres-16`).
pub fn check_service_name(name: &str) -> Result<(), String> {
    check_plain_name("service", name)
}

/// Gossip key of the node's name.
pub const NAME_KEY: &str = "name";
/// Gossip key of the agent's version.
pub const VERSION_KEY: &str = "version";
/// Gossip key of the API's TCP port.
pub const HTTP_KEY: &str = "http";

/// A node name (`node_name`, or the host name): 1 to 63 characters of `a-z`, `A-Z`, `0-9`, `_`, `-` and
/// `.`, starting with a letter or a digit. Names end up in Ansible inventories, terminals, Prometheus
/// labels and handlers' environments, so nothing else is let through: `pi4#` would cut an inventory line
/// short and `web[1:3]` is an Ansible host range.
pub fn check_node_name(name: &str) -> Result<(), String> {
    check_plain_name("node", name)
}

/// The rule service and node names share, with an error naming the `kind` of name.
fn check_plain_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {:?}: use 1 to 63 characters of a-z, A-Z, 0-9, '_', '-' and '.', \
             starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// Checks a key/value a peer gossiped, before anything of it is taken: the keys herd publishes must
/// hold what herd writes there; any other key (a newer agent's) must at least be free of control
/// characters. The gossip layer refuses the peer's whole delta when this fails.
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    crate::gossip::no_control_chars(key, value)?;
    let fits = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{key}: not {what}"))
        }
    };
    match key {
        NAME_KEY => check_node_name(value),
        VERSION_KEY => fits(
            !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)),
            "a version",
        ),
        HTTP_KEY => fits(value.parse::<u16>().is_ok_and(|p| p != 0), "a TCP port"),
        crate::gossip::ADDR_KEY => {
            fits(value.parse::<std::net::SocketAddr>().is_ok(), "an address")
        }
        SERVICES_KEY => {
            let names: Vec<String> =
                serde_json::from_str(value).map_err(|e| format!("{key}: {e}"))?;
            names.iter().try_for_each(|n| check_service_name(n))
        }
        SAMPLE_KEY => {
            let s: Sample = serde_json::from_str(value).map_err(|e| format!("{key}: {e}"))?;
            let finite = s.cpu.is_finite()
                && s.load.iter().all(|l| l.is_finite())
                && s.temp.is_none_or(f32::is_finite);
            fits(finite, "finite figures")
        }
        super::health::HEALTH_KEY => super::health::Health::check(value),
        super::engine::ENGINE_KEY => super::engine::EngineReport::check(value),
        super::join::JOIN_KEY => super::join::Offers::check(value).map(|_| ()),
        FACTS_KEY => {
            let f: Facts = serde_json::from_str(value).map_err(|e| format!("{key}: {e}"))?;
            // The strings as decoded: JSON escapes (`\u001b`, `\n`) pass the raw text's check.
            let strings = [
                f.model.as_deref(),
                Some(&f.arch),
                f.os.as_deref(),
                Some(&f.agent),
            ];
            let checked = strings.into_iter().flatten().try_for_each(|text| {
                crate::gossip::no_control_chars(key, text).map_err(|e| format!("{key}: {e}"))?;
                fits(
                    text.chars().count() <= 200,
                    "at most 200 characters a field",
                )
            });
            checked
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_herd_publishes_passes_and_forgeries_do_not() {
        let sample = Sample {
            cpu: 1.5,
            mem_used: 1,
            mem_total: 2,
            load: [0.1, 0.2, 0.3],
            temp: Some(40.0),
            disk_used: 1,
            disk_total: 2,
        };
        let facts = Facts {
            model: Some("Raspberry Pi 4 Model B Rev 1.5".into()),
            arch: "aarch64".into(),
            os: Some("Debian GNU/Linux 13 (trixie)".into()),
            boot: 1,
            agent: "0.1.0".into(),
            cpus: Some(4),
        };
        for (k, v) in [
            (NAME_KEY, "pi-01.lab".to_string()),
            (VERSION_KEY, crate::VERSION.to_string()),
            (HTTP_KEY, "8080".to_string()),
            ("_addr", "192.168.1.20:7496".to_string()),
            (
                SERVICES_KEY,
                r#"["nginx_webserver","postgres-16"]"#.to_string(),
            ),
            (SAMPLE_KEY, sample.to_gossip()),
            (FACTS_KEY, facts.to_gossip()),
            (
                crate::model::engine::ENGINE_KEY,
                r#"{"swarm":"s1","node":"n1","role":"manager","leader":true}"#.to_string(),
            ),
            ("future-key", "anything printable".to_string()),
        ] {
            assert_eq!(check_value(k, &v), Ok(()), "{k} = {v}");
        }
        for (k, v) in [
            (NAME_KEY, "pi\u{0}4"),
            (NAME_KEY, "pi4#"),
            (NAME_KEY, "web[1:3]"),
            (NAME_KEY, "\u{1b}[2Jx"),
            (NAME_KEY, ""),
            (VERSION_KEY, "1.0\nrm"),
            (HTTP_KEY, "0"),
            (HTTP_KEY, "http"),
            ("_addr", "nowhere"),
            (SERVICES_KEY, r#"["ok","bad\u0000"]"#),
            (SERVICES_KEY, r#"["a b"]"#),
            (SERVICES_KEY, "not json"),
            (SAMPLE_KEY, "{}"),
            (FACTS_KEY, "[]"),
            (
                FACTS_KEY,
                r#"{"model":"\u001b[2J","arch":"aarch64","os":null,"boot":1,"agent":"0.1.0"}"#,
            ),
            (
                FACTS_KEY,
                r#"{"model":null,"arch":"aarch64","os":"a\nb","boot":1,"agent":"0.1.0"}"#,
            ),
            ("future-key", "line\nbreak"),
            (crate::model::engine::ENGINE_KEY, r#"{"role":"manager"}"#),
        ] {
            assert!(check_value(k, v).is_err(), "{k} = {v:?} passed");
        }
        let long = format!(
            r#"{{"model":null,"arch":"{}","os":null,"boot":1,"agent":"0.1.0"}}"#,
            "a".repeat(201)
        );
        assert!(check_value(FACTS_KEY, &long).unwrap_err().contains("200"));
    }
}
