//! The gossip layer's shared types: its configuration, what it hands out (events, datagrams to send), its
//! counters, and a member as the layer's users see it.

use super::*;

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
    /// The most members (this node included) the table holds: news of more is refused, so a key holder
    /// inventing members cannot grow this node's memory or its work per datagram without bound.
    pub max_members: usize,
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

/// The agent's member table bound: four times the largest cluster measured (docs/BENCHMARKS.md, 1,000
/// nodes), a few MiB at most.
pub const DEFAULT_MAX_MEMBERS: usize = 4096;

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
            max_members: DEFAULT_MAX_MEMBERS,
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

    pub(super) fn monitor(&self) -> Option<&MonitorConfig> {
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

impl EventKind {
    /// Its name, as serde writes it (SSE event names, the history's events).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Joined => "joined",
            EventKind::Updated => "updated",
            EventKind::Suspect => "suspect",
            EventKind::Recovered => "recovered",
            EventKind::Dead => "dead",
            EventKind::Left => "left",
            EventKind::Restarted => "restarted",
            EventKind::Reaped => "reaped",
        }
    }
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
    /// Datagrams not sent to an address not heard from, its budget spent (see `budget`).
    pub unheard_dropped: u64,
    /// News of members refused because the table was full ([`GossipConfig::max_members`]).
    pub refused_members: u64,
    /// Replies cut to the size of the datagram they answer, because it came from an address that is not
    /// its sender's (a spoofed source must not get more bytes than it sent).
    pub limited_replies: u64,
    /// Times this node raised its generation to refute what peers believed of it (a leave, a heartbeat
    /// or state it never sent, or a newer generation of itself).
    pub refutations: u64,
    /// Heartbeats that came from an address other than their sender's gossiped one (a forger's, or a
    /// node whose new address is not known here yet): not counted.
    pub unheard_heartbeats: u64,
    /// Heartbeats from a node not watched because this node already watches its share from that
    /// address (see `monitor::Ring::watch`).
    pub unwatched_heartbeats: u64,
    /// Datagrams refused because a key/value in them did not carry its node's signature, or a node's
    /// keys did not name it: a key holder's forgery (the rest of the datagram is dropped too).
    pub rejected_signature: u64,
    /// Node states left for a later exchange because their source had spent its share of signature
    /// checks (see `budget::WorkBudget`).
    pub unchecked_dropped: u64,
    /// Claims by peers of a newer generation of this node than its own, and deltas of one: a former life
    /// (its state signed by this node's key) is refuted, anything else is a forgery no one believes
    /// without that signature, counted and otherwise ignored.
    pub claims_of_self: u64,
    /// Refutations this node could not make: its own key signed a generation at the wire's ceiling.
    pub cannot_refute: u64,
    /// Paired datagrams from a node whose keys are not known here (it restarted and forgot this node,
    /// or the sender is not a member): dropped.
    pub unknown_senders: u64,
    /// Datagrams of an older protocol: agents from before per-node keys (protocol 2), which this one
    /// cannot talk to.
    pub old_protocol: u64,
    /// Where the last of them came from.
    pub last_old_protocol_from: Option<SocketAddr>,
    /// What per-node keys cost: signatures made (this node's own key/values), signatures checked
    /// (peers' key/values, each once), secrets agreed with peers (one per peer), and bytes of
    /// signatures and public keys in the datagrams sent.
    pub signatures_made: u64,
    pub signatures_checked: u64,
    pub key_agreements: u64,
    pub key_bytes_out: u64,
}

/// A member as seen by the local node: what the dashboard and the API show.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Member {
    pub id: NodeId,
    /// The member's public keys (Ed25519, then X25519): its id is a hash of them.
    #[serde(skip)]
    pub public_key: [u8; wire::PUBLIC_KEY_LEN],
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
    /// The generation of the local node this member last said it holds (in its Syn); `None` for the
    /// local node and for a member that has not sent one since it was (re)learnt.
    pub knows_me_as: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn event_names_are_what_serde_writes() {
        use EventKind::*;
        for k in [
            Joined, Updated, Suspect, Recovered, Dead, Left, Restarted, Reaped,
        ] {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }
}
