//! `herd launch`: put a service on the least-busy alive nodes with Ansible, and keep it at its wanted count.
//!
//! Layout of the playbooks directory (`--playbooks`, default `./playbooks`):
//!
//! ```text
//! playbooks/
//!   nginx_webserver/
//!     playbook.yml          the play(s), targeting `hosts: nginx_webserver` (the service's name)
//!     index.html.tera       any `*.tera` file is rendered with the cluster's facts (suffix dropped)
//!   .herd/                  written by herd: rendered trees, the inventory of each run, wanted counts
//! ```
//!
//! The choice: alive nodes that do not run the service yet, by [`busy_score`] (lowest first, name to break
//! ties); nodes that publish no monitoring come last. The rendered tree goes to
//! `.herd/rendered/SERVICE/`; `ansible-playbook` runs its `playbook.yml` (or a rendered `playbook.yml.tera`)
//! with an inventory holding exactly the chosen nodes in group SERVICE (and `--limit` to them), with
//! `herd_service` and `herd_rendered` as extra variables. Each node whose play ended without failure or
//! unreachability gets SERVICE recorded in its meta-data through its own API; a node whose play failed gets
//! nothing recorded and is reported. The wanted count (nodes running SERVICE before + N) is kept in
//! `.herd/wanted.json`, next to the playbooks it belongs with; `--reconcile` launches what is missing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::Serialize;

use super::cli::Target;
use super::inventory::{group_name, Inventory};
use crate::gossip::Liveness;
use crate::model::views::NodeView;

/// How busy a node is; lower is less busy. Each term is about 0 for an idle node and 1 for a busy one:
///
/// `load1 / cores + cpu% / 100 + memory used / total + max(0, °C − 60) / 20`
///
/// (the temperature term reaches 1 at 80 °C, where a Raspberry Pi starts to throttle). `None` when the node
/// publishes no monitoring.
pub fn busy_score(n: &NodeView) -> Option<f64> {
    let m = n.monitoring.as_ref()?;
    let cores = n.facts.as_ref().and_then(|f| f.cpus).unwrap_or(4).max(1) as f64;
    let mem = m.mem_used as f64 / m.mem_total.max(1) as f64;
    let heat = m.temp.map_or(0.0, |t| ((t as f64 - 60.0) / 20.0).max(0.0));
    Some(m.load[0] / cores + m.cpu as f64 / 100.0 + mem + heat)
}

/// The nodes to launch `service` on: `n` alive nodes without it, least busy first. Errors, changing
/// nothing, when fewer than `n` can take it.
pub fn choose<'a>(
    nodes: &'a [NodeView],
    service: &str,
    n: usize,
) -> anyhow::Result<Vec<&'a NodeView>> {
    let mut candidates: Vec<(&NodeView, Option<f64>)> = nodes
        .iter()
        .filter(|v| v.state == Liveness::Alive && !v.services.iter().any(|s| s == service))
        .map(|v| (v, busy_score(v)))
        .collect();
    candidates.sort_by(|(a, sa), (b, sb)| {
        let key = |s: &Option<f64>| s.unwrap_or(f64::INFINITY);
        key(sa)
            .total_cmp(&key(sb))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    });
    if candidates.len() < n {
        let alive = nodes.iter().filter(|v| v.state == Liveness::Alive).count();
        bail!(
            "cannot launch {service} on {n} nodes: {} of the {alive} alive nodes do not run it yet",
            candidates.len()
        );
    }
    Ok(candidates.into_iter().take(n).map(|(v, _)| v).collect())
}

/// A node as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateNode {
    pub name: String,
    pub host: String,
    pub id: String,
    pub address: Option<String>,
    pub http_port: Option<u16>,
    pub gossip_port: Option<u16>,
    pub services: Vec<String>,
    pub arch: Option<String>,
    pub model: Option<String>,
    pub busy: Option<f64>,
}

/// What templates get: `service`, `targets` (the chosen nodes), `nodes` (every alive node) and `services`
/// (service → alive nodes running it, the targets already counted for `service`).
pub fn context(inv: &Inventory, service: &str, targets: &[String]) -> tera::Context {
    let node = |host: &String| {
        let n = &inv.nodes[host];
        let mut services = n.services.clone();
        if targets.contains(host) && !services.iter().any(|s| s == service) {
            services.push(service.to_string());
        }
        TemplateNode {
            name: n.name.clone(),
            host: host.clone(),
            id: n.id.clone(),
            address: n.address.map(|a| a.to_string()),
            http_port: n.http_port,
            gossip_port: n.gossip_port,
            services,
            arch: n.facts.as_ref().map(|f| f.arch.clone()),
            model: n.facts.as_ref().and_then(|f| f.model.clone()),
            busy: busy_score(n),
        }
    };
    let nodes: Vec<TemplateNode> = inv.nodes.keys().map(node).collect();
    let mut services: BTreeMap<String, Vec<TemplateNode>> = BTreeMap::new();
    for n in &nodes {
        for s in &n.services {
            services.entry(s.clone()).or_default().push(n.clone());
        }
    }
    let mut ctx = tera::Context::new();
    ctx.insert("service", service);
    ctx.insert(
        "targets",
        &targets.iter().map(node).collect::<Vec<TemplateNode>>(),
    );
    ctx.insert("nodes", &nodes);
    ctx.insert("services", &services);
    ctx
}

/// Renders the service directory `src` into `dst`: `*.tera` files through tera (suffix dropped), the rest
/// copied. Returns the rendered files (relative path, contents) for `--dry-run` to show.
pub fn render(
    src: &Path,
    dst: &Path,
    ctx: &tera::Context,
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut rendered = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = src.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        std::fs::create_dir_all(dst.join(&rel))
            .with_context(|| format!("cannot create {}", dst.join(&rel).display()))?;
        for e in entries {
            let name = e.file_name();
            let path = rel.join(&name);
            if e.file_type()?.is_dir() {
                todo.push(path);
                continue;
            }
            let text = name.to_string_lossy();
            if let Some(stem) = text.strip_suffix(".tera") {
                let template = std::fs::read_to_string(e.path())
                    .with_context(|| format!("cannot read {}", e.path().display()))?;
                let out = tera::Tera::one_off(&template, ctx, false).map_err(|err| {
                    // tera's error chain holds the line and the missing variable.
                    let mut msg = format!("{}: {err}", e.path().display());
                    let mut source = std::error::Error::source(&err);
                    while let Some(s) = source {
                        msg.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    anyhow::anyhow!(msg)
                })?;
                let target = rel.join(stem);
                std::fs::write(dst.join(&target), &out)
                    .with_context(|| format!("cannot write {}", dst.join(&target).display()))?;
                rendered.push((target, out));
            } else {
                std::fs::copy(e.path(), dst.join(&path))
                    .with_context(|| format!("cannot copy {}", e.path().display()))?;
            }
        }
    }
    rendered.sort();
    Ok(rendered)
}

/// Wanted counts, `.herd/wanted.json` in the playbooks directory.
fn wanted_path(playbooks: &Path) -> PathBuf {
    playbooks.join(".herd/wanted.json")
}

pub fn load_wanted(playbooks: &Path) -> anyhow::Result<BTreeMap<String, usize>> {
    let p = wanted_path(playbooks);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is not valid", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

fn save_wanted(playbooks: &Path, wanted: &BTreeMap<String, usize>) -> anyhow::Result<()> {
    let p = wanted_path(playbooks);
    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
    crate::files::write_atomic(&p, &serde_json::to_string_pretty(wanted)?)
}

/// The options of one launch.
#[derive(Debug, Clone)]
pub struct Launch {
    pub count: usize,
    pub service: String,
    pub playbooks: PathBuf,
    pub dry_run: bool,
}

/// Per-host outcome from ansible-playbook's PLAY RECAP.
fn recap(output: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    let mut in_recap = false;
    for line in output.lines() {
        if line.starts_with("PLAY RECAP") {
            in_recap = true;
            continue;
        }
        if !in_recap {
            continue;
        }
        let Some((host, stats)) = line.split_once(" : ") else {
            continue;
        };
        let field = |name: &str| {
            stats
                .split_whitespace()
                .find_map(|kv| {
                    kv.strip_prefix(name)?
                        .strip_prefix('=')?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        out.insert(
            host.trim().to_string(),
            field("failed") == 0 && field("unreachable") == 0,
        );
    }
    out
}

/// Runs one launch; returns the hosts where the service now runs. Prints what it does.
/// `herd launch`'s command line.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many more nodes.
    #[arg(required_unless_present = "reconcile")]
    pub count: Option<usize>,
    #[arg(required_unless_present = "reconcile")]
    pub service: Option<String>,
    /// The playbooks directory.
    #[arg(long, env = "HERD_PLAYBOOKS", default_value = "playbooks")]
    pub playbooks: PathBuf,
    /// Print the chosen nodes, why, and the rendered files; run and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Launch whatever is missing from the wanted counts (after nodes died).
    #[arg(long, conflicts_with_all = ["count", "service"])]
    pub reconcile: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `herd launch`: one launch, or `--reconcile`.
pub fn run(c: &Args) -> anyhow::Result<()> {
    if c.reconcile {
        return reconcile(&c.target, &c.playbooks, c.dry_run);
    }
    let (Some(count), Some(service)) = (c.count, &c.service) else {
        bail!("launch: give COUNT and SERVICE, or --reconcile");
    };
    let launch_one = Launch {
        count,
        service: service.clone(),
        playbooks: c.playbooks.clone(),
        dry_run: c.dry_run,
    };
    launch(&c.target, &launch_one).map(|_| ())
}

pub fn launch(t: &Target, l: &Launch) -> anyhow::Result<Vec<String>> {
    crate::model::published::check_service_name(&l.service).map_err(anyhow::Error::msg)?;
    if l.count == 0 {
        bail!("launch: the number of nodes must be at least 1");
    }
    let service_dir = l.playbooks.join(&l.service);
    if !service_dir.is_dir() {
        bail!(
            "no playbook for {}: {} is not a directory (see `herd launch --help` for the layout)",
            l.service,
            service_dir.display()
        );
    }
    let entry = t.client()?;
    let nodes = entry.nodes()?;
    let chosen = choose(&nodes, &l.service, l.count)?;
    let inv = Inventory::from_nodes(&nodes);
    let host_of = |v: &NodeView| {
        inv.nodes
            .iter()
            .find(|(_, n)| n.id == v.id)
            .map(|(h, _)| h.clone())
            .expect("chosen nodes are alive, so in the inventory")
    };
    let targets: Vec<String> = chosen.iter().map(|v| host_of(v)).collect();
    println!("launching {} on {} node(s):", l.service, targets.len());
    for (h, v) in targets.iter().zip(&chosen) {
        let why = match busy_score(v) {
            Some(s) => {
                let m = v.monitoring.as_ref().expect("scored");
                format!(
                    "busy {s:.2} (load {:.2}, cpu {:.0}%, mem {:.0}%{})",
                    m.load[0],
                    m.cpu,
                    100.0 * m.mem_used as f64 / m.mem_total.max(1) as f64,
                    m.temp.map_or(String::new(), |t| format!(", {t:.0}°C"))
                )
            }
            None => "no monitoring published".into(),
        };
        println!(
            "  {h} {} {why}",
            v.address.map_or("-".into(), |a| a.to_string())
        );
    }
    let ctx = context(&inv, &l.service, &targets);
    let work = l.playbooks.join(".herd");
    if l.dry_run {
        // Rendered where the playbooks directory never sees it.
        let scratch = tempfile::tempdir().context("cannot make a temporary directory")?;
        let rendered = render(&service_dir, scratch.path(), &ctx)?;
        for (path, text) in &rendered {
            println!("--- {} (rendered)\n{text}", path.display());
        }
        println!("dry run: nothing was run and nothing recorded");
        return Ok(Vec::new());
    }
    let rendered_dir = work.join("rendered").join(&l.service);
    let staging = work
        .join("rendered")
        .join(format!(".{}.partial", l.service));
    let _ = std::fs::remove_dir_all(&staging);
    if let Err(e) = render(&service_dir, &staging, &ctx) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&rendered_dir);
    std::fs::rename(&staging, &rendered_dir).with_context(|| {
        format!(
            "cannot move the rendered tree to {}",
            rendered_dir.display()
        )
    })?;
    let playbook = rendered_dir.join("playbook.yml");
    if !playbook.is_file() {
        bail!(
            "{}: no playbook.yml (or playbook.yml.tera) in {}",
            l.service,
            service_dir.display()
        );
    }
    // The inventory of this run: the targets under the service's group, with their variables.
    let group = group_name(&l.service);
    let mut run_inv = inv.clone();
    run_inv.groups.insert(group.clone(), targets.clone());
    let inventory = work.join(format!("inventory-{}.ini", l.service));
    std::fs::write(&inventory, run_inv.ini(std::slice::from_ref(&group)))
        .with_context(|| format!("cannot write {}", inventory.display()))?;

    let mut child = Command::new("ansible-playbook")
        .arg("-i")
        .arg(&inventory)
        .arg("--limit")
        .arg(targets.join(","))
        .arg("-e")
        .arg(serde_json::json!({"herd_service": l.service, "herd_rendered": rendered_dir.canonicalize()?}).to_string())
        .arg(&playbook)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run ansible-playbook (apt-get install ansible)")?;
    let mut output = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait()?;
    let results = recap(&output);

    let mut wanted = load_wanted(&l.playbooks)?;
    let running_before = nodes
        .iter()
        .filter(|v| v.state == Liveness::Alive && v.services.iter().any(|s| s == &l.service))
        .count();
    let w = wanted.entry(l.service.clone()).or_default();
    *w = (*w).max(running_before + l.count);
    save_wanted(&l.playbooks, &wanted)?;

    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (h, v) in targets.iter().zip(&chosen) {
        if results.get(h).copied().unwrap_or(false) {
            match super::cli::node_client(t, &entry, v)
                .and_then(|c| c.change_service(&l.service, true))
            {
                Ok(_) => {
                    println!("{h}: {} recorded in its meta-data", l.service);
                    ok.push(h.clone());
                }
                Err(e) => failed.push(format!(
                    "{h}: the play succeeded but recording failed: {e:#}"
                )),
            }
        } else if results.contains_key(h) {
            failed.push(format!("{h}: the play failed; nothing recorded"));
        } else {
            failed.push(format!(
                "{h}: ansible-playbook did not report it ({status}); nothing recorded"
            ));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} node(s) failed:\n  {}",
            failed.len(),
            targets.len(),
            failed.join("\n  ")
        );
    }
    Ok(ok)
}

/// `--reconcile`: for every service with a wanted count, launches on as many nodes as are missing.
pub fn reconcile(t: &Target, playbooks: &Path, dry_run: bool) -> anyhow::Result<()> {
    let wanted = load_wanted(playbooks)?;
    if wanted.is_empty() {
        println!(
            "nothing to reconcile: no service launched from {}",
            playbooks.display()
        );
        return Ok(());
    }
    let nodes = t.client()?.nodes()?;
    let mut errors = Vec::new();
    for (service, want) in &wanted {
        let running = nodes
            .iter()
            .filter(|v| v.state == Liveness::Alive && v.services.iter().any(|s| s == service))
            .count();
        if running >= *want {
            println!("{service}: {running} of {want} running");
            continue;
        }
        println!(
            "{service}: {running} of {want} running; launching {}",
            want - running
        );
        let l = Launch {
            count: want - running,
            service: service.clone(),
            playbooks: playbooks.to_path_buf(),
            dry_run,
        };
        if let Err(e) = launch(t, &l) {
            errors.push(format!("{service}: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("reconcile failed for:\n  {}", errors.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recap_tells_each_host_apart() {
        let out = "PLAY [x] ***\nok: [a]\n\nPLAY RECAP *********\na                          : ok=2    changed=1    unreachable=0    failed=0    skipped=0    rescued=0    ignored=0\nb                          : ok=1    changed=0    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0\nc : ok=0 changed=0 unreachable=1 failed=0\n";
        let r = recap(out);
        assert!(r["a"]);
        assert!(!r["b"]);
        assert!(!r["c"]);
        assert_eq!(r.len(), 3);
    }
}
