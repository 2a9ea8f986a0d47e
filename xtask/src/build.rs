//! `cargo xtask build`: release builds of the `herd` agent for the Raspberry Pi targets, size-optimised,
//! with their prerequisites (rustup targets, Debian's cross linkers) installed when possible.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::deps::{ensure_packages, need};
use crate::util::{cargo, root, run as run_step};

/// A Raspberry Pi OS flavour and the Rust target that builds for it.
pub struct Target {
    /// Debian's architecture name, as in the image (`arm64`, `armhf`).
    pub debian: &'static str,
    pub triple: &'static str,
    linker: &'static str,
    package: &'static str,
}

pub const TARGETS: &[Target] = &[
    Target {
        debian: "arm64",
        triple: "aarch64-unknown-linux-gnu",
        linker: "aarch64-linux-gnu-gcc",
        package: "gcc-aarch64-linux-gnu",
    },
    Target {
        debian: "armhf",
        triple: "armv7-unknown-linux-gnueabihf",
        linker: "arm-linux-gnueabihf-gcc",
        package: "gcc-arm-linux-gnueabihf",
    },
];

/// Where the release binary for `t` lands.
pub fn binary(t: &Target) -> PathBuf {
    root()
        .join("target")
        .join(t.triple)
        .join("release")
        .join("herd")
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("unknown argument {a:?}: `cargo xtask build` takes none");
    }
    build_all()?;
    Ok(())
}

/// Builds every target; returns the binaries.
pub fn build_all() -> anyhow::Result<Vec<PathBuf>> {
    TARGETS.iter().map(build_one).collect()
}

/// Builds one target; returns the binary.
pub fn build_one(t: &Target) -> anyhow::Result<PathBuf> {
    ensure_targets()?;
    ensure_packages("cross-compiling herd", &[need(t.linker, t.package)])?;
    {
        let mut c = cargo();
        c.args([
            "build",
            "--release",
            "--locked",
            "--package",
            "herd",
            "--bin",
            "herd",
        ]);
        c.args(["--target", t.triple]);
        run_step(&format!("build {}", t.triple), c)?;
        let bin = binary(t);
        let size = std::fs::metadata(&bin)
            .with_context(|| format!("{} was not built", bin.display()))?
            .len();
        println!(
            "==> {} ({}): {} ({:.2} MB)",
            t.triple,
            t.debian,
            bin.display(),
            size as f64 / 1e6
        );
        Ok(bin)
    }
}

/// Adds the rustup targets that are missing.
fn ensure_targets() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup; install Rust with rustup (https://rustup.rs)")?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = TARGETS
        .iter()
        .map(|t| t.triple)
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add"]).args(&missing);
    run_step("rustup targets", add).with_context(|| {
        format!(
            "cannot add the Rust targets; run: rustup target add {}",
            missing.join(" ")
        )
    })
}
