//! The card's root installer of `herd upgrade`: the one privileged step. `herd-upgrade.path` starts
//! `herd upgrade-apply` (root, sandboxed to the files below) when the agent hands over an artifact; it
//! trusts nothing the agent wrote: it checks the artifact again (signature with the key in
//! `/etc/herd/herd.toml`, cluster, hash, version), runs the new binary's `--version`, then swaps
//! binaries so that a power cut at any instant leaves a whole agent in place:
//!
//! 1. the new binary is written beside the old one (`.herd.new`, fsync);
//! 2. the running binary gets a second name, `herd.previous` (a hard link: the old agent is kept);
//! 3. `pending.json` records the swap (from, to, timeout, the peers that must see the new agent);
//! 4. `.herd.new` is renamed over `herd` (atomic) and herd.service restarts;
//! 5. the new agent is proven when every peer that is still alive sees it alive with the new version
//!    (each one's own API, asked by this installer); within the timeout the swap is kept, else
//!    `herd.previous` is renamed back over `herd` and herd.service restarts: no laptop, no network
//!    needed to roll back.
//!
//! At boot, `herd-upgrade-resume.service` runs `herd.previous upgrade-resume` (the binary that was
//! proven, never the one on trial) when `pending.json` exists: the swap had not happened (the old
//! agent runs: nothing to do), or the new agent gets its timeout again to prove itself. The outcome
//! is written to `status.json`, which the agent serves at `GET /api/v1/upgrade`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::gossip::Liveness;
use crate::model::upgrade::{Handoff, Outcome, Stage, MAX_ARTIFACT};
use crate::model::views::NodeView;
use crate::release::{self, Arch};

/// The root installer's directory (root's, world-readable): `pending.json` while a new agent proves
/// itself, `status.json` with the last outcome.
pub const INSTALLER_DIR: &str = "/var/lib/herd-upgrade";
pub const REQUEST: &str = "request.json";
pub const PENDING: &str = "pending.json";
pub const STATUS: &str = "status.json";
/// Reads a small file, or nothing (missing, too large, not text).
pub fn read_small(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(limit + 1).read_to_string(&mut text).ok()?;
    (text.len() as u64 <= limit).then_some(text)
}

/// The files the installer works on, and how it restarts the agent.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The agent's binary, `/usr/local/bin/herd`.
    pub bin: PathBuf,
    /// The previous agent, kept after a swap.
    pub previous: PathBuf,
    /// `/var/lib/herd-upgrade`: pending.json, status.json.
    pub dir: PathBuf,
    /// The agent's `STATE_DIR/upgrade`: request.json and the artifact.
    pub agent_dir: PathBuf,
    /// The command that restarts the agent.
    pub restart: Vec<String>,
}

impl Paths {
    /// A card's.
    pub fn card(config: &Config) -> Paths {
        Paths {
            bin: PathBuf::from("/usr/local/bin/herd"),
            previous: PathBuf::from("/usr/local/bin/herd.previous"),
            dir: PathBuf::from(INSTALLER_DIR),
            agent_dir: config.state_dir.join("upgrade"),
            restart: ["systemctl", "restart", "herd.service"]
                .map(String::from)
                .into(),
        }
    }

    fn sibling(&self, name: &str) -> PathBuf {
        self.bin.with_file_name(name)
    }
}

/// `pending.json`: a swap under way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub sha256: String,
    #[serde(default)]
    pub rollout: String,
    pub from: String,
    pub to: String,
    pub timeout_s: u64,
    pub peers: Vec<String>,
}

/// Whether the new agent has proven itself; `Err` says why not yet.
pub type Prover<'a> = dyn FnMut(&Pending) -> Result<(), String> + 'a;

/// `herd upgrade-apply`: takes the agent's request, checks, swaps, proves or rolls back.
pub fn apply(config: &Config, paths: &Paths, prove: &mut Prover) -> anyhow::Result<Outcome> {
    let request = paths.agent_dir.join(REQUEST);
    let text = read_small(&request, 1 << 20)
        .with_context(|| format!("no readable request at {}", request.display()))?;
    // Taken: a request is acted on once, whatever comes of it.
    std::fs::remove_file(&request)
        .with_context(|| format!("cannot remove {}", request.display()))?;
    let handoff: Handoff = match serde_json::from_str(&text)
        .map_err(|e| e.to_string())
        .and_then(|h: Handoff| h.check().map(|_| h))
    {
        Ok(h) => h,
        Err(e) => bail!("{}: not a valid request: {e}", request.display()),
    };
    let refuse = |reason: String| -> anyhow::Result<Outcome> {
        let outcome = Outcome {
            sha256: handoff.sha256.clone(),
            rollout: handoff.rollout.clone(),
            from: crate::VERSION.to_string(),
            to: String::new(),
            stage: Stage::Refused,
            reason: Some(reason.clone()),
            at: now(),
        };
        report(paths, &outcome)?;
        eprintln!("refused: {reason}");
        Ok(outcome)
    };
    if paths.dir.join(PENDING).exists() {
        return refuse("another upgrade is still proving itself on this card".into());
    }
    // Only the configuration's key, which root wrote: nothing in the agent's own (writable) state
    // may decide what root runs.
    let Some(key) = config.upgrade.key()? else {
        return refuse(
            "this card has no signing key (upgrade.public_key in /etc/herd/herd.toml, the \
             signing_public_key line of secrets/CLUSTER.toml)"
                .into(),
        );
    };
    let bytes = match read_artifact(&paths.agent_dir.join(format!("{}.herd", handoff.sha256))) {
        Ok(b) => b,
        Err(e) => return refuse(format!("{e:#}")),
    };
    if release::sha256_hex(&bytes) != handoff.sha256 {
        return refuse("the artifact file is not the one asked for".into());
    }
    let checked = release::open(&bytes, &key, &config.cluster).and_then(|a| {
        let arch = Arch::this_machine().ok_or(release::Refusal::NotAnArtifact)?;
        let binary = a.binary(arch)?;
        a.check_version(crate::VERSION, handoff.downgrade_permit.as_deref())?;
        Ok((a.manifest.version.clone(), binary))
    });
    let (to, binary) = match checked {
        Ok(x) => x,
        Err(r) => return refuse(r.to_string()),
    };
    // 1. The new binary beside the old one; it must run here and say the version it was signed as.
    let new = paths.sibling(".herd.new");
    write_executable(&new, binary)?;
    match version_of(&new) {
        Ok(v) if v == to => {}
        Ok(v) => {
            let _ = std::fs::remove_file(&new);
            return refuse(format!(
                "the new binary says it is version {v:?}, signed as {to:?}"
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&new);
            return refuse(format!("the new binary does not run on this card: {e}"));
        }
    }
    // 2. The running binary keeps a second name.
    let link = paths.sibling(".herd.previous.tmp");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(&paths.bin, &link)
        .with_context(|| format!("cannot link {} to {}", paths.bin.display(), link.display()))?;
    std::fs::rename(&link, &paths.previous)?;
    sync_dir(&paths.bin)?;
    // 3. The swap is recorded before it happens.
    std::fs::create_dir_all(&paths.dir)?;
    let pending = Pending {
        sha256: handoff.sha256.clone(),
        rollout: handoff.rollout.clone(),
        from: crate::VERSION.to_string(),
        to: to.clone(),
        timeout_s: handoff.timeout_s,
        peers: handoff.peers.clone(),
    };
    crate::files::write_atomic(&paths.dir.join(PENDING), &serde_json::to_string(&pending)?)?;
    report(paths, &outcome(&pending, Stage::Proving, None))?;
    // 4. The swap.
    std::fs::rename(&new, &paths.bin)
        .with_context(|| format!("cannot rename {} to {}", new.display(), paths.bin.display()))?;
    sync_dir(&paths.bin)?;
    println!(
        "installed {to} over {} (kept as {}); restarting the agent",
        pending.from,
        paths.previous.display()
    );
    restart(paths);
    // 5. Proven, or rolled back.
    settle(paths, &pending, prove)
}

/// `herd upgrade-resume` (at boot, by the previous binary): finishes a swap a power cut interrupted.
pub fn resume(paths: &Paths, prove: &mut Prover) -> anyhow::Result<Option<Outcome>> {
    let path = paths.dir.join(PENDING);
    let Some(text) = read_small(&path, 1 << 20) else {
        return Ok(None);
    };
    let pending: Pending = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            // Unreadable: the previous agent is the safe one.
            eprintln!("{}: {e}; going back to the previous agent", path.display());
            let p = Pending {
                sha256: String::new(),
                rollout: String::new(),
                from: String::new(),
                to: String::new(),
                timeout_s: 0,
                peers: vec![],
            };
            return rollback(paths, &p, "the record of the upgrade was damaged").map(Some);
        }
    };
    match version_of(&paths.bin) {
        Ok(v) if v == pending.from => {
            std::fs::remove_file(&path)?;
            let o = outcome(
                &pending,
                Stage::Interrupted,
                Some("the card restarted before the new agent was in place".into()),
            );
            report(paths, &o)?;
            println!(
                "the upgrade to {} never took place: {} runs",
                pending.to, pending.from
            );
            Ok(Some(o))
        }
        Ok(v) if v == pending.to => {
            println!(
                "the card restarted during the upgrade to {}: proving it again",
                pending.to
            );
            settle(paths, &pending, prove).map(Some)
        }
        Ok(v) => rollback(
            paths,
            &pending,
            &format!(
                "{} is version {v:?}, neither {} nor {}",
                paths.bin.display(),
                pending.from,
                pending.to
            ),
        )
        .map(Some),
        Err(e) => rollback(paths, &pending, &format!("the new agent does not run: {e}")).map(Some),
    }
}

/// Waits up to the timeout for the new agent to prove itself; keeps it or rolls back.
fn settle(paths: &Paths, pending: &Pending, prove: &mut Prover) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(pending.timeout_s);
    let mut last = String::new();
    loop {
        match prove(pending) {
            Ok(()) => {
                std::fs::remove_file(paths.dir.join(PENDING))?;
                sync_dir(&paths.dir.join(PENDING))?;
                let o = outcome(pending, Stage::Upgraded, None);
                report(paths, &o)?;
                println!("{} proven: every alive peer sees it; kept", pending.to);
                return Ok(o);
            }
            Err(why) => {
                if why != last {
                    println!("not proven yet: {why}");
                    last = why;
                }
            }
        }
        if Instant::now() >= deadline {
            return rollback(
                paths,
                pending,
                &format!("not proven within {} s: {last}", pending.timeout_s),
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn rollback(paths: &Paths, pending: &Pending, reason: &str) -> anyhow::Result<Outcome> {
    eprintln!("rolling back to {}: {reason}", pending.from);
    let tmp = paths.sibling(".herd.rollback");
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(&paths.previous, &tmp).with_context(|| {
        format!(
            "cannot link {} to {}",
            paths.previous.display(),
            tmp.display()
        )
    })?;
    std::fs::rename(&tmp, &paths.bin)?;
    sync_dir(&paths.bin)?;
    let o = outcome(pending, Stage::RolledBack, Some(reason.to_string()));
    report(paths, &o)?;
    std::fs::remove_file(paths.dir.join(PENDING))?;
    sync_dir(&paths.dir.join(PENDING))?;
    restart(paths);
    Ok(o)
}

fn outcome(p: &Pending, stage: Stage, reason: Option<String>) -> Outcome {
    Outcome {
        sha256: p.sha256.clone(),
        rollout: p.rollout.clone(),
        from: p.from.clone(),
        to: p.to.clone(),
        stage,
        reason,
        at: now(),
    }
}

fn report(paths: &Paths, o: &Outcome) -> anyhow::Result<()> {
    std::fs::create_dir_all(&paths.dir)?;
    crate::files::write_atomic(&paths.dir.join(STATUS), &serde_json::to_string(o)?)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the artifact the agent kept without following a link it may have planted.
fn read_artifact(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !f.metadata()?.is_file() {
        bail!("{} is not a file", path.display());
    }
    let mut bytes = Vec::new();
    f.take(MAX_ARTIFACT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ARTIFACT {
        bail!("{} is larger than {MAX_ARTIFACT} bytes", path.display());
    }
    Ok(bytes)
}

fn write_executable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn sync_dir(file: &Path) -> anyhow::Result<()> {
    let dir = file.parent().context("no directory")?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// What `BINARY --version` says (`herd X` → `X`), within 20 s.
pub fn version_of(bin: &Path) -> Result<String, String> {
    // A binary just written can be "busy" for a moment: a process forked elsewhere (another thread of
    // this program) holds the writer's descriptor until it execs (ETXTBSY). Asked again, it runs.
    let mut tries = 0;
    let mut child = loop {
        let spawned = Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.map_err(|e| format!("cannot run {}: {e}", bin.display()))?,
        }
    };
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} --version did not finish", bin.display()));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = (&mut o).take(4096).read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("{} --version failed ({status})", bin.display()));
    }
    out.trim()
        .strip_prefix("herd ")
        .map(str::to_string)
        .ok_or_else(|| format!("{} --version said {:?}", bin.display(), out.trim()))
}

fn restart(paths: &Paths) {
    let Some((program, args)) = paths.restart.split_first() else {
        return;
    };
    match Command::new(program).args(args).status() {
        Ok(s) if s.success() => {}
        // A new agent that fails to start is the prover's to judge.
        Ok(s) => eprintln!("{}: {s}", paths.restart.join(" ")),
        Err(e) => eprintln!("{}: {e}", paths.restart.join(" ")),
    }
}

/// The real proof: the local agent answers as the new version, and every peer of the list that is
/// still alive (as the new agent sees it) has told it, in a Syn sealed with the cluster key, that it holds
/// the new agent's generation (`knows_serving_node_as`). Only the local agent is asked: the token goes to
/// no address that gossip names, where a key holder could be listening.
pub fn prove_by_api(config: &Config) -> impl FnMut(&Pending) -> Result<(), String> {
    let token = config.api.token.as_ref().map(|t| t.0.clone());
    let local = config.api.local_url();
    move |pending: &Pending| {
        let mine =
            crate::client::Client::with_timeout(&local, token.clone(), Duration::from_secs(3))
                .and_then(|c| c.nodes())
                .map_err(|e| format!("the new agent does not answer ({e:#})"))?;
        check_proof(&mine, pending)
    }
}

/// Whether the new agent's member list `mine` proves `pending`: it is the new version, and each peer of
/// the list still alive knows it by its new generation.
fn check_proof(mine: &[NodeView], pending: &Pending) -> Result<(), String> {
    let me = mine
        .iter()
        .find(|n| n.is_self)
        .ok_or("the new agent does not list itself")?;
    if me.version.as_deref() != Some(pending.to.as_str()) {
        return Err(format!("the agent answering is version {:?}", me.version));
    }
    let mut waiting = Vec::new();
    for peer in &pending.peers {
        let Some(p) = mine.iter().find(|n| &n.id == peer) else {
            waiting.push(format!("{peer} (not yet known to the new agent)"));
            continue;
        };
        match (p.state, p.knows_serving_node_as) {
            (Liveness::Dead | Liveness::Left, _) => {}
            (_, Some(g)) if g == me.generation => {}
            (_, Some(g)) => waiting.push(format!(
                "{} (holds this node's generation {g}, not {})",
                p.name, me.generation
            )),
            (_, None) => waiting.push(format!("{} (has not gossiped with it yet)", p.name)),
        }
    }
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(format!("waiting on {}", waiting.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proof reads only the new agent's list: each live peer must hold its new generation.
    #[test]
    fn the_proof_needs_every_live_peer_to_hold_the_new_generation() {
        let view = |id: &str, state: &str, is_self: bool, knows: Option<u64>| -> NodeView {
            serde_json::from_value(serde_json::json!({
                "id": id, "name": format!("n-{id}"), "state": state, "is_self": is_self,
                "generation": 7, "phi": 0.0, "threshold": 8.0, "last_heard_ms": 0,
                "services": [], "version": "2.0.0", "knows_serving_node_as": knows
            }))
            .unwrap()
        };
        let pending = Pending {
            sha256: "ab".repeat(32),
            rollout: String::new(),
            from: "1.0.0".into(),
            to: "2.0.0".into(),
            timeout_s: 60,
            peers: vec!["b".into(), "c".into(), "d".into()],
        };
        let me = view("a", "alive", true, None);
        let mut list = vec![
            me.clone(),
            view("b", "alive", false, Some(7)),
            view("c", "alive", false, Some(6)),
            view("d", "dead", false, None),
        ];
        let e = check_proof(&list, &pending).unwrap_err();
        assert!(
            e.contains("n-c (holds this node's generation 6, not 7)"),
            "{e}"
        );
        assert!(!e.contains("n-b") && !e.contains("n-d"), "{e}");
        list[2] = view("c", "suspect", false, None);
        let e = check_proof(&list, &pending).unwrap_err();
        assert!(e.contains("n-c (has not gossiped"), "{e}");
        list[2] = view("c", "alive", false, Some(7));
        assert_eq!(check_proof(&list, &pending), Ok(()));
        list.remove(1);
        let e = check_proof(&list, &pending).unwrap_err();
        assert!(e.contains("b (not yet known"), "{e}");
        let mut old = me;
        old.version = Some("1.0.0".into());
        assert!(check_proof(&[old], &pending)
            .unwrap_err()
            .contains("version"));
    }
    use crate::release::SigningKey;

    /// A card in a directory: `bin` is a script that says its version.
    struct Card {
        dir: tempfile::TempDir,
        paths: Paths,
        config: Config,
        key: SigningKey,
    }

    fn script(version: &str) -> Vec<u8> {
        format!("#!/bin/sh\necho herd {version}\n").into_bytes()
    }

    fn card() -> Card {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let seed = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let key = SigningKey::from_base64(&seed).unwrap();
        let paths = Paths {
            bin: dir.path().join("bin/herd"),
            previous: dir.path().join("bin/herd.previous"),
            dir: dir.path().join("installer"),
            agent_dir: dir.path().join("state/upgrade"),
            restart: vec!["true".into()],
        };
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(&paths.agent_dir).unwrap();
        write_executable(&paths.bin, &script(crate::VERSION)).unwrap();
        let config: Config = toml::from_str(&format!(
            "cluster = \"pis\"\n[gossip]\ninsecure = true\n[upgrade]\npublic_key = \"{}\"\n",
            key.public().to_base64()
        ))
        .unwrap();
        Card {
            dir,
            paths,
            config,
            key,
        }
    }

    impl Card {
        /// Hands over an artifact whose binary for this machine is `binary`.
        fn hand_over(&self, version: &str, binary: &[u8]) -> String {
            let arch = Arch::this_machine().unwrap();
            let a = release::pack(&self.key, "pis", version, &[(arch, binary)]).unwrap();
            let sha = release::sha256_hex(&a);
            std::fs::write(self.paths.agent_dir.join(format!("{sha}.herd")), &a).unwrap();
            let h = Handoff {
                sha256: sha.clone(),
                rollout: "be7e".into(),
                downgrade_permit: None,
                timeout_s: 10,
                peers: vec![],
            };
            std::fs::write(
                self.paths.agent_dir.join(REQUEST),
                serde_json::to_string(&h).unwrap(),
            )
            .unwrap();
            sha
        }

        fn version(&self) -> String {
            version_of(&self.paths.bin).unwrap()
        }

        /// Puts `permit` in the handed-over request, as the agent (or anyone who can write its
        /// state) would.
        fn write_permit(&self, permit: &str) {
            let path = self.paths.agent_dir.join(REQUEST);
            let mut h: Handoff =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            h.downgrade_permit = Some(permit.into());
            std::fs::write(&path, serde_json::to_string(&h).unwrap()).unwrap();
        }
    }

    #[test]
    fn a_proven_agent_is_kept_and_the_previous_one_too() {
        let c = card();
        c.hand_over("99.0", &script("99.0"));
        let mut seen = None;
        let o = apply(&c.config, &c.paths, &mut |p: &Pending| {
            seen = Some(p.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(o.stage, Stage::Upgraded, "{o:?}");
        assert_eq!(c.version(), "99.0");
        assert_eq!(version_of(&c.paths.previous).unwrap(), crate::VERSION);
        assert!(!c.paths.dir.join(PENDING).exists());
        assert!(!c.paths.agent_dir.join(REQUEST).exists());
        assert_eq!(seen.unwrap().from, crate::VERSION);
        assert_eq!(o.rollout, "be7e", "the report names the request");
        let status: Outcome =
            serde_json::from_str(&std::fs::read_to_string(c.paths.dir.join(STATUS)).unwrap())
                .unwrap();
        assert_eq!(status, o);
        let _ = &c.dir;
    }

    #[test]
    fn an_agent_that_does_not_prove_itself_is_rolled_back() {
        let c = card();
        c.hand_over("99.0", &script("99.0"));
        let mut tries = 0;
        let mut paths = c.paths.clone();
        // The timeout is 10 s: the prover says no until the clock runs out.
        paths.restart = vec!["true".into()];
        let o = apply(&c.config, &paths, &mut |_: &Pending| {
            tries += 1;
            Err("peer x does not see it".into())
        })
        .unwrap();
        assert_eq!(o.stage, Stage::RolledBack);
        assert!(o.reason.unwrap().contains("peer x"));
        assert!(tries >= 5, "{tries}");
        assert_eq!(c.version(), crate::VERSION, "the old agent is back");
        assert!(!c.paths.dir.join(PENDING).exists());
    }

    #[test]
    fn the_installer_checks_everything_again() {
        let c = card();
        // A binary that does not say the version it was signed as.
        c.hand_over("99.0", &script("98.0"));
        let o = apply(&c.config, &c.paths, &mut |_: &Pending| Ok(())).unwrap();
        assert_eq!(o.stage, Stage::Refused);
        assert!(o.reason.unwrap().contains("98.0"));
        // Another key.
        c.hand_over("99.0", &script("99.0"));
        let mut config = c.config.clone();
        config.upgrade.public_key = SigningKey::generate().unwrap().public().to_base64();
        let o = apply(&config, &c.paths, &mut |_: &Pending| Ok(())).unwrap();
        assert_eq!(o.stage, Stage::Refused);
        assert!(o.reason.unwrap().contains("signing key"));
        // No key configured: a key in the agent's (writable) state directory is not one (issue 31, 3:
        // an unprivileged agent planted one, with a self-signed artifact, and root ran it).
        c.hand_over("99.0", &script("99.0"));
        std::fs::write(
            c.paths.agent_dir.join("public_key"),
            c.key.public().to_base64(),
        )
        .unwrap();
        config.upgrade.public_key = String::new();
        let o = apply(&config, &c.paths, &mut |_: &Pending| Ok(())).unwrap();
        assert_eq!(o.stage, Stage::Refused);
        assert!(o.reason.unwrap().contains("no signing key"));
        assert_eq!(c.version(), crate::VERSION);
        // The file is not the artifact asked for.
        let sha = c.hand_over("99.0", &script("99.0"));
        std::fs::write(c.paths.agent_dir.join(format!("{sha}.herd")), b"HERDREL1xx").unwrap();
        let o = apply(&c.config, &c.paths, &mut |_: &Pending| Ok(())).unwrap();
        assert_eq!(o.stage, Stage::Refused);
        assert!(o.reason.unwrap().contains("not the one asked for"));
        // An older agent (issue 31, 3): refused without the operator's permit, with one the agent
        // could make (another key) or one for another running version; taken with the right one.
        let apply_now = || apply(&c.config, &c.paths, &mut |_: &Pending| Ok(())).unwrap();
        c.hand_over("0.0.1", &script("0.0.1"));
        let o = apply_now();
        assert_eq!(o.stage, Stage::Refused);
        assert!(o.reason.unwrap().contains("older"));
        let sha = c.hand_over("0.0.1", &script("0.0.1"));
        let forged = SigningKey::generate().unwrap();
        c.write_permit(&forged.permit_downgrade("pis", &sha, crate::VERSION));
        let o = apply_now();
        assert_eq!(o.stage, Stage::Refused);
        assert!(o.reason.unwrap().contains("downgrade permit"));
        c.hand_over("0.0.1", &script("0.0.1"));
        c.write_permit(&c.key.permit_downgrade("pis", &sha, "0.0.2"));
        assert_eq!(apply_now().stage, Stage::Refused);
        assert_eq!(c.version(), crate::VERSION, "nothing was swapped");
        c.hand_over("0.0.1", &script("0.0.1"));
        c.write_permit(&c.key.permit_downgrade("pis", &sha, crate::VERSION));
        let o = apply_now();
        assert_eq!(o.stage, Stage::Upgraded, "{o:?}");
        assert_eq!(c.version(), "0.0.1");
        std::fs::rename(&c.paths.previous, &c.paths.bin).unwrap();
        // A link planted in place of the artifact is not followed.
        let sha = c.hand_over("99.0", &script("99.0"));
        let art = c.paths.agent_dir.join(format!("{sha}.herd"));
        std::fs::remove_file(&art).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &art).unwrap();
        let o = apply(&c.config, &c.paths, &mut |_: &Pending| Ok(())).unwrap();
        assert_eq!(o.stage, Stage::Refused);
        assert_eq!(c.version(), crate::VERSION, "nothing was swapped");
        assert!(!c.paths.previous.exists());
    }

    #[test]
    fn a_power_cut_at_any_step_leaves_a_working_agent() {
        // Before the swap: pending written, old binary in place.
        let c = card();
        let p = Pending {
            sha256: "0".repeat(64),
            rollout: String::new(),
            from: crate::VERSION.into(),
            to: "99.0".into(),
            timeout_s: 10,
            peers: vec![],
        };
        std::fs::create_dir_all(&c.paths.dir).unwrap();
        std::fs::write(
            c.paths.dir.join(PENDING),
            serde_json::to_string(&p).unwrap(),
        )
        .unwrap();
        std::fs::hard_link(&c.paths.bin, &c.paths.previous).unwrap();
        let o = resume(&c.paths, &mut |_: &Pending| Ok(()))
            .unwrap()
            .unwrap();
        assert_eq!(o.stage, Stage::Interrupted);
        assert!(!c.paths.dir.join(PENDING).exists());
        // After the swap: the new agent proves itself, or goes.
        for proven in [true, false] {
            let c = card();
            std::fs::create_dir_all(&c.paths.dir).unwrap();
            std::fs::hard_link(&c.paths.bin, &c.paths.previous).unwrap();
            std::fs::remove_file(&c.paths.bin).unwrap();
            write_executable(&c.paths.bin, &script("99.0")).unwrap();
            std::fs::write(
                c.paths.dir.join(PENDING),
                serde_json::to_string(&p).unwrap(),
            )
            .unwrap();
            let o = resume(&c.paths, &mut |_: &Pending| {
                if proven {
                    Ok(())
                } else {
                    Err("no".into())
                }
            })
            .unwrap()
            .unwrap();
            let (stage, version) = if proven {
                (Stage::Upgraded, "99.0")
            } else {
                (Stage::RolledBack, crate::VERSION)
            };
            assert_eq!(o.stage, stage);
            assert_eq!(c.version(), version);
        }
        // A new binary that does not run at all: rolled back at once.
        let c = card();
        std::fs::create_dir_all(&c.paths.dir).unwrap();
        std::fs::hard_link(&c.paths.bin, &c.paths.previous).unwrap();
        std::fs::remove_file(&c.paths.bin).unwrap();
        write_executable(&c.paths.bin, b"\x7fELF garbage").unwrap();
        std::fs::write(
            c.paths.dir.join(PENDING),
            serde_json::to_string(&p).unwrap(),
        )
        .unwrap();
        let o = resume(&c.paths, &mut |_: &Pending| Ok(()))
            .unwrap()
            .unwrap();
        assert_eq!(o.stage, Stage::RolledBack);
        assert_eq!(c.version(), crate::VERSION);
        // Nothing pending: nothing done.
        assert_eq!(resume(&c.paths, &mut |_: &Pending| Ok(())).unwrap(), None);
    }
}
