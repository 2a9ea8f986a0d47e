//! `cargo xtask bench`: builds the benchmark driver optimised for speed and runs the named benchmarks.

use crate::util::{cargo, run as run_step};

/// Benchmarks `herd-bench` knows.
const KNOWN: &[&str] = &["gossip", "http", "image"];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    for a in args {
        if !a.starts_with("--") && !KNOWN.contains(&a.as_str()) {
            anyhow::bail!("unknown benchmark {a:?}; known: {}", KNOWN.join(", "));
        }
        if a.starts_with("--") && a != "--quick" {
            anyhow::bail!("unknown option {a:?}; known: --quick");
        }
    }
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if names.is_empty() || names.iter().any(|n| *n == "image") {
        // The image benchmark bakes the real aarch64 agent.
        crate::build::build_all()?;
    }
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--profile",
        "perf",
        "--package",
        "herd-ci",
        "--bin",
        "herd-bench",
        "--",
    ]);
    cmd.args(args);
    run_step("bench", cmd)
}
