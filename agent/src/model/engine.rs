//! The container engine herd forms from its own membership (Docker Swarm first, room left for k3s): what
//! a node says of its engine in the gossip, and the plan every node computes the same way from herd's
//! view of the cluster — which swarm is the cluster's, who forms it, who manages it, who joins, leaves,
//! is promoted, demoted or removed. Sans-IO: the caller hands in the member table as it sees it and runs
//! the steps it gets back; nothing here reads a clock or starts a process. `docs/ENGINE.md` gives the
//! reasoning, split brain included.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gossip::{Liveness, NodeId};

/// Gossip key of a node's [`EngineReport`].
pub const ENGINE_KEY: &str = "engine";

/// The file (in `engine.run_dir`) where the card's root side of the engine writes what its engine says of
/// itself; the agent, which has no access to the engine, reads it and gossips it.
pub const REPORT_FILE: &str = "report.json";

/// A report file larger than this is refused unread (a report is a few hundred bytes).
const REPORT_MAX: u64 = 4096;

/// A node's part in its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// In no swarm.
    #[default]
    None,
    Worker,
    Manager,
}

/// What a node says of its own engine, as its engine reports it (`docker info`): gossiped under
/// [`ENGINE_KEY`], so every node plans from every node's word about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EngineReport {
    /// The swarm this node's engine belongs to (Swarm's cluster id), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<String>,
    /// This node's id in that swarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub role: Role,
    /// Whether this node's engine leads the swarm (its Raft leader).
    #[serde(default)]
    pub leader: bool,
    /// The engine's own error, when it has one (a swarm it cannot reach, a daemon that does not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl EngineReport {
    pub fn to_gossip(&self) -> String {
        serde_json::to_string(self).expect("strings serialize")
    }

    /// Reads and checks the report file at `path`: `None` when there is none (no engine on this card).
    pub fn read(path: &std::path::Path) -> Result<Option<EngineReport>, String> {
        let Some(text) = read_bounded(path, REPORT_MAX)? else {
            return Ok(None);
        };
        EngineReport::check(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks a report a peer gossiped: ids are what Swarm makes (lowercase letters and digits), the
    /// error is short plain text, a leader is a manager.
    pub fn check(value: &str) -> Result<(), String> {
        let r: EngineReport =
            serde_json::from_str(value).map_err(|e| format!("{ENGINE_KEY}: {e}"))?;
        let id_ok = |id: &Option<String>| {
            id.as_deref().is_none_or(|id| {
                (1..=64).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
        };
        if !id_ok(&r.swarm) || !id_ok(&r.node) {
            return Err(format!(
                "{ENGINE_KEY}: an id is not 1 to 64 lowercase letters and digits"
            ));
        }
        if r.error
            .as_deref()
            .is_some_and(|e| e.chars().count() > 200 || e.chars().any(char::is_control))
        {
            return Err(format!(
                "{ENGINE_KEY}: the error is not at most 200 printable characters"
            ));
        }
        if r.leader && r.role != Role::Manager {
            return Err(format!("{ENGINE_KEY}: a leader that is no manager"));
        }
        if r.role != Role::None && (r.swarm.is_none() || r.node.is_none()) {
            return Err(format!(
                "{ENGINE_KEY}: a role without a swarm and a node id"
            ));
        }
        Ok(())
    }
}

/// A file the root side wrote, at most `max` bytes; `None` when there is none.
pub fn read_bounded(path: &std::path::Path, max: u64) -> Result<Option<String>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > max {
        return Err(format!("{}: more than {max} bytes", path.display()));
    }
    Ok(Some(text))
}

/// The rules of the plan, from `[engine]` in herd.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How many nodes must be up, eligible and agreed before a swarm is formed: set it to a majority of
    /// the cards and two sides of a partition can never both form one (docs/ENGINE.md).
    pub expect: usize,
    /// From this many members on, a swarm has five managers (three from three on, one below).
    pub five_managers_from: usize,
    /// A manager needs at least this much memory (bytes of the node's gossiped total).
    pub min_manager_memory: u64,
    /// How long the set of up members must stay the same before the swarm is formed or its managers
    /// changed: a node that is still booting, or flapping, does not move the swarm.
    pub settle: Duration,
    /// How long a node must have been dead before it is taken out of the swarm (a node that left
    /// gracefully is taken out at once): its loss is then certain, not a suspicion.
    pub remove_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            expect: 1,
            five_managers_from: 7,
            // A Raspberry Pi 3 (1 GB, about 900 MB seen) may manage; a Zero 2 W (512 MB) may not.
            min_manager_memory: 700 * 1024 * 1024,
            settle: Duration::from_secs(30),
            remove_after: Duration::from_secs(600),
        }
    }
}

/// A member as the plan sees it: herd's verdict beside the member's own report of its engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: NodeId,
    pub addr: Option<IpAddr>,
    pub liveness: Liveness,
    /// How long the member has been dead or gone (`None` while it is alive or suspect).
    pub gone_for: Option<Duration>,
    /// No health check of the member is critical.
    pub healthy: bool,
    /// Its memory, from its gossiped sample.
    pub memory: Option<u64>,
    pub engine: Option<EngineReport>,
}

impl Member {
    fn up(&self) -> bool {
        matches!(self.liveness, Liveness::Alive | Liveness::Suspect)
    }

    fn report(&self) -> EngineReport {
        self.engine.clone().unwrap_or_default()
    }

    fn in_swarm(&self, swarm: &str) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|e| e.swarm.as_deref() == Some(swarm))
    }

    fn is_manager(&self) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|e| e.role == Role::Manager)
    }

    /// May be chosen as a manager: alive (not merely suspect), healthy, with the memory.
    fn eligible(&self, settings: &Settings) -> bool {
        self.liveness == Liveness::Alive
            && self.healthy
            && self
                .memory
                .is_some_and(|m| m >= settings.min_manager_memory)
    }
}

/// Everything the plan is made from, as one node sees it.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub me: NodeId,
    /// Every member herd knows, this node included, dead and left ones too.
    pub members: &'a [Member],
    /// How long the set of up members has been the same.
    pub stable_for: Duration,
    /// Whether this node's clock is synchronised (Swarm's certificates need it).
    pub clock_synced: bool,
    /// A swarm this node has belonged to or seen gossiped (kept across restarts): a node that knows a
    /// swarm exists never forms another.
    pub known_swarm: Option<&'a str>,
    /// The swarm's own list of its nodes, on the node whose engine leads it (empty elsewhere): a node's
    /// former life, which no member's report names any more, is found only there.
    pub swarm_nodes: &'a [SwarmNode],
}

/// A node as the swarm lists it (`docker node ls` on the leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmNode {
    /// Its id in the swarm.
    pub node: String,
    pub role: Role,
    /// Whether the swarm reaches it (a worker ready, a manager reachable).
    pub reachable: bool,
}

/// One thing to do to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Form the cluster's swarm, advertising herd's own address.
    Form,
    /// Join `swarm` as a worker through the manager at `via` (the leader promotes it if it must manage).
    Join {
        swarm: String,
        via: IpAddr,
    },
    /// Leave this node's swarm: it is not the cluster's, or it has lost its place in it.
    Leave,
    /// The leader's work, on the swarm's node ids.
    Promote {
        node: String,
    },
    Demote {
        node: String,
    },
    Remove {
        node: String,
    },
}

/// The outcome of [`plan`]: what to do now, or why nothing is done yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The cluster's swarm, when one exists among the up members.
    pub swarm: Option<String>,
    /// The members that should manage it, in the order of preference.
    pub managers: Vec<NodeId>,
    pub steps: Vec<Step>,
    /// Why the plan waits, when it has no step for this node.
    pub waiting: Option<String>,
}

/// How many managers a swarm of `members` up members has: one below three, three from three on, five
/// from `five_from` on. Never an even number: Raft's quorum is a majority, and an even count tolerates no
/// more failures than the odd one below it.
pub fn managers_wanted(members: usize, five_from: usize) -> usize {
    match members {
        0 => 0,
        1 | 2 => 1,
        n if n >= five_from.max(5) => 5,
        _ => 3,
    }
}

/// The members that should manage, best first: those that manage already (a swarm is not reshuffled
/// while its managers are fine), then the ones with more memory, then by id — a rule every node computes
/// the same from the same gossip.
fn ranked<'m>(candidates: impl Iterator<Item = &'m Member>) -> Vec<&'m Member> {
    let mut v: Vec<&Member> = candidates.collect();
    v.sort_by(|a, b| {
        b.is_manager()
            .cmp(&a.is_manager())
            .then(b.memory.cmp(&a.memory))
            .then(a.id.cmp(&b.id))
    });
    v
}

/// The cluster's swarm: the one most up members belong to; a tie goes to the smaller id, so that two
/// swarms born of a partition are merged the same way by everyone once it heals.
fn cluster_swarm(members: &[Member]) -> Option<String> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for m in members.iter().filter(|m| m.up()) {
        if let Some(s) = m.engine.as_ref().and_then(|e| e.swarm.as_deref()) {
            *counts.entry(s).or_default() += 1;
        }
    }
    // BTreeMap iterates ids in order, and max_by_key keeps the last of equals: reverse for the smallest.
    counts
        .into_iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .map(|(s, _)| s.to_string())
}

/// What this node should do to its engine now.
pub fn plan(now: &Situation, settings: &Settings) -> Plan {
    let members = now.members;
    let Some(me) = members.iter().find(|m| m.id == now.me) else {
        return Plan {
            waiting: Some("this node is not in its own member table yet".into()),
            ..Plan::default()
        };
    };
    let wait = |why: String| Plan {
        waiting: Some(why),
        ..Plan::default()
    };
    let Some(swarm) = cluster_swarm(members) else {
        return form(now, settings, me);
    };
    let mine = me.report();
    let mut plan = Plan {
        swarm: Some(swarm.clone()),
        ..Plan::default()
    };
    match mine.swarm.as_deref() {
        Some(s) if s != swarm => {
            plan.steps.push(Step::Leave);
            return plan;
        }
        Some(_) if mine.error.is_some() => {
            // Its engine holds the swarm's id but cannot take part (removed while it was away): it
            // leaves, then joins afresh.
            plan.steps.push(Step::Leave);
            return plan;
        }
        Some(_) => {}
        None => {
            let via = ranked(
                members
                    .iter()
                    .filter(|m| m.up() && m.is_manager() && m.in_swarm(&swarm)),
            )
            .into_iter()
            .find_map(|m| m.addr);
            return match via {
                Some(via) => {
                    plan.steps.push(Step::Join { swarm, via });
                    plan
                }
                None => wait(format!("no manager of swarm {swarm} is up to join through")),
            };
        }
    }
    lead(now, settings, &swarm, plan)
}

/// No up member is in a swarm: the first of the would-be managers forms one, once the cluster has
/// settled, its clock is right and enough nodes are there.
fn form(now: &Situation, settings: &Settings, me: &Member) -> Plan {
    let wait = |why: String| Plan {
        waiting: Some(why),
        ..Plan::default()
    };
    if let Some(known) = now.known_swarm {
        return wait(format!(
            "swarm {known} exists but none of its members is up: it is not formed again"
        ));
    }
    if !now.clock_synced {
        return wait("the clock is not synchronised".into());
    }
    if now.stable_for < settings.settle {
        return wait(format!(
            "membership has been stable for {} s of {} s",
            now.stable_for.as_secs(),
            settings.settle.as_secs()
        ));
    }
    let eligible = ranked(now.members.iter().filter(|m| m.eligible(settings)));
    if eligible.len() < settings.expect.max(1) {
        return wait(format!(
            "{} of the {} eligible nodes expected are up",
            eligible.len(),
            settings.expect.max(1)
        ));
    }
    if eligible[0].id == me.id {
        Plan {
            managers: vec![me.id],
            steps: vec![Step::Form],
            ..Plan::default()
        }
    } else {
        wait(format!("{} forms the swarm", eligible[0].id))
    }
}

/// The leader's work, on the swarm's own list of its nodes: the right managers, and the nodes that are
/// gone taken out — members that left or are certainly dead, and entries no member claims any more (a
/// node's former life in the swarm, from before it left and joined again) once they are down.
fn lead(now: &Situation, settings: &Settings, swarm: &str, mut plan: Plan) -> Plan {
    let ours: Vec<&Member> = now.members.iter().filter(|m| m.in_swarm(swarm)).collect();
    let up = ours.iter().filter(|m| m.up()).count();
    let wanted = managers_wanted(up, settings.five_managers_from);
    let desired: Vec<&Member> = ranked(ours.iter().copied().filter(|m| m.eligible(settings)))
        .into_iter()
        .take(wanted)
        .collect();
    plan.managers = desired.iter().map(|m| m.id).collect();
    let leads = ours
        .iter()
        .any(|m| m.id == now.me && m.engine.as_ref().is_some_and(|e| e.leader));
    if !leads {
        return plan;
    }
    let node_of = |m: &Member| m.engine.as_ref().and_then(|e| e.node.clone());
    let entry_of = |m: &Member| {
        let node = node_of(m)?;
        now.swarm_nodes.iter().find(|e| e.node == node)
    };
    let member_of = |e: &SwarmNode| {
        ours.iter()
            .copied()
            .find(|m| node_of(m).as_deref() == Some(e.node.as_str()))
    };
    let settled = now.stable_for >= settings.settle;
    if settled {
        for m in &desired {
            if let Some(e) = entry_of(m).filter(|e| e.role != Role::Manager) {
                plan.steps.push(Step::Promote {
                    node: e.node.clone(),
                });
            }
        }
    }
    // Everything below lowers the managers: only once the desired ones all manage, so quorum never
    // rests on fewer nodes than it did.
    let promoted = desired
        .iter()
        .all(|m| entry_of(m).is_some_and(|e| e.role == Role::Manager));
    // A surplus manager is demoted only while every manager answers: with one unreachable, the quorum
    // of the fewer managers could rest on that one (Swarm refuses such a demotion anyway).
    let all_answer = now
        .swarm_nodes
        .iter()
        .filter(|e| e.role == Role::Manager)
        .all(|e| e.reachable);
    let mut self_demote = None;
    for e in now.swarm_nodes {
        let member = member_of(e);
        let gone = match member {
            Some(m) => match m.liveness {
                Liveness::Left => true,
                Liveness::Dead => m.gone_for.is_some_and(|d| d >= settings.remove_after),
                Liveness::Alive | Liveness::Suspect => false,
            },
            None => !e.reachable,
        };
        let node = e.node.clone();
        if gone {
            if e.role == Role::Manager {
                if !promoted {
                    continue;
                }
                plan.steps.push(Step::Demote { node: node.clone() });
            }
            plan.steps.push(Step::Remove { node });
        } else if let Some(m) = member
            .filter(|m| m.up() && e.role == Role::Manager && !desired.iter().any(|d| d.id == m.id))
        {
            if !promoted || !settled || !all_answer {
                continue;
            }
            if m.id == now.me {
                self_demote = Some(Step::Demote { node });
            } else {
                plan.steps.push(Step::Demote { node });
            }
        }
    }
    // A leader that should not manage steps down last, when nothing else is left to do: Raft hands the
    // lead to another manager.
    if plan.steps.is_empty() {
        plan.steps.extend(self_demote);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    fn member(id: u64, memory: u64) -> Member {
        Member {
            id: NodeId(id),
            addr: Some(IpAddr::from([10, 0, 0, id as u8])),
            liveness: Liveness::Alive,
            gone_for: None,
            healthy: true,
            memory: Some(memory),
            engine: None,
        }
    }

    fn joined(mut m: Member, swarm: &str, role: Role, leader: bool) -> Member {
        m.engine = Some(EngineReport {
            swarm: Some(swarm.into()),
            node: Some(format!("n{}", m.id.0)),
            role,
            leader,
            error: None,
        });
        m
    }

    /// The swarm's list as the members' reports describe it, reachable while they are up.
    fn listing(members: &[Member]) -> Vec<SwarmNode> {
        members
            .iter()
            .filter_map(|m| {
                let e = m.engine.as_ref()?;
                Some(SwarmNode {
                    node: e.node.clone()?,
                    role: e.role,
                    reachable: m.up(),
                })
            })
            .collect()
    }

    fn settled<'a>(me: u64, members: &'a [Member], nodes: &'a [SwarmNode]) -> Situation<'a> {
        Situation {
            me: NodeId(me),
            members,
            stable_for: Duration::from_secs(60),
            clock_synced: true,
            known_swarm: None,
            swarm_nodes: nodes,
        }
    }

    #[test]
    fn managers_are_odd_and_grow_with_the_swarm() {
        let got: Vec<usize> = (0..10).map(|n| managers_wanted(n, 7)).collect();
        assert_eq!(got, [0, 1, 1, 3, 3, 3, 3, 5, 5, 5]);
        // Five below five members would be all of them: never more managers than members.
        assert_eq!(managers_wanted(4, 2), 3);
    }

    #[test]
    fn the_node_with_most_memory_forms_the_swarm_once_settled() {
        let members = [member(1, 2 * GB), member(2, 8 * GB), member(3, 4 * GB)];
        let s = Settings::default();
        assert_eq!(
            plan(&settled(2, &members, &listing(&members)), &s).steps,
            [Step::Form]
        );
        for me in [1, 3] {
            let p = plan(&settled(me, &members, &listing(&members)), &s);
            assert!(p.steps.is_empty());
            assert!(p.waiting.unwrap().contains("0000000000000002 forms"));
        }
        let mut early = settled(2, &members, &[]);
        early.stable_for = Duration::from_secs(5);
        assert!(plan(&early, &s).waiting.unwrap().contains("stable for 5 s"));
        let mut skewed = settled(2, &members, &[]);
        skewed.clock_synced = false;
        assert!(plan(&skewed, &s).waiting.unwrap().contains("clock"));
    }

    #[test]
    fn no_swarm_is_formed_below_the_expected_count_or_when_one_is_known() {
        let members = [member(1, 2 * GB), member(2, 2 * GB)];
        let s = Settings {
            expect: 3,
            ..Settings::default()
        };
        let p = plan(&settled(1, &members, &listing(&members)), &s);
        assert!(p.steps.is_empty(), "{p:?}");
        assert!(p.waiting.unwrap().contains("2 of the 3"));
        let mut remembers = settled(1, &members, &[]);
        remembers.known_swarm = Some("abc");
        let p = plan(&remembers, &Settings::default());
        assert!(p.steps.is_empty());
        assert!(p.waiting.unwrap().contains("not formed again"));
    }

    #[test]
    fn small_or_sick_nodes_never_form_or_manage() {
        let mut sick = member(1, 8 * GB);
        sick.healthy = false;
        let members = [sick, member(2, GB / 2), member(3, GB)];
        assert_eq!(
            plan(
                &settled(3, &members, &listing(&members)),
                &Settings::default()
            )
            .steps,
            [Step::Form]
        );
    }

    #[test]
    fn a_node_outside_the_swarm_joins_through_a_manager() {
        let members = [
            joined(member(1, 2 * GB), "s1", Role::Manager, true),
            member(2, 2 * GB),
        ];
        let p = plan(
            &settled(2, &members, &listing(&members)),
            &Settings::default(),
        );
        assert_eq!(
            p.steps,
            [Step::Join {
                swarm: "s1".into(),
                via: IpAddr::from([10, 0, 0, 1])
            }]
        );
    }

    #[test]
    fn the_leader_promotes_to_three_managers_from_three_members() {
        let members = [
            joined(member(1, 2 * GB), "s1", Role::Manager, true),
            joined(member(2, 4 * GB), "s1", Role::Worker, false),
            joined(member(3, GB), "s1", Role::Worker, false),
            joined(member(4, 8 * GB), "s1", Role::Worker, false),
        ];
        let p = plan(
            &settled(1, &members, &listing(&members)),
            &Settings::default(),
        );
        assert_eq!(
            p.steps,
            [
                Step::Promote { node: "n4".into() },
                Step::Promote { node: "n2".into() }
            ]
        );
        assert_eq!(p.managers, [NodeId(1), NodeId(4), NodeId(2)]);
        // Only the leader acts; the others compute the same managers.
        let other = plan(
            &settled(2, &members, &listing(&members)),
            &Settings::default(),
        );
        assert!(other.steps.is_empty());
        assert_eq!(other.managers, p.managers);
    }

    #[test]
    fn a_dead_manager_is_replaced_at_once_and_removed_once_its_loss_is_certain() {
        let mut dead = joined(member(2, 8 * GB), "s1", Role::Manager, false);
        dead.liveness = Liveness::Dead;
        dead.gone_for = Some(Duration::from_secs(20));
        let mut members = vec![
            joined(member(1, 2 * GB), "s1", Role::Manager, true),
            dead,
            joined(member(3, 2 * GB), "s1", Role::Manager, false),
            joined(member(4, 2 * GB), "s1", Role::Worker, false),
        ];
        let s = Settings::default();
        let p = plan(&settled(1, &members, &listing(&members)), &s);
        assert_eq!(p.steps, [Step::Promote { node: "n4".into() }]);
        // Promoted, but the dead one is not certainly lost: nothing more.
        members[3] = joined(member(4, 2 * GB), "s1", Role::Manager, false);
        assert!(plan(&settled(1, &members, &listing(&members)), &s)
            .steps
            .is_empty());
        members[1].gone_for = Some(s.remove_after);
        assert_eq!(
            plan(&settled(1, &members, &listing(&members)), &s).steps,
            [
                Step::Demote { node: "n2".into() },
                Step::Remove { node: "n2".into() }
            ]
        );
    }

    #[test]
    fn a_gone_manager_is_not_demoted_before_its_replacement_manages() {
        let mut left = joined(member(2, 8 * GB), "s1", Role::Manager, false);
        left.liveness = Liveness::Left;
        let mut worker_left = joined(member(5, GB), "s1", Role::Worker, false);
        worker_left.liveness = Liveness::Left;
        let members = [
            joined(member(1, 2 * GB), "s1", Role::Manager, true),
            left,
            joined(member(3, 2 * GB), "s1", Role::Manager, false),
            joined(member(4, 2 * GB), "s1", Role::Worker, false),
            worker_left,
        ];
        let p = plan(
            &settled(1, &members, &listing(&members)),
            &Settings::default(),
        );
        assert_eq!(
            p.steps,
            [
                Step::Promote { node: "n4".into() },
                Step::Remove { node: "n5".into() }
            ]
        );
    }

    #[test]
    fn surplus_managers_are_demoted_when_the_swarm_shrinks() {
        let mut members = vec![
            joined(member(1, 2 * GB), "s1", Role::Manager, true),
            joined(member(2, 4 * GB), "s1", Role::Manager, false),
            joined(member(3, GB), "s1", Role::Manager, false),
        ];
        members[2].liveness = Liveness::Left;
        members[2].gone_for = Some(Duration::ZERO);
        let p = plan(
            &settled(1, &members, &listing(&members)),
            &Settings::default(),
        );
        // Two members up: one manager wanted; the leader stays, the other manager is demoted and the
        // left one taken out.
        assert_eq!(p.managers, [NodeId(2)]);
        assert_eq!(
            p.steps,
            [
                Step::Demote { node: "n3".into() },
                Step::Remove { node: "n3".into() }
            ]
        );
        // Once the left one is out, the leader hands over: it steps down itself.
        members.pop();
        assert_eq!(
            plan(
                &settled(1, &members, &listing(&members)),
                &Settings::default()
            )
            .steps,
            [Step::Demote { node: "n1".into() }]
        );
    }

    #[test]
    fn a_nodes_former_life_in_the_swarm_is_taken_out_once_down() {
        // vm2 left as a manager and joined again as a worker: the swarm still lists its old entry, a
        // manager no report names, unreachable.
        let former_life = SwarmNode {
            node: "old2".into(),
            role: Role::Manager,
            reachable: false,
        };
        let members = [
            joined(member(1, 2 * GB), "s1", Role::Manager, true),
            joined(member(2, 2 * GB), "s1", Role::Worker, false),
            joined(member(3, 2 * GB), "s1", Role::Manager, false),
        ];
        let mut nodes = listing(&members);
        nodes.push(former_life.clone());
        // The replacement manages first: the old entry, a manager, waits.
        let p = plan(&settled(1, &members, &nodes), &Settings::default());
        assert_eq!(p.steps, [Step::Promote { node: "n2".into() }]);
        // Once vm2 manages again, the old entry is demoted and removed; an unclaimed entry that is
        // reachable (a node whose report has not spread yet) is left alone.
        let members = [
            joined(member(1, 2 * GB), "s1", Role::Manager, true),
            joined(member(2, 2 * GB), "s1", Role::Manager, false),
            joined(member(3, 2 * GB), "s1", Role::Manager, false),
        ];
        let mut nodes = listing(&members);
        nodes.push(former_life.clone());
        nodes.push(SwarmNode {
            node: "new4".into(),
            role: Role::Worker,
            reachable: true,
        });
        assert_eq!(
            plan(&settled(1, &members, &nodes), &Settings::default()).steps,
            [
                Step::Demote {
                    node: "old2".into()
                },
                Step::Remove {
                    node: "old2".into()
                }
            ]
        );
    }

    #[test]
    fn two_swarms_merge_into_the_larger_then_the_smaller_id() {
        let members = [
            joined(member(1, GB), "b", Role::Manager, true),
            joined(member(2, GB), "b", Role::Worker, false),
            joined(member(3, GB), "a", Role::Manager, true),
        ];
        assert_eq!(
            plan(
                &settled(3, &members, &listing(&members)),
                &Settings::default()
            )
            .steps,
            [Step::Leave]
        );
        assert!(plan(
            &settled(2, &members, &listing(&members)),
            &Settings::default()
        )
        .steps
        .is_empty());
        let tie = [
            joined(member(1, GB), "b", Role::Manager, true),
            joined(member(3, GB), "a", Role::Manager, true),
        ];
        assert_eq!(
            plan(&settled(1, &tie, &listing(&tie)), &Settings::default())
                .swarm
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            plan(&settled(1, &tie, &listing(&tie)), &Settings::default()).steps,
            [Step::Leave]
        );
    }

    #[test]
    fn a_node_whose_engine_lost_its_place_leaves_to_join_again() {
        let mut back = joined(member(2, GB), "s1", Role::Worker, false);
        back.engine.as_mut().unwrap().error = Some("node is not part of the swarm".into());
        let members = [joined(member(1, GB), "s1", Role::Manager, true), back];
        assert_eq!(
            plan(
                &settled(2, &members, &listing(&members)),
                &Settings::default()
            )
            .steps,
            [Step::Leave]
        );
    }

    #[test]
    fn the_report_file_is_read_checked_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        assert_eq!(EngineReport::read(&path), Ok(None));
        let report = joined(member(1, GB), "s1", Role::Manager, true)
            .engine
            .unwrap();
        std::fs::write(&path, report.to_gossip()).unwrap();
        assert_eq!(EngineReport::read(&path), Ok(Some(report)));
        std::fs::write(&path, r#"{"role":"manager"}"#).unwrap();
        assert!(EngineReport::read(&path)
            .unwrap_err()
            .contains("report.json"));
        std::fs::write(
            &path,
            format!(r#"{{"role":"none","error":"{}"}}"#, "x".repeat(5000)),
        )
        .unwrap();
        assert!(EngineReport::read(&path)
            .unwrap_err()
            .contains("more than 4096 bytes"));
    }

    #[test]
    fn reports_are_checked_on_receipt() {
        let good = joined(member(1, GB), "abc123", Role::Manager, true)
            .engine
            .unwrap();
        assert_eq!(EngineReport::check(&good.to_gossip()), Ok(()));
        assert_eq!(
            EngineReport::check(&EngineReport::default().to_gossip()),
            Ok(())
        );
        for bad in [
            r#"{"role":"manager","leader":true}"#,
            r#"{"swarm":"s","node":"n","role":"worker","leader":true}"#,
            r#"{"swarm":"S-1","node":"n","role":"worker"}"#,
            r#"{"swarm":"s","node":"n","role":"worker","error":"a\u001bb"}"#,
            r#"{"swarm":"s","node":"n","role":"boss"}"#,
            r#"{"role":"none","token":"x"}"#,
            "[]",
        ] {
            assert!(EngineReport::check(bad).is_err(), "{bad} passed");
        }
    }
}
