//! The daemon: a thin tokio layer that feeds the sans-IO [`Gossiper`] with real time, real randomness and
//! real UDP datagrams, and hands its events to whoever subscribes.
//!
//! One task owns the socket and runs a `select!` over receive, timer, seed refresh and shutdown. The
//! gossiper sits behind a `std::sync::Mutex` that readers (the API, tests) lock briefly; the lock is never
//! held across an `.await`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use mdns_sd::ServiceDaemon;

use super::api::{self, ApiState};
use super::discovery::{self, Announcement, Change, Mdns};
use super::handle::Handle;
use super::health::HealthReader;
use super::identity::{store_generation, Identity};
use super::metadata::MetaData;
use super::sampler::{Facts, Sample, Sampler, FACTS_KEY, SAMPLE_KEY};
use crate::config::Config;
use crate::gossip::{Event, EventKind, Gossiper, Member, NodeId, Stats, Transmit, SERVICES_KEY};
use crate::model::health::{Health, HEALTH_KEY};
use crate::model::history::{History, NodeEvent, Point};
use crate::model::published::check_node_name;

/// How often seed host names are resolved again (a Pi's DHCP address may change).
const SEED_REFRESH: Duration = Duration::from_secs(30);

/// A running agent.
pub struct Agent {
    handle: Handle,
    local_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    /// Side tasks (monitoring, HTTP) that end with the agent.
    helpers: Vec<JoinHandle<()>>,
    api_stop: Option<oneshot::Sender<()>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    /// Binds the socket, loads or creates the node's identity, starts mDNS discovery, and starts gossiping.
    pub async fn start(config: Config) -> anyhow::Result<Agent> {
        let socket = UdpSocket::bind(config.gossip.bind)
            .await
            .with_context(|| format!("gossip.bind: cannot bind UDP {}", config.gossip.bind))?;
        let local_addr = socket.local_addr()?;
        let seeds = resolve_seeds(&config.gossip.seeds, None).await;
        let advertise = advertise_addr(&config, local_addr, &seeds)?;
        let identity = Identity::load_or_create(&config.state_dir)?;

        if config.gossip.insecure {
            tracing::warn!(
                "gossip.insecure = true: datagrams are neither encrypted nor authenticated"
            );
        }
        let started = Instant::now();
        let mut gossip_config = config.gossip_config();
        gossip_config.seeds = seeds.clone();
        let mut gossiper = Gossiper::new(
            gossip_config,
            config.security(),
            identity.key.clone(),
            identity.generation,
            advertise,
            Duration::ZERO,
        );
        let name = if config.node_name.is_empty() {
            let host = hostname();
            match check_node_name(&host) {
                Ok(()) => host,
                // Peers would refuse the node's whole state: go by the id instead, and say why.
                Err(e) => {
                    tracing::warn!("the host name cannot be the node's name ({e}); set node_name");
                    format!("node-{}", identity.id)
                }
            }
        } else {
            config.node_name.clone()
        };
        gossiper.set("name", &name)?;
        gossiper.set("version", crate::VERSION)?;
        let metadata = MetaData::load(&config.state_dir)?;
        gossiper.set(SERVICES_KEY, &metadata.gossip_value())?;
        gossiper.set(FACTS_KEY, &Facts::read().to_gossip())?;

        let (events, _) = broadcast::channel(1024);
        let handle = Handle {
            history: Arc::new(Mutex::new(History::new(gossiper.id().to_string()))),
            history_json: Arc::default(),
            gossiper: Arc::new(Mutex::new(gossiper)),
            started,
            events,
        };
        let mut helpers = Vec::new();
        let (api_addr, api_stop) = if config.api.enabled {
            let state = ApiState::new(
                handle.clone(),
                Arc::new(Mutex::new(metadata)),
                config.api.token.clone(),
                config.api.protect_reads,
                &config.cluster,
                api::server::fit_to_file_limit(api::server::Limits::default()),
            )
            .with_upgrades(super::upgrade::Upgrades::new(&config)?)
            .with_journal_directory(config.logs.journal_directory.clone())
            .with_actions(&config.state_dir);
            if config.api.token.is_none() {
                tracing::warn!(
                    "api.token is not set: anyone who can reach the API can change meta-data"
                );
            }
            let (stop, stopped) = oneshot::channel::<()>();
            let (addr, task) = api::serve(state, config.api.bind, async {
                let _ = stopped.await;
            })
            .await?;
            handle.set("http", &addr.port().to_string())?;
            helpers.push(task);
            tracing::info!(%addr, "serving the dashboard and API");
            (Some(addr), Some(stop))
        } else {
            (None, None)
        };
        helpers.extend(super::hooks::spawn(
            config.handlers.clone(),
            handle.clone(),
            config.cluster.clone(),
        ));
        // Subscribed here, before the gossip loop starts, so that no event comes before it.
        let events = handle.events.subscribe();
        helpers.push(tokio::spawn(record_events(handle.clone(), events)));
        helpers.push(tokio::spawn(engine_loop(
            handle.clone(),
            EngineFiles {
                report: config
                    .engine
                    .run_dir
                    .join(crate::model::engine::REPORT_FILE),
                offers: config.engine.run_dir.join(crate::model::join::OFFERS_FILE),
                offer: config.state_dir.join(crate::model::join::OFFER_FILE),
            },
        )));
        if config.monitoring.enabled {
            helpers.push(tokio::spawn(monitor_loop(
                handle.clone(),
                config.monitoring.interval,
            )));
        }

        let mdns = if config.discovery.mdns {
            let announcement = Announcement {
                cluster: config.cluster.clone(),
                id: identity.id,
                gossip_port: advertise.port(),
                http_port: api_addr.map(|a| a.port()),
                interfaces: config.discovery.interfaces.clone(),
            };
            match Mdns::start(&announcement) {
                Ok(m) => Some(m),
                // Without seeds the agent could never find a peer: fail loudly. With seeds it can still
                // do its job, so it runs and says what is missing.
                Err(e) if config.gossip.seeds.is_empty() => {
                    for h in &helpers {
                        h.abort();
                    }
                    return Err(
                        e.context("discovery.mdns: no way to find peers (and no gossip.seeds)")
                    );
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "mDNS discovery is off; relying on gossip.seeds");
                    None
                }
            }
        } else {
            None
        };
        tracing::info!(
            id = %identity.id,
            generation = identity.generation,
            %advertise,
            cluster = %config.cluster,
            "agent started"
        );

        let (stop, stopped) = oneshot::channel();
        let (resolved_tx, resolved_rx) = mpsc::channel(1);
        let task = tokio::spawn(
            Loop {
                gossiper: Arc::clone(&handle.gossiper),
                socket,
                started,
                events: handle.events.clone(),
                auto_advertise: config.gossip.advertise.is_none()
                    && local_addr.ip().is_unspecified(),
                config,
                static_seeds: seeds,
                mdns,
                resolving: false,
                resolved_tx,
                resolved_rx,
                generation: identity.generation,
                log: MembershipLog::default(),
            }
            .run(stopped),
        );
        Ok(Agent {
            handle,
            local_addr,
            api_addr,
            helpers,
            api_stop,
            stop: Some(stop),
            task,
        })
    }

    /// A cheap, cloneable view of the agent's state for readers (the API, tests) on any thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    pub fn id(&self) -> NodeId {
        self.handle.id()
    }

    /// The address the gossip socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the dashboard and API listen on, when they run.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Every known member as seen by this agent.
    pub fn members(&self) -> Vec<Member> {
        self.handle.members()
    }

    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.handle.subscribe()
    }

    /// Sets a key of this node's gossiped state.
    pub fn set(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.handle.set(key, value)
    }

    /// Leaves the cluster gracefully and waits for the agent to stop.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = (&mut self.task).await.context("agent task panicked");
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        for h in self.helpers.drain(..) {
            h.abort();
        }
        result?
    }

    /// Stops the agent abruptly, without a word to its peers: what a power cut looks like to them.
    pub fn kill(self) {
        self.task.abort();
        for h in &self.helpers {
            h.abort();
        }
    }
}

/// Samples the machine and reads its health every `interval`, and gossips either when it moved
/// noticeably.
async fn monitor_loop(handle: Handle, interval: Duration) {
    let mut sampler = match tokio::task::spawn_blocking(Sampler::new).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "monitoring is off");
            return;
        }
        Err(_) => return,
    };
    let mut health = HealthReader::new();
    let mut published: Option<Sample> = None;
    let mut published_health: Option<Health> = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok((s, h, sample, now_health)) = tokio::task::spawn_blocking(move || {
            let x = sampler.sample();
            let y = health.read(std::time::Instant::now());
            (sampler, health, x, y)
        })
        .await
        else {
            return;
        };
        (sampler, health) = (s, h);
        if published_health
            .as_ref()
            .is_none_or(|p| now_health.differs_from(p))
        {
            match handle.set(HEALTH_KEY, &now_health.to_gossip()) {
                Ok(()) => published_health = Some(now_health),
                Err(e) => tracing::warn!(error = %e, "cannot publish health"),
            }
        }
        let sample = match sample {
            Ok(x) => x,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %format!("{e:#}"), "cannot sample the machine");
                    warned = true;
                }
                continue;
            }
        };
        record_history(&handle, &sample, published_health.as_ref());
        if published.as_ref().is_none_or(|p| sample.differs_from(p)) {
            if let Err(e) = handle.set(SAMPLE_KEY, &sample.to_gossip()) {
                tracing::warn!(error = %e, "cannot publish monitoring");
            }
            published = Some(sample);
        }
    }
}

/// The files between the agent and the card's root side of the engine.
struct EngineFiles {
    /// What the engine says of itself (root's): gossiped under `engine`.
    report: std::path::PathBuf,
    /// The leader's sealed join offers (root's): gossiped under `engine-join`.
    offers: std::path::PathBuf,
    /// The offers other members made to this one, for the root side (the agent's, 0600).
    offer: std::path::PathBuf,
}

/// Every 5 s: gossips what the card's engine says of itself and the join offers its root side made,
/// each when it changes, and hands the root side the offers addressed to this node. A card without an
/// engine has no files and gossips nothing; a bad file is logged once per distinct problem and not
/// gossiped.
async fn engine_loop(handle: Handle, files: EngineFiles) {
    use crate::model::engine::{read_bounded, EngineReport, ENGINE_KEY};
    use crate::model::join::{ForMe, Offers, JOIN_KEY};
    let files = std::sync::Arc::new(files);
    let mut published: Option<EngineReport> = None;
    let mut published_offers: Option<Offers> = None;
    let mut handed: Vec<ForMe> = Vec::new();
    let mut last_problem: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let f = files.clone();
        let Ok((report, offers)) = tokio::task::spawn_blocking(move || {
            let offers = read_bounded(&f.offers, 2048).and_then(|text| {
                text.map(|t| Offers::check(&t).map_err(|e| format!("{}: {e}", f.offers.display())))
                    .transpose()
            });
            (EngineReport::read(&f.report), offers)
        })
        .await
        else {
            return;
        };
        let mut problem = None;
        match report {
            Ok(Some(report)) if published.as_ref() != Some(&report) => {
                match handle.set(ENGINE_KEY, &report.to_gossip()) {
                    Ok(()) => published = Some(report),
                    Err(e) => tracing::warn!(error = %e, "cannot publish the engine's report"),
                }
            }
            Ok(_) => {}
            Err(p) => problem = Some(p),
        }
        // Offers withdrawn (no longer the leader, or nobody waits): an empty list replaces them.
        let offers = match offers {
            Ok(None) => published_offers.as_ref().map(|o| Offers {
                swarm: o.swarm.clone(),
                offers: Vec::new(),
            }),
            Ok(some) => some,
            Err(p) => {
                problem = problem.or(Some(p));
                None
            }
        };
        if let Some(offers) = offers.filter(|o| published_offers.as_ref() != Some(o)) {
            match handle.set(JOIN_KEY, &offers.to_gossip()) {
                Ok(()) => published_offers = Some(offers),
                Err(e) => tracing::warn!(error = %e, "cannot publish the engine's join offers"),
            }
        }
        if let Some(p) = &problem {
            if last_problem.as_ref() != Some(p) {
                tracing::warn!(problem = %p, "the engine's files are not gossiped");
            }
        }
        last_problem = problem;
        // The offers addressed to this node, checked on receipt like every value.
        let me = handle.id();
        let mine: Vec<ForMe> = handle
            .members()
            .iter()
            .filter(|m| !m.is_self)
            .filter_map(|m| {
                let o = Offers::check(m.kvs.get(JOIN_KEY)?).ok()?;
                o.for_me(me, m.id)
            })
            .collect();
        if mine != handed {
            let path = files.offer.clone();
            let text = serde_json::to_string(&mine).expect("offers serialize");
            let written =
                tokio::task::spawn_blocking(move || crate::files::write_private(&path, &text))
                    .await;
            match written {
                Ok(Ok(())) => handed = mine,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot hand the join offers to the root side")
                }
                Err(_) => return,
            }
        }
    }
}

/// Keeps the membership events (not the updates) in the history, with the time they were seen.
async fn record_events(handle: Handle, mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(e) if e.kind == EventKind::Updated => {}
            Ok(e) => {
                let kind = e.kind.as_str().to_string();
                let event = NodeEvent {
                    t: unix_now(),
                    kind,
                    generation: e.generation,
                };
                handle
                    .history
                    .lock()
                    .expect("history lock poisoned")
                    .event(&e.node.to_string(), event);
            }
            // Behind by more than the channel holds: the missed ones are lost to the history only.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Adds this node's sample, and every other alive member's last gossiped one, to the history.
fn record_history(handle: &Handle, own: &Sample, health: Option<&Health>) {
    let t = unix_now();
    let point = |s: &Sample, writes: Option<u64>| Point {
        t,
        cpu: s.cpu,
        mem: (100.0 * s.mem_used as f64 / s.mem_total.max(1) as f64) as f32,
        load: s.load[0] as f32,
        temp: s.temp,
        writes,
    };
    let members = handle.members();
    let mut history = handle.history.lock().expect("history lock poisoned");
    history.keep_only(&members.iter().map(|m| m.id.to_string()).collect());
    for m in &members {
        if m.is_self {
            history.record(
                &m.id.to_string(),
                point(own, health.and_then(|h| h.writes_per_hour)),
            );
            continue;
        }
        if m.liveness != crate::gossip::Liveness::Alive || !history.wants(&m.id.to_string(), t) {
            continue;
        }
        let Some(s) = m
            .kvs
            .get(SAMPLE_KEY)
            .and_then(|v| serde_json::from_str::<Sample>(v).ok())
        else {
            continue;
        };
        let writes = m
            .kvs
            .get(HEALTH_KEY)
            .and_then(|v| serde_json::from_str::<Health>(v).ok())
            .and_then(|h| h.writes_per_hour);
        history.record(&m.id.to_string(), point(&s, writes));
    }
}

/// Runs an agent until `shutdown` completes, then leaves the cluster gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut agent = Agent::start(config).await?;
    // The loop only ends on its own when it fails.
    let failed = tokio::select! {
        _ = shutdown => None,
        r = &mut agent.task => Some(r),
    };
    match failed {
        None => {
            tracing::info!("shutting down: leaving the cluster");
            agent.shutdown().await
        }
        Some(r) => r.context("agent task panicked")?,
    }
}

/// The agent's task: owns the socket and the discovery, and drives the gossiper.
struct Loop {
    gossiper: Arc<Mutex<Gossiper>>,
    socket: UdpSocket,
    started: Instant,
    events: broadcast::Sender<Event>,
    config: Config,
    /// The advertised address follows the machine's addresses (not fixed by the configuration).
    auto_advertise: bool,
    static_seeds: Vec<SocketAddr>,
    mdns: Option<Mdns>,
    /// Seed names being resolved again (at most one resolution at a time), and where the result comes.
    resolving: bool,
    resolved_tx: mpsc::Sender<Vec<SocketAddr>>,
    resolved_rx: mpsc::Receiver<Vec<SocketAddr>>,
    /// The generation last stored in the state directory.
    generation: u64,
    /// What the membership log lines may take (a key holder inventing members must not flood the log).
    log: MembershipLog,
}

impl Loop {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> anyhow::Result<()> {
        let mut rng = ChaCha20Rng::from_entropy();
        let mut buf = vec![0u8; 65536];
        let mut refresh =
            tokio::time::interval_at(tokio::time::Instant::now() + SEED_REFRESH, SEED_REFRESH);
        loop {
            let wake = self.gossiper.lock().expect("lock").next_wakeup();
            let discovered = async {
                match &mut self.mdns {
                    Some(m) => m.next().await,
                    None => std::future::pending().await,
                }
            };
            let out = tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let mut g = self.gossiper.lock().expect("lock");
                        g.handle_datagram(self.started.elapsed(), from, &buf[..n], &mut rng);
                        let generation = g.generation();
                        let out = drain(&mut g, &self.events, &mut self.log);
                        drop(g);
                        if generation != self.generation {
                            self.refuted(generation);
                        }
                        out
                    }
                    Err(e) => {
                        // ICMP errors of earlier sends surface here on Linux; they are not fatal.
                        tracing::debug!(error = %e, "receive failed");
                        Vec::new()
                    }
                },
                _ = tokio::time::sleep_until((self.started + wake).into()) => {
                    let mut g = self.gossiper.lock().expect("lock");
                    g.handle_tick(self.started.elapsed(), &mut rng);
                    drain(&mut g, &self.events, &mut self.log)
                }
                change = discovered => {
                    match change {
                        Change::Peers => {
                            self.update_seeds();
                            self.update_advertise().await;
                        }
                        Change::LocalAddresses => self.update_advertise().await,
                    }
                    Vec::new()
                }
                _ = refresh.tick() => {
                    // Names are resolved off the loop: an mDNS or DNS answer may take seconds, and
                    // meanwhile heartbeats must still be received on time.
                    if !self.config.gossip.seeds.is_empty() && !self.resolving {
                        self.resolving = true;
                        let seeds = self.config.gossip.seeds.clone();
                        let mdns = self.mdns.as_ref().map(Mdns::daemon);
                        let done = self.resolved_tx.clone();
                        tokio::spawn(async move {
                            let _ = done.send(resolve_seeds(&seeds, mdns).await).await;
                        });
                    }
                    self.update_advertise().await;
                    Vec::new()
                }
                Some(seeds) = self.resolved_rx.recv() => {
                    self.resolving = false;
                    self.static_seeds = seeds;
                    self.update_seeds();
                    Vec::new()
                }
                _ = &mut stop => {
                    let out = {
                        let mut g = self.gossiper.lock().expect("lock");
                        g.leave(self.started.elapsed(), &mut rng);
                        drain(&mut g, &self.events, &mut self.log)
                    };
                    send_all(&self.socket, out).await;
                    tracing::info!("left the cluster");
                    if let Some(m) = self.mdns.take() {
                        m.stop().await;
                    }
                    return Ok(());
                }
            };
            send_all(&self.socket, out).await;
        }
    }

    /// The gossiper raised its generation to refute what peers believed of this node (that it is dead,
    /// or its own state of a former life): say so, and store it so a restart goes above it.
    fn refuted(&mut self, generation: u64) {
        tracing::warn!(
            from = self.generation,
            to = generation,
            "peers held this node dead, or its state of a former generation: refuted by raising the \
             generation"
        );
        self.generation = generation;
        if let Err(e) = store_generation(&self.config.state_dir, generation) {
            tracing::error!(error = %format!("{e:#}"), "cannot store the new generation");
        }
    }

    /// Seeds are the configured ones plus every peer mDNS found.
    fn update_seeds(&mut self) {
        let mut seeds = self.static_seeds.clone();
        if let Some(m) = &self.mdns {
            seeds.extend(m.peers());
        }
        seeds.sort_unstable();
        seeds.dedup();
        self.gossiper.lock().expect("lock").set_seeds(seeds);
    }

    /// Follows a changed local address (a DHCP renewal, a cable moved to another network).
    async fn update_advertise(&mut self) {
        if !self.auto_advertise {
            return;
        }
        let local = match self.socket.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        // The peers known so far, configured seeds first: the address they are reached from is the one
        // they can reach this node at.
        let mut peers = self.static_seeds.clone();
        if let Some(m) = &self.mdns {
            peers.extend(m.peers());
        }
        match advertise_addr(&self.config, local, &peers) {
            Ok(addr) => {
                let mut g = self.gossiper.lock().expect("lock");
                let now = self.started.elapsed();
                if g.member(g.id(), now).and_then(|m| m.addr) != Some(addr) {
                    tracing::info!(%addr, "advertised address changed");
                    g.set_addr(addr);
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "no address to advertise"),
        }
    }
}

/// Membership lines logged per window, at most; the rest are counted and the count logged once.
const MEMBERSHIP_LINES: u32 = 50;
const MEMBERSHIP_WINDOW: Duration = Duration::from_secs(10);

/// The membership log's budget, and the refused members last reported.
#[derive(Debug, Default)]
struct MembershipLog {
    window: Option<Instant>,
    lines: u32,
    held_back: u64,
    refused: Warned,
    old_protocol: Warned,
    cannot_refute: Warned,
}

/// A counter warned of at most once a minute: what it grew by since the last warning.
#[derive(Debug, Default, Clone, Copy)]
struct Warned {
    total: u64,
    at: Option<Instant>,
}

impl Warned {
    fn grown(&mut self, total: u64, now: Instant) -> Option<u64> {
        if total == self.total || self.at.is_some_and(|w| now < w + Duration::from_secs(60)) {
            return None;
        }
        let grown = total - self.total;
        *self = Warned {
            total,
            at: Some(now),
        };
        Some(grown)
    }
}

impl MembershipLog {
    /// Whether one more line may be logged now; a new window first reports what the last held back.
    fn allow(&mut self, now: Instant) -> bool {
        if self.window.is_none_or(|w| now >= w + MEMBERSHIP_WINDOW) {
            if self.held_back > 0 {
                tracing::warn!(
                    held_back = self.held_back,
                    "membership changes not logged one by one (more than {MEMBERSHIP_LINES} in {}s)",
                    MEMBERSHIP_WINDOW.as_secs()
                );
            }
            *self = MembershipLog {
                window: Some(now),
                refused: self.refused,
                old_protocol: self.old_protocol,
                cannot_refute: self.cannot_refute,
                ..Default::default()
            };
        }
        self.lines += 1;
        if self.lines > MEMBERSHIP_LINES {
            self.held_back += 1;
            return false;
        }
        true
    }

    /// Warns, at most once a minute each: news of members refused because the table is full; peers
    /// speaking an older gossip protocol, which this agent cannot talk to; a refutation this node
    /// could not make.
    fn counters(&mut self, stats: &crate::gossip::Stats, now: Instant) {
        if let Some(refused) = self.refused.grown(stats.refused_members, now) {
            tracing::warn!(
                refused,
                "member table full: news of more members refused (a peer may be inventing members)"
            );
        }
        if let Some(datagrams) = self.old_protocol.grown(stats.old_protocol, now) {
            let from = stats
                .last_old_protocol_from
                .map_or_else(|| "?".to_string(), |a| a.to_string());
            tracing::warn!(
                datagrams,
                %from,
                "a peer speaks an older gossip protocol (an agent from before per-node keys, herd \
                 0.1.0), which this one cannot talk to: upgrade it (docs/UPGRADES.md)"
            );
        }
        if let Some(times) = self.cannot_refute.grown(stats.cannot_refute, now) {
            tracing::error!(
                times,
                "peers hold this node's own state at a generation it cannot go above (only its key \
                 could have signed it: is the key in the state directory stolen?); move node.key \
                 aside and restart to rejoin as a new node"
            );
        }
    }
}

fn drain(
    g: &mut Gossiper,
    events: &broadcast::Sender<Event>,
    log: &mut MembershipLog,
) -> Vec<Transmit> {
    let now = Instant::now();
    while let Some(e) = g.poll_event() {
        if e.kind == EventKind::Updated {
            tracing::debug!(node = %e.node, generation = e.generation, "member updated");
        } else if log.allow(now) {
            tracing::info!(node = %e.node, generation = e.generation, kind = ?e.kind, "membership");
        }
        // No subscriber is fine.
        let _ = events.send(e);
    }
    log.counters(g.stats(), now);
    std::iter::from_fn(|| g.poll_transmit()).collect()
}

async fn send_all(socket: &UdpSocket, out: Vec<Transmit>) {
    for t in out {
        if let Err(e) = socket.send_to(&t.datagram, t.to).await {
            tracing::debug!(to = %t.to, error = %e, "send failed");
        }
    }
}

/// Resolves `host:port` seeds; names that do not resolve now are skipped and retried later. `.local`
/// names are asked of mDNS (through `mdns`, the agent's responder, when it runs), other names of the
/// system's resolver (`/etc/hosts`, then DNS).
async fn resolve_seeds(seeds: &[String], mdns: Option<ServiceDaemon>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        let local = seed
            .rsplit_once(':')
            .filter(|(host, _)| discovery::is_mdns_name(host))
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        let resolved = match local {
            Some((host, port)) => {
                discovery::resolve_local(mdns.clone(), host, discovery::MDNS_RESOLVE_TIMEOUT)
                    .await
                    .map(|ips| ips.first().map(|ip| SocketAddr::from((*ip, port))))
            }
            None => tokio::net::lookup_host(seed.as_str())
                .await
                .map(|mut addrs| addrs.find(SocketAddr::is_ipv4))
                .map_err(anyhow::Error::from),
        };
        match resolved {
            Ok(Some(addr)) => out.push(addr),
            Ok(None) => tracing::warn!(%seed, "seed has no IPv4 address; will retry"),
            Err(e) => {
                tracing::warn!(%seed, error = %format!("{e:#}"), "cannot resolve seed; will retry")
            }
        }
    }
    out
}

/// The address peers should use for this node.
fn advertise_addr(
    config: &Config,
    local: SocketAddr,
    seeds: &[SocketAddr],
) -> anyhow::Result<SocketAddr> {
    if let Some(a) = config.gossip.advertise {
        return Ok(a);
    }
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    // The interfaces discovery was told to use come first.
    let lan = super::discovery::lan_ipv4s();
    let wanted = &config.discovery.interfaces;
    if let Some((_, ip)) = lan.iter().find(|(name, _)| wanted.contains(name)) {
        return Ok(SocketAddr::new(IpAddr::V4(*ip), local.port()));
    }
    // Then ask the kernel which local address routes to the known peers (seeds, then peers mDNS found;
    // the address most of them are reached from, so a second network on Wi-Fi or a VPN does not
    // capture the node), or else to the mDNS group (the LAN): connecting a UDP socket sends nothing.
    let route_from = |target: &SocketAddr| -> Option<IpAddr> {
        let probe = std::net::UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0)).ok()?;
        probe.connect(target).ok()?;
        let ip = probe.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    };
    let mut votes: Vec<(IpAddr, usize)> = Vec::new();
    for ip in seeds
        .iter()
        .filter(|s| s.is_ipv4())
        .take(16)
        .filter_map(route_from)
    {
        match votes.iter_mut().find(|(v, _)| *v == ip) {
            Some((_, n)) => *n += 1,
            None => votes.push((ip, 1)),
        }
    }
    // The most votes; among equals, the first seen (configured seeds come first).
    let best = votes
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, n))| (*n, std::cmp::Reverse(*i)))
        .map(|(_, (ip, _))| *ip);
    let mdns: SocketAddr = "224.0.0.251:5353".parse().expect("constant");
    if let Some(ip) = best.or_else(|| route_from(&mdns)) {
        return Ok(SocketAddr::new(ip, local.port()));
    }
    // A switch with no router (no default route): any LAN interface will do.
    if let Some((_, ip)) = lan.first() {
        return Ok(SocketAddr::new(IpAddr::V4(*ip), local.port()));
    }
    bail!(
        "gossip.advertise: cannot tell which address peers should use (bound to {local}, no route to a \
         seed or to the LAN, no network interface up); set gossip.advertise or bind to a specific address"
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
