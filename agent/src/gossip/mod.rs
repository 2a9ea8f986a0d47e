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
//! follow it on the id ring, so every node has K of them, and the first K after it heard first-hand, one
//! per address: see `monitor`), and only they keep φ for it. A monitor whose φ
//! passes the threshold probes the node, directly and through a few other nodes (SWIM's indirect probe:
//! only the path may be broken); if no answer comes, it convicts the node in its current generation and
//! the verdict spreads as a rumour. A node that hears it was convicted but is alive refutes it by
//! starting a higher generation, which wins everywhere. Rounds with a rumour push it to two peers;
//! otherwise a full census digest goes to one peer every few rounds, so a quiet cluster sends little.
//!
//! # Who may say what
//! Every node has keys of its own (`wire::keys`), which its id names. Each key/value of its state carries
//! its signature in its generation, so a peer passes it on but cannot alter it, nor invent state, a
//! newer generation or a goodbye for another node (`trust`); every datagram proves its sender (paired
//! under a key only it and the receiver share, or introduced with its keys and signature: `wire`). What
//! a member may still say of others is what a monitor must be able to say: that a node is dead, which
//! the node, if alive, refutes. Claims of a newer generation of a node are believed by no one; the node
//! itself goes above one only when its own key signed it (its former life), so a generation cannot be
//! pushed to the ceiling.
//!
//! [`Detection::Gossip`] is the protocol before monitors, kept for comparison: heartbeats grow every
//! round and ride on digest entries to two peers a round, and every node keeps φ for every other.
//!
//! φ shown for a member is its monitors' φ: a monitor publishes, in its own state (key `_phi`), its φ of
//! each watched node past 1, and nothing while all is well.
//!
//! A graceful leave sets the status to [`LEFT_HEARTBEAT`] (believed only with the node's signed
//! [`LEFT_KEY`]), a conviction to [`DEAD_HEARTBEAT`]: being the largest possible heartbeats, they win
//! everywhere they meet an older one of the same generation.

mod budget;
mod detect;
mod exchange;
mod monitor;
pub mod phi;
mod replay;
mod round;
pub mod sim;
mod state;
mod trust;
mod types;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, RngCore};

use self::detect::{ring_from, verdict_due};
pub use self::monitor::PHI_KEY;
use self::phi::PhiConfig;
use self::state::{
    apply_kvs, beat, is_buried, mark_dead, mark_left, said_goodbye, take_heartbeat, NodeState,
    Notes, Probe, Tombstone, Versioned,
};
pub use self::trust::CryptoMemo;
pub use self::types::*;
use self::wire::{
    Digest, DigestEntry, Message, NodeDelta, Packet, Security, WireError, MAX_KEY_LEN, MAX_PAYLOAD,
    MAX_VALUE_LEN,
};
pub use self::wire::{NodeId, NodeKey};

/// The receiver of a datagram whose receiver's id is not known (a Syn to a seed).
const ANYONE: NodeId = NodeId(0);

/// The heartbeat of a node that left gracefully.
pub const LEFT_HEARTBEAT: u64 = u64::MAX;
/// The heartbeat (status) of a node its monitors convicted.
pub const DEAD_HEARTBEAT: u64 = u64::MAX - 1;
/// Payload bytes of a `Syn`. A little under a full datagram: what the last few entries would add to
/// heartbeat freshness is worth less than the bandwidth they cost on every round of every node.
const SYN_DIGEST_BYTES: usize = 1300;

/// The most rumours a round considers (more would not fit in a digest's third kept for them).
const MAX_HOT: usize = 64;

/// Every this many rounds the monitors are chosen again and candidates not yet heard are asked.
const VERIFY_EVERY_ROUNDS: u64 = 25;

/// Rounds a newcomer may wait before the peer lists (and the monitors' ring) include it.
const JOINS_WAIT_ROUNDS: u32 = 5;

/// The least room an Ack gives one node's delta when it shares its room among many: a header (with the
/// node's keys, for a node the asker lacks) and a signed key/value or two.
const MIN_DELTA_SHARE: usize = 192;

/// The payload an answer to a first contact may take whatever the question's size: the header, the
/// answering node's keys and its first key/values (its address).
const FIRST_CONTACT_REPLY: usize = 400;

/// The reserved key holding a node's gossip address.
pub const ADDR_KEY: &str = "_addr";
/// The reserved key of a node's goodbye: signed by the node like all its state, so no one else can say
/// it left.
pub const LEFT_KEY: &str = "_left";

/// One node's view of the cluster and its side of the protocol.
pub struct Gossiper {
    config: GossipConfig,
    security: Security,
    cluster_id: u64,
    id: NodeId,
    /// This node's own keys: they sign its state and agree on pair keys with its peers.
    key: NodeKey,
    /// The X25519 secret shared with each peer whose keys are known (`None`: a key of small order),
    /// made when first needed.
    shared: HashMap<NodeId, Option<[u8; 32]>>,
    /// Keys of senders not (yet) members here that introduced themselves (see `trust`).
    introduced: HashMap<NodeId, trust::Introduced>,
    /// Signature checks (and key agreements) a source may still cost this node (see `budget`).
    work: budget::WorkBudget,
    /// Results of pure computations shared by the nodes of a simulation (see [`CryptoMemo`]).
    memo: Option<std::sync::Arc<CryptoMemo>>,
    nodes: BTreeMap<NodeId, NodeState>,
    tombstones: HashMap<NodeId, Tombstone>,
    transmits: VecDeque<Transmit>,
    notes: Notes,
    /// Peers to gossip with, as of `lists_epoch`.
    live: Vec<NodeId>,
    /// The live peers heard first-hand (see `NodeState::heard`): one of each round's peers is one of
    /// them, so members a key holder invents, however many, cannot take every place of an epidemic.
    heard_live: Vec<NodeId>,
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
    /// What may still go to addresses not heard from (see `budget`).
    budget: budget::SendBudget,
    /// The time of the call being handled (for `send`).
    clock: Duration,
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
    /// The node of `key` in its `generation`, reachable at `addr`, starting at `now`.
    pub fn new(
        config: GossipConfig,
        security: Security,
        key: NodeKey,
        generation: u64,
        addr: SocketAddr,
        now: Duration,
    ) -> Self {
        let id = key.id();
        let cluster_id = config.wire_cluster_id();
        let mut me = NodeState::new(
            &config.phi,
            config.phi.bootstrap_interval,
            key.public().clone(),
            generation,
            0,
            now,
        );
        me.max_version = 1;
        me.addr = Some(addr);
        let value = addr.to_string();
        me.kvs.insert(
            ADDR_KEY.to_string(),
            Versioned {
                signature: key.sign_kv(cluster_id, generation, ADDR_KEY, 1, Some(&value)),
                value: Some(value),
                version: 1,
            },
        );
        let mut nodes = BTreeMap::new();
        nodes.insert(id, me);
        let config_max_members = config.max_members;
        Gossiper {
            cluster_id,
            config,
            security,
            id,
            key,
            shared: HashMap::new(),
            introduced: HashMap::new(),
            work: budget::WorkBudget::default(),
            memo: None,
            nodes,
            tombstones: HashMap::new(),
            transmits: VecDeque::new(),
            notes: Notes::default(),
            live: Vec::new(),
            heard_live: Vec::new(),
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
            budget: budget::SendBudget::new(2 * config_max_members),
            clock: now,
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
        let me = self
            .nodes
            .get_mut(&self.id)
            .expect("the local node is always known");
        if me.kvs.get(key).map(|v| &v.value) == Some(&value) {
            return;
        }
        me.max_version += 1;
        let version = me.max_version;
        let signature = self.key.sign_kv(
            self.cluster_id,
            me.generation,
            key,
            version,
            value.as_deref(),
        );
        self.stats.signatures_made += 1;
        me.kvs.insert(
            key.to_string(),
            Versioned {
                value,
                version,
                signature,
            },
        );
    }

    /// Shares pure computations (signature checks, key agreements) with the other nodes of a
    /// simulation: see [`CryptoMemo`].
    pub fn share_memo(&mut self, memo: std::sync::Arc<CryptoMemo>) {
        self.memo = Some(memo);
    }

    /// The local node's value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.me().kvs.get(key).and_then(|v| v.value.as_deref())
    }

    /// The member `id` as seen from here.
    pub fn member(&self, id: NodeId, now: Duration) -> Option<Member> {
        let s = self.nodes.get(&id)?;
        let is_self = id == self.id;
        Some(Member {
            id,
            public_key: *s.key.bytes(),
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
            knows_me_as: s.knows_me_as.filter(|_| !is_self),
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

    /// Whether an authentic gossip datagram came from `ip` in the last 10 minutes: a member's address.
    pub fn heard_from(&self, ip: std::net::IpAddr, now: Duration) -> bool {
        self.budget.is_trusted(ip, now)
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
