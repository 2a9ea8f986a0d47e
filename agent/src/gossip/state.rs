//! What one gossiper knows of each member: its versioned key/values, heartbeat and generation, its φ
//! detector and verdict times, the tombstones of forgotten nodes, and the notes (events, rumours, when the
//! next verdict is due) that the protocol's handlers leave for the round. The message handling that
//! changes this state is in `mod.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::phi::{PhiAccrualDetector, PhiConfig};
use super::wire::{DigestEntry, KeyValue, NodeDelta, NodeId, PublicKey, Signature};
use super::{
    Event, EventKind, GossipConfig, Liveness, ADDR_KEY, DEAD_HEARTBEAT, LEFT_HEARTBEAT,
    SERVICES_KEY,
};

#[derive(Debug, Clone)]
pub(super) struct Versioned {
    pub(super) value: Option<String>,
    pub(super) version: u64,
    /// The node's signature over the key/value in its generation, passed on with it.
    pub(super) signature: Signature,
}

#[derive(Debug, Clone)]
pub(super) struct NodeState {
    /// The node's public keys: its id names them, and its state must be signed with them.
    pub(super) key: PublicKey,
    pub(super) generation: u64,
    pub(super) heartbeat: u64,
    pub(super) max_version: u64,
    pub(super) kvs: HashMap<String, Versioned>,
    pub(super) addr: Option<SocketAddr>,
    pub(super) liveness: Liveness,
    /// When `liveness` last changed, for reaping.
    pub(super) since: Duration,
    /// When this node's state last changed here, for rumours.
    pub(super) changed_at: Duration,
    pub(super) detector: PhiAccrualDetector,
    pub(super) suspect_at: Duration,
    pub(super) dead_at: Duration,
    /// The φ at which this node is convicted: the configured one, or its services' (see
    /// [`GossipConfig::service_thresholds`]).
    pub(super) threshold: f64,
    /// While this node (which the local one monitors) is being probed: when the probe is tried again,
    /// and when it fails.
    pub(super) probe: Option<Probe>,
    /// The generation of the local node that this node's last Syn said it holds (every Syn carries
    /// the sender's view of its receiver): evidence, sealed with the cluster key, that it took a new
    /// generation of the local node, which `herd upgrade`'s proof reads instead of asking the peer.
    pub(super) knows_me_as: Option<u64>,
    /// An authentic datagram of this node's own came from its gossiped address: it was heard first-hand,
    /// not only of. Cleared when the address changes.
    pub(super) heard: bool,
    /// This node holds the local node's keys (it sent a paired datagram, or listed the local node): what
    /// the local node says to it can be paired. Forgotten with a restart of it.
    pub(super) knows_my_keys: bool,
    /// When this node last sent it its own state of a former life (see `Gossiper::remind`).
    pub(super) reminded: Option<Duration>,
}

/// A probe under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    pub(super) retry_at: Option<Duration>,
    pub(super) deadline: Duration,
}

impl NodeState {
    pub(super) fn new(
        phi: &PhiConfig,
        bootstrap: Duration,
        key: PublicKey,
        generation: u64,
        heartbeat: u64,
        now: Duration,
    ) -> Self {
        // A goodbye is believed only from the node's signed `_left` (see `said_goodbye`).
        let heartbeat = if heartbeat == LEFT_HEARTBEAT {
            0
        } else {
            heartbeat
        };
        let mut s = NodeState {
            key,
            generation,
            heartbeat,
            max_version: 0,
            kvs: HashMap::new(),
            addr: None,
            liveness: match heartbeat {
                DEAD_HEARTBEAT => Liveness::Dead,
                _ => Liveness::Alive,
            },
            since: now,
            changed_at: now,
            detector: PhiAccrualDetector::with_bootstrap(bootstrap, phi, now),
            suspect_at: now,
            dead_at: now,
            threshold: phi.threshold,
            probe: None,
            knows_me_as: None,
            heard: false,
            knows_my_keys: false,
            reminded: None,
        };
        s.schedule_verdicts(phi);
        s
    }

    pub(super) fn schedule_verdicts(&mut self, phi: &PhiConfig) {
        let phi = phi.for_threshold(self.threshold);
        let last = self.detector.last_arrival();
        self.suspect_at = last + self.detector.silence_for(&phi, self.threshold / 2.0);
        self.dead_at = last + self.detector.silence_for(&phi, self.threshold);
    }

    /// Re-derives the node's φ threshold from the services it announces (after its key/values changed).
    pub(super) fn rethreshold(&mut self, config: &GossipConfig) {
        if config.service_thresholds.is_empty() {
            // The usual case: no per-service threshold, nothing to parse on every key change.
            if self.threshold != config.phi.threshold {
                self.threshold = config.phi.threshold;
                self.schedule_verdicts(&config.phi);
            }
            return;
        }
        let services: Vec<String> = self
            .kvs
            .get(SERVICES_KEY)
            .and_then(|v| v.value.as_deref())
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let threshold = services
            .iter()
            .filter_map(|s| config.service_thresholds.get(s).copied())
            .reduce(f64::min)
            .unwrap_or(config.phi.threshold);
        if threshold != self.threshold {
            self.threshold = threshold;
            self.schedule_verdicts(&config.phi);
        }
    }

    pub(super) fn entry(&self, node: NodeId) -> DigestEntry {
        DigestEntry {
            node,
            generation: self.generation,
            heartbeat: self.heartbeat,
            max_version: self.max_version,
        }
    }

    /// The delta a peer at `from_version` lacks, in version order, cut to `budget` bytes. `None` when not
    /// even its header and first key/value fit.
    pub(super) fn delta(
        &self,
        node: NodeId,
        from_version: u64,
        budget: usize,
    ) -> Option<NodeDelta> {
        let mut delta = NodeDelta {
            node,
            generation: self.generation,
            heartbeat: self.heartbeat,
            from_version,
            keys: (from_version == 0).then(|| *self.key.bytes()),
            kvs: Vec::new(),
        };
        let mut used = delta.header_len();
        if used > budget {
            return None;
        }
        let mut newer: Vec<(&String, &Versioned)> = self
            .kvs
            .iter()
            .filter(|(_, v)| v.version > from_version)
            .collect();
        newer.sort_unstable_by_key(|(_, v)| v.version);
        for (key, v) in newer {
            let kv = KeyValue {
                key: key.clone(),
                version: v.version,
                value: v.value.clone(),
                signature: v.signature,
            };
            used += kv.encoded_len();
            if used > budget {
                break;
            }
            delta.kvs.push(kv);
        }
        let wanted = self.max_version > from_version;
        if wanted && delta.kvs.is_empty() {
            return None;
        }
        Some(delta)
    }
}

/// What the protocol handlers note down besides state: events for the caller, and the bookkeeping that
/// lets a round skip the full scan of the member table when nothing is due.
#[derive(Debug, Default)]
pub(super) struct Notes {
    pub(super) events: VecDeque<Event>,
    /// Grows with every change of membership or liveness; the round's peer lists are rebuilt when it moved.
    pub(super) membership_epoch: u64,
    /// Grows with every such change but a newcomer's: those can wait a little (see `Gossiper::handle_tick`).
    pub(super) liveness_epoch: u64,
    /// No verdict or reaping is due before this time.
    pub(super) next_scan: Duration,
    /// Recent changes (when, which node), oldest first: the rumours digests lead with.
    pub(super) rumours: VecDeque<(Duration, NodeId)>,
    /// A verdict was just reached or heard: pass it on now rather than at the next round.
    pub(super) urgent: bool,
}

impl Notes {
    pub(super) fn push(&mut self, kind: EventKind, node: NodeId, s: &NodeState, at: Duration) {
        if kind != EventKind::Updated {
            self.membership_epoch += 1;
        }
        if !matches!(kind, EventKind::Updated | EventKind::Joined) {
            self.liveness_epoch += 1;
        }
        self.events.push_back(event(kind, node, s, at));
    }

    pub(super) fn changed(&mut self, node: NodeId, s: &mut NodeState, now: Duration) {
        s.changed_at = now;
        self.rumours.push_back((now, node));
    }
}

/// A forgotten node: stale news of it (this generation, this heartbeat or older) is ignored.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tombstone {
    pub(super) generation: u64,
    pub(super) heartbeat: u64,
    pub(super) until: Duration,
}

/// Whether news `e` of a forgotten node is stale. Only the node itself, heard directly with a newer
/// heartbeat, can bring a forgotten generation back: second-hand news never raises a ghost.
pub(super) fn is_buried(
    tombstones: &HashMap<NodeId, Tombstone>,
    e: &DigestEntry,
    direct: bool,
) -> bool {
    match tombstones.get(&e.node) {
        None => false,
        Some(t) => {
            e.generation < t.generation
                || (e.generation == t.generation && !(direct && e.heartbeat > t.heartbeat))
        }
    }
}

pub(super) fn event(kind: EventKind, node: NodeId, s: &NodeState, at: Duration) -> Event {
    Event {
        kind,
        node,
        generation: s.generation,
        at,
    }
}

pub(super) fn mark_left(notes: &mut Notes, id: NodeId, s: &mut NodeState, now: Duration) {
    if s.liveness != Liveness::Left {
        s.liveness = Liveness::Left;
        s.since = now;
        notes.changed(id, s, now);
        notes.push(EventKind::Left, id, s, now);
    }
}

/// A monitor's verdict, its own or heard: the node is dead in this generation.
pub(super) fn mark_dead(notes: &mut Notes, id: NodeId, s: &mut NodeState, now: Duration) {
    s.heartbeat = s.heartbeat.max(DEAD_HEARTBEAT);
    s.probe = None;
    if matches!(s.liveness, Liveness::Alive | Liveness::Suspect) {
        s.liveness = Liveness::Dead;
        s.since = now;
        notes.changed(id, s, now);
        notes.push(EventKind::Dead, id, s, now);
        notes.urgent = true;
    }
}

/// Takes the heartbeat a digest entry carries, when it is a newer one of the same generation.
pub(super) fn take_heartbeat(
    notes: &mut Notes,
    phi: &PhiConfig,
    s: &mut NodeState,
    e: &DigestEntry,
    now: Duration,
) {
    if s.generation == e.generation && e.heartbeat > s.heartbeat {
        beat(notes, phi, e.node, s, e.heartbeat, now);
    }
}

/// A newer heartbeat of `id` arrived. A goodbye is not believed from a heartbeat alone (anyone could
/// write one): only from the node's signed `_left` (see `apply_kvs`).
pub(super) fn beat(
    notes: &mut Notes,
    phi: &PhiConfig,
    id: NodeId,
    s: &mut NodeState,
    heartbeat: u64,
    now: Duration,
) {
    if heartbeat == LEFT_HEARTBEAT {
        return;
    }
    s.heartbeat = heartbeat;
    if heartbeat == DEAD_HEARTBEAT {
        mark_dead(notes, id, s, now);
        return;
    }
    s.detector.heartbeat(phi, now);
    s.schedule_verdicts(phi);
    // A shorter mean can bring a verdict forward: make sure the next scan is not later than it.
    notes.next_scan = notes.next_scan.min(s.suspect_at);
    if matches!(s.liveness, Liveness::Suspect | Liveness::Dead) {
        s.liveness = Liveness::Alive;
        s.since = now;
        notes.push(EventKind::Recovered, id, s, now);
    }
}

/// Applies key/values in version order above what `s` has (their signatures checked by the caller);
/// true when anything changed.
pub(super) fn apply_kvs(s: &mut NodeState, kvs: &[KeyValue]) -> bool {
    let mut changed = false;
    for kv in kvs {
        if kv.version <= s.max_version {
            continue;
        }
        s.max_version = kv.version;
        if kv.key == ADDR_KEY {
            let addr = kv.value.as_deref().and_then(|v| v.parse().ok());
            s.heard &= addr == s.addr;
            s.addr = addr;
        }
        s.kvs.insert(
            kv.key.clone(),
            Versioned {
                value: kv.value.clone(),
                version: kv.version,
                signature: kv.signature,
            },
        );
        changed = true;
    }
    changed
}

/// Whether the node said goodbye in its current generation: its signed `_left` is in its state.
pub(super) fn said_goodbye(s: &NodeState) -> bool {
    s.kvs
        .get(super::LEFT_KEY)
        .is_some_and(|v| v.value.is_some())
}
