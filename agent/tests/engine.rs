//! The swarm plan (`herd::model::engine`) run by every node of a simulated cluster against a model of
//! Docker Swarm's rules (Raft quorum for every change, a manager must be demoted before it is removed,
//! a demotion that would lose the quorum is refused, a node removed while away finds its engine in
//! error), through seeded crashes, restarts, graceful leaves and partitions: one swarm forms, the plan
//! never makes a swarm lose its quorum, and once the cluster is whole again every up node is in the
//! one swarm with the managers the rule wants.
//!
//! The model's rules, as Swarm's source has them:
//! - a demotion is refused unless the managers reachable after it hold the quorum of the managers left:
//!   moby/swarmkit `manager/state/raft/raft.go` l.1170-1193 (`CanRemoveMember`), called by
//!   `manager/controlapi/node.go` l.211 ("Quorum safeguard");
//! - a manager cannot be removed, only demoted first: `manager/controlapi/node.go` l.282 (swarmkit
//!   3e72cb64);
//! - a manager that leaves (`--force`) stays a Raft member that never answers, which is why Docker
//!   warns that the swarm may be lost: moby/moby `daemon/cluster/swarm.go` l.390-397 (b985e231).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use herd::gossip::{Liveness, NodeId};
use herd::model::engine::{
    managers_wanted, plan, EngineReport, Member, Role, Settings, Situation, Step, SwarmNode,
};

const TICK: Duration = Duration::from_secs(5);
const GB: u64 = 1 << 30;

/// Raft's majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// A node's entry in a swarm: Swarm lists a node under a new id every time it joins.
struct Entry {
    node: usize,
    role: Role,
}

#[derive(Default)]
struct Swarm {
    entries: BTreeMap<String, Entry>,
    /// The leading manager's entry.
    leader: Option<String>,
}

struct Node {
    memory: u64,
    up: bool,
    left: bool,
    group: u8,
    /// When it went down or out of reach (for the others' `gone_for`).
    lost_at: Duration,
    /// The swarm its engine believes it is in, and its entry there (kept on its disk across crashes).
    local: Option<(String, String)>,
    known: Option<String>,
}

struct World {
    now: Duration,
    changed_at: Duration,
    nodes: Vec<Node>,
    swarms: BTreeMap<String, Swarm>,
    formed: usize,
    joins: usize,
    refused: Vec<String>,
}

impl World {
    fn new(memories: &[u64]) -> World {
        World {
            now: Duration::ZERO,
            changed_at: Duration::ZERO,
            nodes: memories
                .iter()
                .map(|&memory| Node {
                    memory,
                    up: true,
                    left: false,
                    group: 0,
                    lost_at: Duration::ZERO,
                    local: None,
                    known: None,
                })
                .collect(),
            swarms: BTreeMap::new(),
            formed: 0,
            joins: 0,
            refused: Vec::new(),
        }
    }

    fn reach(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && self.nodes[a].group == self.nodes[b].group
    }

    /// Whether `from` reaches the node behind `entry` of `swarm`, as that node's current life.
    fn reaches_entry(&self, from: usize, swarm: &str, entry: &str) -> bool {
        let e = &self.swarms[swarm].entries[entry];
        self.reach(from, e.node)
            && self.nodes[e.node]
                .local
                .as_ref()
                .map(|(s, n)| (s.as_str(), n.as_str()))
                == Some((swarm, entry))
    }

    fn managers(&self, swarm: &str) -> Vec<String> {
        self.swarms[swarm]
            .entries
            .iter()
            .filter(|(_, e)| e.role == Role::Manager)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many of the managers of `swarm` `from` reaches.
    fn reached_managers(&self, swarm: &str, from: usize) -> usize {
        self.managers(swarm)
            .iter()
            .filter(|m| self.reaches_entry(from, swarm, m))
            .count()
    }

    fn has_quorum(&self, swarm: &str, from: usize) -> bool {
        self.reached_managers(swarm, from) >= quorum(self.managers(swarm).len())
    }

    fn report(&self, j: usize) -> Option<EngineReport> {
        let (swarm, entry) = self.nodes[j].local.clone()?;
        let s = &self.swarms[&swarm];
        let (role, error) = match s.entries.get(&entry) {
            Some(e) => (e.role, None),
            // Removed while it was away: its engine still holds the swarm, in error.
            None => (
                Role::Worker,
                Some("node is not part of this swarm".to_string()),
            ),
        };
        Some(EngineReport {
            swarm: Some(swarm),
            node: Some(entry.clone()),
            role,
            leader: error.is_none() && s.leader.as_deref() == Some(entry.as_str()),
            error,
        })
    }

    fn members_seen_by(&self, i: usize) -> Vec<Member> {
        (0..self.nodes.len())
            .map(|j| {
                let n = &self.nodes[j];
                let liveness = if i == j || self.reach(i, j) {
                    Liveness::Alive
                } else if n.left {
                    Liveness::Left
                } else {
                    Liveness::Dead
                };
                Member {
                    id: NodeId(j as u64 + 1),
                    addr: Some(IpAddr::from([10, 0, 0, j as u8 + 1])),
                    liveness,
                    gone_for: (liveness != Liveness::Alive).then(|| self.now - n.lost_at),
                    healthy: true,
                    memory: Some(n.memory),
                    engine: self.report(j),
                }
            })
            .collect()
    }

    /// `docker node ls` on node `i`, if its engine leads a swarm.
    fn listing(&self, i: usize) -> Vec<SwarmNode> {
        let Some((swarm, entry)) = &self.nodes[i].local else {
            return Vec::new();
        };
        let s = &self.swarms[swarm];
        if s.leader.as_deref() != Some(entry.as_str()) {
            return Vec::new();
        }
        s.entries
            .iter()
            .map(|(id, e)| SwarmNode {
                node: id.clone(),
                role: e.role,
                reachable: self.reaches_entry(i, swarm, id),
            })
            .collect()
    }

    /// Raft: in the side that holds a swarm's quorum, a leader (the sitting one if it is there).
    fn elect(&mut self) {
        let ids: Vec<String> = self.swarms.keys().cloned().collect();
        for id in ids {
            let holder = |w: &World, entry: &str| {
                let node = w.swarms[&id].entries[entry].node;
                w.reaches_entry(node, &id, entry) && w.has_quorum(&id, node)
            };
            let sitting = self.swarms[&id]
                .leader
                .clone()
                .filter(|l| self.swarms[&id].entries.contains_key(l) && holder(self, l));
            let leader =
                sitting.or_else(|| self.managers(&id).into_iter().find(|m| holder(self, m)));
            self.swarms.get_mut(&id).unwrap().leader = leader;
        }
    }

    /// Runs one step for node `i` as Docker would, or records why Docker refused it.
    fn apply(&mut self, i: usize, step: &Step) {
        let refuse = |w: &mut World, why: &str| {
            w.refused
                .push(format!("{:?} node {i} {step:?}: {why}", w.now))
        };
        match step {
            Step::Form => {
                self.formed += 1;
                let id = format!("s{}", self.formed);
                let entry = format!("n{i}x{}", self.joins);
                self.joins += 1;
                let mut s = Swarm::default();
                s.entries.insert(
                    entry.clone(),
                    Entry {
                        node: i,
                        role: Role::Manager,
                    },
                );
                s.leader = Some(entry.clone());
                self.swarms.insert(id.clone(), s);
                self.nodes[i].local = Some((id.clone(), entry));
                self.nodes[i].known = Some(id);
            }
            Step::Join { swarm, via } => {
                let IpAddr::V4(v) = via else { unreachable!() };
                let via = v.octets()[3] as usize - 1;
                if !self.reach(i, via) || !self.has_quorum(swarm, via) {
                    // Docker times out; the plan tries again next round.
                    return;
                }
                let entry = format!("n{i}x{}", self.joins);
                self.joins += 1;
                self.swarms.get_mut(swarm).unwrap().entries.insert(
                    entry.clone(),
                    Entry {
                        node: i,
                        role: Role::Worker,
                    },
                );
                self.nodes[i].local = Some((swarm.clone(), entry));
                self.nodes[i].known = Some(swarm.clone());
            }
            Step::Leave => {
                // The swarm keeps listing it (a worker down, or a manager that never answers again)
                // until the leader takes it out.
                self.nodes[i].local = None;
            }
            Step::Promote { node } | Step::Demote { node } | Step::Remove { node } => {
                let Some((id, me)) = self.nodes[i].local.clone() else {
                    return refuse(self, "the acting node is in no swarm");
                };
                if self.swarms[&id].leader.as_deref() != Some(me.as_str()) {
                    return refuse(self, "the acting node does not lead");
                }
                if !self.has_quorum(&id, i) {
                    return refuse(self, "no quorum");
                }
                let Some(role) = self.swarms[&id].entries.get(node).map(|e| e.role) else {
                    return refuse(self, "no such node");
                };
                let reached = self.reached_managers(&id, i);
                let total = self.managers(&id).len();
                let reachable = self.reaches_entry(i, &id, node);
                let s = self.swarms.get_mut(&id).unwrap();
                match (step, role) {
                    (Step::Promote { .. }, Role::Worker) => {
                        s.entries.get_mut(node).unwrap().role = Role::Manager;
                    }
                    (Step::Demote { .. }, Role::Manager) => {
                        if reached - usize::from(reachable) < quorum(total - 1) {
                            return refuse(self, "demoting would lose the quorum");
                        }
                        s.entries.get_mut(node).unwrap().role = Role::Worker;
                        if s.leader.as_deref() == Some(node.as_str()) {
                            s.leader = None;
                        }
                    }
                    (Step::Remove { .. }, Role::Worker) => {
                        s.entries.remove(node);
                    }
                    _ => refuse(self, "not allowed for that role"),
                }
            }
        }
    }

    fn tick(&mut self, settings: &Settings) {
        self.elect();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let members = self.members_seen_by(i);
            // A node learns of the swarms its reachable peers are in, and remembers them.
            if self.nodes[i].known.is_none() {
                self.nodes[i].known = members
                    .iter()
                    .filter(|m| m.liveness == Liveness::Alive)
                    .find_map(|m| m.engine.as_ref().and_then(|e| e.swarm.clone()));
            }
            let known = self.nodes[i].known.clone();
            let listing = self.listing(i);
            let p = plan(
                &Situation {
                    me: NodeId(i as u64 + 1),
                    members: &members,
                    stable_for: self.now - self.changed_at,
                    clock_synced: true,
                    known_swarm: known.as_deref(),
                    swarm_nodes: &listing,
                },
                settings,
            );
            for step in &p.steps {
                let before = self.nodes[i]
                    .local
                    .clone()
                    .map(|(s, _)| s)
                    .filter(|s| self.has_quorum(s, i));
                self.apply(i, step);
                if let Some(s) = before.filter(|_| *step != Step::Leave) {
                    assert!(
                        self.has_quorum(&s, i),
                        "{:?}: {step:?} by node {i} lost swarm {s}'s quorum",
                        self.now
                    );
                }
                self.elect();
            }
        }
        self.now += TICK;
    }

    /// What a node's agent does to its engine when it leaves the cluster gracefully: a manager asks
    /// its swarm to demote it first (any manager may ask), and leaves only if that was granted, since a
    /// manager that leaves stays a Raft voter that never answers; a worker leaves.
    fn leave_gracefully(&mut self, i: usize) {
        let Some((id, entry)) = self.nodes[i].local.clone() else {
            return;
        };
        let role = self.swarms[&id].entries.get(&entry).map(|e| e.role);
        if role == Some(Role::Manager) {
            let total = self.managers(&id).len();
            if !self.has_quorum(&id, i) || self.reached_managers(&id, i) - 1 < quorum(total - 1) {
                return;
            }
            let s = self.swarms.get_mut(&id).unwrap();
            s.entries.get_mut(&entry).unwrap().role = Role::Worker;
            if s.leader.as_deref() == Some(entry.as_str()) {
                s.leader = None;
            }
        }
        self.nodes[i].local = None;
    }

    /// Why node `i`'s plan waits.
    fn why(&self, i: usize, settings: &Settings) -> Option<String> {
        let members = self.members_seen_by(i);
        let listing = self.listing(i);
        plan(
            &Situation {
                me: NodeId(i as u64 + 1),
                members: &members,
                stable_for: self.now - self.changed_at,
                clock_synced: true,
                known_swarm: self.nodes[i].known.as_deref(),
                swarm_nodes: &listing,
            },
            settings,
        )
        .waiting
    }

    fn change(&mut self) {
        self.changed_at = self.now;
    }
}

/// A tiny seeded generator (xorshift64*): every failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every up node in one swarm, listed once, with the managers the rule wants, all of them up.
fn settled(w: &World, settings: &Settings) -> Result<(), String> {
    let up: Vec<usize> = (0..w.nodes.len()).filter(|&i| w.nodes[i].up).collect();
    let swarms: BTreeSet<&str> = up
        .iter()
        .filter_map(|&i| w.nodes[i].local.as_ref().map(|(s, _)| s.as_str()))
        .collect();
    let outside: Vec<(usize, Option<String>)> = up
        .iter()
        .filter(|&&i| w.nodes[i].local.is_none())
        .map(|&i| (i, w.why(i, settings)))
        .collect();
    if swarms.len() != 1 || !outside.is_empty() {
        return Err(format!(
            "up nodes' swarms: {swarms:?}; outside, and why: {outside:?}"
        ));
    }
    let id = *swarms.iter().next().unwrap();
    let s = &w.swarms[id];
    let mut listed: Vec<usize> = s.entries.values().map(|e| e.node).collect();
    listed.sort();
    if listed != up {
        return Err(format!(
            "the swarm lists {listed:?}, the up nodes are {up:?}"
        ));
    }
    let eligible = up
        .iter()
        .filter(|&&i| w.nodes[i].memory >= settings.min_manager_memory)
        .count();
    let wanted = managers_wanted(up.len(), settings.five_managers_from).min(eligible);
    let managing: Vec<usize> = s
        .entries
        .values()
        .filter(|e| e.role == Role::Manager)
        .map(|e| e.node)
        .collect();
    if managing.len() != wanted {
        return Err(format!("managers {managing:?}, want {wanted} of {up:?}"));
    }
    if s.leader.is_none() {
        return Err("no leader".into());
    }
    Ok(())
}

fn run_until_settled(w: &mut World, settings: &Settings, what: &str) {
    for _ in 0..200 {
        w.tick(settings);
        if settled(w, settings).is_ok() && w.now - w.changed_at > settings.settle * 2 {
            return;
        }
    }
    let swarms: Vec<String> = w
        .swarms
        .iter()
        .map(|(id, s)| {
            let entries: Vec<String> = s
                .entries
                .iter()
                .map(|(e, x)| format!("{e}:{:?}", x.role))
                .collect();
            format!("{id} leader {:?} {entries:?}", s.leader)
        })
        .collect();
    let locals: Vec<_> = w.nodes.iter().map(|n| (n.up, n.local.clone())).collect();
    panic!(
        "{what}: not settled after 1000 s: {:?}; refused: {:?}; swarms {swarms:?}; nodes {locals:?}",
        settled(w, settings),
        w.refused
    );
}

#[test]
fn a_fresh_cluster_forms_one_swarm_with_the_managers_the_rule_wants() {
    let settings = Settings::default();
    for n in 1..=9 {
        let mut w = World::new(&vec![2 * GB; n]);
        run_until_settled(&mut w, &settings, &format!("{n} nodes"));
        assert_eq!(w.formed, 1, "{n} nodes formed {} swarms", w.formed);
        assert!(w.refused.is_empty(), "{:?}", w.refused);
    }
}

#[test]
fn crashes_leaves_returns_and_partitions_heal_into_one_swarm_without_losing_quorum() {
    let settings = Settings {
        settle: Duration::from_secs(30),
        remove_after: Duration::from_secs(120),
        ..Settings::default()
    };
    for seed in 1..=150u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let n = 3 + rng.below(6) as usize;
        let memories: Vec<u64> = (0..n)
            .map(|_| [GB / 2, GB, 2 * GB, 4 * GB][rng.below(4) as usize])
            .collect();
        if memories.iter().all(|&m| m < settings.min_manager_memory) {
            continue;
        }
        let mut w = World::new(&memories);
        run_until_settled(&mut w, &settings, &format!("seed {seed}: formation"));
        for _ in 0..6 {
            let i = rng.below(n as u64) as usize;
            match rng.below(4) {
                0 if w.nodes[i].up => {
                    w.nodes[i].up = false;
                    w.nodes[i].lost_at = w.now;
                }
                1 if w.nodes[i].up => {
                    w.leave_gracefully(i);
                    w.nodes[i].up = false;
                    w.nodes[i].left = true;
                    w.nodes[i].lost_at = w.now;
                }
                2 => {
                    // A partition of the minority that holds node i, healed after a while.
                    let side: BTreeSet<usize> = (0..n)
                        .filter(|&j| j == i || rng.below(3) == 0)
                        .take((n - 1) / 2)
                        .collect();
                    for &j in &side {
                        w.nodes[j].group = 1;
                        w.nodes[j].lost_at = w.now;
                    }
                    w.change();
                    for _ in 0..rng.below(60) {
                        w.tick(&settings);
                    }
                    for node in w.nodes.iter_mut() {
                        node.group = 0;
                    }
                }
                _ => {}
            }
            w.change();
            for _ in 0..rng.below(40) {
                w.tick(&settings);
            }
            // Some come back (with their engine's state as they left it).
            let j = rng.below(n as u64) as usize;
            if !w.nodes[j].up {
                w.nodes[j].up = true;
                w.nodes[j].left = false;
                w.change();
            }
        }
        // The cluster is whole again: every card powered up, the partition healed.
        for node in w.nodes.iter_mut() {
            node.up = true;
            node.left = false;
            node.group = 0;
        }
        w.change();
        run_until_settled(&mut w, &settings, &format!("seed {seed}: after the faults"));
        assert!(w.refused.is_empty(), "seed {seed}: {:?}", w.refused);
        let live_swarms: BTreeSet<&String> = (0..n)
            .filter(|&i| w.nodes[i].up)
            .filter_map(|i| w.nodes[i].local.as_ref().map(|(s, _)| s))
            .collect();
        assert_eq!(live_swarms.len(), 1, "seed {seed}");
    }
}

#[test]
fn a_partition_at_first_formation_makes_one_swarm_with_expect_and_two_that_merge_without() {
    for (expect, swarms_formed) in [(3, 1), (1, 2)] {
        let settings = Settings {
            expect,
            ..Settings::default()
        };
        let mut w = World::new(&[2 * GB; 5]);
        // Nodes 3 and 4 are cut off from the start.
        for j in 3..5 {
            w.nodes[j].group = 1;
        }
        for _ in 0..60 {
            w.tick(&settings);
        }
        assert_eq!(w.formed, swarms_formed, "expect = {expect}");
        for node in w.nodes.iter_mut() {
            node.group = 0;
        }
        w.change();
        run_until_settled(&mut w, &settings, &format!("expect = {expect}, healed"));
        assert_eq!(w.formed, swarms_formed, "expect = {expect}: formed again");
        assert!(w.refused.is_empty(), "{:?}", w.refused);
    }
}
