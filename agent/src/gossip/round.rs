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
        // No digest has room for more than a few dozen (a third of 1300 bytes), so rumours are ranked:
        // news of this node and verdicts on nodes heard first-hand first, verdicts on nodes never heard
        // last (members a key holder invented come by the hundred as their watchers convict them, and
        // must not crowd out a real crash), everything else (a newcomer, a changed service) by recency
        // between them: most nodes have not heard a newcomer yet, and its news must not wait.
        let rank = |id: &NodeId| -> u8 {
            let Some(s) = self.nodes.get(id) else {
                return 1;
            };
            match (*id == self.id, matches!(s.liveness, Liveness::Dead | Liveness::Left)) {
                (true, _) => 0,
                (false, true) if s.heard => 0,
                (false, true) => 2,
                (false, false) => 1,
            }
        };
        let mut hot: Vec<NodeId> = self
            .notes
            .rumours
            .iter()
            .rev()
            .filter(|(at, id)| self.nodes.get(id).is_some_and(|s| s.changed_at == *at))
            .map(|(_, id)| *id)
            .collect();
        // A stable sort: recency within each rank.
        hot.sort_by_key(rank);
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

    /// Announces a graceful leave to every live peer; the node gossips no more afterwards.
    pub fn leave(&mut self, now: Duration, rng: &mut impl RngCore) {
        self.clock = now;
        if self.left {
            return;
        }
        self.left = true;
        let me = self.me_mut();
        me.heartbeat = LEFT_HEARTBEAT;
        me.changed_at = now;
        self.notes.rumours.push_back((now, self.id));
        let peers: Vec<(SocketAddr, NodeId)> = self
            .nodes
            .iter()
            .filter(|(id, s)| {
                **id != self.id && matches!(s.liveness, Liveness::Alive | Liveness::Suspect)
            })
            .filter_map(|(id, s)| s.addr.map(|a| (a, *id)))
            .collect();
        for (to, node) in peers {
            self.send(to, node, Message::Leave, rng);
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
        let payload = match wire::open(&self.security, self.cluster_id, datagram) {
            Ok(p) => p,
            Err(WireError::NotAuthentic | WireError::Unencrypted | WireError::Encrypted) => {
                self.stats.rejected_auth += 1;
                return;
            }
            Err(_) => {
                self.stats.rejected_foreign += 1;
                return;
            }
        };
        let Ok(packet) = Packet::decode(&payload) else {
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
        let cap = 2 * self.nodes.len() + 64;
        let nodes = &self.nodes;
        if !self
            .replay
            .accept(sender, packet.generation, packet.seq, cap, |id| {
                nodes.contains_key(&id)
            })
        {
            self.stats.rejected_replay += 1;
            return;
        }
        // Answer a source that is not the sender's known address with no more bytes than it sent: a
        // captured datagram replayed from a spoofed address must not turn this node into an amplifier.
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
        let syn_reply_limit = if verified { MAX_PAYLOAD } else { payload.len() };
        match packet.message {
            Message::Syn { digest } => {
                self.peer_known = digest.known;
                self.on_syn(now, from, sender, digest, syn_reply_limit, rng)
            }
            Message::Ack {
                known,
                entries,
                deltas,
            } => {
                self.peer_known = known;
                for d in deltas {
                    self.apply_delta(now, sender, d);
                }
                self.observe(now, &entries);
                // An Ack answers a Syn of ours and is addressed to this node alone: its sender was asked.
                let budget = self.reply_budget(MAX_PAYLOAD).saturating_sub(2);
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
                    self.apply_delta(now, sender, d);
                }
            }
            Message::Leave => {
                if let Some(s) = self.nodes.get_mut(&sender) {
                    if s.generation == packet.generation {
                        s.heartbeat = LEFT_HEARTBEAT;
                        mark_left(&mut self.notes, sender, s, now);
                    }
                }
            }
            // Only first-hand: a heartbeat from anywhere but the sender's gossiped address is a
            // forger's (keeping an invention alive from its own address), or a node that moved and whose
            // new address is not known here yet.
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

    /// Bytes a reply's message may take when its payload may take `limit` (a whole datagram's, or no
    /// more than the payload it answers).
    pub(super) fn reply_budget(&mut self, limit: usize) -> usize {
        if limit < MAX_PAYLOAD {
            self.stats.limited_replies += 1;
        }
        self.reply_budget_peek(limit)
    }

    /// What [`Gossiper::reply_budget`] would give, without counting a limited reply.
    pub(super) fn reply_budget_peek(&self, limit: usize) -> usize {
        let header = wire::packet_header_len(self.generation(), self.seq);
        limit.min(MAX_PAYLOAD).saturating_sub(header)
    }

    pub(super) fn send(
        &mut self,
        to: SocketAddr,
        node: NodeId,
        message: Message,
        rng: &mut impl RngCore,
    ) {
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
        let len = wire::sealed_len(&self.security, payload.len());
        if counted && !self.budget.allow(to.ip(), len, self.clock) {
            self.stats.unheard_dropped += 1;
            return;
        }
        let datagram = wire::seal(&self.security, self.cluster_id, &payload, rng);
        self.seq += 1;
        debug_assert!(
            datagram.len() <= wire::MAX_DATAGRAM,
            "{} bytes",
            datagram.len()
        );
        self.stats.packets_out += 1;
        self.stats.bytes_out += datagram.len() as u64;
        self.stats.largest_datagram_out = self.stats.largest_datagram_out.max(datagram.len());
        self.transmits.push_back(Transmit { to, datagram });
    }
}
