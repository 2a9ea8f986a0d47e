//! `bench http`: the API of an agent that knows 50 nodes, under a fixed request rate from a second process.
//!
//! The benchmark process starts 50 real agents on loopback (gossip only; the API runs on the first, on a
//! single-threaded runtime like `herd agent`), waits until the first sees all 50 alive, then runs itself
//! again as the load generator (`herd-bench http-load …`): open-loop, a fixed schedule spread over four
//! threads with keep-alive connections, latency measured from each request's scheduled time (so a stall
//! is not hidden by the requests it delays), every request with a timeout and the run bounded in count.
//! `/healthz` (no state, tiny body) is the baseline measured in the same run. `/api/v1/logs` reads a
//! journal of 2,000 lines written by the real systemd-journal-remote, with the token, through the
//! agent's real journalctl: at most 4 readers at once, so at this rate most are refused (503, counted
//! apart) and the figures say what a reader that gets in waits, and that the rest are told at once.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd::config::Config;
use herd::daemon::Agent;

/// Nodes in the agent's view.
const NODES: usize = 50;
const THREADS: usize = 4;

/// The serving agent's token (for `/api/v1/logs`).
const TOKEN: &str = "bench-http-token-0123456789";

fn config(
    api: bool,
    seed: Option<SocketAddr>,
    state: &std::path::Path,
    journal: &std::path::Path,
) -> Config {
    let seeds = seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
    Config::parse(&format!(
        r#"
        cluster = "bench-http"
        state_dir = "{}"
        [gossip]
        bind = "127.0.0.1:0"
        seeds = [{seeds}]
        insecure = true
        [discovery]
        mdns = false
        [api]
        enabled = {api}
        bind = "127.0.0.1:0"
        token = "{TOKEN}"
        [logs]
        journal_directory = "{}"
        "#,
        state.display(),
        journal.display()
    ))
    .expect("bench config")
}

/// One load run's figures, as the load generator prints them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadResult {
    pub path: String,
    pub rate: u32,
    pub sent: usize,
    pub errors: usize,
    pub elapsed_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub bytes: usize,
    /// Answers 503 (a bound reached: told at once, not an error).
    #[serde(default)]
    pub busy: usize,
}

/// A journal of `lines` lines in `dir`, written by the real systemd-journal-remote.
fn journal(dir: &std::path::Path, lines: usize) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros();
    let mut export = String::new();
    for i in 0..lines {
        export += &format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n\
             _BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT=bench.service\n\
             SYSLOG_IDENTIFIER=bench\n_PID=7\nMESSAGE=bench line {i}: {}\n\n",
            now - (lines - i) as u128 * 1000,
            i + 1,
            "x".repeat(80)
        );
    }
    let input = dir.join("bench.export");
    std::fs::write(&input, export)?;
    let remote = [
        "/usr/lib/systemd/systemd-journal-remote",
        "/lib/systemd/systemd-journal-remote",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .context("systemd-journal-remote (apt-get install systemd-journal-remote)")?;
    let out = Command::new(remote)
        .arg(format!("--output={}", dir.join("bench.journal").display()))
        .arg(&input)
        .output()?;
    if !out.status.success() {
        bail!(
            "systemd-journal-remote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_file(input)?;
    Ok(())
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let dirs: Vec<tempfile::TempDir> = (0..NODES)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let journal_dir = tempfile::tempdir()?;
    journal(journal_dir.path(), 2000)?;
    let journal_path = journal_dir.path().to_path_buf();
    // The serving agent on a runtime of its own, single-threaded like the daemon.
    let (tx, rx) = std::sync::mpsc::channel();
    let first_state = dirs[0].path().to_path_buf();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let agent = Agent::start(config(true, None, &first_state, &journal_path)).await?;
            let _ = tx.send((agent.local_addr(), agent.api_addr(), agent.handle()));
            std::future::pending::<()>().await;
            Ok(())
        })
    });
    let (seed, api, handle) = rx
        .recv()
        .map_err(|_| match server.join() {
            Ok(Err(e)) => e,
            _ => anyhow::anyhow!("serving agent failed"),
        })
        .context("starting the serving agent")?;
    let api = api.context("API not running")?;
    // The 49 others share a second runtime.
    let others = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut agents = Vec::new();
    for d in &dirs[1..] {
        agents.push(others.block_on(Agent::start(config(
            false,
            Some(seed),
            d.path(),
            journal_dir.path(),
        )))?);
    }
    let start = Instant::now();
    while handle
        .members()
        .iter()
        .filter(|m| m.liveness == herd::gossip::Liveness::Alive)
        .count()
        < NODES
    {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the serving agent never saw {NODES} alive nodes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let (rate, secs) = if quick { (1000, 1) } else { (1000, 10) };
    println!(
        "\n## HTTP API: {NODES}-node view, {rate} requests/s for {secs} s per endpoint, from a second process\n"
    );
    println!(
        "| endpoint | body | achieved req/s | p50 | p99 | max | errors | refused (503) | p99 vs /healthz |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut baseline = None;
    for path in [
        "/healthz",
        "/nodes/alive",
        "/api/v1/nodes",
        "/api/v1/history",
        "/api/v1/logs?n=20",
    ] {
        let r = load_from_child(api, path, rate, secs)?;
        let base = *baseline.get_or_insert(r.p99_ms);
        println!(
            "| `GET {}` | {} B | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {:.2}× |",
            r.path,
            r.bytes,
            r.sent as f64 / r.elapsed_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.errors,
            r.busy,
            r.p99_ms / base
        );
        if r.errors > 0 {
            bail!("{path}: {} of {} requests failed", r.errors, r.sent);
        }
    }
    println!(
        "\nTarget: p99 under 5 ms at 1,000 requests/s on loopback. `/api/v1/logs` (with the token) runs \
         a journalctl per reader, 4 at once: beyond, a reader is refused at once (503), as stated."
    );
    drop(agents);
    Ok(())
}

fn load_from_child(
    api: SocketAddr,
    path: &str,
    rate: u32,
    secs: u32,
) -> anyhow::Result<LoadResult> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "http-load",
            &format!("http://{api}{path}"),
            &rate.to_string(),
            &secs.to_string(),
        ])
        .output()
        .context("starting the load generator")?;
    if !out.status.success() {
        bail!(
            "load generator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("load generator output")
}

/// The load generator's side: `rate` requests per second to `url` for `secs` seconds.
pub fn load(url: &str, rate: u32, secs: u32) -> anyhow::Result<LoadResult> {
    if !(1..=20_000).contains(&rate) || !(1..=60).contains(&secs) {
        bail!("rate must be 1..=20000 and seconds 1..=60");
    }
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    // The serving agent's token, for what needs it (the journal); reads of the rest are open.
    let auth = format!("Bearer {TOKEN}");
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    // Warm the connections.
    for _ in 0..THREADS * 2 {
        let _ = http.get(url).header("authorization", &auth).call();
    }
    let begin = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let http = http.clone();
            let url = url.to_string();
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(total / THREADS + 1);
                let (mut errors, mut bytes, mut busy) = (0, 0, 0);
                for k in (t..total).step_by(THREADS) {
                    let due = begin + interval * k as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match http.get(&url).header("authorization", &auth).call() {
                        Ok(mut r) if r.status() == 200 => {
                            bytes = r.body_mut().read_to_vec().map_or(0, |b| b.len());
                        }
                        Ok(mut r) if r.status() == 503 => {
                            let _ = r.body_mut().read_to_vec();
                            busy += 1;
                        }
                        _ => errors += 1,
                    }
                    lat.push(Instant::now().duration_since(due));
                }
                (lat, errors, bytes, busy)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(total);
    let (mut errors, mut bytes, mut busy) = (0, 0, 0);
    for w in workers {
        let (l, e, b, n) = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        lat.extend(l);
        errors += e;
        bytes = bytes.max(b);
        busy += n;
    }
    let elapsed = begin.elapsed();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    Ok(LoadResult {
        path: url
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default(),
        rate,
        sent: lat.len(),
        errors,
        elapsed_s: elapsed.as_secs_f64(),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        max_ms: q(1.0),
        bytes,
        busy,
    })
}
