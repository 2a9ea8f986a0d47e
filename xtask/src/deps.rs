//! What tasks need from the machine: Debian packages, installed when we run as root, else named in the
//! exact command to run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// A program a task runs, and the Debian package that ships it.
pub struct Need {
    pub program: &'static str,
    pub package: &'static str,
}

pub const fn need(program: &'static str, package: &'static str) -> Need {
    Need { program, package }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn installed(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// Makes sure every program of `needs` is there; installs the missing packages with apt when root.
pub fn ensure_packages(purpose: &str, needs: &[Need]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .filter(|n| !installed(n.program))
        .map(|n| n.package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("{purpose} needs Debian packages that are missing; install them with:\n    sudo apt-get install -y {list}");
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
    result.with_context(|| format!("{purpose}: installing {list}; try: apt-get install -y {list}"))
}
