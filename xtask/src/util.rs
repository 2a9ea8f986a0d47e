//! Running commands from tasks: always from the workspace root, echoed before they run, and failing with
//! the command line when they fail.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo that runs us, so toolchain overrides carry through.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// `cargo run` of a workspace binary in the `perf` profile (optimised for speed: what full benchmark
/// runs measure with); append the binary's arguments.
pub fn perf_run(package: &str, bin: &str) -> Command {
    run_in_profile("perf", package, bin)
}

/// `cargo run` of a workspace binary in the `test` profile (optimised, with debug assertions): what the
/// test harnesses and the benchmarks' quick modes run, so they reuse what `cargo test` already built
/// instead of compiling the workspace once more.
pub fn test_profile_run(package: &str, bin: &str) -> Command {
    run_in_profile("test", package, bin)
}

fn run_in_profile(profile: &str, package: &str, bin: &str) -> Command {
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--profile",
        profile,
        "--locked",
        "--package",
        package,
        "--bin",
        bin,
        "--",
    ]);
    c
}

/// Runs `cmd`, printing it first and its duration after; an error names the command.
pub fn run(step: &str, mut cmd: Command) -> anyhow::Result<()> {
    println!("==> {step}: {}", describe(&cmd));
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{step}: cannot start {}", describe(&cmd)))?;
    if !status.success() {
        bail!("{step} failed ({status}): {}", describe(&cmd));
    }
    println!("==> {step}: ok in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Whether `cmd` runs and succeeds, quietly.
pub fn succeeds(mut cmd: Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub use herd_image::cache_dir;
