//! `cargo xtask bench [NAME…] [--quick]`: builds what the benchmarks need (optimised for speed), runs them,
//! and prints their figures. Run with no name and without `--quick`, it runs every benchmark and writes
//! `docs/BENCHMARKS.md` from that one run: the machine, the date, the command and each table.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::util::{perf_run, root, test_profile_run};

use crate::flags::{BenchName, Detection};

/// Benchmarks, in the order a full run takes them.
const KNOWN: &[BenchName] = &[
    BenchName::Gossip,
    BenchName::Peers,
    BenchName::Footprint,
    BenchName::Http,
    BenchName::Image,
];

impl BenchName {
    fn name(self) -> &'static str {
        match self {
            BenchName::Gossip => "gossip",
            BenchName::Peers => "peers",
            BenchName::Footprint => "footprint",
            BenchName::Http => "http",
            BenchName::Image => "image",
        }
    }
}

pub fn run(flags: &crate::flags::Bench) -> anyhow::Result<()> {
    let quick = flags.quick;
    let named = flags.names.clone();
    // The gossip benchmark's own flags, passed on as herd-bench reads them.
    let mut gossip_flags = Vec::new();
    if !flags.nodes.is_empty() {
        let sizes: Vec<String> = flags.nodes.iter().map(u32::to_string).collect();
        gossip_flags.push(format!("--nodes={}", sizes.join(",")));
    }
    if let Some(d) = flags.detection {
        let d = match d {
            Detection::Monitors => "monitors",
            Detection::Gossip => "gossip",
        };
        gossip_flags.push(format!("--detection={d}"));
    }
    let everything = named.is_empty();
    let names: Vec<BenchName> = if everything { KNOWN.to_vec() } else { named };
    if names.contains(&BenchName::Http) {
        // Its /api/v1/logs reads a journal written by systemd-journal-remote, with journalctl.
        crate::deps::ensure_packages("the HTTP benchmark", crate::packages::LOGS_TEST_NEEDS)?;
    }
    if names
        .iter()
        .any(|n| [BenchName::Image, BenchName::Footprint].contains(n))
    {
        // The image benchmark bakes the real aarch64 agent; the footprint one reports both binaries' sizes.
        crate::build::build_all()?;
    }
    if names.contains(&BenchName::Footprint) {
        if quick {
            // Quick runs only prove the benchmark still runs: the agent of the test build (what `cargo
            // test --workspace` built already) stands in for the shipped one, a minute's release build
            // saved. Asked for as cargo test builds it (the workspace's tests, so the same features):
            // `--package herd` alone resolves other features and rebuilt it (98 s in CI).
            let mut c = crate::util::cargo();
            c.args([
                "build",
                "--profile",
                "test",
                "--locked",
                "--workspace",
                "--tests",
            ]);
            crate::util::run("the agent (test build)", c)?;
        } else {
            // The measured agent: built for this machine as it is shipped (static musl, size-optimised).
            crate::build::build_for_this_machine()?;
        }
    }
    // The image benchmark measures `--packages` on herd's Debian base (built once, as root, if missing).
    let debian_base = if names.contains(&BenchName::Image) {
        use crate::base::{ensure, Suite};
        Some(ensure(herd_image::Arch::Arm64, Suite::Bookworm)?)
    } else {
        None
    };
    let mut report = Vec::new();
    for name in names.iter().map(|n| n.name()) {
        // Quick runs only prove a benchmark still runs: they reuse the test build.
        let run = if quick { test_profile_run } else { perf_run };
        let mut cmd = if name == "peers" {
            run("herd-peers", "herd-peers")
        } else {
            let mut c = run("herd-ci", "herd-bench");
            c.arg(name);
            c.args(&gossip_flags);
            c
        };
        if quick {
            cmd.arg("--quick");
        }
        if let Some(base) = debian_base.as_ref().filter(|_| name == "image") {
            cmd.env("HERD_BENCH_DEBIAN_BASE", base);
        }
        report.push((name, run_captured(name, cmd)?));
    }
    let partial = !gossip_flags.is_empty();
    if everything && !quick && !partial {
        write_report(&report)?;
    }
    Ok(())
}

/// Runs `cmd`, showing its output as it comes, and returns its standard output.
fn run_captured(name: &str, mut cmd: Command) -> anyhow::Result<String> {
    eprintln!("==> bench {name}");
    let started = std::time::Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start bench {name}"))?;
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("bench {name} failed ({status})");
    }
    eprintln!(
        "==> bench {name}: ok in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(key)
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
    })
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `docs/BENCHMARKS.md`, from one full run.
fn write_report(report: &[(&str, String)]) -> anyhow::Result<()> {
    let cpu =
        first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb as f64 / 1048576.0));
    let mut doc = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` (every benchmark, full size) from one run; do not edit by \
         hand: run it again. Each benchmark also has a quick mode (`--quick`) that `cargo xtask ci` runs, so \
         none of them can rot.\n\n",
    );
    doc.push_str(&format!(
        "- Machine: {cpu}, {cores} cores, {mem} RAM, Linux {}\n- Date: {}\n- Commit: {}\n- Reproduce all: \
         `cargo xtask bench`\n",
        command_output("uname", &["-r"]),
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_output("git", &["-C", &root().to_string_lossy(), "rev-parse", "--short", "HEAD"]),
    ));
    for (name, out) in report {
        let body = out.trim_start();
        // Each benchmark prints its own "## Title" first; the command goes under it.
        let (title, rest) = match body.split_once('\n') {
            Some((t, r)) if t.starts_with("## ") => (t.to_string(), r.to_string()),
            _ => (format!("## {name}"), body.to_string()),
        };
        doc.push_str(&format!(
            "\n{title}\n\nReproduce: `cargo xtask bench {name}`\n{rest}"
        ));
    }
    let dir = root().join("docs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("BENCHMARKS.md");
    let partial = dir.join(".BENCHMARKS.md.partial");
    std::fs::write(&partial, doc)?;
    std::fs::rename(&partial, &path)?;
    eprintln!("==> wrote {}", path.display());
    Ok(())
}
