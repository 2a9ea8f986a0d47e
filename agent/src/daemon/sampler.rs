//! The node's monitoring: CPU, memory, load averages, SoC temperature and root-disk usage sampled with
//! `sysinfo` every few seconds, plus static facts read from the machine (board model, architecture, OS,
//! boot time, agent version). What is gossiped, and how, is `model::published`.

use std::path::Path;

use anyhow::Context;

pub use crate::model::published::{Facts, Sample, FACTS_KEY, SAMPLE_KEY};

impl Facts {
    pub fn read() -> Facts {
        let clip = |s: String| {
            s.trim_matches(char::from(0))
                .trim()
                .chars()
                .take(80)
                .collect()
        };
        Facts {
            model: std::fs::read_to_string("/proc/device-tree/model")
                .ok()
                .map(clip),
            arch: std::env::consts::ARCH.to_string(),
            os: sysinfo::System::long_os_version().ok().map(clip),
            boot: sysinfo::System::boot_time().unwrap_or(0),
            agent: crate::VERSION.to_string(),
            cpus: std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32),
        }
    }
}

/// Samples the machine; keeps what `sysinfo` needs between readings (CPU use is a difference).
pub struct Sampler {
    system: sysinfo::System,
    disks: sysinfo::Disks,
}

impl Sampler {
    /// Takes a first reading (blocks for sysinfo's minimum CPU interval, 200 ms).
    pub fn new() -> anyhow::Result<Sampler> {
        let mut system = sysinfo::System::new().context("cannot read system statistics")?;
        system.refresh_cpu_usage();
        // CPU use is the difference of two readings: make the first sample meaningful.
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        Ok(Sampler {
            system,
            disks: sysinfo::Disks::new_with_refreshed_list().context("cannot list disks")?,
        })
    }

    pub fn sample(&mut self) -> anyhow::Result<Sample> {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        let load = sysinfo::System::load_average().context("cannot read load averages")?;
        let root = self
            .disks
            .iter()
            .find(|d| d.mount_point() == Path::new("/"));
        let (disk_total, disk_free) =
            root.map_or((0, 0), |d| (d.total_space(), d.available_space()));
        Ok(Sample {
            cpu: self.system.global_cpu_usage(),
            mem_used: self.system.used_memory(),
            mem_total: self.system.total_memory(),
            load: [load.one, load.five, load.fifteen],
            temp: soc_temperature(Path::new("/sys/class/thermal")),
            disk_used: disk_total.saturating_sub(disk_free),
            disk_total,
        })
    }
}

/// The SoC's temperature from the kernel's thermal zones (a Raspberry Pi has no hwmon sensor): the zone
/// named like the CPU (`cpu-thermal`, `soc_thermal`, `x86_pkg_temp`) or else the first one.
pub fn soc_temperature(thermal: &Path) -> Option<f32> {
    let mut zones: Vec<_> = std::fs::read_dir(thermal)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone"))
        })
        .collect();
    zones.sort();
    let kind = |z: &Path| std::fs::read_to_string(z.join("type")).unwrap_or_default();
    let preferred = zones.iter().position(|z| {
        let k = kind(z);
        k.contains("cpu") || k.contains("soc") || k.contains("pkg")
    });
    let zone = zones.get(preferred.unwrap_or(0))?;
    let milli: f64 = std::fs::read_to_string(zone.join("temp"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((milli / 1000.0) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            cpu: 10.0,
            mem_used: 1_000_000_000,
            mem_total: 4_000_000_000,
            load: [0.5, 0.4, 0.3],
            temp: Some(48.0),
            disk_used: 10_000_000_000,
            disk_total: 32_000_000_000,
        }
    }

    #[test]
    fn small_moves_are_not_regossiped() {
        let a = sample();
        let mut b = a.clone();
        b.cpu = 14.0;
        b.mem_used += 30_000_000;
        b.load[0] = 0.55;
        b.temp = Some(48.6);
        b.disk_used += 300_000_000;
        assert!(!b.differs_from(&a));
        for change in [
            (|s: &mut Sample| s.cpu = 16.0) as fn(&mut Sample),
            |s| s.mem_used += 41_000_000,
            |s| s.load[2] = 0.45,
            |s| s.temp = Some(49.5),
            |s| s.temp = None,
            |s| s.disk_used += 330_000_000,
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert!(c.differs_from(&a), "{c:?}");
        }
    }

    #[test]
    fn gossip_values_are_small_and_round_trip() {
        let mut s = sample();
        s.cpu = 12.345_67;
        let text = s.to_gossip();
        assert!(text.len() < 200, "{text}");
        let back: Sample = serde_json::from_str(&text).unwrap();
        assert_eq!(back.cpu, 12.3);
        let f = Facts::read();
        assert!(f.to_gossip().len() < 400);
        assert_eq!(f.arch, std::env::consts::ARCH);
    }

    #[test]
    fn the_cpu_thermal_zone_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        for (zone, kind, temp) in [
            ("thermal_zone0", "acpitz", "30000"),
            ("thermal_zone1", "cpu-thermal", "48312"),
        ] {
            std::fs::create_dir(dir.path().join(zone)).unwrap();
            std::fs::write(dir.path().join(zone).join("type"), kind).unwrap();
            std::fs::write(dir.path().join(zone).join("temp"), temp).unwrap();
        }
        assert_eq!(soc_temperature(dir.path()), Some(48.312));
        assert_eq!(soc_temperature(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_real_sample_is_plausible() {
        let mut s = Sampler::new().unwrap();
        let x = s.sample().unwrap();
        assert!(x.mem_total > 0 && x.mem_used <= x.mem_total);
        assert!((0.0..=100.0).contains(&x.cpu), "{x:?}");
        assert!(x.disk_total > 0 && x.disk_used <= x.disk_total, "{x:?}");
    }
}
