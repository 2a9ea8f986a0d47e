//! A card's identity. Every card of a cluster is flashed from one image, so nothing in the image may
//! name the node: the node id is derived at first start from what makes this machine unique (systemd's
//! machine-id, made at first boot; else the board's serial number; else chance), and the host name, when
//! the image asks for one (`hostname_template`), is derived from that id by `herd set-hostname`, which a
//! first-boot unit runs before the network and avahi-daemon come up.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::config::hostname::check_hostname;
use crate::files::{read_state, write_atomic, StateFileError};
use crate::gossip::NodeId;

/// Where a node id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `/etc/machine-id`.
    MachineId,
    /// The board's serial number (device tree, or `Serial` in `/proc/cpuinfo` on a Raspberry Pi).
    BoardSerial,
    /// Neither was there.
    Random,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::MachineId => "the machine-id",
            Origin::BoardSerial => "the board serial number",
            Origin::Random => "chance (no machine-id, no board serial)",
        })
    }
}

/// Derives the node id of the agent keeping its state in `state_dir` on the machine whose file system is
/// at `root` ("/" but in tests). Derived ids are a hash of the source and the state directory, never the
/// source itself (the machine-id is confidential, machine-id(5)); the state directory keeps apart agents
/// that share a machine (tests, benchmarks, several clusters on one host).
pub fn derive_id(root: &Path, state_dir: &Path) -> (NodeId, Origin) {
    let dir = state_dir.to_string_lossy();
    if let Some(id) = machine_id(root) {
        return (hash_id("machine-id", &id, &dir), Origin::MachineId);
    }
    if let Some(serial) = board_serial(root) {
        return (hash_id("serial", &serial, &dir), Origin::BoardSerial);
    }
    (NodeId(rand::random()), Origin::Random)
}

/// The node id the agent uses: the one persisted in `state_dir/node-id` if there is one, else the one
/// it will derive at its first start.
pub fn current_id(root: &Path, state_dir: &Path) -> anyhow::Result<(NodeId, Option<Origin>)> {
    let path = under(root, &state_dir.join("node-id"));
    match read_state(&path, 64)? {
        Some(bytes) => {
            let id = String::from_utf8_lossy(&bytes)
                .trim()
                .parse::<NodeId>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok((id, None))
        }
        None => {
            let (id, origin) = derive_id(root, state_dir);
            Ok((id, Some(origin)))
        }
    }
}

fn hash_id(kind: &str, value: &str, state_dir: &str) -> NodeId {
    let mut h = Sha256::new();
    h.update(b"herd node id v1\0");
    for part in [kind, value, state_dir] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    let digest = h.finalize();
    NodeId(u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")))
}

/// `root` + an absolute path.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The machine-id when systemd has made one: 32 lower-case hex digits, not all zero. An image ships it
/// empty (Bookworm) or `uninitialized` (Trixie), which does not count.
fn machine_id(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(under(root, Path::new("/etc/machine-id"))).ok()?;
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

/// The board's serial number: the device tree's `serial-number`, or the `Serial` line of
/// `/proc/cpuinfo` (Raspberry Pi kernels). All-zero serials (QEMU, some boards) do not count.
fn board_serial(root: &Path) -> Option<String> {
    let dt = std::fs::read(under(
        root,
        Path::new("/sys/firmware/devicetree/base/serial-number"),
    ))
    .ok()
    .map(|b| {
        String::from_utf8_lossy(&b)
            .trim_end_matches('\0')
            .trim()
            .to_string()
    });
    let cpuinfo = || {
        let text = std::fs::read_to_string(under(root, Path::new("/proc/cpuinfo"))).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "Serial").then(|| v.trim().to_string())
        })
    };
    dt.filter(|s| useful_serial(s))
        .or_else(|| cpuinfo().filter(|s| useful_serial(s)))
}

fn useful_serial(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().any(|b| b.is_ascii_alphanumeric() && b != b'0')
}

use crate::gossip::wire::MAX_GENERATION;

/// 2025-01-01T00:00:00Z, where generations start counting.
const GENERATION_EPOCH: u64 = 1_735_689_600;

/// The node's persistent identity: an id that never changes and a generation that grows on every start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub id: NodeId,
    pub generation: u64,
}

impl Identity {
    /// Reads the node id from `state_dir/node-id` (deriving it the first time: `identity::derive_id`) and
    /// stores a new generation, `max(previous + 1, seconds since 2025-01-01)`: the clock alone would not do on a Pi,
    /// which has no real-time clock and may boot with a time older than its last run, and the clock keeps
    /// the generation growing when the state directory is lost (a re-flashed card). Counting from 2025
    /// rather than 1970 keeps generations at four varint bytes until 2033: every digest entry carries one.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Identity> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("state_dir: cannot create {}", state_dir.display()))?;
        let id_path = state_dir.join("node-id");
        // A node id is 16 hex digits; a link, a FIFO or a large file there is refused with its name.
        let id = match read_state(&id_path, 64)? {
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .trim()
                .parse::<NodeId>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", id_path.display()))?,
            None => {
                let (id, origin) = derive_id(Path::new("/"), state_dir);
                tracing::info!(%id, "first start: node id derived from {origin}");
                write_atomic(&id_path, &format!("{id}\n"))?;
                id
            }
        };
        let gen_path = state_dir.join("generation");
        // Carry on with the clock when the file is corrupt, or a link or not a file at all (it is
        // replaced below): should that be behind what peers last saw of this node, they gossip the
        // newer generation back and the node refutes it by going above it.
        let corrupt = |why: String| {
            tracing::warn!(
                file = %gen_path.display(),
                why,
                "the generation file is corrupt; starting from the clock (peers will correct it)"
            );
            0
        };
        let previous = match read_state(&gen_path, 64) {
            Ok(Some(bytes)) => match String::from_utf8_lossy(&bytes).trim().parse::<u64>() {
                Ok(g) if g < MAX_GENERATION => g,
                _ => corrupt("not a generation".into()),
            },
            Ok(None) => 0,
            // Unreadable is not corrupt: starting with a guess could put the node behind its own past.
            Err(e @ StateFileError::Io(..)) => return Err(e.into()),
            Err(e) => corrupt(e.to_string()),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(GENERATION_EPOCH))
            .unwrap_or(0);
        let generation = (previous + 1).max(now).min(MAX_GENERATION - 1);
        store_generation(state_dir, generation)?;
        Ok(Identity { id, generation })
    }
}

/// Records `generation` as the node's latest, so the next start goes above it (also after a refutation
/// raised it while running).
pub fn store_generation(state_dir: &Path, generation: u64) -> anyhow::Result<()> {
    write_atomic(&state_dir.join("generation"), &format!("{generation}\n"))
}

/// Sets this machine's host name to `name`: `/etc/hostname`, the `127.0.1.1` line of `/etc/hosts` (so
/// `sudo` and friends resolve it), then the kernel's. Files are replaced atomically.
pub fn set_hostname(root: &Path, name: &str) -> anyhow::Result<()> {
    check_hostname(name)?;
    write_atomic(
        &under(root, Path::new("/etc/hostname")),
        &format!("{name}\n"),
    )?;
    let hosts_path = under(root, Path::new("/etc/hosts"));
    let hosts = match std::fs::read_to_string(&hosts_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context(format!("cannot read {}", hosts_path.display())),
    };
    write_atomic(&hosts_path, &with_hosts_line(&hosts, name))?;
    if root == Path::new("/") {
        nix::unistd::sethostname(name).context("cannot set the kernel's host name")?;
    }
    Ok(())
}

/// `herd set-hostname [--once DONE]`, run as root by herd-hostname.service: names this machine from the
/// configuration's `hostname_template` and its node id. With `once`, only if `DONE` does not exist, which
/// it then creates (unless a first-boot script runs on this boot and may rename the card after us: see
/// [`first_boot_script_pending`]). Returns what it did, for the journal.
pub fn name_this_card(config: &Path, once: Option<&Path>) -> anyhow::Result<String> {
    use crate::config::{Config, HostnameTemplate};
    if let Some(done) = once.filter(|d| d.exists()) {
        return Ok(format!(
            "host name already set once ({} exists): left alone",
            done.display()
        ));
    }
    let config = Config::load(config)?;
    if config.hostname_template.is_empty() {
        return Ok("hostname_template is empty: host name left alone".into());
    }
    let root = Path::new("/");
    let (id, origin) = current_id(root, &config.state_dir)?;
    let name = HostnameTemplate::parse(&config.hostname_template)?.render(id)?;
    set_hostname(root, &name)?;
    let mut said = match origin {
        Some(origin) => format!("host name set to {name} (node id {id}, from {origin})"),
        None => format!("host name set to {name} (node id {id})"),
    };
    if let Some(done) = once {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if first_boot_script_pending(&cmdline) {
            said.push_str(&format!(
                "\na first-boot script runs on this boot (systemd.run= on the kernel command line, as \
                 Imager's firstrun.sh) and may rename the card: {name} is set again on the next boot"
            ));
        } else {
            write_atomic(done, &format!("{name}\n"))?;
        }
    }
    Ok(said)
}

/// Whether this boot runs a first-boot script that may rename the card after herd has named it: Imager's
/// `firstrun.sh` on Bookworm-style images is started with `systemd.run=/boot/firstrun.sh` on the kernel
/// command line (rpi-imager `src/downloadthread.cpp` line 2590, commit 72ad1179) and, among other
/// things, sets the host name Imager was given; it then removes the token and reboots. herd names the
/// card on that boot too but sets it "once" only on the next, so its name is the one that stays, as on a
/// cloud-init base.
pub fn first_boot_script_pending(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|t| {
        t.strip_prefix("systemd.run=")
            .is_some_and(|v| !v.is_empty())
    })
}

/// `hosts` with its `127.0.1.1` line naming `name` (added when missing); every other line kept.
fn with_hosts_line(hosts: &str, name: &str) -> String {
    let line = format!("127.0.1.1\t{name}");
    let mut found = false;
    let mut out: Vec<String> = hosts
        .lines()
        .map(|l| {
            if l.split_whitespace().next() == Some("127.0.1.1") && !found {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(line);
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagers_firstrun_boot_is_recognised_by_its_kernel_command_line() {
        // The tokens Imager appends (downloadthread.cpp line 2590, commit 72ad1179).
        let firstrun = "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootfstype=ext4 fsck.repair=yes \
                        rootwait systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot \
                        systemd.unit=kernel-command-line.target\n";
        assert!(first_boot_script_pending(firstrun));
        // After it: firstrun.sh removes its tokens (sed 's| systemd.run.*||g').
        let after = "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootfstype=ext4 fsck.repair=yes rootwait\n";
        assert!(!first_boot_script_pending(after));
        assert!(!first_boot_script_pending(
            "quiet systemd.run_success_action=reboot"
        ));
        assert!(!first_boot_script_pending(""));
    }

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    const STATE: &str = "/var/lib/herd";

    fn derive(root: &Path) -> (NodeId, Origin) {
        derive_id(root, Path::new(STATE))
    }

    #[test]
    fn id_comes_from_the_machine_id_then_the_serial_then_chance() {
        let a = root_with(&[("/etc/machine-id", "0123456789abcdef0123456789abcdef\n")]);
        let b = root_with(&[("/etc/machine-id", "fedcba9876543210fedcba9876543210\n")]);
        let (ida, origin) = derive(a.path());
        assert_eq!(origin, Origin::MachineId);
        assert_eq!(derive(a.path()).0, ida, "stable");
        assert_ne!(derive(b.path()).0, ida, "two machines, two ids");
        let (other_dir, _) = derive_id(a.path(), Path::new("/tmp/agent2"));
        assert_ne!(other_dir, ida, "two agents on one machine, two ids");
        // The id is a hash, not the machine-id's digits.
        assert!(!"0123456789abcdef0123456789abcdef".contains(&ida.to_string()));

        // An image's unset machine-id does not count; the Pi's serial does.
        let pi = root_with(&[
            ("/etc/machine-id", "uninitialized\n"),
            (
                "/proc/cpuinfo",
                "processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000abcdef01\n",
            ),
        ]);
        assert_eq!(derive(pi.path()).1, Origin::BoardSerial);
        let dt = root_with(&[
            ("/etc/machine-id", ""),
            (
                "/sys/firmware/devicetree/base/serial-number",
                "10000000abcdef01\0",
            ),
        ]);
        assert_eq!(derive(dt.path()), derive(pi.path()), "same serial, same id");

        let none = root_with(&[("/proc/cpuinfo", "Serial\t: 0000000000000000\n")]);
        let (r1, origin) = derive(none.path());
        assert_eq!(origin, Origin::Random);
        assert_ne!(derive(none.path()).0, r1);
    }

    #[test]
    fn current_id_prefers_the_persisted_one() {
        let root = root_with(&[
            ("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("/var/lib/herd/node-id", "00000000000000aa\n"),
        ]);
        let state = Path::new(STATE);
        assert_eq!(
            current_id(root.path(), state).unwrap(),
            (NodeId(0xaa), None)
        );
        std::fs::remove_file(root.path().join("var/lib/herd/node-id")).unwrap();
        let (id, origin) = current_id(root.path(), state).unwrap();
        assert_eq!(
            (id, origin),
            (derive(root.path()).0, Some(Origin::MachineId))
        );
    }

    #[test]
    fn set_hostname_rewrites_hostname_and_hosts() {
        let root = root_with(&[
            ("/etc/hostname", "raspberrypi\n"),
            (
                "/etc/hosts",
                "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n\n127.0.1.1\t\traspberrypi\n",
            ),
        ]);
        set_hostname(root.path(), "herd-3f2a").unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "herd-3f2a\n");
        assert_eq!(
            read("etc/hosts"),
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n\n127.0.1.1\therd-3f2a\n"
        );
        // No such line: it is added.
        std::fs::write(root.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        set_hostname(root.path(), "pi-1").unwrap();
        assert_eq!(read("etc/hosts"), "127.0.0.1 localhost\n127.0.1.1\tpi-1\n");
        assert!(set_hostname(root.path(), "bad name").is_err());
        assert_eq!(read("etc/hostname"), "pi-1\n", "a bad name changes nothing");
    }
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    #[test]
    fn identity_persists_and_generation_grows() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id, b.id);
        assert!(b.generation > a.generation);
        // A clock that went backwards (no RTC) still yields a larger generation.
        std::fs::write(dir.path().join("generation"), "99999999999\n").unwrap();
        let c = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(c.generation, 100_000_000_000);
    }

    #[test]
    fn corrupt_node_id_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-id"), "garbage").unwrap();
        let e = format!("{:#}", Identity::load_or_create(dir.path()).unwrap_err());
        assert!(e.contains("node-id") && e.contains("16 hex digits"), "{e}");
    }
}
