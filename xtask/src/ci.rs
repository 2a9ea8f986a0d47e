//! `cargo xtask ci`: the whole test suite, exactly as CI runs it (`.ci/run` calls this).

use std::process::Command;

use anyhow::{bail, Context};

use crate::deps::is_root;
use crate::util::{cargo, run as run_step, succeeds};

pub fn run() -> anyhow::Result<()> {
    ensure_components()?;
    if !is_root() {
        bail!(
            "the multi-host tests build LANs of network namespaces, which needs root; run as root:\n    \
             sudo env PATH=\"$PATH\" cargo xtask ci"
        );
    }
    crate::packages::ensure_tests()?;
    // The image tests bake and run the cross-built agents.
    crate::build::build_all()?;
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
    let (passed, failed) = run_tests(test)?;

    // Boot-and-join: the real image in QEMU (the Debian bases are cached outside the repository).
    crate::e2e::run(&crate::flags::E2e { no_armhf: false })?;
    // Benchmarks run in their quick mode so that they cannot rot (after the e2e test, which builds the
    // Debian base the image benchmark's `--packages` row bakes).
    crate::bench::run(&crate::flags::Bench {
        names: Vec::new(),
        quick: true,
        nodes: Vec::new(),
        detection: None,
    })?;
    // The README's set-up from a bare Debian root: proves the package lists above and the main command's.
    crate::bare::run()?;
    println!("==> ci: all green");
    // The closing line counts every test of every test binary, for whoever reads the log last.
    println!("{passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up the `test result:` lines of all test binaries.
fn run_tests(mut cmd: Command) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead;
    println!("==> tests: cargo test --workspace");
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("tests: cannot start cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("tests: reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("{passed} passed, {failed} failed");
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("tests: cargo test ran no test at all");
    }
    println!(
        "==> tests: {passed} passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok((passed, failed))
}

/// The number just before `label` in `text` ("ok. 25 passed; 0 failed" → 25 for " passed").
fn count_before(text: &str, label: &str) -> u64 {
    text.find(label)
        .and_then(|end| text[..end].rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn counts_cargo_test_results() {
        let line =
            "ok. 25 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.07s";
        assert_eq!(count_before(line, " passed"), 25);
        assert_eq!(count_before(line, " failed"), 3);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " failed"), 1);
    }
}
