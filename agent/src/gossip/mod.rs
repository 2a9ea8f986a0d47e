//! The membership layer as a sans-IO state machine: scuttlebutt anti-entropy gossip plus phi accrual
//! failure detection by monitors.
//!
//! [`Gossiper`] never reads a clock, a socket or a global RNG. Callers hand it the time, the randomness and
//! the datagrams ([`Gossiper::handle_tick`], [`Gossiper::handle_datagram`]) and collect what it wants sent
//! ([`Gossiper::poll_transmit`]) and what happened ([`Gossiper::poll_event`]). The tokio agent and the
//! deterministic simulator drive the very same code.
//!
//! # Protocol in brief
//! Every node owns versioned key/values and a generation that grows on every restart. A digest lists, per
//! node, its generation, the highest version of its state, and its status (alive, convicted, left). A
//! peer answers a `Syn` with `Ack`: the deltas the sender lacks plus digest entries for what it lacks
//! itself; the sender closes with `Ack2`. Digests are bounded: they cover a random arc of the id ring in
//! full, plus the sender and recently changed nodes ("hot" rumours), so one datagram suffices at any
//! cluster size.
//!
//! Detection ([`Detection::Monitors`], the default) is apart from the anti-entropy, as in Akka Cluster:
//! each node sends a small `Heartbeat` every round straight to its K monitors (the K live nodes that
//! follow it on the id ring, so every node has K of them), and only they keep φ for it. A monitor whose φ
//! passes the threshold probes the node, directly and through a few other nodes (SWIM's indirect probe:
//! only the path may be broken); if no answer comes, it convicts the node in its current generation and
//! the verdict spreads as a rumour. A node that hears it was convicted (or left) but is alive refutes it
//! by starting a higher generation, which wins everywhere. Rounds with a rumour push it to two peers;
//! otherwise a full census digest goes to one peer every few rounds, so a quiet cluster sends little.
//!
//! [`Detection::Gossip`] is the protocol before monitors, kept for comparison: heartbeats grow every
//! round and ride on digest entries to two peers a round, and every node keeps φ for every other.
//!
//! φ shown for a member is its monitors' φ: a monitor publishes, in its own state (key `_phi`), its φ of
//! each watched node past 1, and nothing while all is well.
//!
//! A graceful leave sets the status to [`LEFT_HEARTBEAT`], a conviction to [`DEAD_HEARTBEAT`]: being the
//! largest possible heartbeats, they win everywhere they meet an older one of the same generation.

mod monitor;
pub mod phi;
mod replay;
pub mod sim;
mod state;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, RngCore};

pub use self::monitor::PHI_KEY;
use self::phi::PhiConfig;
use self::state::{
    apply_kvs, beat, is_buried, mark_dead, mark_left, take_heartbeat, NodeState, Notes, Probe,
    Tombstone, Versioned,
};
pub use self::wire::NodeId;
use self::wire::{
    Digest, DigestEntry, Message, NodeDelta, Packet, Security, WireError, MAX_KEY_LEN, MAX_PAYLOAD,
    MAX_VALUE_LEN,
};

/// The receiver of a datagram whose receiver's id is not known (a Syn to a seed).
const ANYONE: NodeId = NodeId(0);

/// How long a node that left is still probed now and then (see `scan`).
const LEFT_PROBE: Duration = Duration::from_secs(60);

/// The heartbeat of a node that left gracefully.
pub const LEFT_HEARTBEAT: u64 = u64::MAX;
/// The heartbeat (status) of a node its monitors convicted.
pub const DEAD_HEARTBEAT: u64 = u64::MAX - 1;
/// Payload bytes of a `Syn`. A little under a full datagram: what the last few entries would add to
/// heartbeat freshness is worth less than the bandwidth they cost on every round of every node.
const SYN_DIGEST_BYTES: usize = 1300;

/// The most rumours a round considers (more would not fit in a digest's third kept for them).
const MAX_HOT: usize = 64;

/// Rounds a newcomer may wait before the peer lists (and the monitors' ring) include it.
const JOINS_WAIT_ROUNDS: u32 = 5;

/// The least room an Ack gives one node's delta when it shares its room among many: a header and a
/// key/value or two.
const MIN_DELTA_SHARE: usize = 96;

/// The reserved key holding a node's gossip address.
pub const ADDR_KEY: &str = "_addr";

/// How members are judged alive or dead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detection {
    /// Heartbeats ride on every digest and every node keeps φ for every other (the protocol before
    /// monitors; more bytes, and slow verdicts in large clusters).
    Gossip,
    /// Heartbeats go straight to each node's monitors, which probe before they convict; verdicts spread
    /// as rumours.
    Monitors(MonitorConfig),
}

/// Settings of detection by monitors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorConfig {
    /// How many monitors every node has (the K live nodes after it on the id ring).
    pub monitors: usize,
    /// How long a probe waits for an answer before the monitor convicts.
    pub probe_timeout: Duration,
    /// How many other nodes a monitor asks to probe for it.
    pub indirect_probes: usize,
    /// Every this many rounds a node sends a full census digest (other rounds carry only rumours).
    pub census_every: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            monitors: 5,
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 3,
            census_every: 5,
        }
    }
}

/// Settings of the membership layer.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// How members are judged (part of the cluster's identity on the wire: nodes that differ do not
    /// talk).
    pub detection: Detection,
    /// The cluster's name: packets of other clusters are dropped.
    pub cluster: String,
    /// How often a node gossips (and beats its heart).
    pub interval: Duration,
    /// The failure detector.
    pub phi: PhiConfig,
    /// How long dead and left nodes are remembered before they are forgotten.
    pub reap_after: Duration,
    /// Addresses to contact when no peer is known, and now and then to heal partitions.
    pub seeds: Vec<SocketAddr>,
    /// φ thresholds of services (`[service.NAME] phi_threshold`): a node running any of them is judged
    /// with the lowest of their thresholds instead of `phi.threshold`, so a service that must fail over
    /// fast gets its nodes convicted sooner (and a tolerant one later).
    pub service_thresholds: std::collections::BTreeMap<String, f64>,
    /// Checks a key/value received from a peer; a delta holding one that fails is refused whole. The
    /// default refuses control characters; the agent sets the checks of the keys it publishes
    /// (`model::published::check_value`).
    pub check_value: fn(&str, &str) -> Result<(), String>,
}

/// The check of received values when the caller sets none: no control characters (they would reach
/// terminals, logs and handlers' environments), whatever the key.
pub fn no_control_chars(_key: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("control character {c:?}")),
        None => Ok(()),
    }
}

impl GossipConfig {
    /// The defaults of the agent for a cluster called `cluster`.
    pub fn new(cluster: &str) -> Self {
        GossipConfig {
            detection: Detection::Monitors(MonitorConfig::default()),
            cluster: cluster.to_string(),
            interval: Duration::from_millis(200),
            phi: PhiConfig::monitors(),
            reap_after: Duration::from_secs(24 * 3600),
            seeds: Vec::new(),
            service_thresholds: Default::default(),
            check_value: no_control_chars,
        }
    }

    /// The defaults of the gossip-only detection (the protocol before monitors).
    pub fn gossip_only(cluster: &str) -> Self {
        GossipConfig {
            detection: Detection::Gossip,
            phi: PhiConfig::gossip(),
            ..GossipConfig::new(cluster)
        }
    }

    /// The cluster's id on the wire: its name, and how it detects failures (a node of the other kind
    /// would misread every heartbeat, so the two never talk).
    pub fn wire_cluster_id(&self) -> u64 {
        match self.detection {
            Detection::Gossip => wire::cluster_id(&self.cluster),
            Detection::Monitors(_) => wire::cluster_id(&format!("{}\nmonitors", self.cluster)),
        }
    }

    fn monitor(&self) -> Option<&MonitorConfig> {
        match &self.detection {
            Detection::Monitors(m) => Some(m),
            Detection::Gossip => None,
        }
    }
}

/// The key whose value, a JSON array of names, lists the services a node runs: per-service φ thresholds
/// ([`GossipConfig::service_thresholds`]) are read from it.
pub const SERVICES_KEY: &str = "services";

/// What the local node thinks of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    /// φ passed half the threshold: a warning, not a verdict.
    Suspect,
    /// φ passed the threshold.
    Dead,
    /// The node said goodbye.
    Left,
}

/// Something that happened to a member, as seen by the local node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A node was heard of for the first time.
    Joined,
    /// A node's key/values changed.
    Updated,
    Suspect,
    /// A suspect or dead node was heard from again.
    Recovered,
    Dead,
    Left,
    /// A node came back with a new generation and replaced its old self.
    Restarted,
    /// A dead or left node was forgotten.
    Reaped,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub kind: EventKind,
    pub node: NodeId,
    pub generation: u64,
    /// The caller's clock when it happened.
    #[serde(skip)]
    pub at: Duration,
}

/// A datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub to: SocketAddr,
    pub datagram: Vec<u8>,
}

/// Traffic counters, for metrics and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub largest_datagram_out: usize,
    /// Datagrams that failed authentication or came unencrypted to an encrypted cluster.
    pub rejected_auth: u64,
    /// Datagrams of another cluster or protocol version.
    pub rejected_foreign: u64,
    /// Datagrams that authenticated but did not decode.
    pub rejected_malformed: u64,
    /// Authentic datagrams seen before (or of a sender's former generation): replays, dropped.
    pub rejected_replay: u64,
    /// Node states (deltas) refused whole because a key or value failed its check.
    pub rejected_invalid: u64,
    /// Replies cut to the size of the datagram they answer, because it came from an address that is not
    /// its sender's (a spoofed source must not get more bytes than it sent).
    pub limited_replies: u64,
    /// Times this node raised its generation to refute what peers believed of it (a leave, a heartbeat
    /// or state it never sent, or a newer generation of itself).
    pub refutations: u64,
}

/// A member as seen by the local node: what the dashboard and the API show.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Member {
    pub id: NodeId,
    pub generation: u64,
    pub heartbeat: u64,
    pub addr: Option<SocketAddr>,
    pub liveness: Liveness,
    pub phi: f64,
    pub threshold: f64,
    /// Time since a heartbeat of this member last arrived (zero for the local node).
    pub last_heard: Duration,
    /// The silence after which this member is declared dead, from its current heartbeat rhythm (what
    /// chitchat calls the failure detection timeout; zero for the local node).
    pub detection_timeout: Duration,
    pub is_self: bool,
    pub kvs: BTreeMap<String, String>,
}

/// Why a local key/value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {0:?} must be 1 to {MAX_KEY_LEN} characters of a-z, 0-9, '.', '-', '_', not starting with '_'")]
    BadKey(String),
    #[error("value of key {key:?} is {len} bytes, more than {MAX_VALUE_LEN}")]
    ValueTooLong { key: String, len: usize },
}

/// One node's view of the cluster and its side of the protocol.
pub struct Gossiper {
    config: GossipConfig,
    security: Security,
    cluster_id: u64,
    id: NodeId,
    nodes: BTreeMap<NodeId, NodeState>,
    tombstones: HashMap<NodeId, Tombstone>,
    transmits: VecDeque<Transmit>,
    notes: Notes,
    /// Peers to gossip with, as of `lists_epoch`.
    live: Vec<NodeId>,
    dead: Vec<NodeId>,
    lists_epoch: u64,
    /// `notes.liveness_epoch` as of the last walk, and when that was.
    lists_liveness_epoch: u64,
    last_scan: Duration,
    /// The member count the last digest's sender knew of.
    peer_known: u64,
    next_tick: Duration,
    stats: Stats,
    left: bool,
    /// The sequence number of the next datagram sent.
    seq: u64,
    replay: replay::Windows,
    /// Detection by monitors: whom this node watches and who watches it, probes on its behalf.
    ring: monitor::Ring,
    /// Rounds so far (census digests go out every few).
    round: u64,
    /// When a verdict on a watched node can next fall due.
    watch_due: Duration,
    /// Members whose state holds φ reports (`_phi`) of the nodes they watch.
    reporters: BTreeSet<NodeId>,
    /// No watched node's φ can reach 1 before this time (its silence is within its acceptable pause).
    reports_due: Duration,
}

impl std::fmt::Debug for Gossiper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossiper")
            .field("id", &self.id)
            .field("cluster", &self.config.cluster)
            .field("security", &self.security)
            .field("members", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Gossiper {
    /// A node `id` in its `generation`, reachable at `addr`, starting at `now`.
    pub fn new(
        config: GossipConfig,
        security: Security,
        id: NodeId,
        generation: u64,
        addr: SocketAddr,
        now: Duration,
    ) -> Self {
        let mut me = NodeState::new(
            &config.phi,
            config.phi.bootstrap_interval,
            generation,
            0,
            now,
        );
        me.max_version = 1;
        me.addr = Some(addr);
        me.kvs.insert(
            ADDR_KEY.to_string(),
            Versioned {
                value: Some(addr.to_string()),
                version: 1,
            },
        );
        let mut nodes = BTreeMap::new();
        nodes.insert(id, me);
        Gossiper {
            cluster_id: config.wire_cluster_id(),
            config,
            security,
            id,
            nodes,
            tombstones: HashMap::new(),
            transmits: VecDeque::new(),
            notes: Notes::default(),
            live: Vec::new(),
            dead: Vec::new(),
            lists_epoch: 0,
            lists_liveness_epoch: 0,
            last_scan: Duration::ZERO,
            peer_known: 0,
            next_tick: now,
            stats: Stats::default(),
            left: false,
            seq: 0,
            replay: replay::Windows::default(),
            ring: monitor::Ring::default(),
            round: 0,
            watch_due: now,
            reporters: BTreeSet::new(),
            reports_due: Duration::ZERO,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn generation(&self) -> u64 {
        self.me().generation
    }

    /// The nodes this node sends its heartbeats to (detection by monitors), in ring order.
    pub fn monitors(&self) -> &[NodeId] {
        &self.ring.monitors
    }

    /// Whether this node is one of `id`'s monitors (it judges `id`).
    pub fn watches(&self, id: NodeId) -> bool {
        self.ring.watches(id)
    }

    /// The sequence number the next datagram will carry.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// When [`Gossiper::handle_tick`] wants to be called next.
    pub fn next_wakeup(&self) -> Duration {
        self.next_tick
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.notes.events.pop_front()
    }

    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.config.seeds = seeds;
    }

    fn me(&self) -> &NodeState {
        &self.nodes[&self.id]
    }

    fn me_mut(&mut self) -> &mut NodeState {
        self.nodes
            .get_mut(&self.id)
            .expect("the local node is always known")
    }

    /// Sets a key of the local node's state; peers learn it through gossip.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), KeyError> {
        validate_key(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(KeyError::ValueTooLong {
                key: key.to_string(),
                len: value.len(),
            });
        }
        self.put(key, Some(value.to_string()));
        Ok(())
    }

    /// Deletes a key of the local node's state (a versioned tombstone, so peers delete it too).
    pub fn delete(&mut self, key: &str) -> Result<(), KeyError> {
        validate_key(key)?;
        if self.me().kvs.get(key).is_some_and(|v| v.value.is_some()) {
            self.put(key, None);
        }
        Ok(())
    }

    /// Changes the address peers should reach this node at (DHCP renewals, a moved cable).
    pub fn set_addr(&mut self, addr: SocketAddr) {
        if self.me().addr != Some(addr) {
            self.me_mut().addr = Some(addr);
            self.put(ADDR_KEY, Some(addr.to_string()));
        }
    }

    fn put(&mut self, key: &str, value: Option<String>) {
        let me = self.me_mut();
        if me.kvs.get(key).map(|v| &v.value) == Some(&value) {
            return;
        }
        me.max_version += 1;
        let version = me.max_version;
        me.kvs.insert(key.to_string(), Versioned { value, version });
    }

    /// The local node's value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.me().kvs.get(key).and_then(|v| v.value.as_deref())
    }

    /// One round: beat the heart, reach verdicts, forget the long dead, gossip.
    pub fn handle_tick(&mut self, now: Duration, rng: &mut impl RngCore) {
        if self.left {
            return;
        }
        // A round that comes late by more than a round (this process was stalled: swapped out, suspended)
        // must not judge others on a silence it did not listen to: their silences start again now.
        let late = now.saturating_sub(self.next_tick);
        if late > self.config.interval && self.config.monitor().is_some() {
            let phi = &self.config.phi;
            for id in self.ring.watching().to_vec() {
                if let Some(s) = self.nodes.get_mut(&id) {
                    s.detector.reset_silence(now);
                    s.schedule_verdicts(phi);
                }
            }
        }
        self.next_tick = now + self.config.interval;
        self.round += 1;
        let monitor = self.config.monitor().copied();
        if monitor.is_none() {
            self.me_mut().heartbeat += 1;
        }

        // The member table is walked when a verdict or a reaping falls due, or the membership changed:
        // at once when a node's liveness changed, at most once a second when nodes only joined (a
        // cluster forming has newcomers every round, and the walk is the whole table).
        let moved = self.notes.membership_epoch != self.lists_epoch;
        let joins_only = self.notes.liveness_epoch == self.lists_liveness_epoch;
        if now >= self.notes.next_scan
            || (moved
                && (!joins_only
                    || self.live.is_empty()
                    || now >= self.last_scan + self.config.interval * JOINS_WAIT_ROUNDS))
        {
            self.scan(now);
        } else if monitor.is_some() && now >= self.watch_due {
            self.judge_watched(now);
        }
        if monitor.is_some() {
            self.publish_reports(now);
        }
        let hot = self.hot(now);
        self.notes.urgent = false;

        // Detection by monitors: the heartbeats, and the probes of watched nodes past their threshold.
        // A round without rumours sends a census only every few rounds, to one peer.
        let (fanout, census) = match monitor {
            None => (2, true),
            Some(m) => {
                for id in self.ring.monitors.clone() {
                    if let Some(addr) = self.nodes.get(&id).and_then(|s| s.addr) {
                        self.send(addr, id, Message::Heartbeat, rng);
                    }
                }
                for target in std::mem::take(&mut self.ring.to_probe) {
                    self.probe(target, m.indirect_probes, rng);
                }
                // While the last digest heard came from a node that knows another number of members
                // (a cluster starting, nodes joining), every round carries a census to two peers: the
                // counts agree again within a few rounds, and the quiet rhythm resumes.
                let unsettled = self.peer_known != self.nodes.len() as u64;
                let census =
                    unsettled || self.round.is_multiple_of(u64::from(m.census_every.max(1)));
                match (census, unsettled, hot.is_empty()) {
                    (true, true, _) => (2, true),
                    (true, false, _) => (1, true),
                    (false, _, false) => (2, false),
                    (false, _, true) => (0, false),
                }
            }
        };

        // Where to, and to whom when known (a seed's id is not).
        let mut targets: Vec<(SocketAddr, NodeId)> = Vec::with_capacity(3);
        let addr_of =
            |nodes: &BTreeMap<NodeId, NodeState>, id: &NodeId| nodes[id].addr.map(|a| (a, *id));
        let (live, dead) = (&self.live, &self.dead);
        // Random live peers: an epidemic with fan-out 2 reaches everyone in about half the rounds of
        // fan-out 1.
        if !live.is_empty() && fanout > 0 {
            let first = rng.gen_range(0..live.len());
            targets.extend(addr_of(&self.nodes, &live[first]));
            if live.len() > 1 && fanout > 1 {
                let second = (first + 1 + rng.gen_range(0..live.len() - 1)) % live.len();
                targets.extend(addr_of(&self.nodes, &live[second]));
            }
        }
        // Cassandra's rule: the more of the cluster looks dead, the more often we try one of them, so a
        // healed partition is noticed within a round or two.
        if census
            && !dead.is_empty()
            && rng.gen_bool((dead.len() as f64 / (live.len() + 1) as f64).min(1.0))
        {
            let id = dead[rng.gen_range(0..dead.len())];
            targets.extend(addr_of(&self.nodes, &id));
        }
        let own = self.me().addr;
        let seeds: Vec<SocketAddr> = self
            .config
            .seeds
            .iter()
            .copied()
            .filter(|s| Some(*s) != own)
            .collect();
        if !seeds.is_empty()
            && (live.is_empty()
                || (census
                    && rng.gen_bool(
                        (seeds.len() as f64 / (live.len() + dead.len() + 1) as f64).min(1.0),
                    )))
        {
            targets.push((seeds[rng.gen_range(0..seeds.len())], ANYONE));
        }
        targets.sort_unstable();
        targets.dedup_by_key(|(addr, _)| *addr);
        for (to, node) in targets {
            let digest = self.build_digest(rng, &hot, node, census);
            self.send(to, node, Message::Syn { digest }, rng);
        }
    }

    /// The rumours still worth spreading, most recent first; a node that changed twice is listed once,
    /// under its latest change.
    fn hot(&mut self, now: Duration) -> Vec<NodeId> {
        let hot_window = self.hot_window();
        while let Some((at, _)) = self.notes.rumours.front() {
            if now < *at + hot_window {
                break;
            }
            self.notes.rumours.pop_front();
        }
        // No digest has room for more than a few dozen (a third of 1300 bytes).
        self.notes
            .rumours
            .iter()
            .rev()
            .filter(|(at, id)| self.nodes.get(id).is_some_and(|s| s.changed_at == *at))
            .map(|(_, id)| *id)
            .take(MAX_HOT)
            .collect()
    }

    /// A verdict reached or heard outside a round goes on at once, to two random live peers: each hop
    /// of the epidemic then takes a network delay, not half a round.
    fn pass_on_verdicts(&mut self, now: Duration, rng: &mut impl RngCore) {
        if !std::mem::take(&mut self.notes.urgent) || self.config.monitor().is_none() {
            return;
        }
        let hot = self.hot(now);
        if self.live.is_empty() {
            return;
        }
        let mut picked: Vec<NodeId> = Vec::with_capacity(2);
        for _ in 0..2 {
            let id = self.live[rng.gen_range(0..self.live.len())];
            if !picked.contains(&id) {
                picked.push(id);
            }
        }
        for id in picked {
            if let Some(addr) = self.nodes.get(&id).and_then(|s| s.addr) {
                let digest = self.build_digest(rng, &hot, id, false);
                self.send(addr, id, Message::Syn { digest }, rng);
            }
        }
    }

    /// Probes `target` directly and through `indirect` other live nodes.
    fn probe(&mut self, target: NodeId, indirect: usize, rng: &mut impl RngCore) {
        let Some(addr) = self.nodes.get(&target).and_then(|s| s.addr) else {
            return;
        };
        self.send(addr, target, Message::Ping { target }, rng);
        let helpers: Vec<NodeId> = self
            .live
            .iter()
            .filter(|id| **id != target)
            .copied()
            .collect();
        if helpers.is_empty() {
            return;
        }
        let start = rng.gen_range(0..helpers.len());
        for i in 0..indirect.min(helpers.len()) {
            let h = helpers[(start + i * (helpers.len() / indirect.max(1)).max(1)) % helpers.len()];
            if let Some(a) = self.nodes.get(&h).and_then(|s| s.addr) {
                self.send(a, h, Message::PingReq { target }, rng);
            }
        }
    }

    /// Evidence that `id` is alive (a heartbeat of `generation`, or an answer to a probe): its silence
    /// starts again, and a suspicion ends.
    fn heard_alive(&mut self, now: Duration, id: NodeId, generation: Option<u64>, sample: bool) {
        let phi = &self.config.phi;
        let Some(s) = self.nodes.get_mut(&id) else {
            return;
        };
        if generation.is_some_and(|g| g != s.generation)
            || !matches!(s.liveness, Liveness::Alive | Liveness::Suspect)
        {
            return;
        }
        if sample {
            s.detector.heartbeat(phi, now);
        } else {
            s.detector.reset_silence(now);
        }
        s.probe = None;
        s.schedule_verdicts(phi);
        if self.config.monitor().is_some() {
            self.watch_due = self.watch_due.min(s.suspect_at);
        } else {
            self.notes.next_scan = self.notes.next_scan.min(s.suspect_at);
        }
        if s.liveness == Liveness::Suspect {
            s.liveness = Liveness::Alive;
            s.since = now;
            self.notes.push(EventKind::Recovered, id, s, now);
        }
    }

    /// Walks the member table: reaches due verdicts, forgets the long dead, rebuilds the peer lists (and
    /// the monitors' ring), and notes when the next verdict can fall due, so rounds in between skip the
    /// walk.
    fn scan(&mut self, now: Duration) {
        let reap_after = self.config.reap_after;
        let monitor = self.config.monitor().copied();
        let mut next = now + reap_after;
        let mut watch_due = now + reap_after;
        let mut reaped = Vec::new();
        self.live.clear();
        self.dead.clear();
        for (&id, s) in self.nodes.iter_mut() {
            if id == self.id {
                continue;
            }
            // Verdicts: each node's own φ of everyone (gossip), or a monitor's of the nodes it watches,
            // after a probe that went unanswered (those are also judged between walks, see
            // `judge_watched`).
            if monitor.is_none() || self.ring.watches(id) {
                let due = judge(
                    s,
                    id,
                    now,
                    monitor,
                    &mut self.notes,
                    &mut self.ring.to_probe,
                );
                if monitor.is_none() {
                    next = next.min(due);
                } else {
                    watch_due = watch_due.min(due);
                }
            }
            match s.liveness {
                Liveness::Alive | Liveness::Suspect => self.live.push(id),
                Liveness::Dead | Liveness::Left if now >= s.since + reap_after => reaped.push(id),
                Liveness::Dead => {
                    self.dead.push(id);
                    next = next.min(s.since + reap_after);
                }
                // A node that left is probed like a dead one for a minute: should the leave be forged,
                // it learns so and refutes it; after that its address gets nothing more.
                Liveness::Left if now < s.since + LEFT_PROBE => {
                    self.dead.push(id);
                    next = next.min(s.since + LEFT_PROBE);
                }
                Liveness::Left => next = next.min(s.since + reap_after),
            }
        }
        for id in reaped {
            let s = self.nodes.remove(&id).expect("listed above");
            self.tombstones.insert(
                id,
                Tombstone {
                    generation: s.generation,
                    heartbeat: s.heartbeat,
                    until: now + reap_after,
                },
            );
            self.notes.push(EventKind::Reaped, id, &s, now);
            self.reporters.remove(&id);
        }
        self.tombstones.retain(|_, t| t.until > now);
        if let Some(m) = monitor {
            // A node newly watched is judged from now on, with the expected rhythm as its prior; one no
            // longer watched is no longer suspected here.
            let changes = self.ring.rebuild(self.id, &self.live, m.monitors);
            if !changes.started.is_empty() || !changes.stopped.is_empty() {
                self.reports_due = now;
            }
            let phi = &self.config.phi;
            for id in changes.started {
                if let Some(s) = self.nodes.get_mut(&id) {
                    s.detector =
                        phi::PhiAccrualDetector::with_bootstrap(self.config.interval, phi, now);
                    s.probe = None;
                    s.schedule_verdicts(phi);
                    watch_due = watch_due.min(s.suspect_at);
                }
            }
            for id in changes.stopped {
                if let Some(s) = self.nodes.get_mut(&id) {
                    s.probe = None;
                    if s.liveness == Liveness::Suspect {
                        s.liveness = Liveness::Alive;
                        s.since = now;
                        self.notes.push(EventKind::Recovered, id, s, now);
                    }
                }
            }
        }
        self.notes.next_scan = next;
        self.watch_due = watch_due;
        self.lists_epoch = self.notes.membership_epoch;
        self.lists_liveness_epoch = self.notes.liveness_epoch;
        self.last_scan = now;
    }

    /// Reaches the due verdicts on the nodes this node watches, without walking the member table (in a
    /// large cluster most rounds need only this).
    fn judge_watched(&mut self, now: Duration) {
        let monitor = self.config.monitor().copied();
        let mut due = now + self.config.reap_after;
        for id in self.ring.watching().to_vec() {
            if let Some(s) = self.nodes.get_mut(&id) {
                let d = judge(
                    s,
                    id,
                    now,
                    monitor,
                    &mut self.notes,
                    &mut self.ring.to_probe,
                );
                due = due.min(d);
            }
        }
        self.watch_due = due;
    }

    /// Announces a graceful leave to every live peer; the node gossips no more afterwards.
    pub fn leave(&mut self, now: Duration, rng: &mut impl RngCore) {
        if self.left {
            return;
        }
        self.left = true;
        let me = self.me_mut();
        me.heartbeat = LEFT_HEARTBEAT;
        me.changed_at = now;
        self.notes.rumours.push_back((now, self.id));
        let peers: Vec<(SocketAddr, NodeId)> = self
            .nodes
            .iter()
            .filter(|(id, s)| {
                **id != self.id && matches!(s.liveness, Liveness::Alive | Liveness::Suspect)
            })
            .filter_map(|(id, s)| s.addr.map(|a| (a, *id)))
            .collect();
        for (to, node) in peers {
            self.send(to, node, Message::Leave, rng);
        }
    }

    /// Processes one datagram that arrived from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: SocketAddr,
        datagram: &[u8],
        rng: &mut impl RngCore,
    ) {
        self.receive(now, from, datagram, rng);
        self.pass_on_verdicts(now, rng);
    }

    fn receive(
        &mut self,
        now: Duration,
        from: SocketAddr,
        datagram: &[u8],
        rng: &mut impl RngCore,
    ) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let payload = match wire::open(&self.security, self.cluster_id, datagram) {
            Ok(p) => p,
            Err(WireError::NotAuthentic | WireError::Unencrypted | WireError::Encrypted) => {
                self.stats.rejected_auth += 1;
                return;
            }
            Err(_) => {
                self.stats.rejected_foreign += 1;
                return;
            }
        };
        let Ok(packet) = Packet::decode(&payload) else {
            self.stats.rejected_malformed += 1;
            return;
        };
        if packet.sender == self.id || self.left {
            return;
        }
        let sender = packet.sender;
        // Only a Syn may be addressed to anyone (a seed's id is not known); everything else names its
        // receiver, so what was sent to one node cannot be replayed to another.
        let addressed = packet.to == self.id
            || (packet.to == ANYONE && matches!(packet.message, Message::Syn { .. }));
        if !addressed {
            self.stats.rejected_replay += 1;
            return;
        }
        let cap = 2 * self.nodes.len() + 64;
        let nodes = &self.nodes;
        if !self
            .replay
            .accept(sender, packet.generation, packet.seq, cap, |id| {
                nodes.contains_key(&id)
            })
        {
            self.stats.rejected_replay += 1;
            return;
        }
        // Answer a source that is not the sender's known address with no more bytes than it sent: a
        // captured datagram replayed from a spoofed address must not turn this node into an amplifier.
        let verified = self
            .nodes
            .get(&sender)
            .is_some_and(|s| s.addr == Some(from));
        let syn_reply_limit = if verified { MAX_PAYLOAD } else { payload.len() };
        match packet.message {
            Message::Syn { digest } => {
                self.peer_known = digest.known;
                self.on_syn(now, from, sender, digest, syn_reply_limit, rng)
            }
            Message::Ack {
                known,
                entries,
                deltas,
            } => {
                self.peer_known = known;
                for d in deltas {
                    self.apply_delta(now, sender, d);
                }
                self.observe(now, &entries);
                // An Ack answers a Syn of ours and is addressed to this node alone: its sender was asked.
                let budget = self.reply_budget(MAX_PAYLOAD).saturating_sub(2);
                let mut used = 0;
                let mut deltas = Vec::new();
                for e in &entries {
                    if let Some(d) = self.delta_for(e.node, Some(e), budget - used) {
                        used += d.encoded_len();
                        deltas.push(d);
                    }
                }
                if !deltas.is_empty() {
                    self.send(from, sender, Message::Ack2 { deltas }, rng);
                }
            }
            Message::Ack2 { deltas } => {
                for d in deltas {
                    self.apply_delta(now, sender, d);
                }
            }
            Message::Leave => {
                if let Some(s) = self.nodes.get_mut(&sender) {
                    if s.generation == packet.generation {
                        s.heartbeat = LEFT_HEARTBEAT;
                        mark_left(&mut self.notes, sender, s, now);
                    }
                }
            }
            Message::Heartbeat => self.heard_alive(now, sender, Some(packet.generation), true),
            Message::Ping { target } => {
                // Answered where it came from, no bigger than it was.
                if target == self.id {
                    self.send(from, sender, Message::PingAck { target }, rng);
                }
            }
            Message::PingReq { target } => {
                let Some(m) = self.config.monitor().copied() else {
                    return;
                };
                // Only for a member, about a member: the answer goes to the asker's known address.
                let known = |id: &NodeId| self.nodes.get(id).and_then(|s| s.addr);
                if target != self.id && target != sender {
                    if let (Some(addr), Some(_)) = (known(&target), known(&sender)) {
                        self.ring.relay(target, sender, now + m.probe_timeout);
                        self.send(addr, target, Message::Ping { target }, rng);
                    }
                }
            }
            Message::PingAck { target } => {
                if target == sender {
                    for asker in self.ring.answered(target, now) {
                        if let Some(addr) = self.nodes.get(&asker).and_then(|s| s.addr) {
                            self.send(addr, asker, Message::PingAck { target }, rng);
                        }
                    }
                    self.heard_alive(now, target, Some(packet.generation), false);
                } else if self.nodes.get(&target).is_some_and(|s| s.probe.is_some()) {
                    self.heard_alive(now, target, None, false);
                }
            }
        }
    }

    /// Bytes a reply's message may take when its payload may take `limit` (a whole datagram's, or no
    /// more than the payload it answers).
    fn reply_budget(&mut self, limit: usize) -> usize {
        let header = wire::packet_header_len(self.generation(), self.seq);
        if limit < MAX_PAYLOAD {
            self.stats.limited_replies += 1;
        }
        limit.min(MAX_PAYLOAD).saturating_sub(header)
    }

    /// Whether a peer's view of this node, `e`, holds something this node never sent: a newer generation
    /// of itself, a heartbeat above its own (a leave it did not announce), or state it never set.
    fn is_forgery_of_me(&self, e: &DigestEntry) -> bool {
        if e.node != self.id {
            return false;
        }
        let me = self.me();
        e.generation > me.generation
            || (e.generation == me.generation
                && (e.heartbeat > me.heartbeat || e.max_version > me.max_version))
    }

    /// SWIM's refutation: peers believe something of this node that it never said (a forged leave, a
    /// forged heartbeat, or a generation from a former life that the state directory forgot). This node
    /// starts a new generation above anything seen, which replaces the false belief everywhere, as a
    /// restart would. Its key/values stay; peers fetch them whole for the new generation.
    fn refute(&mut self, now: Duration, seen_generation: u64) {
        let generation = self.generation().max(seen_generation) + 1;
        let id = self.id;
        let me = self
            .nodes
            .get_mut(&id)
            .expect("the local node is always known");
        me.generation = generation;
        me.heartbeat = 0;
        self.notes.changed(id, me, now);
        self.stats.refutations += 1;
    }

    fn on_syn(
        &mut self,
        now: Duration,
        from: SocketAddr,
        sender: NodeId,
        digest: Digest,
        reply_limit: usize,
        rng: &mut impl RngCore,
    ) {
        let mut listed: Vec<NodeId> = digest.entries.iter().map(|e| e.node).collect();
        listed.sort_unstable();

        if let Some(e) = digest.entries.iter().find(|e| self.is_forgery_of_me(e)) {
            self.refute(now, e.generation);
        }
        let mut requests = Vec::new();
        let mut news = Vec::new();
        let mut wanted: Vec<(NodeId, Option<&DigestEntry>)> = Vec::new();
        for e in &digest.entries {
            let is_me = e.node == self.id;
            match self.nodes.get_mut(&e.node) {
                Some(s) if s.generation > e.generation => wanted.push((e.node, Some(e))),
                Some(s) if s.generation == e.generation => {
                    if !is_me {
                        take_heartbeat(&mut self.notes, &self.config.phi, s, e, now);
                    }
                    if s.max_version > e.max_version {
                        wanted.push((e.node, Some(e)));
                    } else if s.max_version < e.max_version {
                        requests.push(s.entry(e.node));
                    } else if s.heartbeat > e.heartbeat && e.node == sender {
                        // What we believe of the sender itself beyond what it says (a leave it never
                        // announced): it goes first, so the sender can refute it at once.
                        requests.insert(0, s.entry(e.node));
                    } else if s.heartbeat > e.heartbeat {
                        news.push(s.entry(e.node));
                    }
                }
                Some(_) if is_me => {}
                Some(s) => requests.push(s.entry(e.node)),
                None if !is_buried(&self.tombstones, e, false) => {
                    requests.push(DigestEntry {
                        node: e.node,
                        generation: 0,
                        heartbeat: 0,
                        max_version: 0,
                    });
                }
                None => {}
            }
        }
        // Nodes in the digest's range that the sender did not list are nodes it has never heard of.
        for id in ring_from(&self.nodes, digest.start).map(|(id, _)| id) {
            if !digest.covers(id) {
                break;
            }
            if listed.binary_search(&id).is_err() {
                wanted.push((id, None));
            }
        }

        let mut budget = self
            .reply_budget(reply_limit)
            .saturating_sub(wire::ACK_BASE_LEN);
        let mut entries = Vec::new();
        for e in requests {
            if e.encoded_len() > budget {
                break;
            }
            budget -= e.encoded_len();
            entries.push(e);
        }
        let mut deltas = Vec::new();
        // The room is shared: a node that lacks many members (it just started) learns of each, with the
        // first part of its state (the rest follows on the next exchanges), rather than of a few in full.
        let count = wanted.len();
        for (i, (id, entry)) in wanted.into_iter().enumerate() {
            let share = (budget / (count - i)).max(MIN_DELTA_SHARE).min(budget);
            if let Some(d) = self.delta_for(id, entry, share) {
                budget -= d.encoded_len();
                deltas.push(d);
            }
        }
        for e in news {
            if e.encoded_len() > budget {
                break;
            }
            budget -= e.encoded_len();
            entries.push(e);
        }
        let known = self.nodes.len() as u64;
        self.send(
            from,
            sender,
            Message::Ack {
                known,
                entries,
                deltas,
            },
            rng,
        );
    }

    /// What a peer whose view of `id` is `entry` (`None`: never heard of it) lacks, within `budget`.
    fn delta_for(
        &self,
        id: NodeId,
        entry: Option<&DigestEntry>,
        budget: usize,
    ) -> Option<NodeDelta> {
        let s = self.nodes.get(&id)?;
        let from = match entry {
            None => 0,
            Some(e) if e.generation < s.generation => 0,
            Some(e) if e.generation == s.generation && e.max_version < s.max_version => {
                e.max_version
            }
            Some(_) => return None,
        };
        s.delta(id, from, budget)
    }

    /// Takes the heartbeats carried by digest entries.
    fn observe(&mut self, now: Duration, entries: &[DigestEntry]) {
        for e in entries {
            if e.node == self.id {
                if self.is_forgery_of_me(e) {
                    self.refute(now, e.generation);
                }
                continue;
            }
            if let Some(s) = self.nodes.get_mut(&e.node) {
                take_heartbeat(&mut self.notes, &self.config.phi, s, e, now);
            }
        }
    }

    fn apply_delta(&mut self, now: Duration, sender: NodeId, d: NodeDelta) {
        if d.node == self.id {
            let claimed = DigestEntry {
                node: d.node,
                generation: d.generation,
                heartbeat: d.heartbeat,
                max_version: d.kvs.last().map_or(0, |kv| kv.version),
            };
            if self.is_forgery_of_me(&claimed) {
                self.refute(now, d.generation);
            }
            return;
        }
        // A node's state is taken whole or not at all: one bad field and the delta is refused.
        let check = self.config.check_value;
        if d.kvs.iter().any(|kv| {
            (kv.key != ADDR_KEY && kv.key != PHI_KEY && validate_key(&kv.key).is_err())
                || kv.value.as_deref().is_some_and(|v| {
                    check(&kv.key, v).is_err()
                        || (kv.key == PHI_KEY && monitor::parse_reports(v).is_err())
                })
        }) {
            self.stats.rejected_invalid += 1;
            return;
        }
        let probe = DigestEntry {
            node: d.node,
            generation: d.generation,
            heartbeat: d.heartbeat,
            max_version: 0,
        };
        if is_buried(&self.tombstones, &probe, d.node == sender) {
            return;
        }
        let bootstrap = self.expected_update_interval();
        let phi = &self.config.phi;
        let s = match self.nodes.get_mut(&d.node) {
            None => {
                if d.from_version != 0 {
                    return;
                }
                self.tombstones.remove(&d.node);
                let s = self.nodes.entry(d.node).or_insert_with(|| {
                    NodeState::new(phi, bootstrap, d.generation, d.heartbeat, now)
                });
                let kind = if s.liveness == Liveness::Left {
                    EventKind::Left
                } else {
                    EventKind::Joined
                };
                apply_kvs(s, &d.kvs);
                s.rethreshold(&self.config);
                verdict_due(
                    &mut self.notes,
                    &mut self.watch_due,
                    &self.ring,
                    &self.config,
                    d.node,
                    s.suspect_at,
                );
                self.notes.changed(d.node, s, now);
                self.notes.push(kind, d.node, s, now);
                self.note_reporter(d.node);
                return;
            }
            Some(s) if d.generation > s.generation => {
                if d.from_version != 0 {
                    return;
                }
                *s = NodeState::new(phi, bootstrap, d.generation, d.heartbeat, now);
                apply_kvs(s, &d.kvs);
                s.rethreshold(&self.config);
                verdict_due(
                    &mut self.notes,
                    &mut self.watch_due,
                    &self.ring,
                    &self.config,
                    d.node,
                    s.suspect_at,
                );
                let kind = if s.liveness == Liveness::Left {
                    EventKind::Left
                } else {
                    EventKind::Restarted
                };
                self.notes.changed(d.node, s, now);
                self.notes.push(kind, d.node, s, now);
                self.note_reporter(d.node);
                return;
            }
            Some(s) if d.generation < s.generation => return,
            Some(s) => s,
        };
        let mut reports_changed = false;
        if d.from_version <= s.max_version && apply_kvs(s, &d.kvs) {
            s.rethreshold(&self.config);
            verdict_due(
                &mut self.notes,
                &mut self.watch_due,
                &self.ring,
                &self.config,
                d.node,
                s.suspect_at,
            );
            self.notes.changed(d.node, s, now);
            self.notes.push(EventKind::Updated, d.node, s, now);
            reports_changed = d.kvs.iter().any(|kv| kv.key == PHI_KEY);
        }
        if d.heartbeat > s.heartbeat {
            beat(&mut self.notes, phi, d.node, s, d.heartbeat, now);
        }
        if reports_changed {
            self.note_reporter(d.node);
        }
    }

    /// Keeps `reporters` in step with `id`'s `_phi` key.
    fn note_reporter(&mut self, id: NodeId) {
        let reports = self
            .nodes
            .get(&id)
            .and_then(|s| s.kvs.get(PHI_KEY))
            .is_some_and(|v| v.value.is_some());
        if reports {
            self.reporters.insert(id);
        } else {
            self.reporters.remove(&id);
        }
    }

    /// Publishes this node's φ of the watched nodes past 1 (whole numbers, up to the threshold), when that
    /// changed; the change is a rumour, so every node soon shows what the monitors see.
    fn publish_reports(&mut self, now: Duration) {
        if now < self.reports_due {
            return;
        }
        let phi = &self.config.phi;
        let mut reports = Vec::new();
        // While a report stands, look every round; else not before a silence outlasts its pause.
        let mut due = now + self.config.reap_after;
        for id in self.ring.watching() {
            let Some(s) = self.nodes.get(id) else {
                continue;
            };
            if matches!(s.liveness, Liveness::Alive | Liveness::Suspect) {
                let config = phi.for_threshold(s.threshold);
                let level = s.detector.phi(&config, now);
                due = due.min(if level >= 1.0 {
                    now
                } else {
                    s.detector.last_arrival() + config.acceptable_pause
                });
                if level >= 1.0 {
                    // Past the threshold the node is being probed and φ climbs fast: "at the threshold"
                    // says enough, and bounds a suspicion's updates to one per whole step below it.
                    let top = s.threshold.ceil().clamp(1.0, 255.0);
                    // In range by the clamp: the cast cannot wrap.
                    reports.push((*id, level.clamp(1.0, top) as u8));
                }
            }
        }
        self.reports_due = due;
        reports.truncate(monitor::MAX_REPORTS);
        let value = monitor::encode_reports(&reports);
        if self.me().kvs.get(PHI_KEY).and_then(|v| v.value.as_ref()) == value.as_ref() {
            return;
        }
        self.put(PHI_KEY, value);
        let id = self.id;
        let me = self
            .nodes
            .get_mut(&id)
            .expect("the local node is always known");
        self.notes.changed(id, me, now);
    }

    /// The highest φ that `id`'s live monitors report of it (0 when none does).
    fn reported_phi(&self, id: NodeId) -> f64 {
        let mut highest = 0u8;
        for r in &self.reporters {
            let Some(s) = self.nodes.get(r) else {
                continue;
            };
            if *r == id || !matches!(s.liveness, Liveness::Alive | Liveness::Suspect) {
                continue;
            }
            let Some(value) = s.kvs.get(PHI_KEY).and_then(|v| v.value.as_deref()) else {
                continue;
            };
            for (target, phi) in monitor::parse_reports(value).unwrap_or_default() {
                if target == id {
                    highest = highest.max(phi);
                }
            }
        }
        f64::from(highest)
    }

    /// A digest of at most one datagram: this node, the freshest rumours, then a random arc of the ring.
    fn build_digest(
        &self,
        rng: &mut impl RngCore,
        hot: &[NodeId],
        to: NodeId,
        census: bool,
    ) -> Digest {
        let mut budget = SYN_DIGEST_BYTES
            - wire::packet_header_len(self.generation(), self.seq)
            - wire::DIGEST_BASE_LEN;
        let mut entries: Vec<DigestEntry> = Vec::new();
        let fits = |e: &DigestEntry, budget: &mut usize| -> bool {
            if e.encoded_len() > *budget {
                return false;
            }
            *budget -= e.encoded_len();
            true
        };
        let me = self.me().entry(self.id);
        if fits(&me, &mut budget) {
            entries.push(me);
        }
        // What we believe of the receiver, so it can refute a falsehood (a forged leave) at once.
        if let Some(s) = self.nodes.get(&to).filter(|_| to != self.id) {
            let e = s.entry(to);
            if fits(&e, &mut budget) {
                entries.push(e);
            }
            // A probe of a node we think dead or gone carries no census: whoever holds its address now
            // learns nothing of the cluster from it, and the node, if alive, gets all it needs by its answer.
            if matches!(s.liveness, Liveness::Dead | Liveness::Left) {
                let start = NodeId(rng.next_u64());
                return Digest {
                    start,
                    end: NodeId(start.0.wrapping_add(1)),
                    known: self.nodes.len() as u64,
                    entries,
                };
            }
        }
        // Rumours take at most a third of the digest so the census still moves on.
        let mut rumour_budget = budget / 3;
        for id in hot.iter().filter(|id| **id != self.id) {
            let e = self.nodes[id].entry(*id);
            if !fits(&e, &mut rumour_budget) {
                break;
            }
            budget -= e.encoded_len();
            entries.push(e);
        }
        let pre_listed = entries.len();
        let start = NodeId(rng.next_u64());
        if !census {
            // Rumours only: the digest claims no range.
            return Digest {
                start,
                end: NodeId(start.0.wrapping_add(1)),
                known: self.nodes.len() as u64,
                entries,
            };
        }
        let mut end = start;
        for (id, s) in ring_from(&self.nodes, start) {
            if entries[..pre_listed].iter().any(|e| e.node == id) {
                continue;
            }
            let e = s.entry(id);
            if !fits(&e, &mut budget) {
                end = id;
                break;
            }
            entries.push(e);
        }
        if end == start && self.nodes.len() > entries.len() {
            // The arc could not even start: claim nothing.
            end = NodeId(start.0.wrapping_add(1));
        }
        Digest {
            start,
            end,
            known: self.nodes.len() as u64,
            entries,
        }
    }

    /// The heartbeat interval to assume for a node just heard of: the configured bootstrap interval, or
    /// longer in a cluster too large for one digest. A node's heartbeat reaches a given peer about every
    /// other round when digests cover the whole cluster, and proportionally less often when they cover only
    /// a part of it; assuming the small-cluster rhythm there would convict nodes that are merely quiet. The
    /// size is what peers report too, so a newcomer that knows few members yet is not misled.
    fn expected_update_interval(&self) -> Duration {
        if self.config.monitor().is_some() {
            // Only monitors judge, from heartbeats sent straight to them every round.
            return self.config.interval;
        }
        let per_digest = (MAX_PAYLOAD / 18) as u32;
        let n = (self.nodes.len() as u64).max(self.peer_known).min(1 << 20) as u32;
        let rounds = (2 * n).div_ceil(per_digest).max(1);
        self.config
            .phi
            .bootstrap_interval
            .max(self.config.interval * rounds)
    }

    /// How long a change stays a rumour: long enough for an epidemic to reach everyone.
    fn hot_window(&self) -> Duration {
        let n = self.nodes.len() as u32 + 1;
        let rounds = 2 * (u32::BITS - n.leading_zeros()) + 4;
        self.config.interval * rounds
    }

    fn send(&mut self, to: SocketAddr, node: NodeId, message: Message, rng: &mut impl RngCore) {
        let packet = Packet {
            sender: self.id,
            to: node,
            generation: self.generation(),
            seq: self.seq,
            message,
        };
        self.seq += 1;
        let datagram = wire::seal(&self.security, self.cluster_id, &packet.encode(), rng);
        debug_assert!(
            datagram.len() <= wire::MAX_DATAGRAM,
            "{} bytes",
            datagram.len()
        );
        self.stats.packets_out += 1;
        self.stats.bytes_out += datagram.len() as u64;
        self.stats.largest_datagram_out = self.stats.largest_datagram_out.max(datagram.len());
        self.transmits.push_back(Transmit { to, datagram });
    }

    /// The member `id` as seen from here.
    pub fn member(&self, id: NodeId, now: Duration) -> Option<Member> {
        let s = self.nodes.get(&id)?;
        let is_self = id == self.id;
        Some(Member {
            id,
            generation: s.generation,
            heartbeat: s.heartbeat,
            addr: s.addr,
            liveness: s.liveness,
            // φ is a monitor's: this node's own if it watches the member, else the highest its
            // monitors report (whole numbers, 0 while all is well).
            phi: if is_self || s.liveness == Liveness::Left {
                0.0
            } else if self.config.monitor().is_some() && !self.ring.watches(id) {
                self.reported_phi(id)
            } else {
                s.detector
                    .phi(&self.config.phi.for_threshold(s.threshold), now)
            },
            threshold: s.threshold,
            last_heard: if is_self {
                Duration::ZERO
            } else {
                now.saturating_sub(s.detector.last_arrival())
            },
            detection_timeout: if is_self {
                Duration::ZERO
            } else {
                s.detector
                    .silence_for(&self.config.phi.for_threshold(s.threshold), s.threshold)
                    + self
                        .config
                        .monitor()
                        .map_or(Duration::ZERO, |m| m.probe_timeout)
            },
            is_self,
            kvs: s
                .kvs
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.value.clone()?)))
                .collect(),
        })
    }

    /// Every known member, this node included, in id order.
    pub fn members(&self, now: Duration) -> Vec<Member> {
        self.nodes
            .keys()
            .filter_map(|id| self.member(*id, now))
            .collect()
    }

    /// What this node thinks of `id`, cheaply.
    pub fn liveness(&self, id: NodeId) -> Option<Liveness> {
        self.nodes.get(&id).map(|s| s.liveness)
    }

    /// The generation this node knows `id` by.
    pub fn generation_of(&self, id: NodeId) -> Option<u64> {
        self.nodes.get(&id).map(|s| s.generation)
    }

    /// How many known members (this node included) are in each state.
    pub fn count(&self, liveness: Liveness) -> usize {
        self.nodes
            .values()
            .filter(|s| s.liveness == liveness)
            .count()
    }
}

/// The verdict on `s` that is due at `now` (suspect, a probe, its retry, conviction; or, with gossip
/// detection, dead at the threshold); returns when the next one can fall due.
fn judge(
    s: &mut NodeState,
    id: NodeId,
    now: Duration,
    monitor: Option<MonitorConfig>,
    notes: &mut Notes,
    to_probe: &mut Vec<NodeId>,
) -> Duration {
    let never = Duration::MAX;
    if !matches!(s.liveness, Liveness::Alive | Liveness::Suspect) {
        return never;
    }
    if s.liveness == Liveness::Alive && now >= s.suspect_at {
        s.liveness = Liveness::Suspect;
        s.since = now;
        notes.push(EventKind::Suspect, id, s, now);
    }
    if s.liveness == Liveness::Suspect && now >= s.dead_at {
        // A probe is tried twice (at its start and halfway), each time directly and through other
        // nodes; the node is convicted when neither brought an answer.
        match (monitor, s.probe) {
            (None, _) => {
                s.liveness = Liveness::Dead;
                s.since = now;
                notes.push(EventKind::Dead, id, s, now);
            }
            (Some(m), None) => {
                s.probe = Some(Probe {
                    retry_at: Some(now + m.probe_timeout / 2),
                    deadline: now + m.probe_timeout,
                });
                to_probe.push(id);
            }
            (Some(_), Some(p)) if now >= p.deadline => mark_dead(notes, id, s, now),
            (Some(_), Some(p)) if p.retry_at.is_some_and(|r| now >= r) => {
                s.probe = Some(Probe {
                    retry_at: None,
                    ..p
                });
                to_probe.push(id);
            }
            (Some(_), Some(_)) => {}
        }
    }
    match (s.liveness, s.probe) {
        (Liveness::Alive, _) => s.suspect_at,
        (Liveness::Suspect, None) => s.dead_at,
        (Liveness::Suspect, Some(p)) => p.retry_at.unwrap_or(p.deadline),
        _ => never,
    }
}

/// Notes that a verdict on `id` can fall due at `at`: in the walk's schedule when every node judges every
/// other (gossip), in the watched nodes' schedule when this node is one of `id`'s monitors, nowhere else
/// (a node that does not watch `id` never judges it; pulling the walk forward would only cost time).
fn verdict_due(
    notes: &mut Notes,
    watch_due: &mut Duration,
    ring: &monitor::Ring,
    config: &GossipConfig,
    id: NodeId,
    at: Duration,
) {
    if config.monitor().is_none() {
        notes.next_scan = notes.next_scan.min(at);
    } else if ring.watches(id) {
        *watch_due = (*watch_due).min(at);
    }
}

fn validate_key(key: &str) -> Result<(), KeyError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.starts_with('_')
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadKey(key.to_string()))
    }
}

/// Members in ring order, starting at the first id at or after `start`.
fn ring_from(
    nodes: &BTreeMap<NodeId, NodeState>,
    start: NodeId,
) -> impl Iterator<Item = (NodeId, &NodeState)> {
    nodes
        .range(start..)
        .chain(nodes.range(..start))
        .map(|(id, s)| (*id, s))
}
