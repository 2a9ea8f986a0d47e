//! Failure detection: a node heard alive (its φ sample), silences scanned and judged (suspect, probe,
//! conviction), probes sent directly and through others, and the φ reports monitors publish in `_phi`
//! so every node can show a member's φ as its monitors see it.

use super::*;

/// How long a dead node never heard first-hand is remembered.
const UNHEARD_REAP: Duration = Duration::from_secs(300);

impl Gossiper {
    /// Probes `target` directly and through `indirect` other live nodes.
    pub(super) fn probe(&mut self, target: NodeId, indirect: usize, rng: &mut impl RngCore) {
        let Some(addr) = self.nodes.get(&target).and_then(|s| s.addr) else {
            return;
        };
        self.send(addr, target, Message::Ping { target }, rng);
        // Helpers heard first-hand, one per address and not at the target's while there are others (a
        // key holder's inventions at its own address give it one voice), and only the helpers asked
        // may answer for the target.
        let Some(m) = self.config.monitor().copied() else {
            return;
        };
        let helpers: Vec<(NodeId, SocketAddr)> = self
            .live
            .iter()
            .filter(|id| **id != target)
            .filter_map(|id| {
                let s = self.nodes.get(id)?;
                s.heard.then_some((*id, s.addr?))
            })
            .collect();
        if helpers.is_empty() {
            return;
        }
        let start = rng.gen_range(0..helpers.len());
        let ring = (0..helpers.len()).map(|i| helpers[(start + i) % helpers.len()]);
        let mut chosen: Vec<(NodeId, SocketAddr)> = Vec::with_capacity(indirect);
        for (h, a) in ring.clone() {
            if chosen.len() < indirect
                && a.ip() != addr.ip()
                && chosen.iter().all(|(_, c)| c.ip() != a.ip())
            {
                chosen.push((h, a));
            }
        }
        for (h, a) in ring {
            if chosen.len() < indirect && chosen.iter().all(|(c, _)| *c != h) {
                chosen.push((h, a));
            }
        }
        for (h, a) in chosen {
            self.ring.ask(target, h, self.clock + m.probe_timeout);
            self.send(a, h, Message::PingReq { target }, rng);
        }
    }

    /// Chooses this node's monitors from the live peers (see `monitor`).
    pub(super) fn choose_monitors(&mut self, k: usize) {
        let my_ip = self.me().addr.map(|a| a.ip());
        let live = &self.live;
        let nodes = &self.nodes;
        let pos = live.partition_point(|id| *id < self.id);
        let n = live.len();
        let after = (0..n).filter_map(|i| {
            let id = live[(pos + i) % n];
            let s = nodes.get(&id)?;
            Some(monitor::Candidate {
                id,
                ip: s.addr?.ip(),
                heard: s.heard,
            })
        });
        self.ring.choose_monitors(my_ip, after, k);
    }

    /// A heartbeat from `id` heard first-hand at `ip`: `id` is watched from now on (unless this node
    /// already watches its share from that address), and its silence starts again.
    pub(super) fn on_heartbeat(
        &mut self,
        now: Duration,
        id: NodeId,
        ip: std::net::IpAddr,
        generation: u64,
    ) {
        let Some(m) = self.config.monitor().copied() else {
            return;
        };
        if !self.ring.watches(id) {
            let Some(s) = self.nodes.get_mut(&id) else {
                return;
            };
            if s.generation != generation
                || !matches!(s.liveness, Liveness::Alive | Liveness::Suspect)
            {
                return;
            }
            if !self.ring.watch(id, ip, m.monitors) {
                self.stats.unwatched_heartbeats += 1;
                return;
            }
            // Judged from now on, with the expected rhythm as its prior.
            let phi = &self.config.phi;
            s.detector = phi::PhiAccrualDetector::with_bootstrap(self.config.interval, phi, now);
            s.probe = None;
            s.schedule_verdicts(phi);
            self.watch_due = self.watch_due.min(s.suspect_at);
            self.reports_due = now;
            self.heard_alive(now, id, Some(generation), false);
            return;
        }
        self.heard_alive(now, id, Some(generation), true);
    }

    /// Evidence that `id` is alive (a heartbeat of `generation`, or an answer to a probe): its silence
    /// starts again, and a suspicion ends.
    pub(super) fn heard_alive(
        &mut self,
        now: Duration,
        id: NodeId,
        generation: Option<u64>,
        sample: bool,
    ) {
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
    pub(super) fn scan(&mut self, now: Duration) {
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
            // A dead node never heard first-hand (only of: it may be a key holder's invention, with a
            // third party's address) is not probed, and forgotten sooner.
            let reap_after = if s.heard {
                reap_after
            } else {
                reap_after.min(UNHEARD_REAP)
            };
            match s.liveness {
                Liveness::Alive | Liveness::Suspect => self.live.push(id),
                Liveness::Dead | Liveness::Left if now >= s.since + reap_after => reaped.push(id),
                Liveness::Dead => {
                    if s.heard {
                        self.dead.push(id);
                    }
                    next = next.min(s.since + reap_after);
                }
                // A goodbye is signed by the node itself (see `LEFT_KEY`): its address gets nothing
                // more.
                Liveness::Left => next = next.min(s.since + reap_after),
            }
        }
        for id in reaped {
            let s = self.nodes.remove(&id).expect("listed above");
            self.shared.remove(&id);
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
        let nodes = &self.nodes;
        self.heard_live = self
            .live
            .iter()
            .filter(|id| nodes.get(id).is_some_and(|s| s.heard && s.addr.is_some()))
            .copied()
            .collect();
        if let Some(m) = monitor {
            // A node newly watched by the ring is judged from now on, with the expected rhythm as its
            // prior; one no longer watched is no longer suspected here.
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
            self.choose_monitors(m.monitors);
            // A node watched for its heartbeats that is dead or gone is no longer so watched (it is
            // again when a new generation of it sends heartbeats here).
            for id in self.ring.watching() {
                let live = self
                    .nodes
                    .get(&id)
                    .is_some_and(|s| matches!(s.liveness, Liveness::Alive | Liveness::Suspect));
                if !live && self.ring.watched_for_beats(id) {
                    self.ring.unwatch(id);
                    self.reports_due = now;
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
    pub(super) fn judge_watched(&mut self, now: Duration) {
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

    /// Keeps `reporters` in step with `id`'s `_phi` key.
    pub(super) fn note_reporter(&mut self, id: NodeId) {
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
    pub(super) fn publish_reports(&mut self, now: Duration) {
        if now < self.reports_due {
            return;
        }
        let phi = &self.config.phi;
        let mut reports = Vec::new();
        // While a report stands, look every round; else not before a silence outlasts its pause.
        let mut due = now + self.config.reap_after;
        for id in self.ring.watching() {
            let Some(s) = self.nodes.get(&id) else {
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
                    reports.push((id, level.clamp(1.0, top) as u8));
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
    pub(super) fn reported_phi(&self, id: NodeId) -> f64 {
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
}

/// The verdict on `s` that is due at `now` (suspect, a probe, its retry, conviction; or, with gossip
/// detection, dead at the threshold); returns when the next one can fall due.
pub(super) fn judge(
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
pub(super) fn verdict_due(
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

/// Members in ring order, starting at the first id at or after `start`.
pub(super) fn ring_from(
    nodes: &BTreeMap<NodeId, NodeState>,
    start: NodeId,
) -> impl Iterator<Item = (NodeId, &NodeState)> {
    nodes
        .range(start..)
        .chain(nodes.range(..start))
        .map(|(id, s)| (*id, s))
}
