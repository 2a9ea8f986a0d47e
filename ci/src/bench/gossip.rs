//! The gossip benchmark: the membership protocol at 10, 100 and 1000 simulated nodes (seeded, 5% loss,
//! encrypted datagrams, default settings), measured the way the acceptance tests assert it, for both
//! detections side by side: by monitors (the default) and by gossip (the protocol before it), in the same
//! run, from the same seeds.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use herd::gossip::sim::{delays, quantile, Sim, SimConfig};
use herd::gossip::{Detection, EventKind, GossipConfig, Liveness};

use super::secs;

/// What one cluster size measured.
#[derive(Debug)]
pub struct GossipFigures {
    pub detection: &'static str,
    pub nodes: usize,
    pub join_p50: Duration,
    pub join_p99: Duration,
    pub crash_p50: Duration,
    pub crash_p99: Duration,
    pub false_dead_per_node_hour: f64,
    pub bytes_per_node_per_sec: f64,
    pub largest_datagram: usize,
    pub simulated: Duration,
    pub wall: Duration,
    /// Cold start: the simulated time until every node saw every other alive.
    pub formed: Duration,
    /// What per-node keys cost in the steady stretch, per node and second: bytes of signatures and
    /// public keys sent, signatures made and checked.
    pub key_bytes_per_node_per_sec: f64,
    pub signs_per_node_per_sec: f64,
    pub checks_per_node_per_sec: f64,
    /// Secrets agreed with peers, per node, over the whole run (one per peer paired with).
    pub agreements_per_node: f64,
}

/// Sums of every running node's counters.
fn totals(sim: &Sim) -> herd::gossip::Stats {
    let mut t = herd::gossip::Stats::default();
    for i in sim.up() {
        let s = sim.gossiper(i).expect("up").stats();
        t.signatures_made += s.signatures_made;
        t.signatures_checked += s.signatures_checked;
        t.key_agreements += s.key_agreements;
        t.key_bytes_out += s.key_bytes_out;
    }
    t
}

/// What one signature, one check and one key agreement cost on this machine, measured now (the
/// node's own code: `NodeKey::sign_kv`, `PublicKey::verify`, `NodeKey::shared_with`).
#[derive(Debug, Clone, Copy)]
pub struct CryptoCosts {
    pub sign: Duration,
    pub verify: Duration,
    pub agree: Duration,
}

pub fn crypto_costs() -> CryptoCosts {
    use herd::gossip::wire::{kv_message, NodeKey, PublicKey};
    let a = NodeKey::from_seed([1; 32]);
    let b = NodeKey::from_seed([2; 32]);
    let public = PublicKey::for_node(a.id(), a.public().bytes()).expect("its own keys");
    let value = r#"{"cpu":11.1,"mem":42.0,"load":[0.1,0.2,0.3]}"#;
    let n = 2000u32;
    let started = Instant::now();
    let mut sig = [0u8; 64];
    for v in 0..n {
        sig = a.sign_kv(1, 2, "monitoring", u64::from(v), Some(value));
    }
    let sign = started.elapsed() / n;
    let message = kv_message(1, a.id(), 2, "monitoring", u64::from(n - 1), Some(value));
    let started = Instant::now();
    for _ in 0..n {
        assert!(public.verify(&message, &sig));
    }
    let verify = started.elapsed() / n;
    let started = Instant::now();
    for _ in 0..n / 4 {
        assert!(a.shared_with(b.public()).is_some());
    }
    let agree = started.elapsed() / (n / 4);
    CryptoCosts {
        sign,
        verify,
        agree,
    }
}

/// How much to simulate.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub trials: usize,
    pub steady: Duration,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            trials: 10,
            steady: Duration::from_secs(600),
        }
    }

    /// Enough to prove the benchmark still runs; figures are rough.
    pub fn quick() -> Self {
        Plan {
            trials: 2,
            steady: Duration::from_secs(20),
        }
    }
}

/// Simulates `n` nodes: bootstrap, a steady stretch, joins, then crashes.
pub fn measure(n: usize, plan: Plan, seed: u64, gossip: GossipConfig) -> Result<GossipFigures> {
    let wall = Instant::now();
    let detection = match gossip.detection {
        Detection::Monitors(_) => "monitors",
        Detection::Gossip => "gossip",
    };
    let mut config = SimConfig::new(seed);
    config.gossip = gossip;
    config.loss = 0.05;
    config.encrypt = true;
    let mut sim = Sim::new(config);
    sim.add_nodes(n);
    let converged = sim.run_until(Duration::from_secs(600), Sim::converged);
    ensure!(
        converged,
        "{n} nodes did not converge in 600 simulated seconds"
    );
    let formed = sim.now();
    sim.run_for(Duration::from_secs(30));
    sim.take_events();

    // Steady state: traffic, and any false verdicts.
    let (bytes0, _, _) = sim.traffic();
    let keys0 = totals(&sim);
    let steady_start = sim.now();
    sim.run_for(plan.steady);
    let (bytes1, _, _) = sim.traffic();
    let keys1 = totals(&sim);
    let per_node_second = |v: u64| v as f64 / n as f64 / plan.steady.as_secs_f64();
    let bytes_per_node_per_sec = per_node_second(bytes1 - bytes0);
    let key_bytes_per_node_per_sec = per_node_second(keys1.key_bytes_out - keys0.key_bytes_out);
    let signs_per_node_per_sec = per_node_second(keys1.signatures_made - keys0.signatures_made);
    let checks_per_node_per_sec =
        per_node_second(keys1.signatures_checked - keys0.signatures_checked);
    let events = sim.take_events();
    let mut false_dead = count_false_dead(&sim, &events);

    // Joins: a new node, seeded with two members, until every other node has heard of it.
    let mut join = Vec::new();
    for t in 0..plan.trials {
        let since = sim.now();
        let new = sim.add_node(&[t % n, (t * 7 + 3) % n]);
        let others: Vec<usize> = sim.up().filter(|i| *i != new).collect();
        let id = sim.id(new);
        sim.run_until(since + Duration::from_secs(60), |s| {
            others
                .iter()
                .all(|o| s.gossiper(*o).is_some_and(|g| g.liveness(id).is_some()))
        });
        sim.run_for(Duration::from_millis(200));
        let events = sim.take_events();
        false_dead += count_false_dead(&sim, &events);
        let d = delays(&events, EventKind::Joined, id, since);
        ensure!(
            d.len() == others.len(),
            "join {t} at {n} nodes never completed"
        );
        join.extend(d.values().copied());
    }

    // Let the newcomers' detectors learn the rhythm: crash detection is measured in a settled cluster.
    sim.run_for(Duration::from_secs(30));
    let events = sim.take_events();
    false_dead += count_false_dead(&sim, &events);

    // Crashes: one node dies silently, until every survivor has declared it dead.
    let mut crash = Vec::new();
    for t in 0..plan.trials {
        let victim = (t * 13 + 5) % n;
        let since = sim.now();
        sim.crash(victim);
        let survivors: Vec<usize> = sim.up().collect();
        let id = sim.id(victim);
        sim.run_until(since + Duration::from_secs(600), |s| {
            survivors.iter().all(|o| {
                s.gossiper(*o)
                    .is_none_or(|g| g.liveness(id) == Some(Liveness::Dead))
            })
        });
        sim.run_for(Duration::from_millis(200));
        let events = sim.take_events();
        false_dead += count_false_dead(&sim, &events);
        let d = delays(&events, EventKind::Dead, id, since);
        ensure!(
            d.len() == survivors.len(),
            "crash {t} at {n} nodes was not detected by all"
        );
        crash.extend(d.values().copied());
    }
    let node_hours = n as f64 * (sim.now() - steady_start).as_secs_f64() / 3600.0;
    Ok(GossipFigures {
        detection,
        nodes: n,
        join_p50: quantile(&mut join, 0.5),
        join_p99: quantile(&mut join, 0.99),
        crash_p50: quantile(&mut crash, 0.5),
        crash_p99: quantile(&mut crash, 0.99),
        false_dead_per_node_hour: false_dead as f64 / node_hours,
        bytes_per_node_per_sec,
        largest_datagram: sim.largest_datagram(),
        simulated: sim.now(),
        wall: wall.elapsed(),
        formed,
        key_bytes_per_node_per_sec,
        signs_per_node_per_sec,
        checks_per_node_per_sec,
        agreements_per_node: totals(&sim).key_agreements as f64 / sim.up().count() as f64,
    })
}

/// Dead verdicts about nodes that are in fact running in the generation the verdict names.
fn count_false_dead(sim: &Sim, events: &[herd::gossip::sim::Observed]) -> usize {
    events
        .iter()
        .filter(|o| o.event.kind == EventKind::Dead)
        .filter(|o| {
            sim.index(o.event.node).is_some_and(|i| {
                sim.gossiper(i)
                    .is_some_and(|g| g.generation() == o.event.generation)
            })
        })
        .count()
}

/// The targets of detection by monitors (bytes per node per second, crash → dead by all p99, join p99).
const TARGETS: &[(usize, f64, f64, f64)] = &[(100, 4000.0, 5.0, 2.0), (1000, 6000.0, 8.0, 5.0)];

/// Runs the benchmark and prints its tables; the full run fails when a target is missed.
pub fn run(quick: bool, nodes: Option<&[usize]>, only: Option<&str>) -> Result<()> {
    let plan = if quick { Plan::quick() } else { Plan::full() };
    println!("## Gossip simulation\n");
    println!(
        "Seeded simulation, 5% packet loss, 1–3 ms latency, encrypted datagrams, default settings \
         (200 ms gossip interval, φ threshold 8). Detection by monitors (the default: heartbeats straight \
         to 5 monitors, probes, verdicts as rumours) and by gossip (before: heartbeats in every digest), \
         same seeds. {} join and {} crash trials per size, {} of steady state.\n",
        plan.trials,
        plan.trials,
        secs(plan.steady)
    );
    println!("| nodes | detection | join p50 | join p99 | crash → dead p50 | crash → dead p99 | false dead / node-hour | bytes / node / s | largest datagram | simulated | wall | speed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    // Quick keeps `cargo xtask ci` short: 10 and 50 nodes (the full run: 10, 100 and 1000).
    let sizes: &[usize] = match nodes {
        Some(n) => n,
        None if quick => &[10, 50],
        None => &[10, 100, 1000],
    };
    let mut all = Vec::new();
    for &n in sizes {
        for config in [GossipConfig::new("sim"), GossipConfig::gossip_only("sim")] {
            let name = match config.detection {
                Detection::Monitors(_) => "monitors",
                Detection::Gossip => "gossip",
            };
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let f = measure(n, plan, 42, config)?;
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.4} | {:.0} | {} B | {} | {} | {:.0}× real time |",
                f.nodes,
                f.detection,
                secs(f.join_p50),
                secs(f.join_p99),
                secs(f.crash_p50),
                secs(f.crash_p99),
                f.false_dead_per_node_hour,
                f.bytes_per_node_per_sec,
                f.largest_datagram,
                secs(f.simulated),
                secs(f.wall),
                f.simulated.as_secs_f64() / f.wall.as_secs_f64()
            );
            all.push(f);
        }
    }
    println!("\nMonitors against gossip, and the targets (ratios below 1 favour monitors):\n");
    println!("| nodes | figure | gossip | monitors | monitors / gossip | target | met |");
    println!("|---|---|---|---|---|---|---|");
    let mut missed = Vec::new();
    for &n in sizes {
        let find = |d: &str| all.iter().find(|f| f.nodes == n && f.detection == d);
        let (Some(m), Some(g)) = (find("monitors"), find("gossip")) else {
            continue;
        };
        let target = TARGETS.iter().find(|t| t.0 == m.nodes);
        let rows: [(&str, f64, f64, Option<f64>, &str); 4] = [
            (
                "bytes / node / s",
                g.bytes_per_node_per_sec,
                m.bytes_per_node_per_sec,
                target.map(|t| t.1),
                "B",
            ),
            (
                "crash → dead by all p99",
                g.crash_p99.as_secs_f64(),
                m.crash_p99.as_secs_f64(),
                target.map(|t| t.2),
                "s",
            ),
            (
                "join p99",
                g.join_p99.as_secs_f64(),
                m.join_p99.as_secs_f64(),
                target.map(|t| t.3),
                "s",
            ),
            (
                "false dead / node-hour",
                g.false_dead_per_node_hour,
                m.false_dead_per_node_hour,
                target.map(|_| 0.0),
                "",
            ),
        ];
        for (figure, gv, mv, t, unit) in rows {
            let fmt = |v: f64| {
                if unit == "s" {
                    format!("{v:.2} s")
                } else if unit == "B" {
                    format!("{v:.0} B")
                } else {
                    format!("{v:.4}")
                }
            };
            let ratio = if gv > 0.0 {
                format!("{:.2}×", mv / gv)
            } else {
                "-".into()
            };
            let met = match t {
                Some(t) if mv <= t => "yes",
                Some(_) => {
                    missed.push(format!(
                        "{} nodes: {figure} {} (target {})",
                        m.nodes,
                        fmt(mv),
                        fmt(t.unwrap_or(0.0))
                    ));
                    "**no**"
                }
                None => "",
            };
            println!(
                "| {} | {figure} | {} | {} | {ratio} | {} | {met} |",
                m.nodes,
                fmt(gv),
                fmt(mv),
                t.map(|t| format!("≤ {}", fmt(t))).unwrap_or_default()
            );
        }
    }
    keys_table(&all);
    if !quick && !missed.is_empty() {
        anyhow::bail!("targets missed: {}", missed.join("; "));
    }
    Ok(())
}

/// What per-node keys cost (issue 31): bytes, signatures and key agreements counted in the simulation,
/// and their CPU from the cost of each measured on this machine in the same run.
fn keys_table(all: &[GossipFigures]) {
    let c = crypto_costs();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nWhat per-node keys cost (every node's state signed, datagrams paired or introduced): counted \
         in the steady stretch above; CPU from one Ed25519 signature ({:.1} µs), one check ({:.1} µs) \
         and one X25519 key agreement ({:.1} µs) measured on this machine in this run. The cold start is \
         every node started at once, seeded with three, until every node sees every other alive.\n",
        us(c.sign),
        us(c.verify),
        us(c.agree)
    );
    println!("| nodes | detection | bytes / node / s | of which signatures and keys | signatures made / node / s | checked / node / s | CPU / node (steady) | key agreements / node | cold start |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let cpu = f.signs_per_node_per_sec * us(c.sign) + f.checks_per_node_per_sec * us(c.verify);
        println!(
            "| {} | {} | {:.0} B | {:.0} B ({:.0} %) | {:.2} | {:.2} | {:.0} µs/s ({:.3} % of a core) | {:.0} ({:.1} ms) | {} |",
            f.nodes,
            f.detection,
            f.bytes_per_node_per_sec,
            f.key_bytes_per_node_per_sec,
            100.0 * f.key_bytes_per_node_per_sec / f.bytes_per_node_per_sec.max(1.0),
            f.signs_per_node_per_sec,
            f.checks_per_node_per_sec,
            cpu,
            cpu / 1e4,
            f.agreements_per_node,
            f.agreements_per_node * us(c.agree) / 1e3,
            secs(f.formed)
        );
    }
}
