//! The phi accrual failure detector (Hayashibara et al., 2004) that turns heartbeat arrival times into a
//! suspicion level φ per peer.
//!
//! # Distribution
//! Two models, one per way heartbeats travel ([`PhiModel`]). Heartbeats sent **directly** to a node's
//! monitors (the default detection, see `gossip::monitor`) arrive with the sender's rhythm and little
//! jitter: they are modelled with a **normal** distribution, as Akka does, with an acceptable pause
//! (a silence that short is never held against a peer: a stalled process, a Wi-Fi hiccup):
//!
//! ```text
//! y = (t - pause - mean) / σ      P_later ≈ 1 / (1 + exp(y · (1.5976 + 0.070566 · y²)))
//! φ(t) = -log10(P_later)
//! ```
//!
//! (the logistic approximation of the normal tail that Akka uses). Heartbeats that only travel through
//! gossip (detection = "gossip", the protocol before monitors) are modelled with an **exponential**
//! distribution, as Cassandra does:
//!
//! ```text
//! P_later(t) = exp(-t / mean)          φ(t) = -log10(P_later(t)) = t / (mean · ln 10)
//! ```
//!
//! where `t` is the time since the last heartbeat arrived and `mean` is the mean inter-arrival time over a
//! sliding window. We chose it over the normal distribution (Akka) because heartbeats do not reach a peer
//! directly: they travel through gossip, so a peer sees the newest heartbeat of a node whenever some
//! exchange happens to carry it. Those arrivals are bursty and close to memoryless, with a long tail that a
//! normal distribution underestimates by orders of magnitude, which turns ordinary gossip jitter into false
//! convictions. The exponential model depends on the mean alone, so it is also cheap to keep: a ring of
//! intervals and their running sum.
//!
//! Two knobs bound φ where the window alone would be too trusting:
//! - `min_std_dev`: for an exponential distribution the standard deviation equals the mean, so this is a
//!   floor on the mean; a burst of closely spaced arrivals cannot make a short silence look fatal;
//! - `acceptable_pause`: a silence this long is forgiven outright (φ counts only the time beyond it).
//!
//! A new detector's window starts a quarter full of `bootstrap_interval` samples: a prior worth a quarter
//! of the window, which real intervals dilute and, once the window wraps, replace. A freshly seen node is
//! so judged by a sane expectation rather than by its first few intervals, which mislead in a large
//! cluster: a newcomer's first heartbeats arrive fast (its news is a rumour every digest carries) and then
//! slow down, and a mean of those alone convicted newcomers that were merely quiet.

use std::time::Duration;

/// How heartbeat inter-arrival times are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhiModel {
    /// Cassandra's: for heartbeats that come through gossip.
    Exponential,
    /// Akka's: for heartbeats that come directly.
    Normal,
}

/// Settings of a [`PhiAccrualDetector`]; defaults are those of the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiConfig {
    pub model: PhiModel,
    /// φ at or above which a peer is convicted (declared dead). Half of it marks the peer suspect.
    pub threshold: f64,
    /// How many inter-arrival intervals the mean is taken over.
    pub window: usize,
    /// Floor on the standard deviation (for the exponential distribution, the mean).
    pub min_std_dev: Duration,
    /// A silence this long is never held against a peer.
    pub acceptable_pause: Duration,
    /// The interval assumed before the first real one is measured.
    pub bootstrap_interval: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig::monitors()
    }
}

impl PhiConfig {
    /// The defaults for heartbeats sent directly to monitors every 200 ms: a silence of 2.5 s is
    /// forgiven (a process stalled for 3 s is probed before it is convicted, and answers).
    pub fn monitors() -> Self {
        PhiConfig {
            model: PhiModel::Normal,
            threshold: 8.0,
            window: 100,
            min_std_dev: Duration::from_millis(50),
            acceptable_pause: Duration::from_millis(2500),
            bootstrap_interval: Duration::from_millis(200),
        }
    }

    /// The defaults of the gossip-only detection (heartbeats carried by digests).
    pub fn gossip() -> Self {
        PhiConfig {
            model: PhiModel::Exponential,
            threshold: 8.0,
            window: 100,
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
            bootstrap_interval: Duration::from_millis(400),
        }
    }

    /// The settings to judge a node by whose threshold is `threshold` (a service's, see
    /// `GossipConfig::service_thresholds`): the acceptable pause scales with it, so a node judged by a
    /// lower threshold is convicted after a proportionally shorter silence, under either model (the
    /// exponential model's φ grows with the silence in proportion already).
    pub fn for_threshold(&self, threshold: f64) -> PhiConfig {
        let mut c = self.clone();
        if threshold != self.threshold && self.threshold > 0.0 {
            c.acceptable_pause = self.acceptable_pause.mul_f64(threshold / self.threshold);
        }
        c
    }

    /// φ after a silence of `silence_ms` beyond the acceptable pause, given the mean and standard
    /// deviation (both floored) of the intervals.
    fn phi_of(&self, silence_ms: f64, mean_ms: f64, std_ms: f64) -> f64 {
        match self.model {
            PhiModel::Exponential => silence_ms / (mean_ms * std::f64::consts::LN_10),
            PhiModel::Normal => {
                // P_later = e^-a / (1 + e^-a) on either side of the mean, so φ = log10(1 + e^a).
                let a = logistic_exponent((silence_ms - mean_ms) / std_ms);
                if a > 40.0 {
                    a / std::f64::consts::LN_10
                } else {
                    a.exp().ln_1p() / std::f64::consts::LN_10
                }
            }
        }
    }

    /// The silence after which φ reaches `phi`.
    fn silence_for(&self, phi: f64, mean_ms: f64, std_ms: f64) -> Duration {
        let ms = match self.model {
            PhiModel::Exponential => phi * mean_ms * std::f64::consts::LN_10,
            PhiModel::Normal => {
                // φ = log10(1 + e^a) gives a = ln(10^φ - 1); then y from the cubic a(y), which grows
                // monotonically: Newton's method, a few steps (this runs on every heartbeat).
                let target = if phi > 15.0 {
                    phi * std::f64::consts::LN_10
                } else {
                    (10f64.powf(phi.max(1e-9)) - 1.0).ln()
                };
                let mut y = target / 1.5976;
                for _ in 0..50 {
                    let f = logistic_exponent(y) - target;
                    let step = f / (1.5976 + 3.0 * 0.070566 * y * y);
                    y -= step;
                    if step.abs() < 1e-9 {
                        break;
                    }
                }
                (mean_ms + y * std_ms).max(0.0)
            }
        };
        self.acceptable_pause + Duration::from_secs_f64(ms / 1000.0)
    }
}

/// The exponent of Akka's logistic approximation of the normal tail, at `y` standard deviations:
/// P_later = 1 / (1 + e^a).
fn logistic_exponent(y: f64) -> f64 {
    y * (1.5976 + 0.070566 * y * y)
}

/// The prior fills one `PRIOR_SHARE`th of the window.
const PRIOR_SHARE: usize = 4;

/// Heartbeat history of one peer.
///
/// Intervals are kept as whole milliseconds in a `u32` ring: a node of a 1000-node cluster holds 999 of
/// these, so the window's footprint matters more than sub-millisecond precision.
#[derive(Debug, Clone)]
pub struct PhiAccrualDetector {
    intervals: Vec<u32>,
    next: usize,
    sum_ms: u64,
    /// The sum of squared intervals (for the normal model's standard deviation).
    sum_sq_ms: u128,
    last_arrival: Duration,
}

impl PhiAccrualDetector {
    /// A detector whose first heartbeat arrived at `now`.
    pub fn new(config: &PhiConfig, now: Duration) -> Self {
        Self::with_bootstrap(config.bootstrap_interval, config, now)
    }

    /// A detector that assumes `bootstrap` as its prior instead of the configured interval.
    pub fn with_bootstrap(bootstrap: Duration, config: &PhiConfig, now: Duration) -> Self {
        let bootstrap = clamp_ms(bootstrap);
        let window = config.window.max(1);
        let prior = (window / PRIOR_SHARE).max(1);
        PhiAccrualDetector {
            intervals: vec![bootstrap; prior],
            next: prior % window,
            sum_ms: u64::from(bootstrap) * prior as u64,
            sum_sq_ms: u128::from(bootstrap).pow(2) * prior as u128,
            last_arrival: now,
        }
    }

    /// Records a heartbeat that arrived at `now`.
    ///
    /// An interval longer than the silence that convicts is not recorded: it is an outage (a partition, a
    /// suspended VM), not a sample of the normal rhythm, and would blunt detection for a long time after.
    pub fn heartbeat(&mut self, config: &PhiConfig, now: Duration) {
        let interval = now.saturating_sub(self.last_arrival);
        self.last_arrival = now;
        if interval > self.silence_for(config, config.threshold) {
            return;
        }
        let ms = clamp_ms(interval);
        let window = config.window.max(1);
        if self.intervals.len() < window {
            self.intervals.push(ms);
        } else {
            let old = self.intervals[self.next];
            self.sum_ms -= u64::from(old);
            self.sum_sq_ms -= u128::from(old).pow(2);
            self.intervals[self.next] = ms;
        }
        self.sum_ms += u64::from(ms);
        self.sum_sq_ms += u128::from(ms).pow(2);
        self.next = (self.next + 1) % window;
    }

    /// Restarts the silence at `now` without taking the interval as a sample (an answer to a probe, a
    /// round that came late).
    pub fn reset_silence(&mut self, now: Duration) {
        self.last_arrival = self.last_arrival.max(now);
    }

    /// The mean inter-arrival time in milliseconds, floored by `min_std_dev`.
    pub fn mean_ms(&self, config: &PhiConfig) -> f64 {
        let mean = self.sum_ms as f64 / self.intervals.len() as f64;
        mean.max(config.min_std_dev.as_secs_f64() * 1000.0)
    }

    /// The standard deviation of the intervals in milliseconds, floored by `min_std_dev`.
    pub fn std_ms(&self, config: &PhiConfig) -> f64 {
        let n = self.intervals.len() as f64;
        let mean = self.sum_ms as f64 / n;
        let var = (self.sum_sq_ms as f64 / n - mean * mean).max(0.0);
        var.sqrt().max(config.min_std_dev.as_secs_f64() * 1000.0)
    }

    /// φ at `now`.
    pub fn phi(&self, config: &PhiConfig, now: Duration) -> f64 {
        let silence = now.saturating_sub(self.last_arrival);
        if silence <= config.acceptable_pause {
            return 0.0;
        }
        let ms = (silence - config.acceptable_pause).as_secs_f64() * 1000.0;
        let phi = config.phi_of(ms, self.mean_ms(config), self.std_ms(config));
        phi.max(0.0)
    }

    /// When the last heartbeat arrived.
    pub fn last_arrival(&self) -> Duration {
        self.last_arrival
    }

    /// How long after the last heartbeat φ reaches `phi`; lets callers schedule verdicts instead of polling.
    pub fn silence_for(&self, config: &PhiConfig, phi: f64) -> Duration {
        config.silence_for(phi, self.mean_ms(config), self.std_ms(config))
    }

    /// The number of intervals in the window (the bootstrap sample included).
    pub fn samples(&self) -> usize {
        self.intervals.len()
    }
}

fn clamp_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn config() -> PhiConfig {
        PhiConfig {
            min_std_dev: Duration::ZERO,
            bootstrap_interval: ms(1000),
            ..PhiConfig::gossip()
        }
    }

    #[test]
    fn the_normal_model_matches_akka() {
        // Akka's PhiAccrualFailureDetector with mean 1000 ms and σ 100 ms: φ(1000) = 0.3010 (P = ½),
        // φ(1100) = 0.7995 (y = 1), and it passes 8 at y ≈ 5.23 (the
        // logistic approximation's tail is heavier there than the exact normal's, which passes 8 at 5.61).
        let c = PhiConfig {
            model: PhiModel::Normal,
            min_std_dev: ms(100),
            acceptable_pause: Duration::ZERO,
            bootstrap_interval: ms(1000),
            window: 4,
            threshold: 8.0,
        };
        let d = PhiAccrualDetector::new(&c, ms(0));
        assert_eq!(d.mean_ms(&c), 1000.0);
        assert_eq!(d.std_ms(&c), 100.0, "the floor: the prior has no spread");
        assert!((d.phi(&c, ms(1000)) - std::f64::consts::LOG10_2).abs() < 1e-4);
        let at_y1 = d.phi(&c, ms(1100));
        assert!((at_y1 - 0.7995).abs() < 1e-3, "{at_y1}"); // -log10(0.158655), the normal tail at 1σ
        let t8 = d.silence_for(&c, 8.0).as_secs_f64();
        assert!((1.52..1.53).contains(&t8), "{t8}");
        assert!(d.phi(&c, Duration::from_secs_f64(t8 + 0.001)) >= 8.0);
        // Far beyond: large and finite.
        let far = d.phi(&c, ms(60_000));
        assert!(far.is_finite() && far > 1000.0, "{far}");
        // The acceptable pause is forgiven outright, then φ grows from there.
        let paused = PhiConfig {
            acceptable_pause: ms(2500),
            ..c.clone()
        };
        assert_eq!(d.phi(&paused, ms(2500)), 0.0);
        assert!((d.phi(&paused, ms(3500)) - std::f64::consts::LOG10_2).abs() < 1e-4);
        assert!(
            (d.silence_for(&paused, 8.0).as_secs_f64() - (t8 + 2.5)).abs() < 1e-6,
            "the pause shifts the verdict"
        );
    }

    #[test]
    fn the_normal_model_measures_the_spread() {
        let c = PhiConfig {
            min_std_dev: Duration::ZERO,
            ..PhiConfig::monitors()
        };
        let mut d = PhiAccrualDetector::with_bootstrap(ms(200), &c, ms(0));
        let mut t = 0;
        for i in 0..200 {
            t += if i % 2 == 0 { 100 } else { 300 };
            d.heartbeat(&c, ms(t));
        }
        // The window now holds 100 and 300 alike: mean 200, σ 100.
        assert!((d.mean_ms(&c) - 200.0).abs() < 1e-9);
        assert!((d.std_ms(&c) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn phi_matches_hand_computed_values() {
        // A window of 4 holds one prior sample.
        let c = PhiConfig {
            window: 4,
            ..config()
        };
        // Bootstrap sample 1000 ms, then intervals of 500, 500 and 1000 ms: mean = 3000 / 4 = 750 ms.
        let mut d = PhiAccrualDetector::new(&c, ms(0));
        d.heartbeat(&c, ms(500));
        d.heartbeat(&c, ms(1000));
        d.heartbeat(&c, ms(2000));
        assert_eq!(d.mean_ms(&c), 750.0);
        // φ(t) = t / (mean · ln 10). By hand: 750 · 2.302585 = 1726.94 ms per unit of φ.
        assert!((d.phi(&c, ms(2000)) - 0.0).abs() < 1e-12);
        assert!((d.phi(&c, ms(2000 + 1727)) - 1.000035).abs() < 1e-5);
        assert!((d.phi(&c, ms(2000 + 3000)) - 1.737177).abs() < 1e-5);
        // The default threshold of 8 is reached after 8 · 1726.94 = 13815.5 ms of silence.
        assert!(d.phi(&c, ms(2000 + 13815)) < 8.0);
        assert!(d.phi(&c, ms(2000 + 13816)) >= 8.0);
        assert_eq!(d.silence_for(&c, 8.0).as_millis(), 13815);
    }

    #[test]
    fn phi_one_means_ten_percent() {
        // φ = 1 ⇔ P_later = 10 %: with mean 1 s that is a silence of ln 10 s = 2.302585 s.
        let c = PhiConfig {
            bootstrap_interval: ms(1000),
            ..config()
        };
        let d = PhiAccrualDetector::new(&c, ms(0));
        let phi = d.phi(&c, Duration::from_secs_f64(std::f64::consts::LN_10));
        assert!((phi - 1.0).abs() < 1e-9, "{phi}");
    }

    #[test]
    fn the_bootstrap_sample_stays_until_the_window_wraps() {
        let c = PhiConfig {
            window: 6,
            ..config()
        };
        let mut d = PhiAccrualDetector::new(&c, ms(0)); // [1000]
        for t in 1..=5 {
            d.heartbeat(&c, ms(200 * t));
        }
        // [1000, 200, 200, 200, 200, 200]: mean 2000 / 6.
        assert!((d.mean_ms(&c) - 2000.0 / 6.0).abs() < 1e-9);
        d.heartbeat(&c, ms(1300)); // [300, 200, 200, 200, 200, 200]
        assert_eq!(d.mean_ms(&c), 1300.0 / 6.0);
    }

    #[test]
    fn the_prior_is_worth_a_quarter_of_the_window() {
        let c = config();
        let mut d = PhiAccrualDetector::new(&c, ms(0)); // 25 × 1000 ms
        for t in 1..=25 {
            d.heartbeat(&c, ms(200 * t));
        }
        // (25 · 1000 + 25 · 200) / 50 = 600 ms.
        assert_eq!(d.samples(), 50);
        assert_eq!(d.mean_ms(&c), 600.0);
        for t in 26..=100 {
            d.heartbeat(&c, ms(200 * t));
        }
        // The window wrapped over the prior: only real intervals are left.
        assert_eq!(d.samples(), 100);
        assert_eq!(d.mean_ms(&c), 200.0);
    }

    #[test]
    fn window_slides() {
        let c = PhiConfig {
            window: 3,
            ..config()
        };
        let mut d = PhiAccrualDetector::new(&c, ms(0)); // [1000]
        d.heartbeat(&c, ms(100)); // [1000, 100]
        d.heartbeat(&c, ms(200)); // [1000, 100, 100]
        d.heartbeat(&c, ms(400)); // [200, 100, 100]: the bootstrap sample falls out
        assert_eq!(d.samples(), 3);
        assert!((d.mean_ms(&c) - 400.0 / 3.0).abs() < 1e-9);
        d.heartbeat(&c, ms(700)); // [200, 300, 100]
        assert!((d.mean_ms(&c) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn min_std_dev_floors_the_mean() {
        let c = PhiConfig {
            min_std_dev: ms(500),
            bootstrap_interval: ms(10),
            ..config()
        };
        let mut d = PhiAccrualDetector::new(&c, ms(0));
        d.heartbeat(&c, ms(10));
        assert_eq!(d.mean_ms(&c), 500.0);
        // 1 s of silence: 1000 / (500 · ln 10) = 0.868589.
        assert!((d.phi(&c, ms(1010)) - 0.868589).abs() < 1e-5);
    }

    #[test]
    // The literal is the hand-computed value this test exists to check, not a stand-in for LOG10_E.
    #[allow(clippy::approx_constant)]
    fn acceptable_pause_is_forgiven() {
        let c = PhiConfig {
            acceptable_pause: ms(3000),
            ..config()
        };
        let d = PhiAccrualDetector::new(&c, ms(0));
        assert_eq!(d.phi(&c, ms(3000)), 0.0);
        // 1 s beyond the pause, mean 1 s: 1 / ln 10 = 0.434294.
        assert!((d.phi(&c, ms(4000)) - 0.434294).abs() < 1e-5);
        // 3 s + 8 · 1000 ms · ln 10 = 3 s + 18420.68 ms.
        assert_eq!(d.silence_for(&c, 8.0).as_millis(), 21420);
    }

    #[test]
    fn outages_are_not_samples() {
        let c = config();
        let mut d = PhiAccrualDetector::new(&c, ms(0));
        d.heartbeat(&c, ms(1000));
        d.heartbeat(&c, ms(600_000)); // ten minutes of partition
        assert_eq!(d.samples(), 26);
        assert_eq!(d.mean_ms(&c), 1000.0);
        assert_eq!(d.last_arrival(), ms(600_000));
    }
}
