//! What a node publishes in the gossip, under which keys and in which JSON shape: its monitoring sample
//! and facts, and its services. The daemon writes these, the API and the operator's tools read them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::gossip::SERVICES_KEY;

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
            "invalid service name {:?}: use 1 to 63 characters of a-z, A-Z, 0-9, '_', '-' and '.', \
             starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        ))
    }
}
