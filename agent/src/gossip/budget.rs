//! What a node may send to addresses it has not heard from: a key holder can give invented members any
//! third party's address, and without a bound every node would then send there for as long as it kept
//! the members (issue 31: 35 KB sent once drew 842 KB to the victim in 30 s). An address from which an
//! authentic datagram came in the last [`TRUST`] is sent to freely; any other gets a small byte budget of
//! its own, and all of them together one more, so what a forger draws to an address is bounded by time
//! and not by the members it invents. Heartbeats to monitors heard first-hand are not counted (at most K a
//! round, to peers that proved where they are).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// How long an address stays trusted after an authentic datagram came from it.
pub(super) const TRUST: Duration = Duration::from_secs(600);
/// The budget of one address not heard from: a burst (a first Syn, which is small to such an address,
/// a probe) and a trickle. What a node sends there unasked is a few hundred bytes (see
/// `Gossiper::build_digest`; heartbeats go only to monitors heard first-hand).
const PER_ADDRESS: Bucket = Bucket::full(512.0, 32.0);
/// The budget of all of them together.
const ALL: Bucket = Bucket::full(64.0 * 1024.0, 16.0 * 1024.0);

/// Signature checks one source address may cost: a burst (a node learning a cluster from one seed), then
/// far more than any member's news needs (a 1,000-node cluster's updates come to a few hundred a second
/// from all sources together).
const CHECKS_PER_SOURCE: Bucket = Bucket::full(2000.0, 500.0);
/// Signature checks all sources together may cost: about a fifth of a Pi 4 core at most.
const CHECKS_IN_ALL: Bucket = Bucket::full(8000.0, 2000.0);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    at: Duration,
}

impl Bucket {
    const fn full(capacity: f64, per_second: f64) -> Self {
        Bucket {
            tokens: capacity,
            capacity,
            per_second,
            at: Duration::ZERO,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.at = now;
    }
}

#[derive(Debug)]
pub(super) struct SendBudget {
    heard: HashMap<IpAddr, Duration>,
    unheard: HashMap<IpAddr, Bucket>,
    all: Bucket,
    /// The most addresses either map holds (twice the member table's bound).
    cap: usize,
}

impl SendBudget {
    pub(super) fn new(cap: usize) -> Self {
        SendBudget {
            heard: HashMap::new(),
            unheard: HashMap::new(),
            all: ALL,
            cap: cap.max(64),
        }
    }

    /// An authentic datagram came from `ip` at `now`.
    pub(super) fn heard(&mut self, ip: IpAddr, now: Duration) {
        if self.heard.len() >= self.cap && !self.heard.contains_key(&ip) {
            self.heard.retain(|_, at| now < *at + TRUST);
            if self.heard.len() >= self.cap {
                return;
            }
        }
        self.heard.insert(ip, now);
        self.unheard.remove(&ip);
    }

    /// Whether an authentic datagram came from `ip` within [`TRUST`] of `now`.
    pub(super) fn is_trusted(&self, ip: IpAddr, now: Duration) -> bool {
        self.heard.get(&ip).is_some_and(|at| now < *at + TRUST)
    }

    /// Whether `bytes` may go to `ip` at `now` (and, if so, takes them from its budget).
    pub(super) fn allow(&mut self, ip: IpAddr, bytes: usize, now: Duration) -> bool {
        if self.is_trusted(ip, now) {
            return true;
        }
        if self.unheard.len() >= self.cap && !self.unheard.contains_key(&ip) {
            // Full budgets are the default: forgetting them gives nothing back that `all` does not
            // still bound.
            self.unheard.retain(|_, b| {
                b.refill(now);
                b.tokens < b.capacity
            });
            if self.unheard.len() >= self.cap {
                return false;
            }
        }
        let bytes = bytes as f64;
        let one = self.unheard.entry(ip).or_insert(Bucket {
            at: now,
            ..PER_ADDRESS
        });
        one.refill(now);
        self.all.refill(now);
        if one.tokens < bytes || self.all.tokens < bytes {
            return false;
        }
        one.tokens -= bytes;
        self.all.tokens -= bytes;
        true
    }
}

/// The signature checks each source may still cost (see [`CHECKS_PER_SOURCE`]).
#[derive(Debug)]
pub(super) struct WorkBudget {
    sources: HashMap<IpAddr, Bucket>,
    all: Bucket,
}

impl Default for WorkBudget {
    fn default() -> Self {
        WorkBudget {
            sources: HashMap::new(),
            all: CHECKS_IN_ALL,
        }
    }
}

impl WorkBudget {
    /// Whether `checks` signature checks for a datagram from `ip` may be made at `now` (and, if so, takes
    /// them). The table of sources is bounded: when full, those with a full budget are forgotten first.
    pub(super) fn allow(&mut self, ip: IpAddr, checks: usize, now: Duration) -> bool {
        if checks == 0 {
            return true;
        }
        if self.sources.len() >= 4096 && !self.sources.contains_key(&ip) {
            self.sources.retain(|_, b| {
                b.refill(now);
                b.tokens < b.capacity
            });
            if self.sources.len() >= 4096 {
                return false;
            }
        }
        let one = self.sources.entry(ip).or_insert(Bucket {
            at: now,
            ..CHECKS_PER_SOURCE
        });
        one.refill(now);
        self.all.refill(now);
        let checks = checks as f64;
        if one.tokens < checks || self.all.tokens < checks {
            return false;
        }
        one.tokens -= checks;
        self.all.tokens -= checks;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn an_address_not_heard_from_gets_a_burst_then_a_trickle() {
        let mut b = SendBudget::new(100);
        let now = Duration::from_secs(1);
        let sent = (0..100).filter(|_| b.allow(ip(1), 250, now)).count();
        assert_eq!(sent, 2);
        // 32 bytes a second: eight seconds for the next 250.
        assert!(!b.allow(ip(1), 250, now + Duration::from_secs(7)));
        assert!(b.allow(ip(1), 250, now + Duration::from_secs(8)));
        // Another address has its own.
        assert!(b.allow(ip(2), 250, now));
    }

    #[test]
    fn an_address_heard_from_is_sent_to_freely_until_trust_lapses() {
        let mut b = SendBudget::new(100);
        let now = Duration::from_secs(1);
        b.heard(ip(1), now);
        assert!((0..1000).all(|_| b.allow(ip(1), 1400, now)));
        let later = now + TRUST;
        assert_eq!((0..10).filter(|_| b.allow(ip(1), 250, later)).count(), 2);
    }

    #[test]
    fn all_addresses_together_are_bounded_and_the_tables_too() {
        let mut b = SendBudget::new(1000);
        let now = Duration::from_secs(1);
        let sent: usize = (0..=255u8)
            .map(|i| (0..2).filter(|_| b.allow(ip(i), 250, now)).count())
            .sum();
        // 64 KiB in all: 262 of 250 bytes, though each address alone would take two.
        assert_eq!(sent, 262);
        let mut small = SendBudget::new(64);
        for i in 0..=255u8 {
            small.allow(ip(i), 10, now);
            small.heard(IpAddr::from([198, 51, 100, i]), now);
        }
        assert!(small.unheard.len() <= 64 && small.heard.len() <= 64);
    }
}
