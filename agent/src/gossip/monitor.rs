//! Detection by monitors: whom a node sends its heartbeats to and whom it watches, and the probes it
//! runs for other monitors.
//!
//! Two relations, which agree in a cluster at peace. The ring's: every node's monitors are the K live
//! nodes after it on the id ring, so each node watches the K live nodes before it, and every node is
//! watched by K others whatever the cluster's size (two nodes whose views differ for a moment may
//! disagree on a pair; the monitor then hears nothing, probes, gets an answer, and no verdict falls).
//! And the chosen: a node also sends heartbeats to the first K live nodes after it that it has heard
//! first-hand (an authentic datagram of theirs came from the address gossip gives them), at most one
//! per IP address while other addresses remain, and a node also watches whoever sends it heartbeats
//! first-hand (at most K per address, [`MAX_WATCHED`] in all) until that node is dead or gone, or
//! answers a probe (it sends its heartbeats elsewhere). A key holder who invents members just after a
//! node on the ring takes the ring's places, but of the chosen it takes at most one per address it
//! really listens on (issue 31, 4): an invention at an address it cannot receive at is never heard
//! (and its ring watchers, hearing nothing from it, convict it), and those at its own address share
//! that address's one place. Candidates not yet heard are asked with a probe, whose answer from their
//! address makes them heard.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use super::wire::NodeId;

/// Probes run for other monitors at once, at most: a flood of requests cannot grow this node's memory.
const MAX_RELAYS: usize = 64;

/// The reserved key in which a monitor publishes its φ of the watched nodes it finds suspicious (φ ≥ 1),
/// so every node can show a member's φ as its monitors see it. Empty (absent) while all is well: a quiet
/// cluster pays nothing for it.
pub const PHI_KEY: &str = "_phi";

/// The most reports one `_phi` value may hold (a node watches at most 32 others).
pub(super) const MAX_REPORTS: usize = 32;

/// A monitor's reports as its `_phi` value: `<id>=<φ>` pairs (16 hex digits, φ rounded down to a whole
/// number, 1 to 255), space-separated; `None` when there is nothing to report.
pub(super) fn encode_reports(reports: &[(NodeId, u8)]) -> Option<String> {
    if reports.is_empty() {
        return None;
    }
    let pairs: Vec<String> = reports
        .iter()
        .map(|(id, phi)| format!("{id}={phi}"))
        .collect();
    Some(pairs.join(" "))
}

/// Reads a `_phi` value received from a peer; refuses anything `encode_reports` would not write.
pub(super) fn parse_reports(value: &str) -> Result<Vec<(NodeId, u8)>, String> {
    let mut out = Vec::new();
    for pair in value.split(' ') {
        let bad = || format!("{PHI_KEY}: {pair:?} is not <16 hex digits>=<1 to 255>");
        let (id, phi) = pair.split_once('=').ok_or_else(bad)?;
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let id = NodeId(u64::from_str_radix(id, 16).map_err(|_| bad())?);
        let phi: u8 = phi.parse().map_err(|_| bad())?;
        if phi == 0 || phi.to_string().len() != pair.len() - 17 {
            return Err(bad());
        }
        out.push((id, phi));
        if out.len() > MAX_REPORTS {
            return Err(format!("{PHI_KEY}: more than {MAX_REPORTS} reports"));
        }
    }
    Ok(out)
}

/// The most nodes one node watches: K per address, so a key holder needs this many addresses over K
/// to crowd a real node out.
pub(super) const MAX_WATCHED: usize = 64;

/// Unheard candidates a rebuild asks to answer, at most (the nearest ones).
const MAX_VERIFY: usize = 8;

/// How soon an unheard candidate is asked again.
const VERIFY_AGAIN: Duration = Duration::from_secs(2);

/// A live peer as the monitors' choice sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub(super) id: NodeId,
    pub(super) ip: IpAddr,
    /// Heard first-hand (see `NodeState::heard`).
    pub(super) heard: bool,
}

#[derive(Debug, Default)]
pub(super) struct Ring {
    /// Where this node's heartbeats go: the chosen monitors, then the ring's not among them.
    pub(super) monitors: Vec<NodeId>,
    /// The ring's monitors: the K live nodes after this one.
    ring_monitors: Vec<NodeId>,
    /// The chosen monitors (see the module's text).
    chosen: Vec<NodeId>,
    /// Whom this node watches by the ring: the K live nodes before it (sorted).
    ring_watching: Vec<NodeId>,
    /// Whom else this node watches because they send it heartbeats, and at which address.
    beats: BTreeMap<NodeId, IpAddr>,
    /// Probes this node runs for others: (target, the monitor that asked, until when).
    relays: VecDeque<(NodeId, NodeId, Duration)>,
    /// Nodes this node asked to probe for it: (target, helper, until when). Only their answers count.
    asked: VecDeque<(NodeId, NodeId, Duration)>,
    /// Watched nodes past their threshold, to probe this round.
    pub(super) to_probe: Vec<NodeId>,
    /// Candidate monitors not yet heard, to probe (their answer makes them heard).
    to_verify: Vec<NodeId>,
    /// When each candidate was last asked (each at most once per [`VERIFY_AGAIN`]).
    verified_at: VecDeque<(NodeId, Duration)>,
    /// A candidate was just heard first-hand: the monitors are to be chosen again.
    pub(super) stale: bool,
}

/// What changed in whom a node watches by the ring.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub(super) started: Vec<NodeId>,
    pub(super) stopped: Vec<NodeId>,
}

impl Ring {
    /// Recomputes the ring's relation from `live`, the live peers in id order (this node not among
    /// them). Nodes already watched for their heartbeats are neither started nor stopped.
    pub(super) fn rebuild(&mut self, me: NodeId, live: &[NodeId], k: usize) -> Changes {
        let n = live.len();
        let k = k.min(n);
        let pos = live.partition_point(|id| *id < me);
        self.ring_monitors = (0..k).map(|i| live[(pos + i) % n]).collect();
        let mut watching: Vec<NodeId> = (1..=k).map(|i| live[(pos + n - i) % n]).collect();
        watching.sort_unstable();
        let started = watching
            .iter()
            .filter(|id| self.ring_watching.binary_search(id).is_err())
            .filter(|id| !self.beats.contains_key(id))
            .copied()
            .collect();
        let stopped = self
            .ring_watching
            .iter()
            .filter(|id| watching.binary_search(id).is_err())
            .filter(|id| !self.beats.contains_key(id))
            .copied()
            .collect();
        self.ring_watching = watching;
        self.merge_monitors();
        Changes { started, stopped }
    }

    /// Chooses this node's monitors from `after`, the live peers with an address in ring order from
    /// this node on (this node not among them); `my_ip` is this node's address. Unheard candidates
    /// nearer than the last monitor chosen go to `to_verify`.
    pub(super) fn choose_monitors(
        &mut self,
        my_ip: Option<IpAddr>,
        after: impl Iterator<Item = Candidate>,
        k: usize,
    ) {
        let mut chosen: Vec<Candidate> = Vec::with_capacity(k);
        let mut rest: Vec<Candidate> = Vec::new();
        let mut verify = Vec::new();
        for c in after {
            if chosen.len() == k {
                break;
            }
            if !c.heard {
                if verify.len() < MAX_VERIFY {
                    verify.push(c.id);
                }
                continue;
            }
            let ip_taken = Some(c.ip) == my_ip || chosen.iter().any(|m| m.ip == c.ip);
            if ip_taken {
                // Kept, in ring order, in case too few addresses are found.
                if rest.len() < k {
                    rest.push(c);
                }
            } else {
                chosen.push(c);
            }
        }
        // Fewer addresses than monitors (a small cluster, agents sharing a host): the nearest of the
        // others fill the places.
        let mut ids: Vec<NodeId> = chosen.iter().map(|c| c.id).collect();
        ids.extend(rest.iter().take(k - chosen.len()).map(|c| c.id));
        self.chosen = ids;
        self.to_verify = verify;
        self.merge_monitors();
    }

    fn merge_monitors(&mut self) {
        let mut all = self.chosen.clone();
        all.extend(
            self.ring_monitors
                .iter()
                .filter(|id| !self.chosen.contains(id)),
        );
        self.monitors = all;
    }

    /// The unheard candidates to ask now: each at most once per [`VERIFY_AGAIN`].
    pub(super) fn take_verify(&mut self, now: Duration) -> Vec<NodeId> {
        self.verified_at.retain(|(_, at)| now < *at + VERIFY_AGAIN);
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.to_verify) {
            if self.verified_at.iter().all(|(v, _)| *v != id) {
                if self.verified_at.len() >= MAX_RELAYS {
                    self.verified_at.pop_front();
                }
                self.verified_at.push_back((id, now));
                out.push(id);
            }
        }
        out
    }

    /// Whether `id` is watched for the heartbeats it sends here, not by the ring.
    pub(super) fn watched_for_beats(&self, id: NodeId) -> bool {
        self.beats.contains_key(&id)
    }

    /// Starts watching `id`, heard at `ip` sending this node a heartbeat: false when it is not watched
    /// (already at `k` from that address, or at [`MAX_WATCHED`]).
    pub(super) fn watch(&mut self, id: NodeId, ip: IpAddr, k: usize) -> bool {
        if self.watches(id) {
            return true;
        }
        if self.beats.len() >= MAX_WATCHED || self.beats.values().filter(|w| **w == ip).count() >= k
        {
            return false;
        }
        self.beats.insert(id, ip);
        true
    }

    /// Stops watching `id` for its heartbeats (the ring's relation is the ring's); whether it was so
    /// watched and is now not watched at all.
    pub(super) fn unwatch(&mut self, id: NodeId) -> bool {
        self.beats.remove(&id).is_some() && !self.watches(id)
    }

    pub(super) fn watches(&self, id: NodeId) -> bool {
        self.beats.contains_key(&id) || self.ring_watching.binary_search(&id).is_ok()
    }

    /// Everyone this node watches, in id order.
    pub(super) fn watching(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self.beats.keys().copied().collect();
        all.extend(
            self.ring_watching
                .iter()
                .filter(|id| !self.beats.contains_key(id)),
        );
        all.sort_unstable();
        all
    }

    /// Notes that `helper` was asked to probe `target` until `until`.
    pub(super) fn ask(&mut self, target: NodeId, helper: NodeId, until: Duration) {
        if self.asked.len() >= MAX_RELAYS {
            self.asked.pop_front();
        }
        self.asked.push_back((target, helper, until));
    }

    /// Whether `helper` was asked to probe `target` and may still answer.
    pub(super) fn was_asked(&mut self, target: NodeId, helper: NodeId, now: Duration) -> bool {
        self.asked.retain(|(_, _, until)| *until > now);
        self.asked
            .iter()
            .any(|(t, h, _)| *t == target && *h == helper)
    }

    /// Notes a probe of `target` run for `requester`, answered if `target` answers before `until`.
    pub(super) fn relay(&mut self, target: NodeId, requester: NodeId, until: Duration) {
        if self
            .relays
            .iter()
            .any(|(t, r, _)| *t == target && *r == requester)
        {
            return;
        }
        if self.relays.len() >= MAX_RELAYS {
            self.relays.pop_front();
        }
        self.relays.push_back((target, requester, until));
    }

    /// The monitors waiting for `target`'s answer (their requests end here).
    pub(super) fn answered(&mut self, target: NodeId, now: Duration) -> Vec<NodeId> {
        self.relays.retain(|(_, _, until)| *until > now);
        let mut out = Vec::new();
        self.relays.retain(|(t, r, _)| {
            if *t == target {
                out.push(*r);
                false
            } else {
                true
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn cand(id: u64, last: u8, heard: bool) -> Candidate {
        Candidate {
            id: NodeId(id),
            ip: ip(last),
            heard,
        }
    }

    #[test]
    fn monitors_follow_and_watched_precede_on_the_ring() {
        let mut r = Ring::default();
        let live = ids(&[10, 20, 30, 40, 50, 60, 70]);
        let c = r.rebuild(NodeId(35), &live, 3);
        assert_eq!(r.monitors, ids(&[40, 50, 60]));
        assert_eq!(r.watching(), ids(&[10, 20, 30]).as_slice());
        assert_eq!(c.started, ids(&[10, 20, 30]));
        // Wrapping around the ring.
        r.rebuild(NodeId(65), &live, 3);
        assert_eq!(r.monitors, ids(&[70, 10, 20]));
        assert_eq!(r.watching(), ids(&[40, 50, 60]).as_slice());
        // Fewer peers than K: everyone watches everyone.
        let c = r.rebuild(NodeId(65), &ids(&[10, 70]), 5);
        assert_eq!(r.monitors, ids(&[70, 10]));
        assert_eq!(r.watching(), ids(&[10, 70]).as_slice());
        assert_eq!(c.started, ids(&[10, 70]));
        assert_eq!(c.stopped, ids(&[40, 50, 60]));
        assert!(r.watches(NodeId(10)) && !r.watches(NodeId(40)));
    }

    #[test]
    fn every_node_has_k_monitors() {
        let live: Vec<NodeId> = (1..=50).map(|i| NodeId(i * 7919 % 1000)).collect();
        let mut sorted = live.clone();
        sorted.sort_unstable();
        let mut watched_by = std::collections::HashMap::<NodeId, usize>::new();
        for me in &sorted {
            let others: Vec<NodeId> = sorted.iter().filter(|x| *x != me).copied().collect();
            let mut r = Ring::default();
            r.rebuild(*me, &others, 5);
            for w in r.watching() {
                *watched_by.entry(w).or_default() += 1;
            }
            // My monitors watch me: the relation is the same seen from both ends.
            for m in &r.monitors {
                let theirs: Vec<NodeId> = sorted.iter().filter(|x| *x != m).copied().collect();
                let mut rm = Ring::default();
                rm.rebuild(*m, &theirs, 5);
                assert!(rm.watches(*me));
            }
        }
        assert!(watched_by.values().all(|n| *n == 5), "{watched_by:?}");
    }

    #[test]
    fn monitors_are_the_nearest_heard_one_per_address() {
        let mut r = Ring::default();
        // 40..42 share one address (a key holder's inventions, say), 50 was never heard.
        let after = [
            cand(40, 9, true),
            cand(41, 9, true),
            cand(42, 9, true),
            cand(50, 5, false),
            cand(60, 6, true),
            cand(70, 7, true),
            cand(80, 8, true),
            cand(90, 1, true),
        ];
        r.choose_monitors(Some(ip(1)), after.iter().copied(), 4);
        assert_eq!(r.monitors, ids(&[40, 60, 70, 80]));
        assert_eq!(r.to_verify, ids(&[50]), "the unheard candidate is asked");
        // Too few addresses: the nearest others fill the places, in ring order.
        r.choose_monitors(Some(ip(1)), after.iter().copied(), 6);
        assert_eq!(r.monitors, ids(&[40, 60, 70, 80, 41, 42]));
        // Agents sharing one host with this node (a loopback cluster): the plain ring.
        let host: Vec<Candidate> = (1..=7).map(|i| cand(i * 10, 1, true)).collect();
        r.choose_monitors(Some(ip(1)), host.iter().copied(), 5);
        assert_eq!(r.monitors, ids(&[10, 20, 30, 40, 50]));
        // Nobody heard: no monitors yet, the nearest few asked.
        let unheard: Vec<Candidate> = (1..=20).map(|i| cand(i, i as u8, false)).collect();
        r.choose_monitors(Some(ip(0)), unheard.iter().copied(), 5);
        assert!(r.monitors.is_empty());
        assert_eq!(r.to_verify.len(), MAX_VERIFY);
        assert_eq!(r.to_verify[0], NodeId(1));
    }

    #[test]
    fn watching_is_bounded_per_address_and_in_all() {
        let mut r = Ring::default();
        for i in 0..10 {
            assert_eq!(r.watch(NodeId(i), ip(9), 5), i < 5, "{i}");
        }
        assert!(r.watch(NodeId(3), ip(9), 5), "already watched");
        let mut n = 5;
        for i in 100..300u64 {
            if r.watch(NodeId(i), ip((i % 200) as u8), 5) {
                n += 1;
            }
        }
        assert_eq!(n, MAX_WATCHED);
        assert_eq!(r.watching().len(), MAX_WATCHED);
        assert!(r.unwatch(NodeId(3)) && !r.unwatch(NodeId(3)));
        assert!(!r.watches(NodeId(3)));
        assert!(
            r.watch(NodeId(7), ip(9), 5),
            "a place freed at that address"
        );
        // The ring's relation and the heartbeats' add up; a node the ring watches stays watched.
        let live = ids(&[1000, 2000, 3000]);
        let c = r.rebuild(NodeId(2500), &live, 1);
        assert_eq!(c.started, ids(&[2000]));
        assert!(r.watches(NodeId(2000)) && r.watches(NodeId(7)));
        assert!(
            r.watch(NodeId(2000), ip(9), 5),
            "watched by the ring already"
        );
        assert!(!r.unwatch(NodeId(2000)), "the ring's, not the heartbeats'");
        assert!(r.watches(NodeId(2000)));
        assert_eq!(r.monitors, ids(&[3000]));
    }

    #[test]
    fn only_the_helpers_asked_may_answer_and_not_after_their_time() {
        let mut r = Ring::default();
        r.ask(NodeId(1), NodeId(2), Duration::from_secs(1));
        assert!(r.was_asked(NodeId(1), NodeId(2), Duration::ZERO));
        assert!(!r.was_asked(NodeId(1), NodeId(3), Duration::ZERO));
        assert!(!r.was_asked(NodeId(2), NodeId(2), Duration::ZERO));
        assert!(!r.was_asked(NodeId(1), NodeId(2), Duration::from_secs(1)));
        for i in 0..100 {
            r.ask(NodeId(i), NodeId(1000), Duration::from_secs(9));
        }
        assert!(r.asked.len() <= MAX_RELAYS);
    }

    #[test]
    fn reports_read_back_and_refuse_what_was_not_written() {
        let reports = vec![(NodeId(0xab), 3), (NodeId(u64::MAX), 255)];
        let v = encode_reports(&reports).unwrap();
        assert_eq!(v, "00000000000000ab=3 ffffffffffffffff=255");
        assert_eq!(parse_reports(&v).unwrap(), reports);
        assert_eq!(encode_reports(&[]), None);
        let many = vec![(NodeId(1), 1); MAX_REPORTS];
        assert!(parse_reports(&encode_reports(&many).unwrap()).is_ok());
        for bad in [
            "",
            " ",
            "00000000000000ab=0",
            "00000000000000ab=256",
            "00000000000000ab=+3",
            "00000000000000ab=03",
            "00000000000000ab=-1",
            "00000000000000ab",
            "ab=3",
            "00000000000000ag=3",
            "00000000000000ab=3  00000000000000ac=3",
            "00000000000000ab=3 ",
            "+0000000000000ab=3",
        ] {
            assert!(parse_reports(bad).is_err(), "{bad:?} accepted");
        }
        let too_many = vec![(NodeId(1), 1); MAX_REPORTS + 1];
        let err = parse_reports(&encode_reports(&too_many).unwrap()).unwrap_err();
        assert!(err.contains("more than 32"), "{err}");
    }

    #[test]
    fn relays_are_bounded_and_expire() {
        let mut r = Ring::default();
        for i in 0..100 {
            r.relay(NodeId(i), NodeId(1000), Duration::from_secs(1));
        }
        assert_eq!(r.relays.len(), MAX_RELAYS);
        assert!(
            r.answered(NodeId(0), Duration::ZERO).is_empty(),
            "pushed out"
        );
        assert_eq!(r.answered(NodeId(99), Duration::ZERO), ids(&[1000]));
        assert!(
            r.answered(NodeId(99), Duration::ZERO).is_empty(),
            "answered once"
        );
        assert!(
            r.answered(NodeId(98), Duration::from_secs(2)).is_empty(),
            "expired"
        );
    }
}
