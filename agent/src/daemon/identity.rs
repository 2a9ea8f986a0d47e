//! A card's identity. Every card of a cluster is flashed from one image, so nothing in the image may
//! name the node: at its first start a node makes its own keys (a random secret, `node.key` in its state
//! directory, readable by the agent only), and its node id is a hash of their public halves, so no other
//! node, not even one holding the cluster key, can speak for it (see `gossip::wire::keys`). The host
//! name, when the image asks for one (`hostname_template`), is derived from that id by `herd
//! set-hostname`, which a first-boot unit runs before the network and avahi-daemon come up, and which
//! therefore makes the key when the agent has not run yet.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;

use crate::config::hostname::check_hostname;
use crate::files::{read_state, write_atomic, write_private, StateFileError};
use crate::gossip::{NodeId, NodeKey};

/// The node's keys in `state_dir`, made (and stored, mode 0600) when there are none yet; true when they
/// were made now. A file that is not a key (a link, a FIFO, garbage) stops the start with its name: a
/// new key would be a new node.
pub fn node_key(state_dir: &Path) -> anyhow::Result<(NodeKey, bool)> {
    let path = state_dir.join("node.key");
    if let Some(bytes) = read_state(&path, 256)? {
        let key = NodeKey::from_base64(&String::from_utf8_lossy(&bytes)).with_context(|| {
            format!(
                "{}: not a node key (32 bytes in base64); move it aside to start this card as a \
                     new node",
                path.display()
            )
        })?;
        return Ok((key, false));
    }
    // The agent's own directory (systemd makes it, 0700), or made here for it by `herd set-hostname`
    // before the agent first runs: root's then, and systemd hands it to the agent's user at its start.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("state_dir: cannot create {}", state_dir.display()))?;
    let key = NodeKey::generate(&mut rand::rngs::OsRng);
    let text = base64::engine::general_purpose::STANDARD.encode(key.seed());
    write_private(&path, &format!("{text}\n"))?;
    Ok((key, true))
}

/// The node id of the agent keeping its state in `state_dir` on the machine whose file system is at
/// `root` ("/" but in tests), its key made now if the agent never ran; true when it was.
pub fn current_id(root: &Path, state_dir: &Path) -> anyhow::Result<(NodeId, bool)> {
    let (key, made) = node_key(&under(root, state_dir))?;
    Ok((key.id(), made))
}

/// `root` + an absolute path.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

use crate::gossip::wire::MAX_GENERATION;

/// 2025-01-01T00:00:00Z, where generations start counting.
const GENERATION_EPOCH: u64 = 1_735_689_600;

/// The node's persistent identity: its keys (and the id they name), which never change, and a
/// generation that grows on every start.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: NodeKey,
    pub id: NodeId,
    pub generation: u64,
}

impl Identity {
    /// Reads the node's keys from `state_dir/node.key` (making them the first time) and stores a new
    /// generation, `max(previous + 1, seconds since 2025-01-01)`: the clock alone would not do on a Pi,
    /// which has no real-time clock and may boot with a time older than its last run, and the clock keeps
    /// the generation growing when the generation file is lost. Counting from 2025 rather than 1970 keeps
    /// generations at four varint bytes until 2033: every digest entry carries one.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Identity> {
        let (key, made) = node_key(state_dir)?;
        let id = key.id();
        if made {
            // An agent from before per-node keys named the node after the machine-id (`node-id`).
            let before = read_state(&state_dir.join("node-id"), 64)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).trim().to_string());
            match before {
                Some(old) => tracing::warn!(
                    %id,
                    old,
                    "this node's id changes from {old} to {id}: node ids are now named by each \
                     node's own keys, made now (gossip protocol 3); peers will see {old} leave"
                ),
                None => tracing::info!(%id, "first start: this node's keys made, node id {id}"),
            }
        }
        let gen_path = state_dir.join("generation");
        // Carry on with the clock when the file is corrupt, or a link or not a file at all (it is
        // replaced below): should that be behind what peers last saw of this node, they gossip the
        // newer generation back, signed by this node's key, and the node refutes it by going above it.
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
        Ok(Identity {
            key,
            id,
            generation,
        })
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
    let (id, made) = current_id(root, &config.state_dir)?;
    let name = HostnameTemplate::parse(&config.hostname_template)?.render(id)?;
    set_hostname(root, &name)?;
    let mut said = if made {
        format!(
            "host name set to {name} (node id {id}, of this node's keys, made now in {})",
            config.state_dir.display()
        )
    } else {
        format!("host name set to {name} (node id {id})")
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

    #[test]
    fn the_id_is_the_keys_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let a = root_with(&[]);
        let b = root_with(&[]);
        let state = Path::new(STATE);
        // set-hostname runs before the agent ever did: it makes the key.
        let (ida, made) = current_id(a.path(), state).unwrap();
        assert!(made);
        assert_eq!(current_id(a.path(), state).unwrap(), (ida, false), "kept");
        assert_ne!(
            current_id(b.path(), state).unwrap().0,
            ida,
            "two cards, two ids"
        );
        let file = a.path().join("var/lib/herd/node.key");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key is its owner's alone");
        // The agent then finds the same key, so the same id the host name was made from.
        let agent = Identity::load_or_create(&a.path().join("var/lib/herd")).unwrap();
        assert_eq!(agent.id, ida);
        assert_eq!(agent.key.id(), ida);
    }

    #[test]
    fn a_key_file_that_is_not_a_key_stops_the_start_with_its_name() {
        let root = root_with(&[("/var/lib/herd/node.key", "garbage\n")]);
        let e = format!(
            "{:#}",
            current_id(root.path(), Path::new(STATE)).unwrap_err()
        );
        assert!(
            e.contains("node.key") && e.contains("not a node key"),
            "{e}"
        );
        // A link in its place is refused, not followed.
        let root = root_with(&[("/elsewhere", "x")]);
        std::fs::create_dir_all(root.path().join("var/lib/herd")).unwrap();
        std::os::unix::fs::symlink(
            root.path().join("elsewhere"),
            root.path().join("var/lib/herd/node.key"),
        )
        .unwrap();
        let e = format!(
            "{:#}",
            current_id(root.path(), Path::new(STATE)).unwrap_err()
        );
        assert!(e.contains("symbolic link"), "{e}");
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
    fn an_agent_from_before_keys_gets_a_new_id_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-id"), "00000000000000aa\n").unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        assert_ne!(a.id, NodeId(0xaa));
        assert_eq!(Identity::load_or_create(dir.path()).unwrap().id, a.id);
    }
}
