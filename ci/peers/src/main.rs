//! `herd-peers`: N herd agents and N chitchat 0.13 nodes on loopback UDP, side by side, in one run.
//!
//! Each (implementation, N) runs in a process of its own (this binary again, `one IMPL N SECS [PHI]`), so
//! CPU time is that implementation's alone. Both gossip every 200 ms, every node seeded with the first.
//! herd runs as deployed (detection by monitors: direct heartbeats to 5 monitors, threshold 8 on the
//! normal model with a 2.5 s pause, then a probe; datagrams sealed with XChaCha20-Poly1305; monitoring
//! off so that both carry only membership); chitchat (window of 100 intervals, 400 ms prior) has no
//! encryption.
//!
//! The failure-detection budget is matched as a timeout, not as a raw threshold: the silence after which
//! a node is declared dead (herd's `Member::detection_timeout`, chitchat's `failure_detection_timeout`),
//! averaged over every observer of the node that is then killed (for herd, its monitors' silence before a
//! probe plus the probe). chitchat 0.13 computes φ = Δt / mean over heartbeats that come through gossip,
//! so its threshold is calibrated: a first chitchat run at 8 · ln 10 measures its timeout, and the
//! measured run uses the threshold that gives herd's timeout in seconds (chitchat's φ is linear in the
//! silence).
//!
//! Figures per run: time until every node sees every node alive (from the moment all were started); time
//! until every survivor declares a killed node dead; bytes sent per node per second and CPU per node in
//! steady state; the largest datagram.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

const INTERVAL: Duration = Duration::from_millis(200);
const HERD_THRESHOLD: f64 = 8.0;
const PORT: u16 = 7496;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Figures {
    implementation: String,
    nodes: usize,
    converge_s: f64,
    detect_s: f64,
    bytes_per_node_s: f64,
    largest_datagram: usize,
    cpu_per_node_pct: f64,
    /// Mean silence after which the victim would be declared dead, over its observers, just before it
    /// was killed.
    timeout_s: f64,
    threshold: f64,
}

fn addr(net: u8, i: usize) -> SocketAddr {
    SocketAddr::from((
        Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250 + 1) as u8),
        PORT,
    ))
}

fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

/// What the driver needs from a cluster of either kind.
trait Cluster {
    /// How many nodes each node (still running) sees alive, self included.
    async fn alive_counts(&self) -> Vec<usize>;
    /// Whether every node but `victim` has declared `victim` dead.
    async fn all_see_dead(&self, victim: usize) -> bool;
    /// Bytes sent so far by all nodes, and the largest datagram.
    fn traffic(&self) -> (u64, usize);
    /// Stops node `i` without a word to its peers.
    fn kill(&mut self, i: usize);
    /// The mean detection timeout of node `i` over its observers.
    async fn timeout_of(&self, i: usize) -> Duration;
}

mod herd_side {
    use super::*;
    use herd::config::Config;
    use herd::daemon::Agent;
    use herd::gossip::Liveness;

    pub struct Herd {
        agents: Vec<Option<Agent>>,
        ids: Vec<herd::gossip::NodeId>,
        dirs: Vec<std::path::PathBuf>,
    }

    impl Herd {
        pub async fn start(n: usize) -> anyhow::Result<Herd> {
            let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
            let mut agents = Vec::new();
            let mut dirs = Vec::new();
            let seed = addr(41, 0);
            for i in 0..n {
                let dir =
                    std::env::temp_dir().join(format!("herd-peers-{}-{i}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let config = Config::parse(&format!(
                    r#"
                    cluster = "peers"
                    node_name = "n{i}"
                    state_dir = "{}"
                    [gossip]
                    bind = "{}"
                    seeds = ["{seed}"]
                    interval = "{}ms"
                    key = "{key}"
                    [failure_detector]
                    phi_threshold = {HERD_THRESHOLD}
                    [discovery]
                    mdns = false
                    [api]
                    enabled = false
                    [monitoring]
                    enabled = false
                    "#,
                    dir.display(),
                    addr(41, i),
                    INTERVAL.as_millis()
                ))?;
                agents.push(Some(Agent::start(config).await?));
                dirs.push(dir);
            }
            let ids = agents
                .iter()
                .map(|a| a.as_ref().expect("up").id())
                .collect();
            Ok(Herd { agents, ids, dirs })
        }
    }

    impl Drop for Herd {
        fn drop(&mut self) {
            for d in &self.dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }

    impl Cluster for Herd {
        async fn alive_counts(&self) -> Vec<usize> {
            self.agents
                .iter()
                .flatten()
                .map(|a| {
                    a.members()
                        .iter()
                        .filter(|m| m.liveness == Liveness::Alive)
                        .count()
                })
                .collect()
        }

        async fn all_see_dead(&self, victim: usize) -> bool {
            let id = self.ids[victim];
            self.agents.iter().flatten().all(|a| {
                a.members()
                    .iter()
                    .any(|m| m.id == id && m.liveness == Liveness::Dead)
            })
        }

        fn traffic(&self) -> (u64, usize) {
            self.agents.iter().flatten().fold((0, 0), |(b, l), a| {
                let s = a.stats();
                (b + s.bytes_out, l.max(s.largest_datagram_out))
            })
        }

        fn kill(&mut self, i: usize) {
            if let Some(a) = self.agents[i].take() {
                a.kill();
            }
        }

        async fn timeout_of(&self, i: usize) -> Duration {
            let id = self.ids[i];
            let all: Vec<Duration> = self
                .agents
                .iter()
                .flatten()
                .filter_map(|a| {
                    a.members()
                        .into_iter()
                        .find(|m| m.id == id && !m.is_self)
                        .map(|m| m.detection_timeout)
                })
                .collect();
            all.iter().sum::<Duration>() / all.len().max(1) as u32
        }
    }
}

mod chitchat_side {
    use super::*;
    use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
    use chitchat::{
        spawn_chitchat, ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId,
        FailureDetectorConfig, ProtocolVersion,
    };

    /// Counts what chitchat hands to its UDP socket.
    #[derive(Default)]
    pub struct Counters {
        pub bytes: AtomicU64,
        pub largest: AtomicUsize,
    }

    struct Counting {
        inner: Box<dyn Socket>,
        counters: Arc<Counters>,
    }

    #[async_trait::async_trait]
    impl Socket for Counting {
        fn local_addr(&self) -> anyhow::Result<SocketAddr> {
            self.inner.local_addr()
        }
        async fn send(
            &mut self,
            to: SocketAddr,
            envelope: ChitchatEnvelope,
        ) -> anyhow::Result<SendOutcome> {
            let out = self.inner.send(to, envelope).await?;
            self.counters
                .bytes
                .fetch_add(out.num_bytes_sent as u64, Ordering::Relaxed);
            self.counters
                .largest
                .fetch_max(out.num_bytes_sent, Ordering::Relaxed);
            Ok(out)
        }
        async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
            self.inner.recv().await
        }
    }

    struct CountingTransport(Arc<Counters>);

    #[async_trait::async_trait]
    impl Transport for CountingTransport {
        async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
            Ok(Box::new(Counting {
                inner: UdpTransport.open(listen_addr).await?,
                counters: self.0.clone(),
            }))
        }
    }

    pub struct Chitchat {
        nodes: Vec<Option<ChitchatHandle>>,
        ids: Vec<ChitchatId>,
        counters: Arc<Counters>,
    }

    impl Chitchat {
        pub async fn start(n: usize, threshold: f64) -> anyhow::Result<Chitchat> {
            let counters = Arc::new(Counters::default());
            let transport = CountingTransport(counters.clone());
            let mut nodes = Vec::new();
            let mut ids = Vec::new();
            for i in 0..n {
                let id = ChitchatId::new(format!("n{i}"), 1, addr(42, i));
                let config = ChitchatConfig {
                    chitchat_id: id.clone(),
                    cluster_id: "peers".into(),
                    gossip_interval: INTERVAL,
                    listen_addr: addr(42, i),
                    seed_nodes: vec![addr(42, 0).to_string()],
                    failure_detector_config: FailureDetectorConfig {
                        phi_threshold: threshold,
                        sampling_window_size: 100,
                        max_interval: Duration::from_secs(10),
                        initial_interval: Duration::from_millis(400),
                        dead_node_grace_period: Duration::from_secs(3600),
                    },
                    marked_for_deletion_grace_period: Duration::from_secs(3600),
                    catchup_callback: None,
                    extra_liveness_predicate: None,
                    protocol_version: ProtocolVersion::V1,
                };
                nodes.push(Some(
                    spawn_chitchat(config, Vec::new(), &transport)
                        .await
                        .context("chitchat")?,
                ));
                ids.push(id);
            }
            Ok(Chitchat {
                nodes,
                ids,
                counters,
            })
        }
    }

    impl Cluster for Chitchat {
        async fn alive_counts(&self) -> Vec<usize> {
            let mut out = Vec::new();
            for h in self.nodes.iter().flatten() {
                let c = h.chitchat();
                out.push(c.lock().await.live_nodes().count());
            }
            out
        }

        async fn all_see_dead(&self, victim: usize) -> bool {
            for h in self.nodes.iter().flatten() {
                let c = h.chitchat();
                if !c.lock().await.dead_nodes().any(|d| d == &self.ids[victim]) {
                    return false;
                }
            }
            true
        }

        fn traffic(&self) -> (u64, usize) {
            (
                self.counters.bytes.load(Ordering::Relaxed),
                self.counters.largest.load(Ordering::Relaxed),
            )
        }

        fn kill(&mut self, i: usize) {
            if let Some(h) = self.nodes[i].take() {
                h.abort();
            }
        }

        async fn timeout_of(&self, i: usize) -> Duration {
            let mut all = Vec::new();
            for (j, h) in self.nodes.iter().enumerate() {
                let Some(h) = h else { continue };
                if j == i {
                    continue;
                }
                let c = h.chitchat();
                let t = c.lock().await.failure_detection_timeout(&self.ids[i]);
                all.extend(t);
            }
            all.iter().sum::<Duration>() / all.len().max(1) as u32
        }
    }
}

/// One implementation at one size: converge, hold a steady state for `steady`, kill one, time it.
async fn measure(
    c: &mut impl Cluster,
    name: &str,
    n: usize,
    started: Instant,
    steady: Duration,
    threshold: f64,
) -> anyhow::Result<Figures> {
    let limit = Duration::from_secs(120);
    loop {
        if c.alive_counts().await.iter().all(|k| *k == n) {
            break;
        }
        if started.elapsed() > limit {
            bail!("{name}: {n} nodes did not converge within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converge = started.elapsed();
    // Let the detectors fill their windows with steady-state intervals before measuring anything.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (b0, _) = c.traffic();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    tokio::time::sleep(steady).await;
    let (b1, largest) = c.traffic();
    let cpu = cpu_time() - cpu0;
    let took = t0.elapsed().as_secs_f64();
    let victim = n - 1;
    let timeout = c.timeout_of(victim).await;
    c.kill(victim);
    let killed = Instant::now();
    loop {
        if c.all_see_dead(victim).await {
            break;
        }
        if killed.elapsed() > limit {
            bail!("{name}: the killed node was not declared dead within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Figures {
        implementation: name.into(),
        nodes: n,
        converge_s: converge.as_secs_f64(),
        detect_s: killed.elapsed().as_secs_f64(),
        bytes_per_node_s: (b1 - b0) as f64 / n as f64 / took,
        largest_datagram: largest,
        cpu_per_node_pct: cpu.as_secs_f64() / took / n as f64 * 100.0,
        timeout_s: timeout.as_secs_f64(),
        threshold,
    })
}

async fn one(
    implementation: &str,
    n: usize,
    steady: Duration,
    threshold: f64,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    match implementation {
        "herd" => {
            let mut c = herd_side::Herd::start(n).await?;
            measure(&mut c, "herd", n, started, steady, HERD_THRESHOLD).await
        }
        "chitchat" => {
            let mut c = chitchat_side::Chitchat::start(n, threshold).await?;
            measure(&mut c, "chitchat", n, started, steady, threshold).await
        }
        other => bail!("unknown implementation {other:?}"),
    }
}

fn run_child(
    implementation: &str,
    n: usize,
    steady: Duration,
    threshold: f64,
) -> anyhow::Result<Figures> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "one",
            implementation,
            &n.to_string(),
            &steady.as_secs().to_string(),
            &threshold.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("{implementation} with {n} nodes failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{implementation} {n}: unexpected output"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("one") {
        let [_, implementation, n, secs, threshold] = &args[..] else {
            bail!("usage: herd-peers one herd|chitchat N STEADY_SECONDS PHI_THRESHOLD");
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let f = runtime.block_on(one(
            implementation,
            n.parse()?,
            Duration::from_secs(secs.parse()?),
            threshold.parse()?,
        ))?;
        println!("{}", serde_json::to_string(&f)?);
        // Nodes are not shut down one by one: the process ends.
        std::process::exit(0);
    }
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(bad) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown argument {bad:?}; usage: herd-peers [--quick]");
    }
    let (sizes, steady): (&[usize], _) = if quick {
        (&[10], Duration::from_secs(2))
    } else {
        (&[10, 50, 100], Duration::from_secs(20))
    };
    println!(
        "\n## herd vs chitchat 0.13: {} s of steady state, gossip every {} ms, equal detection timeouts\n",
        steady.as_secs(),
        INTERVAL.as_millis()
    );
    let mut rows = Vec::new();
    let mut calibration = Vec::new();
    for &n in sizes {
        let h = run_child("herd", n, steady, HERD_THRESHOLD)?;
        // Calibration: chitchat at 8 · ln 10 mean intervals; then the threshold that gives herd's timeout
        // in seconds (chitchat's φ is linear in the silence).
        let start = HERD_THRESHOLD * std::f64::consts::LN_10;
        let c0 = run_child("chitchat", n, steady, start)?;
        let threshold = start * h.timeout_s / c0.timeout_s;
        let c = run_child("chitchat", n, steady, threshold)?;
        calibration.push(format!(
            "| {n} | {:.2} s | {start:.1} → {:.2} s (detected in {:.2} s) | {threshold:.1} → {:.2} s |",
            h.timeout_s, c0.timeout_s, c0.detect_s, c.timeout_s
        ));
        rows.push((n, h, c));
    }
    println!("Detection timeouts (mean silence before a verdict, over the victim's observers):\n");
    println!("| nodes | herd (φ 8, monitors: normal model, 2.5 s pause, then a probe) | chitchat calibration: φ threshold → timeout | chitchat measured: φ threshold → timeout |");
    println!("|---|---|---|---|");
    for line in &calibration {
        println!("{line}");
    }
    println!();
    println!("| nodes | figure | herd | chitchat | herd / chitchat |");
    println!("|---|---|---|---|---|");
    for (n, h, c) in rows {
        let row = |what: &str, a: f64, b: f64, unit: &str, digits: usize| {
            println!(
                "| {n} | {what} | {a:.digits$}{unit} | {b:.digits$}{unit} | {:.2}× |",
                a / b
            );
        };
        row("all see all alive", h.converge_s, c.converge_s, " s", 2);
        row(
            "all see the killed node dead",
            h.detect_s,
            c.detect_s,
            " s",
            2,
        );
        row(
            "bytes sent per node per second",
            h.bytes_per_node_s,
            c.bytes_per_node_s,
            " B",
            0,
        );
        row(
            "largest datagram",
            h.largest_datagram as f64,
            c.largest_datagram as f64,
            " B",
            0,
        );
        row(
            "CPU per node",
            h.cpu_per_node_pct,
            c.cpu_per_node_pct,
            " %",
            3,
        );
    }
    println!("\nRatios below 1 favour herd. herd's datagrams are encrypted and authenticated (40 bytes of nonce and tag each); chitchat's are not.");
    Ok(())
}
