//! The agent's configuration file, `/etc/herd/herd.toml`: strict (unknown keys are errors), with named
//! defaults, and validated up front so a mistake is reported with its key and file instead of surfacing
//! later as odd behaviour.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::gossip::phi::PhiConfig;
use crate::gossip::wire::{ClusterKey, Security};
use crate::gossip::GossipConfig;

pub mod hostname;

pub use hostname::HostnameTemplate;

/// A string that never shows in logs or `Debug` output.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the cluster; agents only ever talk to agents of the same name.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Name shown for this node; empty means the host name.
    #[serde(default)]
    pub node_name: String,
    /// Host name given to the card on first boot (`herd set-hostname`); empty leaves it alone.
    #[serde(default)]
    pub hostname_template: String,
    /// Where the agent keeps its identity and state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub gossip: GossipSection,
    #[serde(default)]
    pub failure_detector: FailureDetectorSection,
    #[serde(default)]
    pub discovery: DiscoverySection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub monitoring: MonitoringSection,
    #[serde(default)]
    pub upgrade: UpgradeSection,
    #[serde(default)]
    pub logs: LogsSection,
    #[serde(default)]
    pub engine: EngineSection,
    /// `[service.NAME]`: settings of one service.
    #[serde(default)]
    pub service: std::collections::BTreeMap<String, ServiceSection>,
    /// `[[handlers]]`: commands run on membership events.
    #[serde(default)]
    pub handlers: Vec<HandlerSection>,
}

/// `[service.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// φ at which a node running this service is declared dead (the lowest applies when a node runs
    /// several); unset means `failure_detector.phi_threshold`.
    pub phi_threshold: Option<f64>,
}

/// `[[handlers]]`: a command run (with `sh -c`) on membership events, like Serf's event handlers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    /// Which events: any of "join", "leave", "failure", "update" (services, name or address changed),
    /// "health" (the member's health checks changed: a new problem, or one gone).
    pub on: Vec<HandlerEvent>,
    /// The command, given to `sh -c`, with the member in `HERD_*` environment variables.
    pub command: String,
    /// Killed when it runs longer.
    #[serde(default = "default_handler_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// What a handler can be run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerEvent {
    Join,
    Leave,
    Failure,
    Update,
    Health,
}

impl HandlerEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerEvent::Join => "join",
            HandlerEvent::Leave => "leave",
            HandlerEvent::Failure => "failure",
            HandlerEvent::Update => "update",
            HandlerEvent::Health => "health",
        }
    }
}

fn default_handler_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `[api]`: the dashboard and REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Serve the dashboard and the API.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// TCP address to serve on.
    #[serde(default = "default_api_bind")]
    pub bind: SocketAddr,
    /// Bearer token that write endpoints require; unset means writes are open to anyone on the network.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Require the token for reads too (the dashboard included; browsers ask for it as a password),
    /// for clusters on shared networks. `/healthz` stays open.
    #[serde(default)]
    pub protect_reads: bool,
}

/// `[upgrade]`: what `herd upgrade` may install on this card.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSection {
    /// The public half of the cluster's signing key (base64), from `secrets/CLUSTER.toml`: only
    /// artifacts it verifies are installed. Empty: an image from before `herd upgrade`; the first upgrade
    /// brings it, authenticated with the API token.
    #[serde(default)]
    pub public_key: String,
}

impl UpgradeSection {
    /// The key, when one is set.
    pub fn key(&self) -> anyhow::Result<Option<crate::release::PublicKey>> {
        if self.public_key.is_empty() {
            return Ok(None);
        }
        crate::release::PublicKey::from_base64(&self.public_key)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("upgrade.public_key: {e}"))
    }
}

/// `[logs]`: the journal `GET /api/v1/logs` serves (always to the token only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    /// Read the journal files in this directory (`journalctl --directory`) instead of the system
    /// journal: a container's, or a copy's.
    #[serde(default)]
    pub journal_directory: Option<PathBuf>,
}

/// `[engine]`: the container engine herd forms from its membership (docs/ENGINE.md), run by the card's
/// root side (`herd-engine.service`). Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    #[serde(default)]
    pub kind: EngineKind,
    /// How many eligible nodes must be up and agreed before a swarm is formed: a majority of the cards
    /// (2 of 3, 3 of 5) keeps a partition at the very first formation from making two swarms.
    #[serde(default = "default_expect")]
    pub expect: usize,
    /// From this many members on the swarm has five managers (three from three on, one below).
    #[serde(default = "default_five_managers_from")]
    pub five_managers_from: usize,
    /// A node needs this much memory (MiB) to manage: a Pi 3 may, a Zero 2 W may not.
    #[serde(default = "default_min_manager_memory_mib")]
    pub min_manager_memory_mib: u64,
    /// How long the set of up members must stay the same before the swarm is formed or its managers
    /// change.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// How long a node must be dead before it is taken out of the swarm (one that left gracefully is
    /// taken out at once).
    #[serde(default = "default_remove_after", with = "humantime_serde")]
    pub remove_after: Duration,
    /// Where the root side and the agent hand each other files (the engine's report, the join offers):
    /// `herd-engine.service`'s runtime directory.
    #[serde(default = "default_engine_run_dir")]
    pub run_dir: PathBuf,
}

/// Which engine `[engine]` forms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// herd does nothing to any engine.
    #[default]
    None,
    /// Docker Swarm (`docker.io` on the card: `cargo xtask image --engine swarm`).
    Swarm,
}

fn default_expect() -> usize {
    1
}
fn default_five_managers_from() -> usize {
    7
}
fn default_min_manager_memory_mib() -> u64 {
    700
}
fn default_settle() -> Duration {
    Duration::from_secs(30)
}
fn default_engine_run_dir() -> PathBuf {
    PathBuf::from("/run/herd-engine")
}
fn default_remove_after() -> Duration {
    Duration::from_secs(600)
}

impl Default for EngineSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

/// `[monitoring]`: what the agent samples and gossips about its machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSection {
    /// Sample and gossip the machine's figures (off: no `mon` key, no sampling cost).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often to sample CPU, memory, load, temperature and disk.
    #[serde(default = "default_sample_interval", with = "humantime_serde")]
    pub interval: Duration,
}

/// `[discovery]`: finding peers on the LAN with mDNS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// Announce this agent and browse for peers as DNS-SD service `_herd._udp.local.`.
    #[serde(default = "default_true")]
    pub mdns: bool,
    /// Interfaces to use for mDNS; empty means every IPv4 interface that is up, multicast-capable and
    /// not loopback.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

/// `[gossip]`: transport, peers and security.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipSection {
    /// UDP address to listen on.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Address peers should use to reach this node; by default the bind address, or the address of the
    /// interface that routes to the first seed, or to the LAN's multicast group.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// `host:port` of agents to contact when no peer is known.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// How often to gossip.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long dead and left nodes are remembered.
    #[serde(default = "default_reap_after", with = "humantime_serde")]
    pub reap_after: Duration,
    /// The cluster key, 32 bytes in base64 (`herd keygen`).
    #[serde(default)]
    pub key: Option<Secret>,
    /// Older keys still accepted while a new key is rolled out.
    #[serde(default)]
    pub previous_keys: Vec<Secret>,
    /// Run without encryption or authentication. Only for tests and trusted labs.
    #[serde(default)]
    pub insecure: bool,
}

/// `[failure_detector]`: the phi accrual detector. The settings left out take the defaults of the
/// detection chosen (see `gossip::phi::PhiConfig::monitors` and `::gossip`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureDetectorSection {
    #[serde(default)]
    pub detection: DetectionMode,
    /// Detection by monitors: how many monitors each node has.
    #[serde(default = "default_monitors")]
    pub monitors: usize,
    /// Detection by monitors: how long a probe waits for an answer before the node is convicted.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    #[serde(default = "default_threshold")]
    pub phi_threshold: f64,
    pub window: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub min_std_dev: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub acceptable_pause: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub bootstrap_interval: Option<Duration>,
}

/// `failure_detector.detection`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectionMode {
    /// Heartbeats straight to each node's monitors (the default).
    #[default]
    Monitors,
    /// Heartbeats through gossip, every node judging every other (herd before 0.2).
    Gossip,
}

fn default_monitors() -> usize {
    crate::gossip::MonitorConfig::default().monitors
}
fn default_probe_timeout() -> Duration {
    crate::gossip::MonitorConfig::default().probe_timeout
}

fn default_api_bind() -> SocketAddr {
    "0.0.0.0:8080".parse().expect("constant")
}
fn default_sample_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}
/// A cluster's name: 1 to 63 characters of `A-Z a-z 0-9 - _` (it names files and mDNS records).
pub fn check_cluster_name(c: &str) -> Result<(), String> {
    if c.is_empty()
        || c.len() > 63
        || !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{c:?} must be 1 to 63 characters of A-Z, a-z, 0-9, '-' and '_'"
        ));
    }
    Ok(())
}

fn default_cluster() -> String {
    "herd".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/herd".into()
}
/// The gossip port of a new image. Not 7946, which Docker Swarm (which cannot move it, moby#39280),
/// Serf, Consul's LAN pool and MetalLB's memberlist use on TCP and UDP; nor any other port of the tools
/// people run beside herd on a Pi cluster (Swarm 2377 and 4789, Consul 8300-8302, Nomad 4646-4648, k3s
/// 6443 and 10250, flannel 8472 and 51820-51821, etcd 2379-2380, Ceph 6789 and 6800-7300). Cards
/// baked with another port keep it: mDNS and the gossip carry each node's own address and port.
pub const DEFAULT_GOSSIP_PORT: u16 = 7496;

fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_GOSSIP_PORT))
}
fn default_interval() -> Duration {
    GossipConfig::new("").interval
}
fn default_reap_after() -> Duration {
    GossipConfig::new("").reap_after
}
fn default_threshold() -> f64 {
    PhiConfig::default().threshold
}

impl Default for GossipSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl Default for MonitoringSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl Default for DiscoverySection {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl Default for FailureDetectorSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

/// A TOML error without the line of the file that toml quotes: that line may hold the cluster key or the
/// API token, and the error goes to the journal. The position and toml's explanation stay.
fn without_source(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        // Name the key (with its table) instead of quoting its line: `gossip.key`, never its value.
        let lines: Vec<&str> = text.lines().collect();
        let key = lines
            .get(line - 1)
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.contains(['"', '\'']));
        let table = lines[..(line - 1).min(lines.len())]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|l| l.trim_matches(['[', ']']).trim());
        let name = match (table, key) {
            (Some(t), Some(k)) => format!(" ({t}.{k})"),
            (None, Some(k)) => format!(" ({k})"),
            _ => String::new(),
        };
        format!(" at line {line}, column {column}{name}")
    });
    anyhow::anyhow!(
        "TOML error{}: {}",
        at.unwrap_or_default(),
        e.message().trim()
    )
}

impl ApiSection {
    /// Where this card's own agent answers: the bound address, loopback when it binds every address.
    pub fn local_url(&self) -> String {
        let ip = if self.bind.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            self.bind.ip()
        };
        format!("http://{}", SocketAddr::new(ip, self.bind.port()))
    }
}

impl Config {
    /// Reads, parses and validates `path`; errors name the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// What is wrong with `path`'s permissions for a file holding this config's secrets (the cluster key
    /// or the API token): readable or writable by other users lets any account on the machine join the
    /// cluster or change meta-data. `None` when fine (or there is no secret).
    pub fn permission_problem(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        if self.gossip.key.is_none() && self.api.token.is_none() {
            return None;
        }
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        let who = match (mode & 0o006 != 0, mode & 0o060 != 0) {
            (true, _) => "every user",
            (false, true) => "its group",
            (false, false) => return None,
        };
        Some(format!(
            "{} holds the cluster key or the API token and is mode {mode:03o}: readable or writable by \
             {who}; make it 0600 (chmod 600 {})",
            path.display(),
            path.display()
        ))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| without_source(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        check_cluster_name(&self.cluster).map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
        self.upgrade.key()?;
        if !self.node_name.is_empty() {
            crate::model::published::check_node_name(&self.node_name)
                .map_err(|e| anyhow::anyhow!("node_name: {e}"))?;
        }
        if !self.hostname_template.is_empty() {
            hostname::HostnameTemplate::parse(&self.hostname_template)
                .context("hostname_template")?;
        }
        if let Some(d) = self
            .logs
            .journal_directory
            .as_ref()
            .filter(|d| !d.is_absolute())
        {
            bail!(
                "logs.journal_directory: {} must be an absolute path",
                d.display()
            );
        }
        let e = &self.engine;
        if !(1..=1000).contains(&e.expect) {
            bail!("engine.expect: {} must be between 1 and 1000", e.expect);
        }
        if e.five_managers_from < 5 {
            bail!(
                "engine.five_managers_from: {} must be at least 5 (five managers need five members)",
                e.five_managers_from
            );
        }
        if e.min_manager_memory_mib > 1 << 20 {
            bail!(
                "engine.min_manager_memory_mib: {} MiB is more than any card has",
                e.min_manager_memory_mib
            );
        }
        if !e.run_dir.is_absolute() {
            bail!(
                "engine.run_dir: {} must be an absolute path",
                e.run_dir.display()
            );
        }
        if e.settle > Duration::from_secs(3600) {
            bail!("engine.settle: {:?} must be at most 1h", e.settle);
        }
        if e.remove_after < Duration::from_secs(60) {
            bail!(
                "engine.remove_after: {:?} must be at least 60s (a reboot must not cost a node its place)",
                e.remove_after
            );
        }
        let g = &self.gossip;
        if g.interval < Duration::from_millis(10) || g.interval > Duration::from_secs(60) {
            bail!(
                "gossip.interval: {:?} must be between 10ms and 60s",
                g.interval
            );
        }
        if g.reap_after < g.interval * 10 {
            bail!("gossip.reap_after: must be at least ten gossip intervals");
        }
        for (i, seed) in g.seeds.iter().enumerate() {
            match seed.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => bail!("gossip.seeds[{i}]: {seed:?} is not host:port"),
            }
        }
        match (&g.key, g.insecure) {
            (None, false) => bail!(
                "gossip.key: no cluster key; generate one with `herd keygen`, or set \
                 gossip.insecure = true to run unencrypted"
            ),
            (Some(_), true) => {
                bail!("gossip.insecure: true contradicts gossip.key; remove one of them")
            }
            _ => {}
        }
        if let Some(key) = &g.key {
            ClusterKey::from_base64(&key.0).map_err(|e| anyhow::anyhow!("gossip.key: {e}"))?;
        }
        for (i, key) in g.previous_keys.iter().enumerate() {
            ClusterKey::from_base64(&key.0)
                .map_err(|e| anyhow::anyhow!("gossip.previous_keys[{i}]: {e}"))?;
        }
        for (i, name) in self.discovery.interfaces.iter().enumerate() {
            // Linux interface names: 1 to 15 bytes, no '/', no white space (IFNAMSIZ and dev_valid_name).
            if name.is_empty()
                || name.len() > 15
                || name == "."
                || name == ".."
                || name
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            {
                bail!(
                    "discovery.interfaces[{i}]: {name:?} is not an interface name (1 to 15 characters, \
                     no '/', ':' or white space)"
                );
            }
        }
        if self.api.protect_reads && self.api.token.is_none() {
            bail!(
                "api.protect_reads: true needs api.token (without a token nothing is protected: every \
                 read and write stays open)"
            );
        }
        if let Some(token) = &self.api.token {
            let t = &token.0;
            if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("api.token: must be 16 to 256 printable ASCII characters without spaces");
            }
        }
        let m = &self.monitoring;
        if m.interval < Duration::from_millis(500) || m.interval > Duration::from_secs(3600) {
            bail!(
                "monitoring.interval: {:?} must be between 500ms and 1h",
                m.interval
            );
        }
        for (name, svc) in &self.service {
            crate::model::published::check_service_name(name)
                .map_err(|e| anyhow::anyhow!("service.{name}: {e}"))?;
            if let Some(t) = svc.phi_threshold {
                if !(t.is_finite() && t > 0.0) {
                    bail!("service.{name}.phi_threshold: must be a positive number");
                }
            }
        }
        for (i, h) in self.handlers.iter().enumerate() {
            if h.on.is_empty() {
                bail!("handlers[{i}].on: name at least one of join, leave, failure, update");
            }
            if h.command.trim().is_empty() {
                bail!("handlers[{i}].command: empty");
            }
            if h.timeout.is_zero() || h.timeout > Duration::from_secs(3600) {
                bail!("handlers[{i}].timeout: must be between 1ms and 1h");
            }
        }
        let f = &self.failure_detector;
        if !(f.phi_threshold.is_finite() && f.phi_threshold > 0.0) {
            bail!("failure_detector.phi_threshold: must be a positive number");
        }
        if f.window.is_some_and(|w| w == 0 || w > 10_000) {
            bail!("failure_detector.window: must be between 1 and 10000");
        }
        if f.bootstrap_interval.is_some_and(|b| b.is_zero()) {
            bail!("failure_detector.bootstrap_interval: must be more than zero");
        }
        if !(1..=32).contains(&f.monitors) {
            bail!("failure_detector.monitors: must be between 1 and 32");
        }
        if f.probe_timeout.is_zero() || f.probe_timeout > Duration::from_secs(60) {
            bail!("failure_detector.probe_timeout: must be between 1ms and 60s");
        }
        Ok(())
    }

    /// The datagram protection this configuration asks for.
    pub fn security(&self) -> Security {
        match self.cluster_keys().split_first() {
            None => Security::Insecure,
            Some((key, older)) => Security::keyring(key, older),
        }
    }

    /// The cluster keys, the current one first, then those kept during a rotation; none on an insecure
    /// cluster.
    pub fn cluster_keys(&self) -> Vec<ClusterKey> {
        let Some(key) = &self.gossip.key else {
            return Vec::new();
        };
        std::iter::once(key)
            .chain(&self.gossip.previous_keys)
            .map(|s| ClusterKey::from_base64(&s.0).expect("validated"))
            .collect()
    }

    /// The settings of the gossip core (seeds are resolved by the caller).
    pub fn gossip_config(&self) -> GossipConfig {
        let f = &self.failure_detector;
        let (detection, phi) = match f.detection {
            DetectionMode::Monitors => (
                crate::gossip::Detection::Monitors(crate::gossip::MonitorConfig {
                    monitors: f.monitors,
                    probe_timeout: f.probe_timeout,
                    ..Default::default()
                }),
                PhiConfig::monitors(),
            ),
            DetectionMode::Gossip => (crate::gossip::Detection::Gossip, PhiConfig::gossip()),
        };
        GossipConfig {
            detection,
            interval: self.gossip.interval,
            reap_after: self.gossip.reap_after,
            phi: PhiConfig {
                threshold: f.phi_threshold,
                window: f.window.unwrap_or(phi.window),
                min_std_dev: f.min_std_dev.unwrap_or(phi.min_std_dev),
                acceptable_pause: f.acceptable_pause.unwrap_or(phi.acceptable_pause),
                bootstrap_interval: f.bootstrap_interval.unwrap_or(phi.bootstrap_interval),
                model: phi.model,
            },
            service_thresholds: self
                .service
                .iter()
                .filter_map(|(name, s)| s.phi_threshold.map(|t| (name.clone(), t)))
                .collect(),
            check_value: crate::model::published::check_value,
            ..GossipConfig::new(&self.cluster)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    /// The public half of the signing key whose seed is 32 bytes of 7.
    const PUBLIC: &str = "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=";

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn shipped_config_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlay/etc/herd/herd.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // The overlay ships placeholders that the image pipeline fills in; fill them like it does.
        let text = text.replace("{{ cluster_key }}", KEY);
        let text = text.replace("{{ cluster }}", "herd");
        let text = text.replace("{{ api_token }}", "0123456789abcdef0123");
        let text = text.replace("{{ seeds }}", "[]");
        let text = text.replace("{{ hostname_template }}", "herd-{id:6}");
        let text = text.replace("{{ signing_public_key }}", PUBLIC);
        let c = Config::parse(
            &text
                .replace("{{ engine }}", "swarm")
                .replace("{{ engine_expect }}", "3"),
        )
        .unwrap();
        assert_eq!((c.engine.kind, c.engine.expect), (EngineKind::Swarm, 3));
        let text = text.replace("{{ engine }}", "none");
        let text = text.replace("{{ engine_expect }}", "1");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.hostname_template, "herd-{id:6}");
        assert_eq!(c.upgrade.key().unwrap().unwrap().to_base64(), PUBLIC);
        // The commented examples parse too, once uncommented.
        let examples: String = text
            .lines()
            .map(|l| {
                let keys = [
                    "# [",
                    "# phi_threshold",
                    "# on =",
                    "# command =",
                    "# timeout =",
                ];
                if keys.iter().any(|k| l.starts_with(k)) {
                    &l[2..]
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let e = Config::parse(&examples).unwrap();
        assert_eq!(e.gossip_config().service_thresholds["nginx_lb"], 4.0);
        assert_eq!(
            e.handlers[0].on,
            [HandlerEvent::Failure, HandlerEvent::Leave]
        );
        let d = Config::parse(&format!("[gossip]\nkey = \"{KEY}\"")).unwrap();
        assert_eq!(c.gossip_config().interval, d.gossip_config().interval);
        assert_eq!(c.gossip_config().phi, d.gossip_config().phi);
        assert_eq!(c.gossip_config().reap_after, d.gossip_config().reap_after);
        assert_eq!(c.gossip.bind, d.gossip.bind);
        assert_eq!(c.state_dir, d.state_dir);
        assert_eq!(c.discovery.mdns, d.discovery.mdns);
        assert_eq!(c.discovery.interfaces, d.discovery.interfaces);
        assert_eq!(c.api.bind, d.api.bind);
        assert_eq!(c.api.enabled, d.api.enabled);
        assert_eq!(c.monitoring.interval, d.monitoring.interval);
        assert_eq!(c.engine.kind, EngineKind::None);
        assert_eq!(c.engine.expect, d.engine.expect);
        assert_eq!(c.engine.five_managers_from, d.engine.five_managers_from);
        assert_eq!(
            c.engine.min_manager_memory_mib,
            d.engine.min_manager_memory_mib
        );
        assert_eq!(c.engine.settle, d.engine.settle);
        assert_eq!(c.engine.remove_after, d.engine.remove_after);
        assert_eq!(c.engine.run_dir, d.engine.run_dir);
        assert!(c.api.token.is_some(), "images always set a token");
    }

    #[test]
    fn a_key_or_an_explicit_insecure_is_required() {
        assert!(err("").contains("gossip.key: no cluster key"));
        assert!(Config::parse("[gossip]\ninsecure = true").is_ok());
        let both = format!("[gossip]\ninsecure = true\nkey = \"{KEY}\"");
        assert!(err(&both).contains("gossip.insecure"));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[gossip]\nkey = \"no pe!\"").contains("gossip.key: is not valid base64"));
        assert!(err("[gossip]\nkey = \"AAAA\"").contains("gossip.key: decodes to 3 bytes"));
        assert!(err("bogus = 1\n[gossip]\ninsecure = true").contains("unknown field `bogus`"));
        let e = err("[gossip]\ninsecure = true\n[upgrade]\npublic_key = \"AAAA\"");
        assert!(
            e.contains("upgrade.public_key") && e.contains("not 32 bytes"),
            "{e}"
        );
        let e = err("hostname_template = \"pi-{name}\"\n[gossip]\ninsecure = true");
        assert!(
            e.contains("hostname_template") && e.contains("unknown placeholder {name}"),
            "{e}"
        );
        assert!(
            err("[gossip]\ninsecure = true\nintervl = \"1s\"").contains("unknown field `intervl`")
        );
        assert!(err("[gossip]\ninsecure = true\ninterval = \"1ms\"").contains("gossip.interval"));
        assert!(err("[gossip]\ninsecure = true\ninterval = \"soon\"").contains("interval"));
        assert!(err("[gossip]\ninsecure = true\nseeds = [\"pi1\"]").contains("gossip.seeds[0]"));
        let engine = |body: &str| err(&format!("[gossip]\ninsecure = true\n[engine]\n{body}"));
        assert!(engine("kind = \"k3s\"").contains("unknown variant `k3s`"));
        assert!(engine("expect = 0").contains("engine.expect: 0 must be between 1 and 1000"));
        assert!(engine("five_managers_from = 4").contains("engine.five_managers_from: 4"));
        assert!(engine("remove_after = \"5s\"").contains("engine.remove_after"));
        assert!(engine("settle = \"2h\"").contains("engine.settle"));
        assert!(engine("run_dir = \"run\"").contains("engine.run_dir: run must be an absolute"));
        assert!(
            engine("min_manager_memory_mib = 99999999").contains("engine.min_manager_memory_mib")
        );
        assert!(err("cluster = \"a b\"\n[gossip]\ninsecure = true").contains("cluster:"));
        assert!(
            err("[gossip]\ninsecure = true\n[failure_detector]\nwindow = 0")
                .contains("failure_detector.window")
        );
        assert!(
            err("[gossip]\ninsecure = true\n[failure_detector]\nphi_threshold = -1.0")
                .contains("failure_detector.phi_threshold")
        );
        let insecure = "[gossip]\ninsecure = true\n";
        assert!(err(&format!("{insecure}[service.db]\nphi_threshold = 0.0"))
            .contains("service.db.phi_threshold"));
        assert!(
            err(&format!("{insecure}[service.\"a b\"]\nphi_threshold = 3.0"))
                .contains("service.a b: invalid service name")
        );
        assert!(err(&format!("{insecure}[service.db]\nphi = 3.0")).contains("unknown field `phi`"));
        assert!(err(&format!(
            "{insecure}[[handlers]]\non = [\"crash\"]\ncommand = \"true\""
        ))
        .contains("unknown variant `crash`"));
        assert!(err(&format!(
            "{insecure}[[handlers]]\non = []\ncommand = \"true\""
        ))
        .contains("handlers[0].on"));
        assert!(err(&format!(
            "{insecure}[[handlers]]\non = [\"join\"]\ncommand = \" \""
        ))
        .contains("handlers[0].command"));
        let ok = Config::parse(&format!(
            "{insecure}[service.db]\nphi_threshold = 3.0\n[[handlers]]\non = [\"failure\", \"leave\"]\ncommand = \"logger x\"\ntimeout = \"5s\""
        ))
        .unwrap();
        assert_eq!(ok.gossip_config().service_thresholds["db"], 3.0);
        assert_eq!(
            ok.handlers[0].on,
            [HandlerEvent::Failure, HandlerEvent::Leave]
        );
    }

    #[test]
    fn discovery_settings_are_checked() {
        let ok = Config::parse(
            "[gossip]\ninsecure = true\n[discovery]\nmdns = false\ninterfaces = [\"eth0\"]",
        )
        .unwrap();
        assert!(!ok.discovery.mdns);
        assert_eq!(ok.discovery.interfaces, ["eth0"]);
        assert!(
            Config::parse("[gossip]\ninsecure = true")
                .unwrap()
                .discovery
                .mdns
        );
        let bad =
            "[gossip]\ninsecure = true\n[discovery]\ninterfaces = [\"eth0\", \"a very long name\"]";
        assert!(err(bad).contains("discovery.interfaces[1]"), "{}", err(bad));
        assert!(err("[gossip]\ninsecure = true\n[discovery]\nmdsn = true")
            .contains("unknown field `mdsn`"));
    }

    #[test]
    fn toml_errors_do_not_quote_the_file() {
        let text =
            "cluster = \"lab\"\n[gossip]\nkey = \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\n";
        let e = format!("{:#}", Config::parse(text).unwrap_err());
        assert!(!e.contains("c2VjcmV0"), "the key leaks: {e}");
        assert!(e.contains("line 3"), "no position: {e}");
        let e = format!(
            "{:#}",
            Config::parse("[api]\ntoken = \"t0k3n-t0k3n-t0k3n\"\nbogus = 1\n").unwrap_err()
        );
        assert!(!e.contains("t0k3n"), "the token leaks: {e}");
        assert!(e.contains("bogus") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.toml");
        std::fs::write(&path, "[gossip]\nkey = \"x\"").unwrap();
        let e = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            e.contains(&path.display().to_string()) && e.contains("gossip.key"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            Config::load(&dir.path().join("missing.toml")).unwrap_err()
        );
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::parse(&format!(
            "[gossip]\nkey = \"{KEY}\"\nprevious_keys = [\"{KEY}\"]\n[api]\ntoken = \"s3cret-t0ken-value\""
        ))
        .unwrap();
        let text = format!("{c:?} {:?}", c.security());
        assert!(!text.contains(KEY), "{text}");
        assert!(!text.contains("AAEC"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn api_and_monitoring_settings_are_checked() {
        let e = err("[gossip]\ninsecure = true\n[api]\ntoken = \"short\"");
        assert!(e.contains("api.token"), "{e}");
        let e = err("[gossip]\ninsecure = true\n[api]\nbind = \"nope\"");
        assert!(e.contains("bind"), "{e}");
        let e = err("[gossip]\ninsecure = true\n[monitoring]\ninterval = \"1ms\"");
        assert!(e.contains("monitoring.interval"), "{e}");
        let c = Config::parse("[gossip]\ninsecure = true").unwrap();
        assert_eq!(c.api.bind.port(), 8080);
        assert!(c.api.token.is_none());
    }
}
