//! One round and the datagrams' dispatch: what a tick sends (heartbeats to the monitors, rumours to two
//! peers, a census now and then, probes and verdicts), a graceful leave, and every datagram received
//! checked and handed to the exchange or the detection. The `impl` of [`Gossiper`] continues here.

use super::*;

impl Gossiper {
    /// One round: beat the heart, reach verdicts, forget the long dead, gossip.
    pub fn handle_tick(&mut self, now: Duration, rng: &mut impl RngCore) {
        self.clock = now;
        if self.left {
            return;
        }
        // A round that comes late by more than a round (this process was stalled: swapped out, suspended)
        // must not judge others on a silence it did not listen to: their silences start again now.
        let late = now.saturating_sub(self.next_tick);
        if late > self.config.interval && self.config.monitor().is_some() {
            let phi = &self.config.phi;
            for id in self.ring.watching().to_vec() {
                if let Some(s) = self.nodes.get_mut(&id) {
                    s.detector.reset_silence(now);
                    s.schedule_verdicts(phi);
                }
            }
        }
        self.next_tick = now + self.config.interval;
        self.round += 1;
        let monitor = self.config.monitor().copied();
        if monitor.is_none() {
            self.me_mut().heartbeat += 1;
        }

        // The member table is walked when a verdict or a reaping falls due, or the membership changed:
        // at once when a node's liveness changed, at most once a second when nodes only joined (a
        // cluster forming has newcomers every round, and the walk is the whole table).
        let moved = self.notes.membership_epoch != self.lists_epoch;
        let joins_only = self.notes.liveness_epoch == self.lists_liveness_epoch;
        if now >= self.notes.next_scan
            || (moved
                && (!joins_only
                    || self.live.is_empty()
                    || now >= self.last_scan + self.config.interval * JOINS_WAIT_ROUNDS))
        {
            self.scan(now);
        } else if monitor.is_some() && now >= self.watch_due {
            self.judge_watched(now);
        }
        if monitor.is_some() {
            self.publish_reports(now);
        }
        let hot = self.hot(now);
        self.notes.urgent = false;

        // Detection by monitors: the heartbeats, and the probes of watched nodes past their threshold.
        // A round without rumours sends a census only every few rounds, to one peer.
        let (fanout, census) = match monitor {
            None => (2, true),
            Some(m) => {
                // The monitors are chosen again when a candidate was just heard, and every few rounds
                // (when candidates not yet heard are asked again).
                if self.ring.stale || self.round.is_multiple_of(VERIFY_EVERY_ROUNDS) {
                    self.ring.stale = false;
                    self.choose_monitors(m.monitors);
                }
                for id in self.ring.take_verify(now) {
                    if let Some(addr) = self.nodes.get(&id).and_then(|s| s.addr) {
                        self.send(addr, id, Message::Ping { target: id }, rng);
                    }
                }
                // Heartbeats go only to monitors heard first-hand: one not heard yet is asked (above),
                // and an invention at an address nobody answers from gets nothing.
                for id in self.ring.monitors.clone() {
                    if let Some(addr) = self.nodes.get(&id).filter(|s| s.heard).and_then(|s| s.addr)
                    {
                        self.send(addr, id, Message::Heartbeat, rng);
                    }
                }
                for target in std::mem::take(&mut self.ring.to_probe) {
                    self.probe(target, m.indirect_probes, rng);
                }
                // While the last digest heard came from a node that knows another number of members
                // (a cluster starting, nodes joining), every round carries a census to two peers: the
                // counts agree again within a few rounds, and the quiet rhythm resumes.
                let unsettled = self.peer_known != self.nodes.len() as u64;
                let census =
                    unsettled || self.round.is_multiple_of(u64::from(m.census_every.max(1)));
                match (census, unsettled, hot.is_empty()) {
                    (true, true, _) => (2, true),
                    (true, false, _) => (1, true),
                    (false, _, false) => (2, false),
                    (false, _, true) => (0, false),
                }
            }
        };

        // Where to, and to whom when known (a seed's id is not).
        let mut targets: Vec<(SocketAddr, NodeId)> = Vec::with_capacity(3);
        let addr_of =
            |nodes: &BTreeMap<NodeId, NodeState>, id: &NodeId| nodes[id].addr.map(|a| (a, *id));
        let (live, dead) = (&self.live, &self.dead);
        // Random live peers: an epidemic with fan-out 2 reaches everyone in about half the rounds of
        // fan-out 1.
        if !live.is_empty() && fanout > 0 {
            let first = rng.gen_range(0..live.len());
            targets.extend(addr_of(&self.nodes, &live[first]));
            if live.len() > 1 && fanout > 1 {
                let second = match self.heard_live.as_slice() {
                    // One heard first-hand, when another than the first is.
                    heard if heard.iter().any(|id| *id != live[first]) => loop {
                        let id = heard[rng.gen_range(0..heard.len())];
                        if id != live[first] {
                            break id;
                        }
                    },
                    _ => live[(first + 1 + rng.gen_range(0..live.len() - 1)) % live.len()],
                };
                targets.extend(addr_of(&self.nodes, &second));
            }
        }
        // Cassandra's rule: the more of the cluster looks dead, the more often we try one of them, so a
        // healed partition is noticed within a round or two.
        if census
            && !dead.is_empty()
            && rng.gen_bool((dead.len() as f64 / (live.len() + 1) as f64).min(1.0))
        {
            let id = dead[rng.gen_range(0..dead.len())];
            targets.extend(addr_of(&self.nodes, &id));
        }
        let own = self.me().addr;
        let seeds: Vec<SocketAddr> = self
            .config
            .seeds
            .iter()
            .copied()
            .filter(|s| Some(*s) != own)
            .collect();
        if !seeds.is_empty()
            && (live.is_empty()
                || (census
                    && rng.gen_bool(
                        (seeds.len() as f64 / (live.len() + dead.len() + 1) as f64).min(1.0),
                    )))
        {
            targets.push((seeds[rng.gen_range(0..seeds.len())], ANYONE));
        }
        targets.sort_unstable();
        targets.dedup_by_key(|(addr, _)| *addr);
        for (to, node) in targets {
            let trusted = self.budget.is_trusted(to.ip(), now);
            let digest = self.build_digest(rng, &hot, node, census, trusted);
            self.send(to, node, Message::Syn { digest }, rng);
        }
    }

    /// The rumours still worth spreading, most recent first; a node that changed twice is listed once,
    /// under its latest change.
    pub(super) fn hot(&mut self, now: Duration) -> Vec<NodeId> {
        let hot_window = self.hot_window();
        while let Some((at, _)) = self.notes.rumours.front() {
            if now < *at + hot_window {
                break;
            }
            self.notes.rumours.pop_front();
        }
        // A node that changed again is listed under its latest change only: its older entries are
        // skipped, and cleared out when they outnumber the members (a cluster starting changes often).
        let nodes = &self.nodes;
        let latest =
            |(at, id): &(Duration, NodeId)| nodes.get(id).is_some_and(|s| s.changed_at == *at);
        if self.notes.rumours.len() > 2 * nodes.len() + 64 {
            self.notes.rumours.retain(latest);
        }
        // No digest has room for more than a few dozen (a third of 1300 bytes), so rumours are ranked:
        // news of this node and verdicts on nodes heard first-hand first, verdicts on nodes never heard
        // last (members a key holder invented come by the hundred as their watchers convict them, and
        // must not crowd out a real crash), everything else (a newcomer, a changed service) by recency
        // between them: most nodes have not heard a newcomer yet, and its news must not wait.
        let rank = |id: &NodeId| -> u8 {
            let Some(s) = self.nodes.get(id) else {
                return 1;
            };
            match (
                *id == self.id,
                matches!(s.liveness, Liveness::Dead | Liveness::Left),
            ) {
                (true, _) => 0,
                (false, true) if s.heard => 0,
                (false, true) => 2,
                (false, false) => 1,
            }
        };
        // Recency within each rank; no rank needs more than the digest can take.
        let mut ranks: [Vec<NodeId>; 3] = Default::default();
        for (_, id) in self.notes.rumours.iter().rev().filter(|r| latest(r)) {
            let r = &mut ranks[rank(id) as usize];
            if r.len() < MAX_HOT {
                r.push(*id);
            }
            if ranks[0].len() >= MAX_HOT {
                break;
            }
        }
        let [mut hot, mut news, mut last] = ranks;
        hot.append(&mut news);
        hot.append(&mut last);
        hot.truncate(MAX_HOT);
        hot
    }

    /// A verdict reached or heard outside a round goes on at once, to two random live peers: each hop
    /// of the epidemic then takes a network delay, not half a round.
    pub(super) fn pass_on_verdicts(&mut self, now: Duration, rng: &mut impl RngCore) {
        if !std::mem::take(&mut self.notes.urgent) || self.config.monitor().is_none() {
            return;
        }
        let hot = self.hot(now);
        if self.live.is_empty() {
            return;
        }
        let mut picked: Vec<NodeId> = Vec::with_capacity(2);
        // One random, one heard first-hand (see `heard_live`).
        for from in [&self.live, &self.heard_live] {
            if from.is_empty() {
                continue;
            }
            let id = from[rng.gen_range(0..from.len())];
            if !picked.contains(&id) {
                picked.push(id);
            }
        }
        for id in picked {
            if let Some(addr) = self.nodes.get(&id).and_then(|s| s.addr) {
                let trusted = self.budget.is_trusted(addr.ip(), now);
                let digest = self.build_digest(rng, &hot, id, false, trusted);
                self.send(addr, id, Message::Syn { digest }, rng);
            }
        }
    }

    /// Announces a graceful leave to every live peer: a signed `_left` in this node's state, sent to
    /// each (peers pass it on as they pass on any state); the node gossips no more afterwards.
    pub fn leave(&mut self, now: Duration, rng: &mut impl RngCore) {
        self.clock = now;
        if self.left {
            return;
        }
        self.put(LEFT_KEY, Some("1".to_string()));
        self.left = true;
        let id = self.id;
        let me = self.me_mut();
        me.heartbeat = LEFT_HEARTBEAT;
        me.changed_at = now;
        self.notes.rumours.push_back((now, id));
        let me = self.me();
        let Some(delta) = me.delta(id, me.max_version - 1, MAX_PAYLOAD - wire::INTRODUCTION_LEN)
        else {
            return;
        };
        let peers: Vec<(SocketAddr, NodeId)> = self
            .nodes
            .iter()
            .filter(|(id, s)| {
                **id != self.id && matches!(s.liveness, Liveness::Alive | Liveness::Suspect)
            })
            .filter_map(|(id, s)| s.addr.map(|a| (a, *id)))
            .collect();
        for (to, node) in peers {
            self.send(
                to,
                node,
                Message::Leave {
                    delta: delta.clone(),
                },
                rng,
            );
        }
    }

    /// Processes one datagram that arrived from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: SocketAddr,
        datagram: &[u8],
        rng: &mut impl RngCore,
    ) {
        self.receive(now, from, datagram, rng);
        self.pass_on_verdicts(now, rng);
    }

    pub(super) fn receive(
        &mut self,
        now: Duration,
        from: SocketAddr,
        datagram: &[u8],
        rng: &mut impl RngCore,
    ) {
        self.clock = now;
        self.stats.packets_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        // A paired datagram opens with the secret shared with the sender its header names; an
        // introduced one costs a signature check, which its source's budget must allow.
        let shared = match wire::peek_sender(datagram) {
            Some((sender, true)) if sender != self.id => self.shared_secret(sender),
            Some((_, false)) => {
                if !self.work.allow(from.ip(), 1, now) {
                    self.stats.unchecked_dropped += 1;
                    return;
                }
                self.stats.signatures_checked += 1;
                None
            }
            _ => None,
        };
        let opened = match wire::open(&self.security, self.cluster_id, self.id, datagram, |_| {
            shared
        }) {
            Ok(o) => o,
            Err(WireError::NotAuthentic | WireError::Unencrypted | WireError::Encrypted) => {
                self.stats.rejected_auth += 1;
                return;
            }
            Err(WireError::UnknownSender) => {
                self.stats.unknown_senders += 1;
                return;
            }
            Err(e) => {
                if matches!(e, WireError::Version(v) if v < wire::VERSION) {
                    self.stats.old_protocol += 1;
                    self.stats.last_old_protocol_from = Some(from);
                }
                self.stats.rejected_foreign += 1;
                return;
            }
        };
        let Ok(packet) = Packet::decode(opened.sender, &opened.payload) else {
            self.stats.rejected_malformed += 1;
            return;
        };
        if packet.sender == self.id || self.left {
            return;
        }
        let sender = packet.sender;
        // Only a Syn may be addressed to anyone (a seed's id is not known); everything else names its
        // receiver, so what was sent to one node cannot be replayed to another.
        let addressed = packet.to == self.id
            || (packet.to == ANYONE && matches!(packet.message, Message::Syn { .. }));
        if !addressed {
            self.stats.rejected_replay += 1;
            return;
        }
        // A sender that paired its datagram, or addressed it to this node by id (known only from this
        // node's state or its introduction, both of which carry its keys), holds this node's keys:
        // what this node says to it can be paired from now on. Noted before the replay check: a member
        // restarted with a lower generation (its generation file lost) is refused as a former self
        // until it goes above its past, which it can do only if this node stops pairing what it sends
        // it (it can no longer open that).
        let introduced = opened.introduced.is_some();
        let holds_my_keys = !introduced || packet.to == self.id;
        self.note_sender(
            sender,
            packet.generation,
            opened.introduced,
            holds_my_keys,
            now,
        );
        let cap = 2 * self.nodes.len() + 64;
        let nodes = &self.nodes;
        if !self
            .replay
            .accept(sender, packet.generation, packet.seq, cap, |id| {
                nodes.contains_key(&id)
            })
        {
            self.stats.rejected_replay += 1;
            if introduced {
                self.remind(now, from, sender, packet.generation, rng);
            }
            return;
        }
        // Answer a source that is not the sender's known address with no more bytes than it sent: a
        // datagram replayed from a spoofed address must not turn this node into an amplifier.
        let verified = match self.nodes.get_mut(&sender) {
            Some(s) if s.addr == Some(from) => {
                if !s.heard {
                    // A candidate monitor may have just become one.
                    self.ring.stale = true;
                }
                s.heard = true;
                true
            }
            _ => false,
        };
        // Authentic, fresh and addressed to this node: whoever is at that address takes part.
        self.budget.heard(from.ip(), now);
        let payload_len = opened.payload.len();
        match packet.message {
            Message::Syn { digest } => {
                self.peer_known = digest.known;
                let limit = if verified { MAX_PAYLOAD } else { payload_len };
                self.on_syn(now, from, sender, digest, limit, rng)
            }
            Message::Ack {
                known,
                entries,
                deltas,
            } => {
                self.peer_known = known;
                // It holds this node's state (a generation of it), so its keys.
                if entries
                    .iter()
                    .any(|e| e.node == self.id && e.generation > 0)
                {
                    if let Some(s) = self.nodes.get_mut(&sender) {
                        s.knows_my_keys = true;
                    }
                }
                for d in deltas {
                    let direct = d.node == sender;
                    if !self.apply_delta(now, from, direct, d) {
                        return;
                    }
                }
                self.observe(now, &entries);
                // An Ack answers a Syn of ours and is addressed to this node alone: its sender was asked.
                let budget = self.reply_budget(MAX_PAYLOAD, sender).saturating_sub(2);
                let mut used = 0;
                let mut deltas = Vec::new();
                for e in &entries {
                    if let Some(d) = self.delta_for(e.node, Some(e), budget - used) {
                        used += d.encoded_len();
                        deltas.push(d);
                    }
                }
                if !deltas.is_empty() {
                    self.send(from, sender, Message::Ack2 { deltas }, rng);
                }
            }
            Message::Ack2 { deltas } => {
                for d in deltas {
                    let direct = d.node == sender;
                    if !self.apply_delta(now, from, direct, d) {
                        return;
                    }
                }
            }
            Message::Leave { delta } => {
                if delta.node != sender || delta.generation != packet.generation {
                    self.stats.rejected_invalid += 1;
                    return;
                }
                if !self.apply_delta(now, from, true, delta) {
                    return;
                }
                // The goodbye came from the node itself, signed: believed here even when this node
                // lacked versions before it (its `_left` then reaches this node by gossip, with them).
                if let Some(s) = self.nodes.get_mut(&sender) {
                    if s.generation == packet.generation && s.liveness != Liveness::Left {
                        s.heartbeat = LEFT_HEARTBEAT;
                        mark_left(&mut self.notes, sender, s, now);
                    }
                }
            }
            // Only first-hand: a heartbeat from anywhere but the sender's gossiped address is a node
            // that moved and whose new address is not known here yet.
            Message::Heartbeat if verified => {
                self.on_heartbeat(now, sender, from.ip(), packet.generation)
            }
            Message::Heartbeat => self.stats.unheard_heartbeats += 1,
            Message::Ping { target } => {
                // Answered where it came from, no bigger than it was.
                if target == self.id {
                    self.send(from, sender, Message::PingAck { target }, rng);
                }
            }
            Message::PingReq { target } => {
                let Some(m) = self.config.monitor().copied() else {
                    return;
                };
                // Only for a member, about a member: the answer goes to the asker's known address.
                let known = |id: &NodeId| self.nodes.get(id).and_then(|s| s.addr);
                if target != self.id && target != sender {
                    if let (Some(addr), Some(_)) = (known(&target), known(&sender)) {
                        self.ring.relay(target, sender, now + m.probe_timeout);
                        self.send(addr, target, Message::Ping { target }, rng);
                    }
                }
            }
            Message::PingAck { target } => {
                if target == sender && verified {
                    for asker in self.ring.answered(target, now) {
                        if let Some(addr) = self.nodes.get(&asker).and_then(|s| s.addr) {
                            self.send(addr, asker, Message::PingAck { target }, rng);
                        }
                    }
                    // Answered, alive, but sending its heartbeats elsewhere (it chose other monitors):
                    // no longer watched here.
                    let probed = self.nodes.get(&target).is_some_and(|s| s.probe.is_some());
                    self.heard_alive(now, target, Some(packet.generation), false);
                    if probed && self.ring.unwatch(target) {
                        self.reports_due = now;
                    }
                } else if target != sender
                    && self.nodes.get(&target).is_some_and(|s| s.probe.is_some())
                    && self.ring.was_asked(target, sender, now)
                {
                    self.heard_alive(now, target, None, false);
                }
            }
        }
    }

    /// A member introduced itself in a generation below the one this node holds (it restarted and its
    /// generation file was lost): its datagrams are refused as a former self's until it goes above its
    /// past, so this node sends it that past, its own state signed with its own key, which it refutes
    /// (see `claim_of_me`). At most once a second per member.
    fn remind(
        &mut self,
        now: Duration,
        from: SocketAddr,
        sender: NodeId,
        generation: u64,
        rng: &mut impl RngCore,
    ) {
        let due = self.nodes.get(&sender).is_some_and(|s| {
            s.generation > generation
                && s.reminded
                    .is_none_or(|at| now >= at + Duration::from_secs(1))
        });
        if !due {
            return;
        }
        let budget = self
            .reply_budget_peek(MAX_PAYLOAD, sender)
            .saturating_sub(2);
        let past = DigestEntry {
            node: sender,
            generation: 0,
            heartbeat: 0,
            max_version: 0,
        };
        if let Some(d) = self.delta_for(sender, Some(&past), budget) {
            if let Some(s) = self.nodes.get_mut(&sender) {
                s.reminded = Some(now);
            }
            self.send(from, sender, Message::Ack2 { deltas: vec![d] }, rng);
        }
    }

    /// Bytes a reply's message to `to` may take when its payload may take `limit` (a whole datagram's,
    /// or no more than the payload it answers).
    pub(super) fn reply_budget(&mut self, limit: usize, to: NodeId) -> usize {
        if limit < MAX_PAYLOAD {
            self.stats.limited_replies += 1;
        }
        self.reply_budget_peek(limit, to)
    }

    /// What [`Gossiper::reply_budget`] would give, without counting a limited reply.
    pub(super) fn reply_budget_peek(&self, limit: usize, to: NodeId) -> usize {
        let header = wire::packet_header_len(self.generation(), self.seq);
        limit.min(self.room(to)).saturating_sub(header)
    }

    /// Whether what this node says to `node` is paired: `node` is known to hold this node's keys.
    pub(super) fn pairs_with(&self, node: NodeId) -> bool {
        node != ANYONE
            && node != self.id
            && match self.nodes.get(&node) {
                Some(s) => s.knows_my_keys,
                None => self.introduced.get(&node).is_some_and(|i| i.knows_me),
            }
    }

    /// The payload a datagram to `node` may take: a whole datagram's, less the introduction (keys and
    /// signature) when it is not paired.
    pub(super) fn room(&self, node: NodeId) -> usize {
        if self.pairs_with(node) {
            MAX_PAYLOAD
        } else {
            MAX_PAYLOAD - wire::INTRODUCTION_LEN
        }
    }

    /// Sends `message` to node `node` at `to`, paired when it can be (see below), else introduced (a
    /// seed, a node that does not know this one yet).
    pub(super) fn send(
        &mut self,
        to: SocketAddr,
        node: NodeId,
        message: Message,
        rng: &mut impl RngCore,
    ) {
        // Paired when the receiver is known to hold this node's keys (else it could not open it: it
        // just started, or has not heard of this node yet), or when what is said is of use only to a
        // receiver that knows this node (heartbeats, probes, a goodbye); else introduced, signed.
        let speaks = matches!(
            message,
            Message::Heartbeat
                | Message::Ping { .. }
                | Message::PingReq { .. }
                | Message::PingAck { .. }
                | Message::Leave { .. }
        );
        let known = node != ANYONE
            && node != self.id
            && (self.nodes.contains_key(&node) || self.introduced.contains_key(&node));
        let shared = if known && (speaks || self.pairs_with(node)) {
            self.shared_secret(node)
        } else {
            None
        };
        let packet = Packet {
            sender: self.id,
            to: node,
            generation: self.generation(),
            seq: self.seq,
            message,
        };
        let payload = packet.encode();
        // Heartbeats to a monitor heard first-hand are not counted: at most K a round, to peers that
        // proved they are where they say. One chosen from hearsay (a key holder's invention at a third
        // party's address, say) gets them only as its address's budget allows. Checked before sealing:
        // a datagram the budget drops costs no encryption.
        let counted = !(matches!(packet.message, Message::Heartbeat)
            && self.nodes.get(&node).is_some_and(|s| s.heard));
        let len = wire::sealed_len(&self.security, shared.is_some(), payload.len());
        if counted && !self.budget.allow(to.ip(), len, self.clock) {
            self.stats.unheard_dropped += 1;
            return;
        }
        let how = match &shared {
            Some(shared) => wire::Seal::Paired {
                receiver: node,
                shared,
            },
            None => wire::Seal::Introduced { key: &self.key },
        };
        let datagram = wire::seal(&self.security, self.cluster_id, self.id, how, &payload, rng);
        if shared.is_none() {
            self.stats.signatures_made += 1;
            self.stats.key_bytes_out += wire::INTRODUCTION_LEN as u64;
        }
        self.seq += 1;
        debug_assert!(
            datagram.len() <= wire::MAX_DATAGRAM,
            "{} bytes",
            datagram.len()
        );
        self.stats.packets_out += 1;
        self.stats.bytes_out += datagram.len() as u64;
        self.stats.key_bytes_out += key_bytes(&packet.message);
        self.stats.largest_datagram_out = self.stats.largest_datagram_out.max(datagram.len());
        self.transmits.push_back(Transmit { to, datagram });
    }
}

/// Bytes of signatures and public keys in `message`: what per-node keys add to it.
fn key_bytes(message: &Message) -> u64 {
    let delta = |d: &NodeDelta| d.kvs.len() * wire::SIGNATURE_LEN + d.keys.map_or(0, |k| k.len());
    let total: usize = match message {
        Message::Ack { deltas, .. } | Message::Ack2 { deltas } => deltas.iter().map(delta).sum(),
        Message::Leave { delta: d } => delta(d),
        _ => 0,
    };
    total as u64
}
