//! `cargo xtask build`: release builds of the `herd` agent for the Raspberry Pi's two CPU families,
//! size-optimised, static (musl), with their prerequisites installed when possible.
//!
//! - 64-bit (`aarch64-unknown-linux-musl`): rustup ships its standard library and musl's C library and
//!   start files, and `rust-lld` (also shipped with Rust) links them: nothing else to install.
//! - 32-bit (`arm-unknown-linux-musleabihf`, ARMv6 + VFPv2, the baseline of Raspberry Pi OS's armhf
//!   userland, so it runs on a Pi Zero and Pi 1 too): where rustup can download its standard library,
//!   it is built like the 64-bit one. Where it can't (some mirrors answer 404 for this target), the
//!   standard library is built from `rust-src` (`-Zbuild-std`, enabled on the stable compiler by
//!   `RUSTC_BOOTSTRAP=1`, so it is the same compiler and the same std version as the rest of the
//!   build, and no second toolchain has to be downloaded) and zig, through cargo-zigbuild, provides
//!   musl's C library and start files built for ARMv6. Both come pinned, by hash, from PyPI into a
//!   virtual environment in herd's cache (`zig.rs`). Debian's `gcc-arm-linux-gnueabihf` cannot do this
//!   job: its C library and start files are ARMv7/Thumb-2.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use herd_image::Arch;

use crate::util::{cargo, root, run as run_step, succeeds};

/// The architectures the agent is built for, in the order `build_all` builds them.
pub const ARCHES: &[Arch] = &[Arch::Arm64, Arch::Armhf];

/// Where the release binary for `arch` lands.
pub fn binary(arch: Arch) -> PathBuf {
    herd_image::built_agent(arch)
}

/// Builds every architecture; returns the binaries.
pub fn build_all() -> anyhow::Result<Vec<PathBuf>> {
    ARCHES.iter().map(|a| build_one(*a)).collect()
}

/// How the standard library for a target comes.
enum Std {
    /// rustup's prebuilt one (with musl's C library, linked by rust-lld).
    Prebuilt,
    /// Built from rust-src; zig provides musl.
    FromSource,
}

/// Builds the agent for `arch`; returns the binary.
pub fn build_one(arch: Arch) -> anyhow::Result<PathBuf> {
    build_version(arch, None)
}

/// Builds the agent for `arch`, saying it is `version` (`HERD_VERSION`) when given; returns the binary.
pub fn build_version(arch: Arch, version: Option<&str>) -> anyhow::Result<PathBuf> {
    let bin = build_static(arch.agent_target(), version)?;
    debug_assert_eq!(bin, binary(arch));
    let size = std::fs::metadata(&bin)
        .with_context(|| format!("{} was not built", bin.display()))?
        .len();
    println!(
        "==> {} ({}): {} ({:.2} MB)",
        arch.agent_target(),
        arch.name(),
        bin.display(),
        size as f64 / 1e6
    );
    Ok(bin)
}

/// The agent as shipped (static, musl, size-optimised) for this machine's own CPU, which is what the
/// footprint benchmark measures.
pub fn build_for_this_machine() -> anyhow::Result<PathBuf> {
    build_static(
        &format!("{}-unknown-linux-musl", std::env::consts::ARCH),
        None,
    )
}

/// A static release build of the agent for a musl `triple`; returns the binary.
fn build_static(triple: &str, version: Option<&str>) -> anyhow::Result<PathBuf> {
    let std = ensure_std(triple)?;
    let mut c = match std {
        Std::Prebuilt => {
            let mut c = cargo();
            c.arg("build");
            c
        }
        Std::FromSource => {
            let bin = crate::zig::ensure()?;
            let mut c = Command::new(bin.join("cargo-zigbuild"));
            c.current_dir(root());
            c.arg("zigbuild");
            // cargo-zigbuild finds zig as `python3 -m ziglang` of the environment it came in.
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![bin];
            dirs.extend(std::env::split_paths(&path));
            c.env("PATH", std::env::join_paths(dirs)?);
            c.env("RUSTC_BOOTSTRAP", "1");
            // musl's start files come from zig, not from a self-contained set rustup did not ship.
            c.env(
                format!(
                    "CARGO_TARGET_{}_RUSTFLAGS",
                    triple.to_uppercase().replace('-', "_")
                ),
                "-C link-self-contained=no",
            );
            c.arg("-Zbuild-std=std,panic_abort");
            // A target directory of its own: RUSTC_BOOTSTRAP changes how proc-macro2 builds (its build
            // script probes for nightly features), so sharing the host crates with the other builds
            // would make each rebuild them for the other.
            c.arg("--target-dir").arg(root().join("target/build-std"));
            c
        }
    };
    // The agent's version (herd::VERSION) is the crate's unless HERD_VERSION says otherwise; an inherited
    // one must not leak into an image build.
    match version {
        Some(v) => c.env("HERD_VERSION", v),
        None => c.env_remove("HERD_VERSION"),
    };
    c.args([
        "--release",
        "--locked",
        "--package",
        "herd",
        "--bin",
        "herd",
        "--target",
        triple,
    ]);
    let how = match std {
        Std::Prebuilt => "rustup's std, rust-lld",
        Std::FromSource => "std from rust-src, zig's musl",
    };
    run_step(&format!("build {triple} ({how})"), c)?;
    let bin = root().join("target").join(triple).join("release/herd");
    if let Std::FromSource = std {
        // Where every build of the agent lands, whichever way its std came.
        let built = root()
            .join("target/build-std")
            .join(triple)
            .join("release/herd");
        std::fs::create_dir_all(bin.parent().expect("a directory"))?;
        let partial = bin.with_extension("partial");
        std::fs::copy(&built, &partial)
            .with_context(|| format!("{} was not built", built.display()))?;
        std::fs::rename(&partial, &bin)?;
    }
    Ok(bin)
}

/// Adds the rustup target when rustup can download its standard library, else makes sure `rust-src`
/// is there to build it.
fn ensure_std(triple: &str) -> anyhow::Result<Std> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup; install Rust with rustup (https://rustup.rs)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == triple)
    {
        return Ok(Std::Prebuilt);
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", triple]);
    println!("==> rustup target add {triple}");
    if succeeds(add) {
        return Ok(Std::Prebuilt);
    }
    println!(
        "==> rustup has no prebuilt standard library for {triple} here; building it from rust-src"
    );
    let mut src = Command::new("rustup");
    src.args(["component", "add", "rust-src"]);
    run_step("rustup component add rust-src", src).with_context(|| {
        format!(
            "cannot download rust-src, needed to build the standard library for {triple}; run: \
             rustup component add rust-src (or rustup target add {triple}, where it can be had)"
        )
    })?;
    Ok(Std::FromSource)
}
