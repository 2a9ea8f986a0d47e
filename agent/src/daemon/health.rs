//! Reads the node's health from the kernel's files, as a Raspberry Pi's kernel lays them out (paths
//! under a root, so tests read a Pi 4's and a Pi 5's trees): the firmware's throttled bits and the
//! `rpi_volt` under-voltage alarm, the root file system's mount options and ext4 error count, the root
//! disk's write counter and the agent's own, systemd-timesyncd's word on the clock, the bootloader's
//! build time. A source that is absent is `None`, never a guess.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::model::health::{Flag, Health, Packages};

/// Writes per hour are measured over at most this long, and reported after at least the minimum.
const WRITES_WINDOW: Duration = Duration::from_secs(3600);
const WRITES_MIN: Duration = Duration::from_secs(60);

/// Keeps what health needs between readings: write counters, and whether under-voltage was seen.
pub struct HealthReader {
    root: PathBuf,
    /// (when, bytes written to the root disk, bytes the agent wrote).
    writes: VecDeque<(Instant, Option<u64>, Option<u64>)>,
    /// The hwmon alarm was seen raised since the agent started (the driver clears the firmware's sticky
    /// bit every 2 s, so "since boot" must be remembered here).
    undervoltage_seen: bool,
}

impl HealthReader {
    /// Reads the machine this agent runs on.
    pub fn new() -> HealthReader {
        HealthReader::at(PathBuf::from("/"))
    }

    /// Reads the tree under `root` (`root/sys`, `root/proc`, `root/run`).
    pub fn at(root: PathBuf) -> HealthReader {
        HealthReader {
            root,
            writes: VecDeque::new(),
            undervoltage_seen: false,
        }
    }

    pub fn read(&mut self, now: Instant) -> Health {
        let (throttled, alarm) = (self.throttled_bits(), self.undervoltage_alarm());
        if alarm == Some(true) {
            self.undervoltage_seen = true;
        }
        let flag = |bit: u32| {
            throttled.map(|b| Flag {
                now: b & (1 << bit) != 0,
                since_boot: b & (1 << (bit + 16)) != 0,
            })
        };
        let undervoltage = match (flag(0), alarm) {
            (None, None) => None,
            (f, a) => {
                let f = f.unwrap_or_default();
                Some(Flag {
                    now: f.now || a == Some(true),
                    since_boot: f.since_boot || f.now || self.undervoltage_seen,
                })
            }
        };
        let root_mount = self.root_mount();
        let (writes_per_hour, agent_writes_per_hour) = self.writes(now, root_mount.as_ref());
        let clock_synced = self.clock_synced();
        Health {
            undervoltage,
            capped: flag(1),
            throttled: flag(2),
            soft_temp: flag(3),
            read_only: root_mount.as_ref().map(|m| m.read_only),
            fs_errors: root_mount.as_ref().and_then(|m| self.ext4_errors(m)),
            writes_per_hour,
            agent_writes_per_hour,
            clock_synced,
            clock_error_ms: None,
            bootloader: self.bootloader(),
            packages: self.packages(),
        }
    }

    /// How the image's packages went (`herd packages-apply`'s status file), if it carried any.
    fn packages(&self) -> Option<Packages> {
        let status = crate::packages::Status::read(
            &self.path(crate::packages::STATUS.trim_start_matches('/')),
        )?;
        Some(match status.outcome {
            crate::packages::Outcome::Installed => Packages::Installed,
            crate::packages::Outcome::Failed => Packages::Failed {
                attempts: status.attempts,
            },
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The firmware's `get_throttled` (hex, no prefix): Linux `drivers/firmware/raspberrypi.c`
    /// `get_throttled_show` prints `"%x\n"` on the firmware's platform device, `soc:firmware` under
    /// `soc` on a Pi 4; it is looked for one and two levels under `devices/platform` so a board whose
    /// firmware node sits elsewhere is found too. Newer kernels drop it for the hwmon alarm.
    fn throttled_bits(&self) -> Option<u32> {
        let platform = self.path("sys/devices/platform");
        let mut dirs = vec![platform.clone()];
        for d in read_dir_sorted(&platform) {
            dirs.push(d.clone());
            dirs.extend(read_dir_sorted(&d));
        }
        dirs.iter()
            .filter(|d| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with("firmware"))
            })
            .find_map(|d| {
                let text = read_small(&d.join("get_throttled"))?;
                u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
            })
    }

    /// The `rpi_volt` hwmon device's `in0_lcrit_alarm` (Linux `drivers/hwmon/raspberrypi-hwmon.c`,
    /// `rpi_hwmon_probe` registers the name "rpi_volt"; the alarm is 1 while under-voltage lasts).
    fn undervoltage_alarm(&self) -> Option<bool> {
        read_dir_sorted(&self.path("sys/class/hwmon"))
            .into_iter()
            .find(|d| read_small(&d.join("name")).is_some_and(|n| n.trim() == "rpi_volt"))
            .and_then(|d| read_small(&d.join("in0_lcrit_alarm")))
            .map(|v| v.trim() == "1")
    }

    /// The last mount on `/` in `/proc/self/mountinfo` (what is mounted over the initial root), read
    /// by its file system's options, after the ` - ` (proc(5)): whether the file system itself is
    /// read-only (`mount -o remount,ro /`, or ext4's `errors=remount-ro`). The mount's own options say
    /// "ro" inside herd.service whatever the card's state: `ProtectSystem=strict` puts a read-only
    /// bind of `/` over the agent's view.
    fn root_mount(&self) -> Option<Mount> {
        let text = read_small(&self.path("proc/self/mountinfo"))?;
        text.lines().rev().find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let mount: Vec<&str> = mount.split_whitespace().collect();
            let fs: Vec<&str> = fs.split_whitespace().collect();
            (mount.len() >= 6 && mount[4] == "/" && fs.len() >= 3 && fs[0] != "rootfs").then(|| {
                Mount {
                    device: fs[1].to_string(),
                    fstype: fs[0].to_string(),
                    read_only: fs[2].split(',').any(|o| o == "ro"),
                }
            })
        })
    }

    /// The root file system's block device name (`mmcblk0p2`): from the mount, or, for `/dev/root`,
    /// the only ext4 file system the kernel lists.
    fn root_device(&self, m: &Mount) -> Option<String> {
        let name = m.device.strip_prefix("/dev/")?;
        if name != "root" {
            return Some(name.to_string());
        }
        let ext4: Vec<_> = read_dir_sorted(&self.path("sys/fs/ext4"))
            .into_iter()
            .filter(|d| d.join("errors_count").exists())
            .collect();
        match ext4.as_slice() {
            [one] => one.file_name().map(|n| n.to_string_lossy().into_owned()),
            _ => None,
        }
    }

    /// ext4's `errors_count` for the root file system (`/sys/fs/ext4/<device>/`).
    fn ext4_errors(&self, m: &Mount) -> Option<u64> {
        if m.fstype != "ext4" {
            return None;
        }
        let dev = self.root_device(m)?;
        read_small(&self.path(&format!("sys/fs/ext4/{dev}/errors_count")))?
            .trim()
            .parse()
            .ok()
    }

    /// Bytes written to the disk holding the root file system: field 7 of `/sys/block/<disk>/stat`,
    /// in 512-byte sectors whatever the device (Linux `Documentation/block/stat.rst`).
    fn disk_written(&self, m: Option<&Mount>) -> Option<u64> {
        let part = self.root_device(m?)?;
        // The disk is the partition's parent in sysfs (`mmcblk0p2` under `mmcblk0`).
        let disk = read_dir_sorted(&self.path("sys/block"))
            .into_iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .find(|d| *d == part || self.path(&format!("sys/block/{d}/{part}")).is_dir())?;
        let stat = read_small(&self.path(&format!("sys/block/{disk}/stat")))?;
        let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
        Some(sectors * 512)
    }

    /// Bytes the agent caused to be written (`write_bytes` of `/proc/self/io`).
    fn agent_written(&self) -> Option<u64> {
        read_small(&self.path("proc/self/io"))?
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Writes per hour over the readings of the last hour (once a minute of them is kept).
    fn writes(&mut self, now: Instant, m: Option<&Mount>) -> (Option<u64>, Option<u64>) {
        let reading = (now, self.disk_written(m), self.agent_written());
        self.writes.push_back(reading);
        while self
            .writes
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t) > WRITES_WINDOW)
        {
            self.writes.pop_front();
        }
        let (first, last) = (self.writes.front().expect("pushed"), reading);
        let span = last.0.duration_since(first.0);
        if span < WRITES_MIN {
            return (None, None);
        }
        let rate = |a: Option<u64>, b: Option<u64>| {
            let d = b?.checked_sub(a?)?;
            Some((d as f64 * 3600.0 / span.as_secs_f64()) as u64)
        };
        (rate(first.1, last.1), rate(first.2, last.2))
    }

    /// The Pi 4/5 bootloader's build time: a 32-bit big-endian number of seconds in the device tree
    /// (`/proc/device-tree/chosen/bootloader/build-timestamp`, which rpi-eeprom-update reads).
    fn bootloader(&self) -> Option<u64> {
        let bytes =
            std::fs::read(self.path("proc/device-tree/chosen/bootloader/build-timestamp")).ok()?;
        let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        Some(u64::from(u32::from_be_bytes(b))).filter(|t| *t > 0)
    }
}

impl Default for HealthReader {
    fn default() -> Self {
        HealthReader::new()
    }
}

struct Mount {
    device: String,
    fstype: String,
    read_only: bool,
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A small kernel file's text (sysfs and procfs files are read whole; at most 64 KiB here).
impl HealthReader {
    /// Whether systemd-timesyncd has synchronised the clock since boot: it touches
    /// `/run/systemd/timesync/synchronized` on each synchronisation (systemd-time-wait-sync.service(8),
    /// FILES, since systemd 239), in the directory its unit keeps while it runs
    /// (`RuntimeDirectory=systemd/timesync` in systemd-timesyncd.service). No such directory: no
    /// timesyncd here (another NTP client, a container), unknown. The kernel's own flag (`adjtimex`,
    /// what `timedatectl` reads) is out of reach: herd.service's `ProtectClock=yes` forbids the call
    /// outright, read-only or not, and the agent is killed for it.
    fn clock_synced(&self) -> Option<bool> {
        let dir = self.root.join("run/systemd/timesync");
        if !dir.is_dir() {
            return None;
        }
        Some(std::fs::symlink_metadata(dir.join("synchronized")).is_ok())
    }
}

fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 << 10)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// systemd-timesyncd running and synchronised since boot (its runtime directory and the file it
    /// touches), or running and not.
    fn timesyncd(root: &Path, synced: bool) {
        std::fs::create_dir_all(root.join("run/systemd/timesync")).unwrap();
        if synced {
            put(root, "run/systemd/timesync/synchronized", "");
        }
    }

    /// A Pi 4 on Raspberry Pi OS Bookworm (kernel 6.6): the firmware node `soc:firmware` under `soc`,
    /// hwmon0 the CPU's thermal zone and hwmon1 `rpi_volt`, the card as `mmcblk0`.
    fn pi4(root: &Path, throttled: &str, alarm: &str) {
        put(
            root,
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            throttled,
        );
        put(root, "sys/class/hwmon/hwmon0/name", "cpu_thermal\n");
        put(root, "sys/class/hwmon/hwmon1/name", "rpi_volt\n");
        put(root, "sys/class/hwmon/hwmon1/in0_lcrit_alarm", alarm);
        put(
            root,
            "proc/self/mountinfo",
            "23 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
             24 23 0:5 / /dev rw,relatime shared:2 - devtmpfs devtmpfs rw,size=1800000k\n\
             25 23 179:1 / /boot/firmware rw,relatime shared:3 - vfat /dev/mmcblk0p1 rw,fmask=0022\n",
        );
        put(root, "sys/fs/ext4/mmcblk0p2/errors_count", "0\n");
        std::fs::create_dir_all(root.join("sys/block/mmcblk0/mmcblk0p2")).unwrap();
        std::fs::create_dir_all(root.join("sys/block/mmcblk0/mmcblk0p1")).unwrap();
        put(
            root,
            "sys/block/mmcblk0/stat",
            "   24080     3893  1663298    91840     7391     4652   204800    50740        0    78816   142580\n",
        );
        put(root, "proc/self/io", "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 0\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n");
        put(
            root,
            "proc/device-tree/model",
            "Raspberry Pi 4 Model B Rev 1.4\0",
        );
        let ts = 1_713_139_200u32.to_be_bytes();
        let p = root.join("proc/device-tree/chosen/bootloader/build-timestamp");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, ts).unwrap();
    }

    /// A Pi 5: hwmon for the CPU, the RP1's ADC, `rpi_volt` and the fan, the firmware node elsewhere and
    /// without `get_throttled` (as on kernels that dropped the deprecated file), the root mounted as
    /// `/dev/root` (a `root=/dev/mmcblk0p2` command line).
    fn pi5(root: &Path, alarm: &str, mount_opts: &str) {
        put(root, "sys/class/hwmon/hwmon0/name", "cpu_thermal\n");
        put(root, "sys/class/hwmon/hwmon1/name", "rp1_adc\n");
        put(root, "sys/class/hwmon/hwmon2/name", "rpi_volt\n");
        put(root, "sys/class/hwmon/hwmon2/in0_lcrit_alarm", alarm);
        put(root, "sys/class/hwmon/hwmon3/name", "pwmfan\n");
        std::fs::create_dir_all(root.join("sys/devices/platform/axi/1000120000.pcie")).unwrap();
        put(
            root,
            "proc/self/mountinfo",
            &format!(
                "22 1 179:2 / / {mount_opts} shared:1 - ext4 /dev/root {mount_opts}\n\
                 23 22 0:21 / /proc rw shared:2 - proc proc rw\n"
            ),
        );
        put(root, "sys/fs/ext4/mmcblk0p2/errors_count", "7\n");
        std::fs::create_dir_all(root.join("sys/fs/ext4/features")).unwrap();
        std::fs::create_dir_all(root.join("sys/block/mmcblk0/mmcblk0p2")).unwrap();
        put(
            root,
            "sys/block/mmcblk0/stat",
            "1 2 3 4 5 6 1000 8 9 10 11 12 13 14 15 16 17\n",
        );
        put(root, "proc/self/io", "write_bytes: 0\n");
    }

    #[test]
    fn a_pi4_reads_the_firmware_bits_and_the_alarm() {
        let dir = tempfile::tempdir().unwrap();
        // 0x50005: under-voltage and throttled now, both since boot.
        pi4(dir.path(), "50005\n", "1\n");
        timesyncd(dir.path(), true);
        let mut r = HealthReader::at(dir.path().into());
        let h = r.read(Instant::now());
        let both = Flag {
            now: true,
            since_boot: true,
        };
        assert_eq!(h.undervoltage, Some(both));
        assert_eq!(h.throttled, Some(both));
        assert_eq!(h.capped, Some(Flag::default()));
        assert_eq!(h.soft_temp, Some(Flag::default()));
        assert_eq!(h.read_only, Some(false));
        assert_eq!(h.fs_errors, Some(0));
        assert_eq!(h.clock_synced, Some(true));
        assert_eq!(h.clock_error_ms, None);
        assert_eq!(h.bootloader, Some(1_713_139_200));
        assert_eq!(h.writes_per_hour, None, "not a minute of readings yet");
        // The hwmon driver clears the sticky bits every 2 s: the agent remembers the alarm.
        put(
            dir.path(),
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            "0\n",
        );
        put(dir.path(), "sys/class/hwmon/hwmon1/in0_lcrit_alarm", "0\n");
        let h = r.read(Instant::now());
        assert_eq!(
            h.undervoltage,
            Some(Flag {
                now: false,
                since_boot: true
            })
        );
        assert_eq!(h.throttled, Some(Flag::default()));
    }

    #[test]
    fn writes_are_a_rate_over_the_last_hour() {
        let dir = tempfile::tempdir().unwrap();
        pi4(dir.path(), "0\n", "0\n");
        timesyncd(dir.path(), true);
        let mut r = HealthReader::at(dir.path().into());
        let t0 = Instant::now();
        r.read(t0);
        // 204800 sectors -> 204800 + 7200 sectors (3,686,400 bytes) in 2 minutes.
        put(
            dir.path(),
            "sys/block/mmcblk0/stat",
            "24080 3893 1663298 91840 7391 4652 212000 50740 0 78816 142580\n",
        );
        put(dir.path(), "proc/self/io", "write_bytes: 1052672\n");
        let h = r.read(t0 + Duration::from_secs(120));
        assert_eq!(h.writes_per_hour, Some(7200 * 512 * 30));
        assert_eq!(h.agent_writes_per_hour, Some((1_052_672 - 4096) * 30));
    }

    #[test]
    fn a_pi5_has_the_alarm_only_and_dev_root() {
        let dir = tempfile::tempdir().unwrap();
        pi5(dir.path(), "0\n", "ro,relatime");
        timesyncd(dir.path(), false);
        let mut r = HealthReader::at(dir.path().into());
        let h = r.read(Instant::now());
        assert_eq!(h.undervoltage, Some(Flag::default()));
        assert_eq!(
            h.throttled, None,
            "no firmware bits on this kernel: unknown"
        );
        assert_eq!(h.capped, None);
        assert_eq!(h.read_only, Some(true));
        assert_eq!(h.fs_errors, Some(7), "found through /dev/root");
        assert_eq!(h.clock_synced, Some(false));
        assert_eq!(h.clock_error_ms, None);
        assert_eq!(h.bootloader, None);
    }

    /// Inside herd.service, `ProtectSystem=strict` mounts a read-only bind of `/` over the agent's view
    /// (systemd's src/core/namespace.c makes every path of the hierarchy read-only): the card's root is
    /// still writable, and only the file system's own options say so.
    #[test]
    fn the_sandboxs_read_only_view_is_not_a_read_only_card() {
        let dir = tempfile::tempdir().unwrap();
        let sandboxed = |fs_opts: &str| {
            format!(
                "23 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
                 312 290 179:2 / / ro,noatime master:1 - ext4 /dev/mmcblk0p2 {fs_opts}\n"
            )
        };
        put(dir.path(), "proc/self/mountinfo", &sandboxed("rw"));
        let mut r = HealthReader::at(dir.path().into());
        assert_eq!(r.read(Instant::now()).read_only, Some(false));
        put(
            dir.path(),
            "proc/self/mountinfo",
            &sandboxed("ro,errors=remount-ro"),
        );
        assert_eq!(r.read(Instant::now()).read_only, Some(true));
    }

    #[test]
    fn a_machine_without_the_sources_says_unknown() {
        let dir = tempfile::tempdir().unwrap();
        // QEMU's virt board: a thermal-less hwmon-less tree, root on virtio.
        put(
            dir.path(),
            "proc/self/mountinfo",
            "21 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n",
        );
        put(dir.path(), "sys/class/hwmon/hwmon0/name", "virtio\n");
        let mut r = HealthReader::at(dir.path().into());
        let h = r.read(Instant::now());
        assert_eq!(h.undervoltage, None);
        assert_eq!(h.throttled, None);
        assert_eq!(h.fs_errors, None, "no sys/fs/ext4 entry");
        assert_eq!(h.read_only, Some(false));
        assert_eq!(h.clock_synced, None);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            HealthReader::at(empty.path().into()).read(Instant::now()),
            Health::default()
        );
    }
}
