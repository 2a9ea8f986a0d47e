//! The operator's commands that talk to a node's API: `herd members`, `herd meta-data …`, `herd watch`,
//! `herd inventory` and `herd hosts` (`herd launch` is in [`crate::ops::launch`]). Tables for people, `--json`
//! for scripts.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::client::Client;
use crate::model::health::State;
use crate::model::views::NodeView;

/// Where to reach the cluster and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Any node's API: http://HOST:PORT or HOST[:PORT]. Without it: this machine's agent
    /// (127.0.0.1:8080) when it answers, else an agent of the cluster found with mDNS.
    #[arg(long, global = true, env = "HERD_NODE")]
    pub node: Option<String>,
    /// The cluster to find with mDNS when no --node is given (needed only when several announce
    /// themselves); its secrets file, secrets/NAME.toml or ~/.config/herd/NAME.toml, gives the token.
    #[arg(long, global = true, env = "HERD_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// API token for write endpoints; else $HERD_TOKEN, else --secrets, else the file ~/.config/herd/token.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A cluster's secrets file (`secrets/CLUSTER.toml`, written by `cargo xtask image`): its api_token
    /// is used when no token is given.
    #[arg(long, env = "HERD_SECRETS")]
    pub secrets: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Send the token itself to nodes found through gossip whose agent is too old to take a proof of
    /// it (no /api/v1/auth/nonce). Any holder of the cluster key can then read it by inventing a
    /// member at an address of its own: use it once, to upgrade such a cluster, on a LAN you trust.
    #[arg(long, global = true, env = "HERD_TOKEN_TO_OLDER_AGENTS")]
    pub token_to_older_agents: bool,
    /// The node the CLI asks, once found.
    #[arg(skip)]
    pub entry: std::sync::OnceLock<Entry>,
}

/// The node the CLI asks: its API, and, when found with mDNS, the id and cluster it announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub url: String,
    pub found: Option<super::find::Found>,
}

/// The token, and whether older agents found through gossip may be sent it (`--token-to-older-agents`).
/// Its `Debug` never shows the token.
#[derive(Clone)]
pub struct Access {
    pub token: Option<String>,
    older_get_token: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("older_get_token", &self.older_get_token)
            .finish()
    }
}

impl Access {
    /// A client for the member gossip lists at `api` as node `id`: it proves the token only to that
    /// node, and sends it to an older agent only when allowed.
    pub fn member(&self, api: &str, id: &str) -> anyhow::Result<Client> {
        Ok(Client::new(api, self.token.clone())?
            .expecting(id)
            .older_get_token(self.older_get_token))
    }
}

impl Target {
    /// A client for the node to ask (see [`Target::entry_point`]).
    pub fn client(&self) -> anyhow::Result<Client> {
        let entry = self.entry_point()?;
        let client = Client::new(&entry.url, self.token()?)?;
        Ok(match &entry.found {
            Some(f) => client.expecting(&f.id),
            None => client,
        })
    }

    /// The node to ask: `--node`; else this machine's agent when it answers (unless `--cluster` names
    /// the cluster: the local agent may be another's); else the first agent of the cluster found with
    /// mDNS that takes a connection. Found once per run.
    pub fn entry_point(&self) -> anyhow::Result<&Entry> {
        if let Some(e) = self.entry.get() {
            return Ok(e);
        }
        let entry = match &self.node {
            Some(node) => Entry {
                url: node.clone(),
                found: None,
            },
            None => self.find()?,
        };
        Ok(self.entry.get_or_init(|| entry))
    }

    fn find(&self) -> anyhow::Result<Entry> {
        use super::find;
        if let Some(c) = &self.cluster {
            crate::config::check_cluster_name(c).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
        }
        if self.cluster.is_none() && find::answers(find::LOCAL.parse().expect("an address")) {
            return Ok(Entry {
                url: format!("http://{}", find::LOCAL),
                found: None,
            });
        }
        let seen = find::browse(find::BROWSE, self.cluster.as_deref())?;
        let agents = find::choose(&seen, self.cluster.as_deref())?;
        let f = find::first_answering(&agents)?;
        eprintln!(
            "herd: cluster {}: asking node {} at {} (found with mDNS)",
            f.cluster, f.id, f.api
        );
        Ok(Entry {
            url: format!("http://{}", f.api),
            found: Some(f),
        })
    }

    /// The cluster named with `--cluster` or found with mDNS.
    fn cluster_name(&self) -> Option<&str> {
        self.cluster.as_deref().or_else(|| {
            self.entry
                .get()
                .and_then(|e| e.found.as_ref())
                .map(|f| f.cluster.as_str())
        })
    }

    /// A client for a member found through gossip at `addr`, listed as node `id`.
    pub fn member_client(&self, addr: std::net::SocketAddr, id: &str) -> anyhow::Result<Client> {
        self.access()?.member(&addr.to_string(), id)
    }

    /// What a client of a member needs: the token, and whether older agents may be sent it.
    pub fn access(&self) -> anyhow::Result<Access> {
        Ok(Access {
            token: self.token()?,
            older_get_token: self.token_to_older_agents,
        })
    }

    /// The `--secrets` file, parsed (none given: `None`).
    pub fn secrets_table(&self) -> anyhow::Result<Option<(&std::path::Path, toml::Table)>> {
        let Some(path) = &self.secrets else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--secrets: cannot read {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("--secrets: {} is not TOML", path.display()))?;
        Ok(Some((path, table)))
    }

    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        if let Some((path, table)) = self.secrets_table()? {
            let token = table
                .get("api_token")
                .and_then(|v| v.as_str())
                .with_context(|| format!("--secrets: no api_token in {}", path.display()))?;
            return Ok(Some(token.to_string()));
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(cluster) = self.cluster_name() {
            // The secrets file `cargo xtask image` wrote for that cluster, here or copied to the
            // operator's configuration.
            let mut files = vec![PathBuf::from("secrets").join(format!("{cluster}.toml"))];
            files.extend(
                home.iter()
                    .map(|h| h.join(".config/herd").join(format!("{cluster}.toml"))),
            );
            for path in files {
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", path.display()))
                    }
                };
                let table: toml::Table = text
                    .parse()
                    .with_context(|| format!("{} is not TOML", path.display()))?;
                let token = table
                    .get("api_token")
                    .and_then(|v| v.as_str())
                    .with_context(|| format!("no api_token in {}", path.display()))?;
                return Ok(Some(token.to_string()));
            }
        }
        let Some(home) = home else {
            return Ok(None);
        };
        let path = home.join(".config/herd/token");
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// `herd members`.
pub fn members(t: &Target) -> anyhow::Result<()> {
    let nodes = t.client()?.nodes()?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    print!("{}", table(&nodes));
    Ok(())
}

/// `herd engine`: each node's container engine as it says of itself, beside herd's view, and where the
/// two disagree.
pub fn engine(t: &Target) -> anyhow::Result<()> {
    let nodes = t.client()?.nodes()?;
    if t.json {
        let view: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id, "name": n.name, "state": n.state, "engine": n.engine,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    print!("{}", engine_table(&nodes));
    Ok(())
}

/// `herd engine env`: where a laptop's docker reaches the swarm.
pub fn engine_env(t: &Target, user: Option<&str>) -> anyhow::Result<()> {
    let nodes = t.client()?.nodes()?;
    print!("{}", docker_host(&nodes, user).map_err(anyhow::Error::msg)?);
    Ok(())
}

/// `export DOCKER_HOST=ssh://USER@ADDR` for the swarm's alive leader, else another alive manager of
/// it, with the other managers under it as comments.
pub fn docker_host(nodes: &[NodeView], user: Option<&str>) -> Result<String, String> {
    use crate::gossip::Liveness;
    use crate::model::engine::Role;
    let swarm = seen_plan(nodes)
        .swarm
        .ok_or("no alive node is in a swarm (`herd engine` says why)")?;
    let mut managers: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.state == Liveness::Alive && n.address.is_some())
        .filter(|n| {
            n.engine
                .as_ref()
                .is_some_and(|e| e.role == Role::Manager && e.swarm.as_deref() == Some(&swarm))
        })
        .collect();
    managers.sort_by_key(|n| (!n.engine.as_ref().is_some_and(|e| e.leader), n.name.clone()));
    let Some(first) = managers.first() else {
        return Err(format!(
            "no alive manager of swarm {swarm} (`herd engine` says why)"
        ));
    };
    let at = |n: &NodeView| {
        let addr = n.address.expect("filtered");
        match user {
            Some(u) => format!("ssh://{u}@{addr}"),
            None => format!("ssh://{addr}"),
        }
    };
    let mut out = format!(
        "# swarm {swarm}: {} manages it{}\nexport DOCKER_HOST={}\n",
        first.name,
        if first.engine.as_ref().is_some_and(|e| e.leader) {
            " and leads"
        } else {
            ""
        },
        at(first)
    );
    for n in &managers[1..] {
        out.push_str(&format!("# or {}: DOCKER_HOST={}\n", n.name, at(n)));
    }
    Ok(out)
}

/// The plan as the node that answered computes it (settled and clock-synchronised, as a table's reader
/// would assume): the cluster's swarm and the managers it wants.
fn seen_plan(nodes: &[NodeView]) -> crate::model::engine::Plan {
    use crate::model::engine::{plan, Settings, Situation};
    let members: Vec<_> = nodes.iter().filter_map(NodeView::engine_member).collect();
    let me = nodes
        .iter()
        .find(|n| n.is_self)
        .and_then(|n| n.id.parse().ok())
        .unwrap_or_default();
    plan(
        &Situation {
            me,
            members: &members,
            stable_for: std::time::Duration::MAX,
            clock_synced: true,
            known_swarm: None,
            swarm_nodes: &[],
        },
        &Settings::default(),
    )
}

/// The engine table, and under it every disagreement between herd's view and the engines'.
pub fn engine_table(nodes: &[NodeView]) -> String {
    use crate::gossip::Liveness;
    use crate::model::engine::Role;
    let planned = seen_plan(nodes);
    let swarm = planned.swarm.clone();
    let mut out = format!(
        "{:<20}  {:<8}  {:<8}  {:<6}  SWARM\n",
        "NAME", "HERD", "ROLE", "LEADER"
    );
    let mut problems = Vec::new();
    for n in nodes {
        let e = n.engine.as_ref();
        let role = e.map_or("-", |e| match e.role {
            Role::None => "none",
            Role::Worker => "worker",
            Role::Manager => "manager",
        });
        let state = format!("{:?}", n.state).to_lowercase();
        out.push_str(&format!(
            "{:<20}  {:<8}  {:<8}  {:<6}  {}\n",
            format!("{}{}", n.name, if n.is_self { " *" } else { "" }),
            state,
            role,
            if e.is_some_and(|e| e.leader) {
                "yes"
            } else {
                ""
            },
            e.and_then(|e| e.swarm.as_deref()).unwrap_or("-"),
        ));
        let up = matches!(n.state, Liveness::Alive | Liveness::Suspect);
        let id = n.id.parse().ok();
        let should_manage = id.is_some_and(|id| planned.managers.contains(&id));
        let problem = match e {
            _ if !up && e.is_some_and(|e| e.role == Role::Manager) => Some(format!(
                "herd sees it {state}, and it manages the swarm: a replacement is promoted, and it is \
                 removed once its loss is certain"
            )),
            _ if !up => None,
            None => Some("reports no engine".to_string()),
            Some(e) if e.error.is_some() => Some(format!(
                "its engine says: {}",
                e.error.as_deref().unwrap_or_default()
            )),
            Some(e) if e.swarm.is_none() && swarm.is_some() => {
                Some("is in no swarm: it joins".to_string())
            }
            Some(e) if e.swarm.is_some() && e.swarm != swarm => Some(format!(
                "is in another swarm ({}): it leaves it and joins the cluster's",
                e.swarm.as_deref().unwrap_or_default()
            )),
            Some(e) if should_manage && e.role != Role::Manager => {
                Some("should manage: the leader promotes it".to_string())
            }
            Some(e) if !should_manage && e.role == Role::Manager && swarm.is_some() => {
                Some("manages but should not: the leader demotes it".to_string())
            }
            Some(_) => None,
        };
        if let Some(p) = problem {
            problems.push(format!("{}: {p}.", n.name));
        }
    }
    if swarm.is_none() {
        problems.push(match planned.waiting {
            Some(w) if nodes.iter().any(|n| n.engine.is_some()) => {
                format!("No swarm yet: {w}.")
            }
            _ => "No node reports an engine.".to_string(),
        });
    }
    for p in problems {
        out.push('\n');
        out.push_str(&p);
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The member table: one line per node.
pub fn table(nodes: &[NodeView]) -> String {
    let header = [
        "NAME", "ADDRESS", "STATE", "PHI", "CPU", "MEM", "LOAD1", "TEMP", "HEALTH", "VERSION",
        "SERVICES",
    ];
    let rows: Vec<[String; 11]> = nodes
        .iter()
        .map(|n| {
            let m = n.monitoring.as_ref();
            [
                format!("{}{}", n.name, if n.is_self { " *" } else { "" }),
                match (n.address, n.gossip_port) {
                    (Some(a), Some(p)) => format!("{a}:{p}"),
                    _ => "-".into(),
                },
                format!("{:?}", n.state).to_lowercase(),
                format!("{:.2}/{}", n.phi.min(999.0), n.threshold),
                m.map_or("-".into(), |m| format!("{:.0}%", m.cpu)),
                m.map_or("-".into(), |m| {
                    format!(
                        "{:.0}%",
                        100.0 * m.mem_used as f64 / m.mem_total.max(1) as f64
                    )
                }),
                m.map_or("-".into(), |m| format!("{:.2}", m.load[0])),
                m.and_then(|m| m.temp)
                    .map_or("-".into(), |t| format!("{t:.0}C")),
                health_cell(n),
                n.version.clone().unwrap_or_else(|| "-".into()),
                if n.services.is_empty() {
                    "-".into()
                } else {
                    n.services.join(",")
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    // What is wrong, in words, under the table.
    for n in nodes {
        for c in n.health.checks.iter().filter(|c| c.state > State::Ok) {
            out.push_str(&format!(
                "\n{}: {} {}: {}.",
                n.name,
                c.name,
                c.state.as_str(),
                c.detail
            ));
            if let Some(a) = &c.advice {
                let mut chars = a.chars();
                let first: String = chars
                    .next()
                    .into_iter()
                    .flat_map(char::to_uppercase)
                    .collect();
                out.push_str(&format!(" {first}{}.", chars.as_str()));
            }
            out.push('\n');
        }
    }
    out
}

/// The member table's health cell: the worst state and which checks have it (`warning: clock`).
fn health_cell(n: &NodeView) -> String {
    let worst = n.health.state;
    if worst <= State::Ok {
        return worst.as_str().to_string();
    }
    let names: Vec<&str> = n
        .health
        .checks
        .iter()
        .filter(|c| c.state == worst)
        .map(|c| c.name.as_str())
        .collect();
    format!("{}: {}", worst.as_str(), names.join(","))
}

/// The member `node` names (its name, id, first 4+ hex digits of its id, or address) among `nodes`,
/// as `entry` lists them.
pub fn find_member<'a>(
    entry: &Client,
    nodes: &'a [NodeView],
    node: &str,
) -> anyhow::Result<&'a NodeView> {
    let found: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| {
            n.name == node
                || n.id == node
                || (node.len() >= 4 && n.id.starts_with(node))
                || n.address.is_some_and(|a| a.to_string() == node)
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "no node {node:?} in the cluster seen by {}; known: {}",
            entry.base(),
            nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        many => bail!(
            "{node:?} matches {} nodes ({}); use the node id",
            many.len(),
            many.iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `herd open [NODE]`: a node's dashboard (NODE's page when named) in the browser: `$BROWSER`, else
/// `xdg-open` (`open` on macOS). The address is printed too, for a machine without a browser.
pub fn open(t: &Target, node: Option<&str>) -> anyhow::Result<()> {
    let entry = t.client()?;
    let url = match node {
        None => format!("{}/", entry.base().trim_end_matches('/')),
        Some(node) => {
            let nodes = entry.nodes()?;
            let n = find_member(&entry, &nodes, node)?;
            let (Some(addr), Some(port)) = (n.address, n.http_port) else {
                bail!("node {:?} publishes no API address", n.name);
            };
            format!(
                "http://{}/node/{}",
                std::net::SocketAddr::new(addr, port),
                n.id
            )
        }
    };
    println!("{url}");
    let browser = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                "open"
            } else {
                "xdg-open"
            }
            .to_string()
        });
    let status = std::process::Command::new(&browser)
        .arg(&url)
        .status()
        .with_context(|| {
            format!("cannot start {browser:?} to open {url} (set $BROWSER to your browser)")
        })?;
    if !status.success() {
        bail!("{browser} {url}: {status}");
    }
    Ok(())
}

/// `herd ssh NODE [COMMAND…]`: OpenSSH's `ssh` to NODE's gossiped address, as `user` when given
/// (else ssh's own choice: `~/.ssh/config`, then the local user name). Replaces this process, so the
/// terminal, the exit status and ssh's own errors are ssh's.
pub fn ssh(t: &Target, node: &str, user: Option<&str>, command: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let entry = t.client()?;
    let nodes = entry.nodes()?;
    let n = find_member(&entry, &nodes, node)?;
    let Some(addr) = n.address else {
        bail!("node {:?} publishes no address", n.name);
    };
    let mut ssh = std::process::Command::new("ssh");
    if let Some(user) = user {
        ssh.args(["-l", user]);
    }
    ssh.arg("--").arg(addr.to_string()).args(command);
    let e = ssh.exec();
    Err(e).context("cannot run ssh (OpenSSH's client: apt-get install openssh-client)")
}

/// `herd reboot|shutdown NODE…`, `herd identify|restart NODE`: every node is found first (a name that
/// matches none stops before anything is asked), then each is asked through its own API in turn; a
/// node that refuses is said and the others are still asked; the exit status fails if any refused.
pub fn act(
    t: &Target,
    names: &[String],
    action: crate::model::actions::Action,
) -> anyhow::Result<()> {
    let entry = t.client()?;
    let nodes = entry.nodes()?;
    let mut targets = Vec::new();
    for name in names {
        targets.push(find_member(&entry, &nodes, name)?);
    }
    let mut failed = 0;
    for node in targets {
        let asked = node_client(t, &entry, node).and_then(|c| c.action(action));
        match asked {
            Ok(view) if t.json => println!("{}", serde_json::to_string(&view)?),
            Ok(view) => println!("{}: {}", view.name, view.said),
            Err(e) => {
                failed += 1;
                eprintln!("{}: {} refused: {e:#}", node.name, action.as_str());
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} node(s) refused to {}",
            names.len(),
            action.as_str()
        );
    }
    Ok(())
}

/// `herd logs NODE`: the node's journal, printed as it comes from its own API (lines are the node's
/// `journalctl -o short-iso`, in its time zone). The query is checked here first, with the node's rules.
pub fn logs(t: &Target, node: &str, q: &crate::model::logs::LogQuery) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let q = crate::model::logs::LogQuery::parse(&q.to_query()).map_err(anyhow::Error::msg)?;
    let entry = t.client()?;
    let nodes = entry.nodes()?;
    let target = find_member(&entry, &nodes, node)?;
    let client = node_client(t, &entry, target)?;
    let mut lines = client.logs(&q)?;
    let stdout = std::io::stdout();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = lines
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}'s logs from {}", target.name, client.base()))?;
        if n == 0 {
            break;
        }
        let mut out = stdout.lock();
        // A reader gone (`| head`) ends it quietly.
        if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
    if q.follow {
        bail!(
            "{} closed the log stream of {} (the node or its agent restarting?)",
            client.base(),
            target.name
        );
    }
    Ok(())
}

/// `--since T`: a time ago (`10m`, `2h 30m`), a UTC time (`2026-12-07 14:00:00`, `…T14:00:00Z`) or
/// `@SECONDS`; as seconds since 1970.
pub fn parse_since(t: &str, now: std::time::SystemTime) -> anyhow::Result<i64> {
    use std::time::UNIX_EPOCH;
    let t = t.trim();
    let at = if let Some(secs) = t.strip_prefix('@') {
        return secs
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .with_context(|| format!("--since {t}: @ takes seconds since 1970"));
    } else if let Ok(ago) = humantime::parse_duration(t.trim_end_matches(" ago")) {
        now.checked_sub(ago)
            .with_context(|| format!("--since {t}: before 1970"))?
    } else if let Ok(at) = humantime::parse_rfc3339_weak(t)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{t}:00")))
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{t} 00:00:00")))
    {
        at
    } else {
        bail!(
            "--since {t:?}: give a time ago (10m, 2h, 1day) or a UTC time (2026-12-07 14:00:00, \
             2026-12-07T14:00:00Z, 2026-12-07)"
        );
    };
    let secs = at
        .duration_since(UNIX_EPOCH)
        .with_context(|| format!("--since {t}: before 1970"))?
        .as_secs();
    Ok(secs as i64)
}

/// `herd meta-data add-service|remove-service NODE SERVICE`: finds NODE (name, id or address) through the
/// `--node` API and changes its meta-data through its own API.
pub fn change_service(t: &Target, node: &str, service: &str, add: bool) -> anyhow::Result<()> {
    crate::model::published::check_service_name(service).map_err(anyhow::Error::msg)?;
    let entry = t.client()?;
    let nodes = entry.nodes()?;
    let target = find_member(&entry, &nodes, node)?;
    let client = node_client(t, &entry, target)?;
    let view = client.change_service(service, add)?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        let what = match (add, view.changed) {
            (true, true) => "added to",
            (true, false) => "was already on",
            (false, true) => "removed from",
            (false, false) => "was not on",
        };
        println!(
            "{service} {what} {}; services: {}",
            view.name,
            if view.services.is_empty() {
                "-".to_string()
            } else {
                view.services.join(", ")
            }
        );
    }
    Ok(())
}

/// A client for `node`'s own API (the `entry` client when it is the node serving the CLI).
pub fn node_client(t: &Target, entry: &Client, node: &NodeView) -> anyhow::Result<Client> {
    if node.is_self {
        return Ok(entry.clone());
    }
    let (Some(addr), Some(port)) = (node.address, node.http_port) else {
        bail!("node {:?} publishes no API address", node.name);
    };
    t.member_client(std::net::SocketAddr::new(addr, port), &node.id)
}

/// `herd inventory --list | --host NAME`: Ansible's dynamic-inventory protocol.
pub fn inventory(t: &Target, list: bool, host: Option<&str>) -> anyhow::Result<()> {
    let inv = super::inventory::Inventory::from_nodes(&t.client()?.nodes()?);
    let out = match (list, host) {
        (true, None) => inv.list(),
        (false, Some(h)) => inv.host(h),
        _ => bail!("inventory: give either --list or --host NAME"),
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `herd hosts --playbook FILE [--out FILE]`: a static INI inventory with the groups the playbook targets.
pub fn hosts(
    t: &Target,
    playbook: &std::path::Path,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let groups = super::inventory::playbook_groups(playbook)?;
    let inv = super::inventory::Inventory::from_nodes(&t.client()?.nodes()?);
    let mut groups = groups;
    if groups.is_empty() {
        // `hosts: all`: every alive node.
        groups.push("alive".into());
    }
    for g in &groups {
        if !inv.groups.contains_key(g) {
            eprintln!(
                "warning: no alive node is in group {g:?} (targeted by {})",
                playbook.display()
            );
        }
    }
    let text = inv.ini(&groups);
    match out {
        None => print!("{text}"),
        Some(path) => {
            crate::files::write_atomic(path, &text)?;
            eprintln!("wrote {} ({} group(s))", path.display(), groups.len());
        }
    }
    Ok(())
}

/// `herd watch`: membership events from a node, one line each, until interrupted. A node that cannot be
/// reached at first is an error; a stream that breaks later (the node restarting) is retried every few
/// seconds. Events missed (while reconnecting, or a `gap` the node reports because this reader fell
/// behind) are made up from the member list: every member whose state changed meanwhile gets a line
/// with its new state, marked `(catch-up)`, so no failure goes unseen.
pub fn watch(t: &Target) -> anyhow::Result<()> {
    let client = t.client()?;
    let mut names: Names = HashMap::new();
    refresh_names(&client, &mut names)?;
    let mut stream = client.stream("/api/v1/events")?;
    if !t.json {
        eprintln!("watching {} (Ctrl-C to stop)", client.base());
    }
    loop {
        let broke = follow(t, &client, stream, &mut names);
        eprintln!(
            "{}: {}; reconnecting",
            client.base(),
            match broke {
                Ok(()) => "the node closed the event stream".to_string(),
                Err(e) => format!("{e:#}"),
            }
        );
        let mut wait = std::time::Duration::from_secs(1);
        stream = loop {
            std::thread::sleep(wait);
            match client.stream("/api/v1/events") {
                Ok(s) => break s,
                Err(_) => wait = (wait * 2).min(std::time::Duration::from_secs(10)),
            }
        };
        eprintln!(
            "{}: reconnected; catching up on what happened meanwhile",
            client.base()
        );
        let _ = catch_up(t, &client, &mut names);
    }
}

/// Each member's name, address and state, by id.
type Names = HashMap<String, (String, String, String)>;

fn state_name(state: crate::gossip::Liveness) -> String {
    format!("{state:?}").to_lowercase()
}

/// Reads names and addresses again. A known member's state is left as last printed: only events and
/// [`catch_up`] change it, so a state read early cannot hide an event that is lost later.
fn refresh_names(client: &Client, names: &mut Names) -> anyhow::Result<()> {
    for n in client.nodes()? {
        let addr = n.address.map_or("-".to_string(), |a| a.to_string());
        let state = names
            .get(&n.id)
            .map_or_else(|| state_name(n.state), |(_, _, s)| s.clone());
        names.insert(n.id.clone(), (n.name.clone(), addr, state));
    }
    Ok(())
}

/// Reads the members again and prints a line for each whose state is not what was last printed.
fn catch_up(t: &Target, client: &Client, names: &mut Names) -> anyhow::Result<()> {
    for n in client.nodes()? {
        let addr = n.address.map_or("-".to_string(), |a| a.to_string());
        let state = state_name(n.state);
        let changed = names.get(&n.id).is_none_or(|(_, _, s)| *s != state);
        names.insert(n.id.clone(), (n.name.clone(), addr.clone(), state.clone()));
        if changed {
            print_event(t, &state, &n.id, &n.name, &addr, None, true);
        }
    }
    Ok(())
}

/// The state a member is in after an event of `kind`, when the event says.
fn state_after(kind: &str) -> Option<&'static str> {
    match kind {
        "joined" | "recovered" | "restarted" => Some("alive"),
        "suspect" => Some("suspect"),
        "dead" => Some("dead"),
        "left" => Some("left"),
        _ => None,
    }
}

/// Prints one event line (or JSON object); exits quietly when stdout is gone (`herd watch | head`).
fn print_event(
    t: &Target,
    kind: &str,
    id: &str,
    name: &str,
    addr: &str,
    generation: Option<&serde_json::Value>,
    catch_up: bool,
) {
    use std::io::Write;
    // Names are checked when gossiped, but the terminal is no place to trust a peer: escape anything
    // that is not printable.
    let name: String = name.chars().flat_map(char::escape_default).collect();
    let text = if t.json {
        serde_json::json!({"event": kind, "id": id, "name": name, "address": addr,
            "generation": generation, "catch_up": catch_up})
        .to_string()
    } else {
        format!(
            "{}  {kind:<10} {name:<20} {addr:<15} {}{}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            &id[..id.len().min(16)],
            if catch_up { "  (catch-up)" } else { "" }
        )
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Prints the events of one connection until it ends.
fn follow(
    t: &Target,
    client: &Client,
    stream: impl std::io::BufRead,
    names: &mut Names,
) -> anyhow::Result<()> {
    let mut kind = String::new();
    let mut last_refresh: Option<std::time::Instant> = None;
    for line in stream.lines() {
        let line = line.context("the event stream broke")?;
        if let Some(k) = line.strip_prefix("event:") {
            kind = k.trim().to_string();
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let event: serde_json::Value = match serde_json::from_str(data.trim()) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if kind == "gap" {
            eprintln!(
                "{}: {} events were missed (this reader fell behind); catching up",
                client.base(),
                event["missed"]
            );
            catch_up(t, client, names)?;
            continue;
        }
        let id = event["node"].as_str().unwrap_or("").to_string();
        // Names and addresses change on joins and restarts, rarely on updates; updates (monitoring
        // figures) come every few seconds from every node, so they refresh at most once a second.
        let stale = last_refresh.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if !names.contains_key(&id)
            || matches!(kind.as_str(), "joined" | "restarted")
            || (kind == "updated" && stale)
        {
            let _ = refresh_names(client, names);
            last_refresh = Some(std::time::Instant::now());
        }
        let (name, addr, _) = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| ("?".into(), "-".into(), String::new()));
        if let (Some(state), Some(entry)) = (state_after(&kind), names.get_mut(&id)) {
            entry.2 = state.to_string();
        }
        print_event(
            t,
            &kind,
            &id,
            &name,
            &addr,
            Some(&event["generation"]),
            false,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::views::NodeView;

    /// A node as `GET /api/v1/nodes` shows it, with 2 GiB and the engine report given.
    fn node(id: u64, state: &str, engine: serde_json::Value) -> NodeView {
        serde_json::from_value(serde_json::json!({
            "id": format!("{id:016x}"), "name": format!("pi{id}"), "address": format!("10.0.0.{id}"),
            "gossip_port": 7946, "http_port": 8080, "state": state, "phi": 0.0, "threshold": 8.0,
            "generation": 1, "last_heard_ms": 900_000, "is_self": id == 1, "version": "0.1.0",
            "services": [], "facts": null, "uptime_s": 10,
            "monitoring": {"cpu": 1.0, "mem_used": 1, "mem_total": 2u64 << 30, "load": [0.0, 0.0, 0.0],
                           "temp": null, "disk_used": 1, "disk_total": 2},
            "engine": engine,
        }))
        .unwrap()
    }

    /// An engine report: in `swarm`, with `role`, leading or not.
    fn e(swarm: &str, role: &str, leader: bool) -> serde_json::Value {
        serde_json::json!({"swarm": swarm, "node": format!("n{role}"), "role": role, "leader": leader})
    }

    #[test]
    fn the_engine_table_says_where_herd_and_the_engines_disagree() {
        let nodes = [
            node(1, "alive", e("s1", "manager", true)),
            node(2, "alive", e("s1", "worker", false)),
            node(3, "alive", e("s1", "worker", false)),
            node(4, "dead", e("s1", "manager", false)),
            node(5, "alive", serde_json::json!({"role": "none"})),
            node(6, "alive", e("s9", "manager", true)),
            node(7, "alive", serde_json::Value::Null),
        ];
        let out = super::engine_table(&nodes);
        assert!(out.starts_with("NAME"), "{out}");
        assert!(out.contains("pi1 *"), "{out}");
        for line in [
            "pi4: herd sees it dead, and it manages the swarm",
            "pi5: is in no swarm: it joins.",
            "pi6: is in another swarm (s9): it leaves it and joins the cluster's.",
            "pi7: reports no engine.",
            "pi2: should manage: the leader promotes it.",
        ] {
            assert!(out.contains(line), "no {line:?} in:\n{out}");
        }
        assert!(!out.contains("pi1: "), "{out}");
        let none = super::engine_table(&[node(1, "alive", serde_json::Value::Null)]);
        assert!(none.contains("No node reports an engine."), "{none}");
    }

    #[test]
    fn engine_env_points_docker_at_an_alive_manager_of_the_clusters_swarm() {
        let nodes = [
            node(1, "alive", e("s1", "worker", false)),
            node(2, "alive", e("s1", "manager", false)),
            node(3, "alive", e("s1", "manager", true)),
            node(4, "dead", e("s1", "manager", false)),
            node(5, "alive", e("s9", "manager", true)),
        ];
        let out = super::docker_host(&nodes, Some("pi")).unwrap();
        assert_eq!(
            out,
            "# swarm s1: pi3 manages it and leads\nexport DOCKER_HOST=ssh://pi@10.0.0.3\n\
             # or pi2: DOCKER_HOST=ssh://pi@10.0.0.2\n"
        );
        // The leader gone: another manager; no user: ssh's own choice.
        let out = super::docker_host(&[nodes[0].clone(), nodes[1].clone()], None).unwrap();
        assert!(out.contains("export DOCKER_HOST=ssh://10.0.0.2\n"), "{out}");
        let e = super::docker_host(&[nodes[0].clone()], None).unwrap_err();
        assert!(e.contains("no alive manager of swarm s1"), "{e}");
        let e = super::docker_host(&[node(1, "alive", serde_json::Value::Null)], None).unwrap_err();
        assert!(e.contains("no alive node is in a swarm"), "{e}");
    }

    #[test]
    fn access_debug_never_shows_the_token() {
        let a = super::Access {
            token: Some("s3cret-token".into()),
            older_get_token: false,
        };
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
