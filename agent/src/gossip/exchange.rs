//! The scuttlebutt exchange: a `Syn`'s digest answered with the deltas its sender lacks and entries for
//! what this node lacks (`Ack`), closed by `Ack2`; deltas applied (checked field by field); forgeries of
//! this node refuted; digests built to fit one datagram at any cluster size.

use super::*;

impl Gossiper {
    /// Whether a peer's view of this node, `e`, holds something this node never sent: a newer generation
    /// of itself, a heartbeat above its own (a leave it did not announce), or state it never set.
    pub(super) fn is_forgery_of_me(&self, e: &DigestEntry) -> bool {
        if e.node != self.id {
            return false;
        }
        let me = self.me();
        e.generation > me.generation
            || (e.generation == me.generation
                && (e.heartbeat > me.heartbeat || e.max_version > me.max_version))
    }

    /// SWIM's refutation: peers believe something of this node that it never said (a forged leave, a
    /// forged heartbeat, or a generation from a former life that the state directory forgot). This node
    /// starts a new generation above anything seen, which replaces the false belief everywhere, as a
    /// restart would. Its key/values stay; peers fetch them whole for the new generation.
    pub(super) fn refute(&mut self, now: Duration, seen_generation: u64) {
        let generation = self.generation().max(seen_generation) + 1;
        let id = self.id;
        let me = self
            .nodes
            .get_mut(&id)
            .expect("the local node is always known");
        me.generation = generation;
        me.heartbeat = 0;
        self.notes.changed(id, me, now);
        self.stats.refutations += 1;
    }

    pub(super) fn on_syn(
        &mut self,
        now: Duration,
        from: SocketAddr,
        sender: NodeId,
        digest: Digest,
        reply_limit: usize,
        rng: &mut impl RngCore,
    ) {
        let mut listed: Vec<NodeId> = digest.entries.iter().map(|e| e.node).collect();
        listed.sort_unstable();

        if let Some(e) = digest.entries.iter().find(|e| self.is_forgery_of_me(e)) {
            self.refute(now, e.generation);
        }
        if let Some(e) = digest.entries.iter().find(|e| e.node == self.id) {
            if let Some(s) = self.nodes.get_mut(&sender).filter(|_| sender != self.id) {
                s.knows_me_as = Some(e.generation);
            }
        }
        let full = self.is_full();
        let mut requests = Vec::new();
        let mut news = Vec::new();
        let mut wanted: Vec<(NodeId, Option<&DigestEntry>)> = Vec::new();
        for e in &digest.entries {
            let is_me = e.node == self.id;
            match self.nodes.get_mut(&e.node) {
                Some(s) if s.generation > e.generation => wanted.push((e.node, Some(e))),
                Some(s) if s.generation == e.generation => {
                    if !is_me {
                        take_heartbeat(&mut self.notes, &self.config.phi, s, e, now);
                    }
                    if s.max_version > e.max_version {
                        wanted.push((e.node, Some(e)));
                    } else if s.max_version < e.max_version {
                        requests.push(s.entry(e.node));
                    } else if s.heartbeat > e.heartbeat && e.node == sender {
                        // What we believe of the sender itself beyond what it says (a leave it never
                        // announced): it goes first, so the sender can refute it at once.
                        requests.insert(0, s.entry(e.node));
                    } else if s.heartbeat > e.heartbeat {
                        news.push(s.entry(e.node));
                    }
                }
                Some(_) if is_me => {}
                Some(s) => requests.push(s.entry(e.node)),
                None if !is_buried(&self.tombstones, e, false) && !full => {
                    requests.push(DigestEntry {
                        node: e.node,
                        generation: 0,
                        heartbeat: 0,
                        max_version: 0,
                    });
                }
                None => {}
            }
        }
        // Nodes in the digest's range that the sender did not list are nodes it has never heard of. The
        // walk stops once the reply is full: a digest claiming the whole ring costs what its own entries
        // and one reply cost, not a walk of the whole table.
        let room = self.reply_budget_peek(reply_limit) / MIN_DELTA_SHARE + 1;
        for id in ring_from(&self.nodes, digest.start).map(|(id, _)| id) {
            if !digest.covers(id) || wanted.len() >= room {
                break;
            }
            if listed.binary_search(&id).is_err() {
                wanted.push((id, None));
            }
        }

        let mut budget = self
            .reply_budget(reply_limit)
            .saturating_sub(wire::ACK_BASE_LEN);
        let mut entries = Vec::new();
        for e in requests {
            if e.encoded_len() > budget {
                break;
            }
            budget -= e.encoded_len();
            entries.push(e);
        }
        let mut deltas = Vec::new();
        // The room is shared: a node that lacks many members (it just started) learns of each, with the
        // first part of its state (the rest follows on the next exchanges), rather than of a few in full.
        let count = wanted.len();
        for (i, (id, entry)) in wanted.into_iter().enumerate() {
            let share = (budget / (count - i)).max(MIN_DELTA_SHARE).min(budget);
            if let Some(d) = self.delta_for(id, entry, share) {
                budget -= d.encoded_len();
                deltas.push(d);
            }
        }
        for e in news {
            if e.encoded_len() > budget {
                break;
            }
            budget -= e.encoded_len();
            entries.push(e);
        }
        let known = self.nodes.len() as u64;
        self.send(
            from,
            sender,
            Message::Ack {
                known,
                entries,
                deltas,
            },
            rng,
        );
    }

    /// Whether the member table holds [`GossipConfig::max_members`] already.
    pub(super) fn is_full(&self) -> bool {
        self.nodes.len() >= self.config.max_members
    }

    /// What a peer whose view of `id` is `entry` (`None`: never heard of it) lacks, within `budget`.
    pub(super) fn delta_for(
        &self,
        id: NodeId,
        entry: Option<&DigestEntry>,
        budget: usize,
    ) -> Option<NodeDelta> {
        let s = self.nodes.get(&id)?;
        let from = match entry {
            None => 0,
            Some(e) if e.generation < s.generation => 0,
            Some(e) if e.generation == s.generation && e.max_version < s.max_version => {
                e.max_version
            }
            Some(_) => return None,
        };
        s.delta(id, from, budget)
    }

    /// Takes the heartbeats carried by digest entries.
    pub(super) fn observe(&mut self, now: Duration, entries: &[DigestEntry]) {
        for e in entries {
            if e.node == self.id {
                if self.is_forgery_of_me(e) {
                    self.refute(now, e.generation);
                }
                continue;
            }
            if let Some(s) = self.nodes.get_mut(&e.node) {
                take_heartbeat(&mut self.notes, &self.config.phi, s, e, now);
            }
        }
    }

    pub(super) fn apply_delta(&mut self, now: Duration, sender: NodeId, d: NodeDelta) {
        if d.node == self.id {
            let claimed = DigestEntry {
                node: d.node,
                generation: d.generation,
                heartbeat: d.heartbeat,
                max_version: d.kvs.last().map_or(0, |kv| kv.version),
            };
            if self.is_forgery_of_me(&claimed) {
                self.refute(now, d.generation);
            }
            return;
        }
        // A node's state is taken whole or not at all: one bad field and the delta is refused.
        let check = self.config.check_value;
        if d.kvs.iter().any(|kv| {
            (kv.key != ADDR_KEY && kv.key != PHI_KEY && validate_key(&kv.key).is_err())
                || kv.value.as_deref().is_some_and(|v| {
                    check(&kv.key, v).is_err()
                        || (kv.key == PHI_KEY && monitor::parse_reports(v).is_err())
                })
        }) {
            self.stats.rejected_invalid += 1;
            return;
        }
        let probe = DigestEntry {
            node: d.node,
            generation: d.generation,
            heartbeat: d.heartbeat,
            max_version: 0,
        };
        if is_buried(&self.tombstones, &probe, d.node == sender) {
            return;
        }
        let bootstrap = self.expected_update_interval();
        let phi = &self.config.phi;
        // A node never heard of, or a new generation of one: taken from its first version only.
        let fresh = match self.nodes.get(&d.node).map(|s| s.generation) {
            Some(g) if d.generation < g => return,
            Some(g) if d.generation == g => None,
            Some(_) => Some(EventKind::Restarted),
            None => Some(EventKind::Joined),
        };
        if fresh.is_some() && d.from_version != 0 {
            return;
        }
        if fresh == Some(EventKind::Joined) {
            if self.is_full() {
                self.stats.refused_members += 1;
                return;
            }
            self.tombstones.remove(&d.node);
        }
        let s = self
            .nodes
            .entry(d.node)
            .or_insert_with(|| NodeState::new(phi, bootstrap, d.generation, d.heartbeat, now));
        // What changed: everything, for a fresh node; for a known one, what this delta adds.
        let changed = match fresh {
            Some(kind) => {
                if kind == EventKind::Restarted {
                    *s = NodeState::new(phi, bootstrap, d.generation, d.heartbeat, now);
                }
                apply_kvs(s, &d.kvs);
                Some(kind)
            }
            None => (d.from_version <= s.max_version && apply_kvs(s, &d.kvs))
                .then_some(EventKind::Updated),
        };
        if let Some(kind) = changed {
            s.rethreshold(&self.config);
            verdict_due(
                &mut self.notes,
                &mut self.watch_due,
                &self.ring,
                &self.config,
                d.node,
                s.suspect_at,
            );
            // A node first heard of after its goodbye is reported as gone, not as joined.
            let kind = if fresh.is_some() && s.liveness == Liveness::Left {
                EventKind::Left
            } else {
                kind
            };
            self.notes.changed(d.node, s, now);
            self.notes.push(kind, d.node, s, now);
        }
        if fresh.is_some() {
            self.note_reporter(d.node);
            return;
        }
        if d.heartbeat > s.heartbeat {
            beat(&mut self.notes, phi, d.node, s, d.heartbeat, now);
        }
        if changed.is_some() && d.kvs.iter().any(|kv| kv.key == PHI_KEY) {
            self.note_reporter(d.node);
        }
    }

    /// A digest of at most one datagram: this node, the freshest rumours, then a random arc of the ring.
    /// To an address not heard from lately (`trusted` false), only this node and what it believes of
    /// the receiver: a first contact needs no more to be answered, and a member a key holder invented at
    /// a third party's address draws a small datagram there, not a full one.
    pub(super) fn build_digest(
        &self,
        rng: &mut impl RngCore,
        hot: &[NodeId],
        to: NodeId,
        census: bool,
        trusted: bool,
    ) -> Digest {
        let mut budget = SYN_DIGEST_BYTES
            - wire::packet_header_len(self.generation(), self.seq)
            - wire::DIGEST_BASE_LEN;
        let mut entries: Vec<DigestEntry> = Vec::new();
        let fits = |e: &DigestEntry, budget: &mut usize| -> bool {
            if e.encoded_len() > *budget {
                return false;
            }
            *budget -= e.encoded_len();
            true
        };
        let me = self.me().entry(self.id);
        if fits(&me, &mut budget) {
            entries.push(me);
        }
        // What we believe of the receiver, so it can refute a falsehood (a forged leave) at once.
        let mut gone = false;
        if let Some(s) = self.nodes.get(&to).filter(|_| to != self.id) {
            let e = s.entry(to);
            if fits(&e, &mut budget) {
                entries.push(e);
            }
            gone = matches!(s.liveness, Liveness::Dead | Liveness::Left);
        }
        // A probe of a node we think dead or gone carries no census: whoever holds its address now
        // learns nothing of the cluster from it, and the node, if alive, gets all it needs by its answer.
        // Nor does a first contact (an address not heard from lately, a seed's among them).
        if gone || !trusted {
            let start = NodeId(rng.next_u64());
            return Digest {
                start,
                end: NodeId(start.0.wrapping_add(1)),
                known: self.nodes.len() as u64,
                entries,
            };
        }
        // Rumours take at most a third of the digest so the census still moves on.
        let mut rumour_budget = budget / 3;
        for id in hot.iter().filter(|id| **id != self.id) {
            let e = self.nodes[id].entry(*id);
            if !fits(&e, &mut rumour_budget) {
                break;
            }
            budget -= e.encoded_len();
            entries.push(e);
        }
        let pre_listed = entries.len();
        let start = NodeId(rng.next_u64());
        if !census {
            // Rumours only: the digest claims no range.
            return Digest {
                start,
                end: NodeId(start.0.wrapping_add(1)),
                known: self.nodes.len() as u64,
                entries,
            };
        }
        let mut end = start;
        for (id, s) in ring_from(&self.nodes, start) {
            if entries[..pre_listed].iter().any(|e| e.node == id) {
                continue;
            }
            let e = s.entry(id);
            if !fits(&e, &mut budget) {
                end = id;
                break;
            }
            entries.push(e);
        }
        if end == start && self.nodes.len() > entries.len() {
            // The arc could not even start: claim nothing.
            end = NodeId(start.0.wrapping_add(1));
        }
        Digest {
            start,
            end,
            known: self.nodes.len() as u64,
            entries,
        }
    }

    /// The heartbeat interval to assume for a node just heard of: the configured bootstrap interval, or
    /// longer in a cluster too large for one digest. A node's heartbeat reaches a given peer about every
    /// other round when digests cover the whole cluster, and proportionally less often when they cover only
    /// a part of it; assuming the small-cluster rhythm there would convict nodes that are merely quiet. The
    /// size is what peers report too, so a newcomer that knows few members yet is not misled.
    pub(super) fn expected_update_interval(&self) -> Duration {
        if self.config.monitor().is_some() {
            // Only monitors judge, from heartbeats sent straight to them every round.
            return self.config.interval;
        }
        let per_digest = (MAX_PAYLOAD / 18) as u32;
        let n = (self.nodes.len() as u64).max(self.peer_known).min(1 << 20) as u32;
        let rounds = (2 * n).div_ceil(per_digest).max(1);
        self.config
            .phi
            .bootstrap_interval
            .max(self.config.interval * rounds)
    }

    /// How long a change stays a rumour: long enough for an epidemic to reach everyone.
    pub(super) fn hot_window(&self) -> Duration {
        let n = self.nodes.len() as u32 + 1;
        let rounds = 2 * (u32::BITS - n.leading_zeros()) + 4;
        self.config.interval * rounds
    }
}
