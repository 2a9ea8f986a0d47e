//! What tasks need from the machine: Debian packages, installed when we run as root, else named in the
//! exact command to run. Packages are installed without their "recommends" (a server or CI machine
//! installs them so), so every list names each package whose files a task uses, not only the one that
//! ships the program it calls; `cargo xtask bare` proves the lists on a bare Debian root.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// How to tell that a package a task needs is there.
#[derive(Clone, Copy)]
pub enum Probe {
    /// A program on `PATH` (or in `/usr/sbin`, `/sbin`), or an absolute path.
    Program(&'static str),
    /// A Python module importable by the system's `python3`.
    PythonModule(&'static str),
}

/// Something a task uses, and the Debian package that brings it.
pub struct Need {
    pub probe: Probe,
    pub package: &'static str,
}

/// A program (or a file, by absolute path) from a Debian package.
pub const fn need(program: &'static str, package: &'static str) -> Need {
    Need {
        probe: Probe::Program(program),
        package,
    }
}

/// A Python module of the system's `python3`, from a Debian package.
pub const fn need_python(module: &'static str, package: &'static str) -> Need {
    Need {
        probe: Probe::PythonModule(module),
        package,
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn installed(probe: Probe) -> bool {
    match probe {
        Probe::Program(program) if program.contains('/') => Path::new(program).exists(),
        Probe::Program(program) => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .any(|dir| dir.join(program).is_file())
        }
        Probe::PythonModule(module) => Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// Makes sure every program of `needs` is there; installs the missing packages with apt when root.
pub fn ensure_packages(purpose: &str, needs: &[Need]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .filter(|n| !installed(n.probe))
        .map(|n| n.package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("{purpose} needs Debian packages that are missing; install them with:\n    sudo apt-get install -y --no-install-recommends {list}");
    }
    println!("==> {purpose}: installing {list}");
    // Daemons such as avahi-daemon must not start on this machine's own interfaces when installed: a
    // policy-rc.d that says "no" keeps invoke-rc.d and deb-systemd-invoke from starting them.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask while installing packages\nexit 101\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = (|| -> anyhow::Result<()> {
        let apt = |args: &[&str]| -> anyhow::Result<()> {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .context("cannot run apt-get")?;
            if !status.success() {
                bail!("apt-get {} failed ({status})", args.join(" "));
            }
            Ok(())
        };
        apt(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(missing.iter().copied());
        apt(&args)
    })();
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result.with_context(|| {
        format!(
            "{purpose}: installing {list}; try: apt-get install -y --no-install-recommends {list}"
        )
    })?;
    // A package that installed but still leaves a probe unmet is a wrong list: say so now, not later.
    let still: Vec<&str> = needs
        .iter()
        .filter(|n| !installed(n.probe))
        .map(|n| n.package)
        .collect();
    if !still.is_empty() {
        bail!(
            "{purpose}: installed {list}, but what {} should bring is still missing",
            still.join(", ")
        );
    }
    Ok(())
}
