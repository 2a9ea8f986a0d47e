//! A deterministic network simulator for the gossip core: many [`Gossiper`]s in one process, a virtual
//! clock that jumps from one scheduled action to the next, and a seeded RNG behind every random choice
//! (loss, latency, jitter, peer selection), so any run replays exactly from its seed.
//!
//! Datagrams are real bytes: every one is encoded (and sealed, when the simulation has a key), delivered and
//! decoded by the same code the agent runs, so sizes and codec errors are the real ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gossip::wire::{ClusterKey, NodeKey, Seal, Security};
use crate::gossip::{CryptoMemo, Event, EventKind, GossipConfig, Gossiper, Liveness, NodeId};

/// The simulated network and the nodes' settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Probability that any one datagram is lost.
    pub loss: f64,
    /// One-way latency, plus a uniform jitter of up to `jitter`.
    pub latency: Duration,
    pub jitter: Duration,
    pub gossip: GossipConfig,
    /// Seal datagrams with a cluster key (slower; the default simulates insecure clusters).
    pub encrypt: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            loss: 0.0,
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(2),
            gossip: GossipConfig::new("sim"),
            encrypt: false,
        }
    }
}

/// Something a node saw, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub observer: usize,
    pub event: Event,
}

#[derive(Debug)]
struct SimNode {
    /// The node's own keys, kept across restarts (as the state directory keeps them).
    key: NodeKey,
    id: NodeId,
    generation: u64,
    gossiper: Option<Gossiper>,
    /// Bumped on crash and restart so stale scheduled ticks are ignored.
    epoch: u64,
    group: u8,
    cluster: String,
    /// The node runs nothing before this time (see [`Sim::stall`]).
    stalled_until: Duration,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Tick {
        node: usize,
        epoch: u64,
    },
    Deliver {
        to: usize,
        from: SocketAddr,
        datagram: Vec<u8>,
    },
}

/// The simulation.
pub struct Sim {
    config: SimConfig,
    security: Security,
    now: Duration,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(Duration, u64, Action)>>,
    seq: u64,
    nodes: Vec<SimNode>,
    by_id: HashMap<NodeId, usize>,
    events: Vec<Observed>,
    largest_datagram: usize,
    bytes_sent: u64,
    datagrams_sent: u64,
    datagrams_lost: u64,
    /// Links that carry nothing (both ways), by node index, lower first.
    cut: std::collections::HashSet<(usize, usize)>,
    /// Bytes sent to addresses no simulated node has (a third party a forger pointed members at).
    to_outsiders: HashMap<std::net::IpAddr, u64>,
    /// The sequence number of the last forged datagram.
    forged_seq: u64,
    /// Signature checks and key agreements the nodes share (see [`CryptoMemo`]).
    memo: std::sync::Arc<CryptoMemo>,
}

/// The address of simulated node `i`.
pub fn addr_of(i: usize) -> SocketAddr {
    let i = i as u32 + 1;
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
        7496,
    ))
}

fn index_of(addr: SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(a) if a.port() == 7496 => {
            let [_, b, c, d] = a.ip().octets();
            let i = (u32::from(b) << 16) | (u32::from(c) << 8) | u32::from(d);
            (i as usize).checked_sub(1)
        }
        _ => None,
    }
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let security = if config.encrypt {
            Security::keyring(&ClusterKey::generate(&mut rng), &[])
        } else {
            Security::Insecure
        };
        Sim {
            config,
            security,
            now: Duration::ZERO,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes: Vec::new(),
            by_id: HashMap::new(),
            events: Vec::new(),
            largest_datagram: 0,
            bytes_sent: 0,
            datagrams_sent: 0,
            datagrams_lost: 0,
            cut: Default::default(),
            to_outsiders: HashMap::new(),
            forged_seq: 0,
            memo: Default::default(),
        }
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Starts a new node that knows the given nodes as seeds; returns its index.
    pub fn add_node(&mut self, seeds: &[usize]) -> usize {
        let cluster = self.config.gossip.cluster.clone();
        self.add_node_in(&cluster, seeds)
    }

    /// Starts a new node of another cluster on the same network.
    pub fn add_node_in(&mut self, cluster: &str, seeds: &[usize]) -> usize {
        let i = self.nodes.len();
        let key = NodeKey::generate(&mut self.rng);
        let id = key.id();
        self.by_id.insert(id, i);
        self.nodes.push(SimNode {
            key,
            id,
            // Generations are seconds since 2025 in the agent: simulate their size on the wire too.
            generation: 60_000_000,
            gossiper: None,
            epoch: 0,
            group: 0,
            cluster: cluster.to_string(),
            stalled_until: Duration::ZERO,
        });
        self.boot(i, seeds.iter().map(|s| addr_of(*s)).collect());
        i
    }

    /// Starts `n` nodes at once, each seeded with the first three.
    pub fn add_nodes(&mut self, n: usize) -> std::ops::Range<usize> {
        let first = self.nodes.len();
        let seeds: Vec<usize> = (first..first + n.min(3)).collect();
        for _ in 0..n {
            self.add_node(&seeds);
        }
        first..first + n
    }

    fn boot(&mut self, i: usize, seeds: Vec<SocketAddr>) {
        let node = &mut self.nodes[i];
        node.generation += 1;
        node.epoch += 1;
        let mut config = self.config.gossip.clone();
        config.seeds = seeds;
        config.cluster = node.cluster.clone();
        let mut gossiper = Gossiper::new(
            config,
            self.security.clone(),
            node.key.clone(),
            node.generation,
            addr_of(i),
            self.now,
        );
        gossiper.share_memo(self.memo.clone());
        node.gossiper = Some(gossiper);
        // Nodes do not start in lockstep.
        let offset = self
            .rng
            .gen_range(Duration::ZERO..self.config.gossip.interval);
        let epoch = node.epoch;
        self.schedule(self.now + offset, Action::Tick { node: i, epoch });
    }

    /// Kills node `i` without a word.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].gossiper = None;
        self.nodes[i].epoch += 1;
    }

    /// Starts a crashed node again, with a new generation.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].gossiper.is_none(), "node {i} is running");
        let seeds = self.config.gossip.seeds.clone();
        let seeds = if seeds.is_empty() {
            (0..self.nodes.len().min(3))
                .filter(|s| *s != i)
                .map(addr_of)
                .collect()
        } else {
            seeds
        };
        self.boot(i, seeds);
    }

    /// Starts a crashed node again with `generation`, which may be below its last one: a card whose state
    /// directory was lost, on a clock that is behind.
    pub fn restart_with_generation(&mut self, i: usize, generation: u64) {
        self.nodes[i].generation = generation - 1;
        self.restart(i);
    }

    /// Delivers to every running node but `as_node` a datagram of `as_node`'s (its id, generation,
    /// address, keys and next sequence number), introduced with its keys: what a key holder (`as_node`)
    /// can send as itself, whatever it says.
    pub fn forge(&mut self, as_node: usize, message: super::wire::Message) {
        let to: Vec<usize> = self.up().filter(|i| *i != as_node).collect();
        self.forge_to(as_node, &to, message);
    }

    /// As [`Sim::forge`], delivered to the nodes `to` only (a forger that writes to one node and lets
    /// gossip carry the rest).
    pub fn forge_to(&mut self, as_node: usize, to: &[usize], message: super::wire::Message) {
        let (key, generation) = (
            self.nodes[as_node].key.clone(),
            self.nodes[as_node].generation,
        );
        self.forge_as(as_node, &key, generation, to, message);
    }

    /// Delivers to the nodes `to` a datagram from node `from`'s address, introduced with the keys
    /// `key` in `generation`: a key holder speaking for a member whose keys it holds (its own, or one it
    /// invented).
    pub fn forge_as(
        &mut self,
        from: usize,
        key: &NodeKey,
        generation: u64,
        to: &[usize],
        message: super::wire::Message,
    ) {
        let sender = key.id();
        // The next number of the node's own sequence, as a forger who listened would pick, and above
        // its own last forgery (a datagram numbered twice is a replay).
        let seq = self
            .index(sender)
            .and_then(|i| self.nodes[i].gossiper.as_ref())
            .map_or(0, |g| g.next_seq())
            .max(self.forged_seq + 1);
        self.forged_seq = seq;
        for &to in to {
            let packet = super::wire::Packet {
                sender,
                to: self.nodes[to].id,
                generation,
                seq,
                message: message.clone(),
            };
            let cluster = self.wire_cluster_id(to);
            let datagram = super::wire::seal(
                &self.security,
                cluster,
                sender,
                Seal::Introduced { key },
                &packet.encode(),
                &mut self.rng,
            );
            let at = self.now;
            self.schedule(
                at,
                Action::Deliver {
                    to,
                    from: addr_of(from),
                    datagram,
                },
            );
        }
    }

    /// The cluster id on the wire of node `i`'s cluster: what a key holder's forgeries and signatures
    /// name.
    pub fn wire_cluster_id(&self, i: usize) -> u64 {
        GossipConfig {
            cluster: self.nodes[i].cluster.clone(),
            ..self.config.gossip.clone()
        }
        .wire_cluster_id()
    }

    /// Node `i`'s own keys (a key holder's, when `i` plays one).
    pub fn key(&self, i: usize) -> &NodeKey {
        &self.nodes[i].key
    }

    /// Stops node `i` gracefully: it announces its leave, then stops.
    pub fn leave(&mut self, i: usize) {
        if let Some(g) = self.nodes[i].gossiper.as_mut() {
            g.leave(self.now, &mut self.rng);
        }
        self.flush(i);
        self.crash(i);
    }

    /// Splits the network: nodes only reach nodes of the same group.
    pub fn partition(&mut self, group_of: impl Fn(usize) -> u8) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.group = group_of(i);
        }
    }

    /// Heals every partition and every cut link.
    pub fn heal(&mut self) {
        self.partition(|_| 0);
        self.cut.clear();
    }

    /// Cuts the link between nodes `a` and `b`: nothing passes either way until [`Sim::heal`].
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    /// Stalls node `i` for `d` (a process swapped out, suspended, or stuck in a long pause): it neither
    /// runs its rounds nor reads datagrams; what arrives meanwhile waits, as in a socket's buffer, and
    /// is read when it runs again.
    pub fn stall(&mut self, i: usize, d: Duration) {
        self.nodes[i].stalled_until = self.now + d;
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].gossiper.is_some()
    }

    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].id
    }

    pub fn index(&self, id: NodeId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub fn gossiper(&self, i: usize) -> Option<&Gossiper> {
        self.nodes[i].gossiper.as_ref()
    }

    pub fn gossiper_mut(&mut self, i: usize) -> Option<&mut Gossiper> {
        self.nodes[i].gossiper.as_mut()
    }

    /// Indices of running nodes.
    pub fn up(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| self.is_up(*i))
    }

    /// Takes the events observed so far.
    /// Bytes sent so far to `ip`, an address no simulated node has.
    pub fn sent_to_outsider(&self, ip: std::net::IpAddr) -> u64 {
        self.to_outsiders.get(&ip).copied().unwrap_or(0)
    }

    pub fn take_events(&mut self) -> Vec<Observed> {
        std::mem::take(&mut self.events)
    }

    /// The largest datagram sent so far, in bytes.
    pub fn largest_datagram(&self) -> usize {
        self.largest_datagram
    }

    /// Bytes and datagrams sent so far by all nodes, and datagrams lost.
    pub fn traffic(&self) -> (u64, u64, u64) {
        (self.bytes_sent, self.datagrams_sent, self.datagrams_lost)
    }

    /// Whether every running node sees every other running node alive, and nothing else alive.
    pub fn converged(&self) -> bool {
        let up: Vec<usize> = self.up().collect();
        // The counts first (cheap, and wrong somewhere until the very end), then who exactly.
        let counts = up
            .iter()
            .all(|&i| self.gossiper(i).expect("up").count(Liveness::Alive) == up.len());
        counts
            && up.iter().all(|&i| {
                let g = self.gossiper(i).expect("up");
                up.iter()
                    .all(|&j| g.liveness(self.id(j)) == Some(Liveness::Alive))
            })
    }

    /// Runs until `deadline` or until `done` holds; true if `done` held. `done` is checked every
    /// [`Sim::poll`] of simulated time (it may be costly), so measure exact times from events instead.
    pub fn run_until(&mut self, deadline: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let mut next_check = self.now;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > deadline {
                break;
            }
            let Reverse((at, _, action)) = self.queue.pop().expect("peeked");
            self.now = at;
            self.step(action);
            if self.now >= next_check {
                if done(self) {
                    return true;
                }
                next_check = self.now + self.poll();
            }
        }
        self.now = self.now.max(deadline);
        done(self)
    }

    /// How often [`Sim::run_until`] checks its condition: every 100 ms of simulated time, and less often
    /// in large clusters (a check such as [`Sim::converged`] asks every node about every node).
    pub fn poll(&self) -> Duration {
        Duration::from_millis(100) * (self.nodes.len() as u32 / 100).max(1)
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline, |_| false);
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Tick { node, epoch } => {
                if self.nodes[node].epoch != epoch {
                    return;
                }
                let resume = self.nodes[node].stalled_until;
                if self.now < resume {
                    self.schedule(resume, Action::Tick { node, epoch });
                    return;
                }
                let g = self.nodes[node].gossiper.as_mut().expect("epoch matches");
                g.handle_tick(self.now, &mut self.rng);
                let next = g.next_wakeup();
                self.schedule(next, Action::Tick { node, epoch });
                self.flush(node);
            }
            Action::Deliver { to, from, datagram } => {
                let resume = self.nodes[to].stalled_until;
                if self.now < resume {
                    self.schedule(resume, Action::Deliver { to, from, datagram });
                    return;
                }
                if let Some(g) = self.nodes[to].gossiper.as_mut() {
                    g.handle_datagram(self.now, from, &datagram, &mut self.rng);
                    self.flush(to);
                }
            }
        }
    }

    /// Moves node `i`'s datagrams onto the network and its events into the log.
    fn flush(&mut self, i: usize) {
        let Some(g) = self.nodes[i].gossiper.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = g.poll_transmit() {
            out.push(t);
        }
        while let Some(event) = g.poll_event() {
            self.events.push(Observed { observer: i, event });
        }
        let from = addr_of(i);
        for t in out {
            self.largest_datagram = self.largest_datagram.max(t.datagram.len());
            self.bytes_sent += t.datagram.len() as u64;
            self.datagrams_sent += 1;
            let Some(to) = index_of(t.to).filter(|to| *to < self.nodes.len()) else {
                *self.to_outsiders.entry(t.to.ip()).or_default() += t.datagram.len() as u64;
                continue;
            };
            if self.nodes[to].group != self.nodes[i].group
                || self.cut.contains(&(i.min(to), i.max(to)))
                || self.rng.gen_bool(self.config.loss)
            {
                self.datagrams_lost += 1;
                continue;
            }
            let jitter = if self.config.jitter.is_zero() {
                Duration::ZERO
            } else {
                self.rng.gen_range(Duration::ZERO..self.config.jitter)
            };
            let at = self.now + self.config.latency + jitter;
            self.schedule(
                at,
                Action::Deliver {
                    to,
                    from,
                    datagram: t.datagram,
                },
            );
        }
    }

    fn schedule(&mut self, at: Duration, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, action)));
    }
}

/// The first time each observer saw `kind` for `node` at or after `since`, as delays from `since`.
pub fn delays(
    events: &[Observed],
    kind: EventKind,
    node: NodeId,
    since: Duration,
) -> HashMap<usize, Duration> {
    let mut out = HashMap::new();
    for o in events {
        if o.event.kind == kind && o.event.node == node && o.event.at >= since {
            out.entry(o.observer).or_insert(o.event.at - since);
        }
    }
    out
}

/// The `q` quantile (0..=1) of `values`, by the nearest-rank method.
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    assert!(!values.is_empty(), "quantile of nothing");
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
