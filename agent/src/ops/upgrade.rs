//! `herd upgrade`: a new agent on every card, without reflashing. The artifact is uploaded once, to the
//! `--node`; every other node fetches it from a node that has it (the first, then those already
//! upgraded). Nodes are upgraded `--batch` at a time; a node counts as done when its installer reports
//! the new agent proven (seen alive with the new version by every other alive node, within
//! `--timeout`) and this tool sees the same from every alive node. A node that fails rolls itself back,
//! and the rollout stops there, naming it. Ctrl-C stops after the batch under way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::cli::{Access, Target};
use crate::client::Client;
use crate::gossip::Liveness;
use crate::model::upgrade::{InstallRequest, Outcome, Stage, MAX_ARTIFACT};
use crate::model::views::NodeView;
use crate::release::{self, Arch};

/// `herd upgrade`'s options.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["to", "build", "status"])))]
pub struct Upgrade {
    /// The signed artifact to install (made by `cargo xtask release`).
    #[arg(long, value_name = "PATH")]
    pub to: Option<PathBuf>,
    /// Build the artifact first: runs `cargo xtask release` here (a herd checkout), signed with the
    /// key in --secrets.
    #[arg(long, requires = "secrets")]
    pub build: bool,
    /// Show every node's version and where its last upgrade stands, and change nothing.
    #[arg(long)]
    pub status: bool,
    /// Nodes upgraded at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: u16,
    /// Time a node's new agent has, from its restart, to be seen alive with the new version by every
    /// other alive node; else it rolls back (10 s to 1 h).
    #[arg(long, default_value = "120s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Print the plan (nodes, order, versions) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Install an older version than a node runs: signs a permit for this artifact and each running
    /// version with the signing key in --secrets (a card installs an older agent on nothing less).
    #[arg(long, requires = "secrets")]
    pub allow_downgrade: bool,
    #[command(flatten)]
    pub target: Target,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    use crate::model::upgrade::{MAX_TIMEOUT_S, MIN_TIMEOUT_S};
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if !(MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&d.as_secs()) {
        return Err(format!(
            "{s:?}: give {MIN_TIMEOUT_S} s to {} min",
            MAX_TIMEOUT_S / 60
        ));
    }
    Ok(d)
}

/// Set by Ctrl-C: the rollout stops after the batch under way.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: nix::libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // A second Ctrl-C: leave now (each node still proves itself or rolls back on its own).
        // SAFETY: _exit is async-signal-safe.
        unsafe { nix::libc::_exit(130) };
    }
}

/// Makes Ctrl-C ask the rollout to stop after the current batch (a second one leaves at once).
pub fn stop_on_interrupt() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe { sigaction(Signal::SIGINT, &action) }.context("cannot watch Ctrl-C")?;
    Ok(())
}

/// A node of the plan.
#[derive(Debug, Clone)]
struct Node {
    view: NodeView,
    api: String,
}

impl Node {
    /// A client for this node's API: one that proves the token only to the node gossip lists here
    /// (the entry node is the one the operator named).
    fn client(&self, token: Access) -> anyhow::Result<Client> {
        if self.view.is_self {
            Client::new(&self.api, token.token)
        } else {
            token.member(&self.api, &self.view.id)
        }
    }

    /// Where the other nodes fetch the artifact from it: its API as gossip lists it (the entry node's
    /// address as the operator named it may be a tunnel or a name only the laptop resolves), which is
    /// also the only kind of source a node fetches from.
    fn source(&self) -> Option<String> {
        Some(crate::model::views::api_url(
            self.view.address?,
            self.view.http_port?,
        ))
    }

    fn label(&self) -> String {
        match self.view.address {
            Some(a) => format!("{} ({a})", self.view.name),
            None => self.view.name.clone(),
        }
    }
}

/// What a rollout did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub version: String,
    pub upgraded: Vec<String>,
    pub already: Vec<String>,
    pub left: Vec<String>,
}

/// `herd upgrade`.
pub fn run(u: &Upgrade) -> anyhow::Result<Report> {
    if u.status {
        return status(&u.target).map(|_| Report::default());
    }
    let bytes = match (&u.to, u.build) {
        (Some(path), _) => read_artifact(path)?,
        (None, true) => build(&u.target)?,
        (None, false) => bail!("give --to PATH, --build or --status"),
    };
    let manifest = release::peek(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cluster_key = cluster_key(&u.target)?;
    if let Some((cluster, key)) = &cluster_key {
        release::open(&bytes, key, cluster)
            .and_then(|a| a.check_binaries())
            .map_err(|e| anyhow::anyhow!("{e} (checked with the key in --secrets)"))?;
    }
    let sha = release::sha256_hex(&bytes);
    let version = manifest.version.clone();
    let signer = if u.allow_downgrade {
        Some(signing_key(&u.target)?)
    } else {
        None
    };
    let entry = u.target.client()?;
    let all = entry.nodes()?;
    let token = u.target.access()?;

    // The plan: every alive node not at the version, the entry node first.
    let mut nodes: Vec<Node> = Vec::new();
    let mut report = Report {
        version: version.clone(),
        ..Report::default()
    };
    let mut absent = Vec::new();
    for n in &all {
        if n.state != Liveness::Alive {
            absent.push(format!(
                "{} ({})",
                n.name,
                format!("{:?}", n.state).to_lowercase()
            ));
            continue;
        }
        let api = match (n.address, n.http_port) {
            (_, _) if n.is_self => entry.base().to_string(),
            (Some(ip), Some(port)) => crate::model::views::api_url(ip, port),
            _ => bail!("{} publishes no API address: it cannot be upgraded", n.name),
        };
        nodes.push(Node {
            view: n.clone(),
            api,
        });
    }
    nodes.sort_by_key(|n| (!n.view.is_self, n.view.name.clone()));
    let Some(first) = nodes.first().cloned() else {
        bail!("{} lists no alive node", entry.base());
    };
    let mut problems = Vec::new();
    for n in &nodes {
        let arch = n.view.facts.as_ref().and_then(|f| arch_of(&f.arch));
        if let Some(arch) = arch {
            if !manifest.binaries.iter().any(|b| b.arch == arch) {
                problems.push(format!(
                    "{} is {arch}: the artifact has no binary for it",
                    n.label()
                ));
            }
        }
        if n.view.public_key.is_none() {
            problems.push(format!(
                "{} runs an agent from before per-node keys (gossip protocol 2), which an agent of \
                 this version cannot talk to, so the two cannot be swapped one node at a time: \
                 re-flash the cards with an image of this version (docs/UPGRADES.md)",
                n.label()
            ));
        }
        let running = n.view.version.clone().unwrap_or_default();
        if release::compare_versions(&version, &running).is_lt() && !u.allow_downgrade {
            problems.push(format!(
                "{} runs {running}, newer than {version} (--allow-downgrade)",
                n.label()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("nothing was changed:\n  {}", problems.join("\n  "));
    }
    let (todo, done): (Vec<Node>, Vec<Node>) = nodes
        .into_iter()
        .partition(|n| n.view.version.as_deref() != Some(version.as_str()));
    report.already = done.iter().map(|n| n.view.name.clone()).collect();
    println!(
        "herd upgrade to {version} ({} bytes, sha256 {}…; binaries: {})",
        bytes.len(),
        &sha[..12],
        manifest
            .binaries
            .iter()
            .map(|b| b.arch.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in &todo {
        println!(
            "  {}: {} → {version}",
            n.label(),
            n.view.version.as_deref().unwrap_or("?")
        );
    }
    for n in &done {
        println!("  {}: already {version}", n.label());
    }
    for a in &absent {
        println!("  {a}: not alive, not upgraded (run herd upgrade again once it is back)");
    }
    println!(
        "  {} node(s), {} at a time; each has {} s to prove itself",
        todo.len(),
        u.batch,
        u.timeout.as_secs()
    );
    if u.dry_run {
        println!("dry run: nothing changed");
        report.left = todo.iter().map(|n| n.view.name.clone()).collect();
        return Ok(report);
    }
    if todo.is_empty() {
        println!("every alive node runs {version}: nothing to do");
        return Ok(report);
    }

    // Every node must check what it installs with a key root configured: a node without one (an image
    // made before herd upgrade) is named, and nothing is changed.
    let mut keyless = Vec::new();
    for n in todo.iter().chain(std::iter::once(&first)) {
        if !n.client(token.clone())?.upgrade_view()?.has_key {
            keyless.push(n.label());
        }
    }
    if !keyless.is_empty() {
        bail!(
            "nothing was changed: {} {} no signing key; add to /etc/herd/herd.toml on each, under \
             [upgrade], public_key = the signing_public_key of secrets/CLUSTER.toml (cards trust no key \
             sent over the network), then restart herd",
            keyless.join(", "),
            if keyless.len() == 1 { "has" } else { "have" }
        );
    }

    // One upload, to the entry node; the others fetch from nodes that have it.
    let started = Instant::now();
    let uploader = first.client(token.clone())?;
    print!("uploading to {} … ", first.label());
    std::io::Write::flush(&mut std::io::stdout())?;
    let kept = uploader.upload(&bytes)?;
    if kept.sha256 != sha {
        bail!("{} kept another artifact than the one sent", first.label());
    }
    println!(
        "checked and kept ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let mut sources: Vec<String> = std::iter::once(&first)
        .chain(&done)
        .filter_map(Node::source)
        .collect();

    let mut queue = todo.clone();
    while !queue.is_empty() {
        if STOP.load(Ordering::SeqCst) {
            report.left = queue.iter().map(|n| n.view.name.clone()).collect();
            bail!(
                "stopped by Ctrl-C: {} upgraded, not upgraded: {} (the cluster runs both versions; \
                 run herd upgrade again to finish)",
                report.upgraded.len(),
                report.left.join(", ")
            );
        }
        let batch: Vec<Node> = queue.drain(..(u.batch as usize).min(queue.len())).collect();
        let rollout = rollout_id();
        for n in &batch {
            let client = n.client(token.clone())?;
            let req = InstallRequest {
                sha256: sha.clone(),
                rollout: rollout.clone(),
                sources: sources.clone(),
                allow_downgrade: false,
                downgrade_permit: signer.as_ref().and_then(|(cluster, key)| {
                    let running = n.view.version.as_deref()?;
                    release::compare_versions(&version, running)
                        .is_lt()
                        .then(|| key.permit_downgrade(cluster, &sha, running))
                }),
                timeout_s: u.timeout.as_secs(),
            };
            if let Err(e) = client.install(&req) {
                report.left = batch
                    .iter()
                    .chain(&queue)
                    .map(|n| n.view.name.clone())
                    .collect();
                bail!("rollout stopped: {} refused the upgrade: {e:#}", n.label());
            }
            println!("  {}: checked the artifact, installing", n.label());
        }
        let t0 = Instant::now();
        for n in &batch {
            match wait(n, &version, &rollout, u.timeout, token.clone()) {
                Ok(()) => {
                    println!(
                        "  {}: {} → {version}, seen alive by every node ({:.1} s)",
                        n.label(),
                        n.view.version.as_deref().unwrap_or("?"),
                        t0.elapsed().as_secs_f64()
                    );
                    report.upgraded.push(n.view.name.clone());
                    sources.extend(n.source());
                }
                Err(e) => {
                    let rest: Vec<String> = queue.iter().map(|n| n.view.name.clone()).collect();
                    report.left = rest.clone();
                    bail!(
                        "rollout stopped: {} failed: {e:#}\n  upgraded: {}\n  not upgraded: {}",
                        n.label(),
                        list(&report.upgraded),
                        list(&rest)
                    );
                }
            }
        }
    }
    println!(
        "upgraded {} node(s) to {version} in {:.1} s",
        report.upgraded.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// A random name for one batch's install requests: their reports carry it back.
fn rollout_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Waits for `n`'s installer to report, then checks that every alive node sees it alive at `version`.
fn wait(
    n: &Node,
    version: &str,
    rollout: &str,
    timeout: Duration,
    token: Access,
) -> anyhow::Result<()> {
    let client = n.client(token.clone())?;
    // The node's own verdict comes within the timeout; a rollback and a restart take a little more.
    let deadline = Instant::now() + timeout + Duration::from_secs(90);
    let mut shown = String::new();
    let mut show = |s: String| {
        if s != shown {
            println!("  {}: {s}", n.label());
            shown = s;
        }
    };
    loop {
        match client.upgrade_view() {
            Ok(v) => match v.last {
                Some(o) if o.rollout == rollout => match o.stage {
                    Stage::Upgraded if v.version == version => break,
                    Stage::Upgraded | Stage::Proving => {
                        show(format!("proving itself (running {})", v.version))
                    }
                    Stage::RolledBack => bail!(
                        "it rolled back to {}: {}",
                        o.from,
                        o.reason.unwrap_or_default()
                    ),
                    Stage::Refused => bail!(
                        "its installer refused the artifact: {}",
                        o.reason.unwrap_or_default()
                    ),
                    Stage::Interrupted => bail!(
                        "it restarted before the new agent was in place; it runs {}",
                        v.version
                    ),
                },
                _ => show("waiting for its installer".into()),
            },
            Err(_) => show("restarting".into()),
        }
        if Instant::now() > deadline {
            bail!(
                "no outcome within {} s (see herd upgrade --status)",
                (timeout + Duration::from_secs(90)).as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The installer saw it proven; so must this tool, from every alive node.
    let me = client.nodes()?;
    let id = me
        .iter()
        .find(|x| x.is_self)
        .map(|x| x.id.clone())
        .context("the node does not list itself")?;
    let mut doubts = Vec::new();
    for other in me
        .iter()
        .filter(|x| !x.is_self && x.state == Liveness::Alive)
    {
        let (Some(ip), Some(port)) = (other.address, other.http_port) else {
            continue;
        };
        let c = token.member(&format!("{ip}:{port}"), &other.id)?;
        match c.nodes() {
            Ok(list) => match list.iter().find(|x| x.id == id) {
                Some(x) if x.state == Liveness::Alive && x.version.as_deref() == Some(version) => {}
                Some(x) => doubts.push(format!(
                    "{} sees it {:?} at {:?}",
                    other.name, x.state, x.version
                )),
                None => doubts.push(format!("{} does not list it", other.name)),
            },
            Err(e) => doubts.push(format!("{}: {e:#}", other.name)),
        }
    }
    if !doubts.is_empty() {
        bail!("its installer kept it, but {}", doubts.join("; "));
    }
    Ok(())
}

/// `herd upgrade --status`: one line per node.
fn status(t: &Target) -> anyhow::Result<()> {
    let entry = t.client()?;
    let token = t.token()?;
    let nodes = entry.nodes()?;
    let mut rows: BTreeMap<(bool, String), [String; 5]> = BTreeMap::new();
    for n in &nodes {
        let api = match (n.address, n.http_port) {
            _ if n.is_self => entry.base().to_string(),
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            _ => String::new(),
        };
        let state = format!("{:?}", n.state).to_lowercase();
        let (upgrade, last) = if n.state != Liveness::Alive || api.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            // The token goes to the node the operator named, never to an address gossip names (a key
            // holder can make gossip name its own); a node reading under protect_reads says so.
            let token = if n.is_self { token.clone() } else { None };
            match Client::new(&api, token).and_then(|c| c.upgrade_view()) {
                Ok(v) => (
                    if v.busy { "in progress" } else { "idle" }.to_string(),
                    v.last.as_ref().map_or("-".into(), describe),
                ),
                Err(e) if format!("{e:#}").contains("HTTP 401") => (
                    "?".into(),
                    format!("its reads need the token: herd upgrade --status --node {api}"),
                ),
                Err(e) => ("?".into(), format!("{e:#}")),
            }
        };
        rows.insert(
            (!n.is_self, n.name.clone()),
            [
                n.name.clone(),
                state,
                n.version.clone().unwrap_or_else(|| "?".into()),
                upgrade,
                last,
            ],
        );
    }
    if t.json {
        let v: Vec<serde_json::Value> = rows
            .values()
            .map(|r| {
                serde_json::json!({"name": r[0], "state": r[1], "version": r[2], "upgrade": r[3], "last": r[4]})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let header = ["NAME", "STATE", "VERSION", "UPGRADE", "LAST UPGRADE"];
    let mut widths = header.map(str::len);
    for r in rows.values() {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for r in rows.values() {
        line(r);
    }
    Ok(())
}

fn describe(o: &Outcome) -> String {
    let stage = match o.stage {
        Stage::Proving => "proving",
        Stage::Upgraded => "upgraded",
        Stage::RolledBack => "rolled back",
        Stage::Refused => "refused",
        Stage::Interrupted => "interrupted",
    };
    let mut s = if o.to.is_empty() {
        stage.to_string()
    } else {
        format!("{stage} {} → {}", o.from, o.to)
    };
    if let Some(r) = &o.reason {
        s.push_str(": ");
        s.push_str(r);
    }
    s
}

/// The CPU family of `facts.arch` (Rust's name for it).
fn arch_of(rust_arch: &str) -> Option<Arch> {
    Arch::from_rust_arch(rust_arch)
}

fn read_artifact(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("--to: cannot read {}", path.display()))?
        .len();
    if size > MAX_ARTIFACT {
        bail!(
            "--to: {} is {size} bytes; nodes take artifacts of at most {MAX_ARTIFACT}",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("--to: cannot read {}", path.display()))
}

/// `--build`: `cargo xtask release` in this directory, for the cluster of --secrets.
fn build(t: &Target) -> anyhow::Result<Vec<u8>> {
    let secrets = t.secrets.as_ref().context("--build needs --secrets")?;
    let (cluster, _) = cluster_key(t)?.context("--secrets has no signing key")?;
    let out = std::env::temp_dir().join(format!("herd-release-{}.herd", std::process::id()));
    let status = std::process::Command::new("cargo")
        .args(["xtask", "release", "--cluster", &cluster, "--secrets"])
        .arg(secrets)
        .arg("--out")
        .arg(&out)
        .status()
        .context("--build: cannot run cargo (run it in a herd checkout)")?;
    if !status.success() {
        bail!("--build: cargo xtask release failed ({status})");
    }
    let bytes = read_artifact(&out);
    let _ = std::fs::remove_file(&out);
    bytes
}

/// The cluster and its signing key (the private half), from --secrets: what a downgrade permit is
/// signed with.
fn signing_key(t: &Target) -> anyhow::Result<(String, release::SigningKey)> {
    let Some((path, table)) = t.secrets_table()? else {
        bail!("--allow-downgrade needs --secrets secrets/CLUSTER.toml: its signing key permits it");
    };
    let get = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(cluster), Some(seed)) = (get("cluster"), get("signing_key")) else {
        bail!(
            "--allow-downgrade: {} has no cluster or no signing_key line",
            path.display()
        );
    };
    let key = release::SigningKey::from_base64(&seed)
        .map_err(|e| anyhow::anyhow!("--secrets: {}: signing_key: {e}", path.display()))?;
    Ok((cluster, key))
}

/// The cluster and the public half of its signing key, from --secrets.
fn cluster_key(t: &Target) -> anyhow::Result<Option<(String, release::PublicKey)>> {
    let Some((_, table)) = t.secrets_table()? else {
        return Ok(None);
    };
    let get = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(cluster), Some(public)) = (get("cluster"), get("signing_public_key")) else {
        return Ok(None);
    };
    let key = release::PublicKey::from_base64(&public)
        .map_err(|e| anyhow::anyhow!("--secrets: signing_public_key: {e}"))?;
    Ok(Some((cluster, key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_timeout("5s").unwrap_err().contains("10 s"));
        assert!(parse_timeout("2h").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn outcomes_read_as_sentences() {
        let o = Outcome {
            sha256: "0".repeat(64),
            rollout: String::new(),
            from: "0.1.0".into(),
            to: "0.2.0".into(),
            stage: Stage::RolledBack,
            reason: Some("not proven within 60 s".into()),
            at: 0,
        };
        assert_eq!(
            describe(&o),
            "rolled back 0.1.0 → 0.2.0: not proven within 60 s"
        );
    }
}
