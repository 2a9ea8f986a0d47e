//! zig and cargo-zigbuild, the linker of the ARMv6 agent (see `build.rs` for why), installed from PyPI,
//! pinned by hash (`xtask/zig/requirements.txt`), into a Python virtual environment in herd's cache,
//! named by the hash of that file: a changed pin makes a new one, and no clone installs it twice.
//! Two builds at once (two clones, a build beside `cargo xtask ci`) take turns: the install holds a lock.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::deps::ensure_packages;
use crate::util::{cache_dir, run as run_step};

const REQUIREMENTS: &str = include_str!("../zig/requirements.txt");

/// The environment's `bin` directory, holding `cargo-zigbuild` and a `python3` that has `ziglang`.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let hash: String = Sha256::digest(REQUIREMENTS.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache_dir().join("tools").join(format!("zig-{hash}"));
    let bin = dir.join("bin");
    let done = dir.join(".installed");
    if done.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(cache_dir().join("tools"))?;
    let lock_path = cache_dir().join("tools").join(format!("zig-{hash}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "==> another build is installing zig into {}: waiting for it",
            dir.display()
        );
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    }
    // Whoever held the lock may have finished the install.
    if done.exists() {
        return Ok(bin);
    }
    // Debian's python3 has no venv (nor pip) without python3-venv.
    ensure_packages(
        "the ARMv6 agent's linker (zig from PyPI)",
        crate::packages::ZIG_NEEDS,
    )?;
    if dir.exists() {
        // Left by an interrupted install. A virtual environment cannot be moved once made (its
        // scripts name its path), so it is made in place and marked complete at the end.
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let result = (|| -> anyhow::Result<()> {
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv"]).arg(&dir);
        run_step("python3 -m venv (for zig)", venv)?;
        let req = dir.join("requirements.txt");
        std::fs::write(&req, REQUIREMENTS)?;
        let mut pip = Command::new(bin.join("python3"));
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--only-binary=:all:",
            "--no-deps",
            "-r",
        ])
        .arg(&req);
        run_step("pip install ziglang cargo-zigbuild (about 100 MB)", pip)?;
        let mut check = Command::new(bin.join("python3"));
        check.args(["-m", "ziglang", "version"]);
        let out = check.output().context("cannot run zig")?;
        if !out.status.success() {
            bail!("zig does not run: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(&done, &out.stdout)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.context(format!(
            "cannot install zig and cargo-zigbuild into {} (it is removed again; the next build retries). \
             To make it by hand where the build looks for it: python3 -m venv {0} && {0}/bin/pip install \
             --require-hashes --only-binary=:all: --no-deps -r xtask/zig/requirements.txt && \
             {0}/bin/python3 -m ziglang version > {0}/.installed",
            dir.display()
        )));
    }
    Ok(bin)
}
