//! The last hour of every node's figures, kept in memory only (never written to the card): this node's
//! own sample every monitoring interval (at most one a [`OWN_STEP`]), and each other member's gossiped
//! sample once a [`PEER_STEP`]. Bounded by count as well as by age, so a fast interval or many members
//! cannot make it grow: at most [`OWN_POINTS`] points for the node itself and [`PEER_POINTS`] for each
//! of at most [`PEER_TRACKS`] other members (those first seen; a cluster of Pis is far smaller): about
//! 0.8 MB in all (48 bytes a point), whatever the gossip's table holds. With them, the last
//! [`EVENTS`] membership events (joined, suspect, dead, left, …) with the time they were seen here.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

/// How far back history goes, seconds.
pub const SPAN_S: u64 = 3600;
/// The node's own points: at most one every 5 s, 720 in the hour.
pub const OWN_STEP: u64 = 5;
pub const OWN_POINTS: usize = (SPAN_S / OWN_STEP) as usize;
/// Other members' points: one a minute, 60 in the hour.
pub const PEER_STEP: u64 = 60;
pub const PEER_POINTS: usize = (SPAN_S / PEER_STEP) as usize;
/// Other members with a history at most.
pub const PEER_TRACKS: usize = 255;
/// Membership events kept, of all nodes together.
pub const EVENTS: usize = 256;

/// A membership event as this node saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// Seconds since the Unix epoch, by this node's clock.
    pub t: u64,
    /// `joined`, `suspect`, `recovered`, `dead`, `left`, `restarted` or `reaped`.
    pub kind: String,
    pub generation: u64,
}

/// One moment of a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the Unix epoch, by the clock of the node that recorded it.
    pub t: u64,
    /// CPU use, percent of all cores.
    pub cpu: f32,
    /// Memory used, percent.
    pub mem: f32,
    /// 1-minute load average.
    pub load: f32,
    /// SoC temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp: Option<f32>,
    /// Bytes written to the card per hour, as the node last measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<u64>,
}

/// One node's hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub id: String,
    /// Seconds between points at most (5 for the serving node, 60 for the others).
    pub step_s: u64,
    pub points: Vec<Point>,
    /// The node's last membership events seen here, oldest first.
    #[serde(default)]
    pub events: Vec<NodeEvent>,
}

#[derive(Debug, Default)]
struct Track {
    step: u64,
    cap: usize,
    points: VecDeque<Point>,
}

impl Track {
    /// Adds `p`; whether it was kept.
    fn push(&mut self, p: Point) -> bool {
        if let Some(last) = self.points.back() {
            // Too soon after the last point, or the clock went back (a node setting its time from NTP
            // may jump): the step keeps the count bounded; a jump back starts the series again.
            if p.t < last.t {
                self.points.clear();
            } else if p.t < last.t + self.step {
                return false;
            }
        }
        self.points.push_back(p);
        while self.points.len() > self.cap
            || self
                .points
                .front()
                .is_some_and(|f| p.t.saturating_sub(f.t) > SPAN_S)
        {
            self.points.pop_front();
        }
        true
    }
}

/// Every node's hour, by node id (as text, as the API names nodes).
#[derive(Debug, Default)]
pub struct History {
    own: String,
    tracks: HashMap<String, Track>,
    /// Every node's last events, oldest first.
    events: VecDeque<(String, NodeEvent)>,
    /// Counts changes, so that a reader's copy (the API's encoded answer) knows when it is stale.
    revision: u64,
}

impl History {
    /// History for the node `own`.
    pub fn new(own: impl Into<String>) -> History {
        History {
            own: own.into(),
            tracks: HashMap::new(),
            events: VecDeque::new(),
            revision: 0,
        }
    }

    /// Records `p` for `node`, unless a point was recorded less than the node's step ago (or `node` is
    /// another member and [`PEER_TRACKS`] others have a history already).
    pub fn record(&mut self, node: &str, p: Point) {
        let own = node == self.own;
        if !self.tracks.contains_key(node) {
            let peers = self.tracks.len() - usize::from(self.tracks.contains_key(&self.own));
            if !own && peers >= PEER_TRACKS {
                return;
            }
        }
        let kept = self
            .tracks
            .entry(node.to_string())
            .or_insert_with(|| Track {
                step: if own { OWN_STEP } else { PEER_STEP },
                cap: if own { OWN_POINTS } else { PEER_POINTS },
                points: VecDeque::new(),
            })
            .push(p);
        if kept {
            self.revision += 1;
        }
    }

    /// Whether [`History::record`] would keep a point of `node`'s at `t`: callers skip reading (and
    /// parsing) a member's sample that would be dropped, which is most of them (a member's step is a
    /// minute, the caller's tick a few seconds).
    pub fn wants(&self, node: &str, t: u64) -> bool {
        match self.tracks.get(node) {
            Some(track) => track
                .points
                .back()
                .is_none_or(|last| t < last.t || t >= last.t + track.step),
            None => {
                let peers = self.tracks.len() - usize::from(self.tracks.contains_key(&self.own));
                node == self.own || peers < PEER_TRACKS
            }
        }
    }

    /// Records a membership event of `node`'s.
    pub fn event(&mut self, node: &str, e: NodeEvent) {
        if self.events.len() >= EVENTS {
            self.events.pop_front();
        }
        self.events.push_back((node.to_string(), e));
        self.revision += 1;
    }

    /// Forgets the nodes not in `members` (reaped members leave no history behind).
    pub fn keep_only(&mut self, members: &HashSet<String>) {
        let before = self.tracks.len();
        let own = self.own.clone();
        self.tracks
            .retain(|id, _| *id == own || members.contains(id));
        if self.tracks.len() != before {
            self.revision += 1;
        }
    }

    /// Changes so far: equal revisions, equal history.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// One node's hour, if any point or event was recorded.
    pub fn series(&self, node: &str) -> Option<Series> {
        let events: Vec<NodeEvent> = self
            .events
            .iter()
            .filter(|(id, _)| id == node)
            .map(|(_, e)| e.clone())
            .collect();
        let track = self.tracks.get(node);
        if track.is_none() && events.is_empty() {
            return None;
        }
        let own = node == self.own;
        Some(Series {
            id: node.to_string(),
            step_s: track.map_or(if own { OWN_STEP } else { PEER_STEP }, |t| t.step),
            points: track.map_or_else(Vec::new, |t| t.points.iter().copied().collect()),
            events,
        })
    }

    /// Every node's hour (those with points), the serving node first, then by id.
    pub fn all(&self) -> Vec<Series> {
        let mut ids: Vec<&String> = self.tracks.keys().collect();
        ids.sort_by_key(|id| (**id != self.own, (*id).clone()));
        ids.into_iter().filter_map(|id| self.series(id)).collect()
    }

    /// Points held in all, for the bound's test.
    pub fn len(&self) -> usize {
        self.tracks.values().map(|t| t.points.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_says_what_record_would_keep() {
        let mut h = History::new("me");
        for (node, step) in [("me", OWN_STEP), ("peer", PEER_STEP)] {
            assert!(h.wants(node, 1000));
            h.record(node, at(1000, 1.0));
            for t in [1000, 1000 + step - 1, 999, 1000 + step, 5000] {
                let before = h.revision();
                let wanted = h.wants(node, t);
                let mut copy = History::new("me");
                copy.record(node, at(1000, 1.0));
                copy.record(node, at(t, 1.0));
                assert_eq!(wanted, copy.revision() > 1, "{node} at {t}");
                assert_eq!(h.revision(), before, "asking changes nothing");
            }
        }
        for i in 0..PEER_TRACKS {
            h.record(&format!("p{i}"), at(1000, 1.0));
        }
        assert!(!h.wants("one-too-many", 1000));
        assert!(h.wants("me", 5000));
    }

    fn at(t: u64, cpu: f32) -> Point {
        Point {
            t,
            cpu,
            mem: 10.0,
            load: 0.5,
            temp: None,
            writes: None,
        }
    }

    #[test]
    fn an_hour_at_most_whatever_the_interval() {
        let mut h = History::new("me");
        // A sample every second for two hours: the own track keeps one each 5 s of the last hour.
        for t in 0..7200 {
            h.record("me", at(1_000_000 + t, (t % 100) as f32));
            h.record("peer", at(1_000_000 + t, 1.0));
        }
        let me = h.series("me").unwrap();
        assert_eq!(me.points.len(), OWN_POINTS);
        assert!(me.points.windows(2).all(|w| w[1].t - w[0].t == OWN_STEP));
        let last = me.points.last().unwrap().t;
        assert!(last - me.points[0].t <= SPAN_S);
        let peer = h.series("peer").unwrap();
        assert_eq!(peer.points.len(), PEER_POINTS);
        assert_eq!(peer.step_s, 60);
        assert_eq!(h.len(), OWN_POINTS + PEER_POINTS);
    }

    #[test]
    fn a_clock_that_jumps_back_starts_again_and_reaped_nodes_go() {
        let mut h = History::new("me");
        h.record("me", at(5_000, 1.0));
        h.record("me", at(5_010, 2.0));
        h.record("me", at(100, 3.0));
        assert_eq!(h.series("me").unwrap().points, [at(100, 3.0)]);
        h.record("gone", at(100, 1.0));
        h.record("kept", at(100, 1.0));
        let revision = h.revision();
        h.keep_only(&HashSet::from(["kept".to_string()]));
        assert!(h.revision() > revision);
        let ids: Vec<String> = h.all().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["me", "kept"]);
    }

    #[test]
    fn events_are_bounded_and_go_with_their_node() {
        let mut h = History::new("me");
        let e = |t| NodeEvent {
            t,
            kind: "joined".into(),
            generation: 1,
        };
        h.event("left-node", e(1));
        assert_eq!(h.series("left-node").unwrap().events, [e(1)]);
        assert!(h.series("left-node").unwrap().points.is_empty());
        for t in 0..1000 {
            h.event(&format!("n{}", t % 7), e(t));
        }
        assert_eq!(h.events.len(), EVENTS);
        assert!(h.series("left-node").is_none());
        let n3 = h.series("n3").unwrap().events;
        assert!(n3.windows(2).all(|w| w[0].t < w[1].t) && n3.last().unwrap().t == 997);
    }

    #[test]
    fn members_by_the_thousand_hold_no_more_than_the_bound() {
        let mut h = History::new("me");
        for t in 0..7200u64 {
            if t % 5 == 0 {
                h.record("me", at(t, 1.0));
            }
            if t % 60 == 0 {
                for peer in 0..1000 {
                    h.record(&format!("peer-{peer}"), at(t, 1.0));
                }
            }
        }
        assert_eq!(h.tracks.len(), 1 + PEER_TRACKS);
        assert_eq!(h.len(), OWN_POINTS + PEER_TRACKS * PEER_POINTS);
        assert!(h.series("peer-999").is_none() && h.series("peer-0").is_some());
        // The bound the module's documentation states.
        assert_eq!(std::mem::size_of::<Point>(), 48);
        assert!(h.len() * std::mem::size_of::<Point>() < 800_000);
        // A point too soon changes nothing, so readers' copies stay good.
        let revision = h.revision();
        h.record("me", at(7199, 2.0));
        assert_eq!(h.revision(), revision);
    }
}
