//! `cargo xtask ci`: the whole test suite, exactly as CI runs it (`.ci/run` calls this).

use std::process::Command;

use anyhow::bail;

use crate::util::{cargo, run as run_step, succeeds};

pub fn run() -> anyhow::Result<()> {
    ensure_components()?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run_step("format", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run_step("clippy", clippy)?;

    let mut test = cargo();
    test.args(["test", "--workspace"]);
    run_step("tests", test)?;

    // Benchmarks run in their quick mode so that they cannot rot.
    crate::bench::run(&["--quick".to_string()])?;
    println!("==> ci: all green");
    Ok(())
}

/// rustfmt and clippy come with rustup; install them when they are missing.
fn ensure_components() -> anyhow::Result<()> {
    let have = |tool: &str| {
        let mut c = cargo();
        c.args([tool, "--version"]);
        succeeds(c)
    };
    if have("fmt") && have("clippy") {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rustfmt", "clippy"]);
    if run_step("install rustfmt and clippy", add).is_err() {
        bail!("rustfmt and clippy are missing; install them with: rustup component add rustfmt clippy");
    }
    Ok(())
}
