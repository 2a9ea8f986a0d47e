//! Anti-replay at the transport: every datagram carries its sender's (generation, sequence number), and a
//! receiver accepts each pair at most once. Per sender it keeps the newest generation, the highest
//! sequence number seen in it and a 64-bit map of the ones just below (the sliding window of IPsec and
//! WireGuard, RFC 6479): reordering within 64 datagrams is fine, anything older or seen before is a replay.
//! A datagram of an older generation than one already heard from is a replay of a former incarnation.

use std::collections::HashMap;

use super::wire::NodeId;

/// How far below the highest sequence number a datagram may still arrive.
const WINDOW: u64 = 64;

#[derive(Debug, Clone, Copy)]
struct Window {
    generation: u64,
    top: u64,
    /// Bit `i` set: `top - i` was seen.
    seen: u64,
}

/// The windows of every sender heard from, bounded.
#[derive(Debug, Default)]
pub(super) struct Windows {
    map: HashMap<NodeId, Window>,
}

impl Windows {
    /// Whether a datagram of `sender` numbered (`generation`, `seq`) is fresh; records it when it is. At
    /// most `cap` senders are remembered: when a new one would exceed it, senders that `known` does not
    /// recognise are forgotten first (only key holders get this far, but they could invent ids).
    pub(super) fn accept(
        &mut self,
        sender: NodeId,
        generation: u64,
        seq: u64,
        cap: usize,
        known: impl Fn(NodeId) -> bool,
    ) -> bool {
        let Some(w) = self.map.get_mut(&sender) else {
            if self.map.len() >= cap {
                self.map.retain(|id, _| known(*id));
                if self.map.len() >= cap {
                    let any = *self.map.keys().next().expect("cap is at least 1");
                    self.map.remove(&any);
                }
            }
            self.map.insert(
                sender,
                Window {
                    generation,
                    top: seq,
                    seen: 1,
                },
            );
            return true;
        };
        if generation < w.generation {
            return false;
        }
        if generation > w.generation {
            *w = Window {
                generation,
                top: seq,
                seen: 1,
            };
            return true;
        }
        if seq > w.top {
            let shift = seq - w.top;
            w.seen = if shift >= WINDOW { 0 } else { w.seen << shift } | 1;
            w.top = seq;
            return true;
        }
        let back = w.top - seq;
        if back >= WINDOW || w.seen & (1 << back) != 0 {
            return false;
        }
        w.seen |= 1 << back;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_once_reordering_within_the_window_and_older_generations_refused() {
        let mut w = Windows::default();
        let a = NodeId(1);
        let ok = |w: &mut Windows, g, s| w.accept(a, g, s, 8, |_| true);
        assert!(ok(&mut w, 5, 10));
        assert!(!ok(&mut w, 5, 10), "the same datagram twice");
        assert!(ok(&mut w, 5, 12));
        assert!(ok(&mut w, 5, 11), "reordered, inside the window");
        assert!(!ok(&mut w, 5, 11));
        assert!(ok(&mut w, 5, 100));
        assert!(ok(&mut w, 5, 37), "63 below the top");
        assert!(!ok(&mut w, 5, 36), "64 below the top: too old to tell");
        assert!(!ok(&mut w, 4, 1000), "a former incarnation");
        assert!(ok(&mut w, 6, 0), "a new generation starts afresh");
        assert!(!ok(&mut w, 5, 101));
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_known_senders() {
        let mut w = Windows::default();
        for i in 0..1000 {
            w.accept(NodeId(i), 1, 1, 16, |id| id.0 < 4);
            assert!(w.map.len() <= 16);
        }
        for i in 0..4 {
            assert!(w.map.contains_key(&NodeId(i)), "known sender {i} kept");
        }
    }
}
