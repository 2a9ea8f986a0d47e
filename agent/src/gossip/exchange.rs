//! The scuttlebutt exchange: a `Syn`'s digest answered with the deltas its sender lacks and entries for
//! what this node lacks (`Ack`), closed by `Ack2`; deltas applied (checked field by field); forgeries of
//! this node refuted; digests built to fit one datagram at any cluster size.

use super::wire::KeyValue;
use super::*;

impl Gossiper {
    /// Whether a peer's view of this node, `e`, calls for a new generation: it is dead there (its
    /// monitors' verdict, right or forged), or, with detection by gossip, its heartbeat there is above its
    /// own (its real ones would look stale). Nothing else a peer says of this node is believed by anyone
    /// without its signature (a goodbye, state, a newer generation), so nothing else is refuted: a forged
    /// claim of a generation near the ceiling silences no one.
    pub(super) fn needs_refuting(&self, e: &DigestEntry) -> bool {
        if e.node != self.id {
            return false;
        }
        let me = self.me();
        e.generation == me.generation
            && (e.heartbeat == DEAD_HEARTBEAT
                || (self.config.monitor().is_none()
                    && e.heartbeat > me.heartbeat
                    && e.heartbeat < DEAD_HEARTBEAT))
    }

    /// SWIM's refutation: peers believe this node dead, or hold its state of a former life (signed by
    /// its own key, at a higher generation: the state directory forgot it). This node starts a new
    /// generation above it, which replaces the belief everywhere, as a restart would. Its key/values stay,
    /// signed again for the new generation; peers fetch them whole.
    pub(super) fn refute(&mut self, now: Duration, seen_generation: u64) {
        let generation = self.generation().max(seen_generation) + 1;
        if generation > wire::MAX_GENERATION {
            // Only this node's own key could have signed so high a generation (a stolen key, or a clock
            // decades ahead): say so rather than go silent above the wire's ceiling.
            self.stats.cannot_refute += 1;
            return;
        }
        let (id, cluster) = (self.id, self.cluster_id);
        let me = self
            .nodes
            .get_mut(&id)
            .expect("the local node is always known");
        me.generation = generation;
        me.heartbeat = 0;
        for (key, v) in me.kvs.iter_mut() {
            v.signature = self
                .key
                .sign_kv(cluster, generation, key, v.version, v.value.as_deref());
            self.stats.signatures_made += 1;
        }
        self.notes.changed(id, me, now);
        self.stats.refutations += 1;
    }

    /// A peer's delta of this node itself: a conviction to refute, or state of a higher generation,
    /// which is refuted only when this node's own key signed it (a former life); anything else is a
    /// forgery, which no peer believes either, and is only counted.
    fn claim_of_me(&mut self, now: Duration, from: SocketAddr, d: &NodeDelta) {
        let claimed = DigestEntry {
            node: d.node,
            generation: d.generation,
            heartbeat: d.heartbeat,
            max_version: d.kvs.last().map_or(0, |kv| kv.version),
        };
        if self.needs_refuting(&claimed) {
            self.refute(now, d.generation);
            return;
        }
        if d.generation <= self.generation() {
            return;
        }
        let key = self.key.public().clone();
        if !d.kvs.is_empty()
            && self.work.allow(from.ip(), d.kvs.len(), now)
            && self.signed(&key, d.node, d.generation, &d.kvs)
        {
            self.refute(now, d.generation);
        } else {
            self.stats.claims_of_self += 1;
        }
    }

    /// A Syn from `sender`, answered within `reply_limit` bytes.
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

        if let Some(e) = digest.entries.iter().find(|e| self.needs_refuting(e)) {
            self.refute(now, e.generation);
        }
        let mut requests = Vec::new();
        if let Some(e) = digest.entries.iter().find(|e| e.node == self.id) {
            if let Some(s) = self.nodes.get_mut(&sender) {
                // It holds this node's state, so its keys: answers to it can be paired. And what it
                // holds is evidence for `herd upgrade`'s proof.
                s.knows_my_keys = true;
                s.knows_me_as = Some(e.generation);
            }
            // A newer generation of this node: a former life (its state signed by this node's key) is
            // refuted, anything else is a forgery. Asked for, it comes in the Ack2.
            if e.generation > self.generation() {
                self.stats.claims_of_self += 1;
                requests.push(DigestEntry {
                    node: self.id,
                    generation: 0,
                    heartbeat: 0,
                    max_version: 0,
                });
            }
        }
        let full = self.is_full();
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
        // A first contact (a Syn that does not list this node) learns this node's keys and address
        // first, so that what follows can be paired; that much is answered whatever the question's
        // size.
        let mut reply_limit = reply_limit;
        let first_contact = listed.binary_search(&self.id).is_err();
        if first_contact {
            wanted.insert(0, (self.id, None));
            reply_limit = reply_limit.max(FIRST_CONTACT_REPLY);
        }
        // Nodes in the digest's range that the sender did not list are nodes it has never heard of. The
        // walk stops once the reply is full: a digest claiming the whole ring costs what its own entries
        // and one reply cost, not a walk of the whole table.
        let room = self.reply_budget_peek(reply_limit, sender) / MIN_DELTA_SHARE + 1;
        for id in ring_from(&self.nodes, digest.start).map(|(id, _)| id) {
            if !digest.covers(id) || wanted.len() >= room {
                break;
            }
            if listed.binary_search(&id).is_err() && !(first_contact && id == self.id) {
                wanted.push((id, None));
            }
        }

        let mut budget = self
            .reply_budget(reply_limit, sender)
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
                if self.needs_refuting(e) {
                    self.refute(now, e.generation);
                }
                continue;
            }
            if let Some(s) = self.nodes.get_mut(&e.node) {
                take_heartbeat(&mut self.notes, &self.config.phi, s, e, now);
            }
        }
    }

    /// Applies a peer's delta, received from `from` (`direct`: the delta of the datagram's proven
    /// sender itself). Every key/value it adds must carry its node's signature: false when one does not
    /// (the rest of the datagram is not worth checking), true otherwise, whether it was applied, stale
    /// or refused on a field.
    pub(super) fn apply_delta(
        &mut self,
        now: Duration,
        from: SocketAddr,
        direct: bool,
        d: NodeDelta,
    ) -> bool {
        if d.node == self.id {
            self.claim_of_me(now, from, &d);
            return true;
        }
        // A node's state is taken whole or not at all: one bad field and the delta is refused.
        let check = self.config.check_value;
        if d.kvs.iter().any(|kv| {
            (![ADDR_KEY, PHI_KEY, LEFT_KEY].contains(&kv.key.as_str())
                && validate_key(&kv.key).is_err())
                || kv.value.as_deref().is_some_and(|v| {
                    check(&kv.key, v).is_err()
                        || (kv.key == PHI_KEY && monitor::parse_reports(v).is_err())
                })
        }) {
            self.stats.rejected_invalid += 1;
            return true;
        }
        let probe = DigestEntry {
            node: d.node,
            generation: d.generation,
            heartbeat: d.heartbeat,
            max_version: 0,
        };
        if is_buried(&self.tombstones, &probe, direct) {
            return true;
        }
        // A node never heard of, or a new generation of one: taken from its first version only, with
        // its keys, and at least one key/value its key signed in that generation (nothing else proves
        // the generation is the node's).
        let known = self.nodes.get(&d.node);
        let fresh = match known.map(|s| s.generation) {
            Some(g) if d.generation < g => return true,
            Some(g) if d.generation == g => None,
            Some(_) => Some(EventKind::Restarted),
            None => Some(EventKind::Joined),
        };
        if fresh.is_some() && (d.from_version != 0 || d.kvs.is_empty()) {
            return true;
        }
        if fresh == Some(EventKind::Joined) && self.is_full() {
            self.stats.refused_members += 1;
            return true;
        }
        let key = match known {
            Some(s) => s.key.clone(),
            None => match d.keys.as_ref().map(|k| self.public_key(d.node, k)) {
                Some(Ok(key)) => key,
                _ => {
                    self.stats.rejected_signature += 1;
                    return false;
                }
            },
        };
        // Only what would be applied is checked (a key/value already held was checked when it came).
        let held = if fresh.is_some() {
            0
        } else {
            known.map_or(0, |s| s.max_version)
        };
        let new = if d.from_version <= held {
            d.kvs.iter().filter(|kv| kv.version > held).count()
        } else {
            0
        };
        if new > 0 {
            if !self.work.allow(from.ip(), new, now) {
                // Over this source's share: left for a later exchange (anti-entropy brings it again).
                self.stats.unchecked_dropped += 1;
                return true;
            }
            let kvs: Vec<KeyValue> = d
                .kvs
                .iter()
                .filter(|kv| kv.version > held)
                .cloned()
                .collect();
            if !self.signed(&key, d.node, d.generation, &kvs) {
                self.stats.rejected_signature += 1;
                return false;
            }
        }
        // A member now: what its introduction told stays with its state.
        let knew_me = self.introduced.remove(&d.node).is_some_and(|i| i.knows_me);
        if fresh == Some(EventKind::Joined) {
            self.tombstones.remove(&d.node);
        }
        let bootstrap = self.expected_update_interval();
        let phi = &self.config.phi;
        let s = self.nodes.entry(d.node).or_insert_with(|| {
            let mut s = NodeState::new(phi, bootstrap, key.clone(), d.generation, d.heartbeat, now);
            s.knows_my_keys = knew_me;
            s
        });
        // What changed: everything, for a fresh node; for a known one, what this delta adds.
        let changed = match fresh {
            Some(kind) => {
                if kind == EventKind::Restarted {
                    *s = NodeState::new(phi, bootstrap, key, d.generation, d.heartbeat, now);
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
            let kind = if fresh.is_some() && said_goodbye(s) {
                s.heartbeat = LEFT_HEARTBEAT;
                s.liveness = Liveness::Left;
                EventKind::Left
            } else {
                kind
            };
            self.notes.changed(d.node, s, now);
            self.notes.push(kind, d.node, s, now);
        }
        if fresh.is_some() {
            self.note_reporter(d.node);
            return true;
        }
        if said_goodbye(s) && s.liveness != Liveness::Left {
            s.heartbeat = LEFT_HEARTBEAT;
            mark_left(&mut self.notes, d.node, s, now);
        }
        if d.heartbeat > s.heartbeat {
            beat(&mut self.notes, phi, d.node, s, d.heartbeat, now);
        }
        if changed.is_some() && d.kvs.iter().any(|kv| kv.key == PHI_KEY) {
            self.note_reporter(d.node);
        }
        true
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
            - (MAX_PAYLOAD - self.room(to))
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
