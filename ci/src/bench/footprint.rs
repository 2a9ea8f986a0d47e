//! `bench footprint`: what one real `herd agent` process costs. It joins clusters of 10 and 100 agents (the
//! others run in this process) on loopback and is left idle: its resident memory (sampled every second,
//! the peak reported) and CPU time over the window (60 s; quick mode 5 s), next to the targets (≤ 10 MB,
//! ≤ 1% of a core); and the size of the stripped static aarch64 and ARMv6 binaries (≤ 5 MB). The measured agent
//! runs as deployed: encrypted gossip every 200 ms, monitoring every 5 s, the API on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd::config::Config;
use herd::daemon::Agent;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ci is in the workspace")
        .into()
}

fn peer_config(i: usize, seed: &str, state: &Path) -> Config {
    Config::parse(&format!(
        r#"
        cluster = "footprint"
        node_name = "peer{i}"
        state_dir = "{}"
        [gossip]
        bind = "127.0.52.{}:0"
        seeds = ["{seed}"]
        key = "{KEY}"
        [discovery]
        mdns = false
        [api]
        enabled = false
        [monitoring]
        enabled = false
        "#,
        state.display(),
        i % 250 + 1
    ))
    .expect("peer config")
}

/// CPU time of `pid` (all its threads, nanosecond precision from the scheduler), and its resident set.
fn proc_stats(pid: u32) -> anyhow::Result<(Duration, u64)> {
    let mut cpu = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(&path) {
            let ns: u64 = s.split_whitespace().next().unwrap_or("0").parse()?;
            cpu += Duration::from_nanos(ns);
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("VmRSS")?;
    Ok((cpu, rss_kb * 1024))
}

struct Measured {
    child: crate::KillOnDrop,
    api: String,
    _dir: tempfile::TempDir,
}

fn start_measured(binary: &Path, seed: &str, port: u16) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("herd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            cluster = "footprint"
            node_name = "measured"
            state_dir = "{}"
            [gossip]
            bind = "127.0.53.1:7946"
            seeds = ["{seed}"]
            key = "{KEY}"
            [discovery]
            mdns = false
            [api]
            bind = "127.0.53.1:{port}"
            token = "footprint-token-0123456789"
            "#,
            dir.path().display()
        ),
    )?;
    let child = Command::new(binary)
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok(Measured {
        child: crate::KillOnDrop(child),
        api: format!("http://127.0.53.1:{port}"),
        _dir: dir,
    })
}

struct Figures {
    nodes: usize,
    peak_rss: u64,
    cpu_pct: f64,
    window: Duration,
}

fn measure(binary: &Path, nodes: usize, window: Duration) -> anyhow::Result<Figures> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dirs: Vec<tempfile::TempDir> = (1..nodes)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut peers: Vec<Agent> = Vec::new();
    let mut seed = String::from("127.0.53.1:7946");
    for (i, d) in dirs.iter().enumerate() {
        let a = runtime.block_on(Agent::start(peer_config(i, &seed, d.path())))?;
        if i == 0 {
            seed = a.local_addr().to_string();
        }
        peers.push(a);
    }
    let measured = start_measured(binary, &seed, 18080 + nodes as u16)?;
    let client = herd::client::Client::new(&measured.api, None)?;
    let start = Instant::now();
    loop {
        let alive = client
            .nodes()
            .map(|v| {
                v.iter()
                    .filter(|n| n.state == herd::gossip::Liveness::Alive)
                    .count()
            })
            .unwrap_or(0);
        if alive == nodes {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            bail!("the measured agent saw {alive} of {nodes} alive after 90 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Settle, then measure the idle window.
    std::thread::sleep(Duration::from_secs(3));
    let pid = measured.child.0.id();
    let (cpu0, mut peak) = proc_stats(pid)?;
    let t0 = Instant::now();
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(proc_stats(pid)?.1);
    }
    let (cpu1, rss) = proc_stats(pid)?;
    let cpu1 = cpu1.max(cpu0);
    let took = t0.elapsed();
    drop(measured);
    drop(peers);
    Ok(Figures {
        nodes,
        peak_rss: peak.max(rss),
        cpu_pct: (cpu1 - cpu0).as_secs_f64() / took.as_secs_f64() * 100.0,
        window: took,
    })
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    // The agent as shipped (static musl, size-optimised), built for this machine's CPU by xtask; quick
    // runs, which only prove the benchmark still runs, take the test build.
    let (binary, what) = if quick {
        (
            workspace().join("target/debug/herd"),
            "quick: the test build, not the one shipped",
        )
    } else {
        (
            workspace()
                .join("target")
                .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
                .join("release/herd"),
            "the release build as shipped, static musl, for this machine's CPU",
        )
    };
    if !binary.exists() {
        bail!(
            "{} is missing: `cargo xtask bench footprint` builds it",
            binary.display()
        );
    }
    let window = Duration::from_secs(if quick { 5 } else { 60 });
    let small = measure(&binary, 10, window)?;
    let large = measure(&binary, 100, window)?;
    println!(
        "\n## Footprint of one idle `herd agent` ({what}), {} s window\n",
        window.as_secs()
    );
    println!(
        "| cluster | peak resident memory | vs target 10 MB | CPU, % of one core | vs target 1% |"
    );
    println!("|---|---|---|---|---|");
    for f in [&small, &large] {
        println!(
            "| {} nodes | {:.2} MB | {:.2}× | {:.3} % | {:.2}× |",
            f.nodes,
            f.peak_rss as f64 / 1e6,
            f.peak_rss as f64 / 10e6,
            f.cpu_pct,
            f.cpu_pct / 1.0
        );
    }
    println!(
        "\n100 nodes against 10: memory {:.2}×, CPU {:.2}× (measured over {:.0} s each).\n",
        large.peak_rss as f64 / small.peak_rss as f64,
        large.cpu_pct / small.cpu_pct.max(1e-6),
        small.window.as_secs_f64()
    );
    println!("| binary (static) | serves | stripped size | vs target 5 MB |");
    println!("|---|---|---|---|");
    for arch in [herd_image::Arch::Arm64, herd_image::Arch::Armhf] {
        let p = herd_image::built_agent(arch);
        let size = std::fs::metadata(&p)
            .with_context(|| format!("{}: run `cargo xtask build`", p.display()))?
            .len();
        let serves = match arch {
            herd_image::Arch::Arm64 => "64-bit Raspberry Pi OS: Pi 3, Zero 2 W, 4, 5",
            herd_image::Arch::Armhf => {
                "32-bit Raspberry Pi OS: every Pi (ARMv6: Zero, Zero W, 1 too)"
            }
            herd_image::Arch::Amd64 => "the operator's laptop",
        };
        println!(
            "| {} | {serves} | {:.2} MB | {:.2}× |",
            arch.agent_target(),
            size as f64 / 1e6,
            size as f64 / 5e6
        );
        if size > 5_000_000 {
            bail!("{} is {size} bytes, over the 5 MB target", p.display());
        }
    }
    Ok(())
}
