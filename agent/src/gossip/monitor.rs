//! Detection by monitors: whom a node sends its heartbeats to and whom it watches (its neighbours on the
//! id ring among the nodes it believes alive), and the probes it runs for other monitors.
//!
//! Every node's monitors are the K live nodes after it on the ring, so each node watches the K live nodes
//! before it, and every node is watched by K others whatever the cluster's size. Two nodes whose views
//! differ for a moment (one has heard of a newcomer, the other not yet) may disagree on a pair; the
//! monitor then hears nothing, probes, gets an answer, and no verdict falls.

use std::collections::VecDeque;
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

#[derive(Debug, Default)]
pub(super) struct Ring {
    /// Where this node's heartbeats go: the K live nodes after it.
    pub(super) monitors: Vec<NodeId>,
    /// Whom this node watches: the K live nodes before it (sorted).
    watching: Vec<NodeId>,
    /// Probes this node runs for others: (target, the monitor that asked, until when).
    relays: VecDeque<(NodeId, NodeId, Duration)>,
    /// Watched nodes past their threshold, to probe this round.
    pub(super) to_probe: Vec<NodeId>,
}

/// What changed in whom a node watches.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub(super) started: Vec<NodeId>,
    pub(super) stopped: Vec<NodeId>,
}

impl Ring {
    /// Recomputes both sides from `live`, the live peers in id order (this node not among them).
    pub(super) fn rebuild(&mut self, me: NodeId, live: &[NodeId], k: usize) -> Changes {
        let n = live.len();
        let k = k.min(n);
        let pos = live.partition_point(|id| *id < me);
        self.monitors = (0..k).map(|i| live[(pos + i) % n]).collect();
        let mut watching: Vec<NodeId> = (1..=k).map(|i| live[(pos + n - i) % n]).collect();
        watching.sort_unstable();
        let started = watching
            .iter()
            .filter(|id| self.watching.binary_search(id).is_err())
            .copied()
            .collect();
        let stopped = self
            .watching
            .iter()
            .filter(|id| watching.binary_search(id).is_err())
            .copied()
            .collect();
        self.watching = watching;
        Changes { started, stopped }
    }

    pub(super) fn watches(&self, id: NodeId) -> bool {
        self.watching.binary_search(&id).is_ok()
    }

    pub(super) fn watching(&self) -> &[NodeId] {
        &self.watching
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
                *watched_by.entry(*w).or_default() += 1;
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
