//! `cargo xtask image --packages` on real cards: the 64-bit images carry nginx-light (and what it needs
//! that the base lacks) on their boot partition; each VM, on a LAN with no route to any archive,
//! installs them at its first boot with its own apt (`herd-packages.service`), its nginx answers on port
//! 80, the boot partition's copies are gone, the status file says installed, and another card's API shows
//! the card's `packages` health check ok, through the gossip.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::bail;
use herd::release::packages::Manifest;

use super::vm::Vm;
use super::{check_of, ssh, until, Options};

/// First boot under TCG installs a few packages in well under this (measured: printed by the run).
const INSTALLED_DEADLINE: Duration = Duration::from_secs(300);

/// The manifest the image carries, if it carries packages.
pub fn carried(image: &std::path::Path) -> anyhow::Result<Option<Manifest>> {
    let img = herd_image::Image::open(image)?;
    let boot = img.boot()?;
    if !boot.exists(herd::release::packages::MANIFEST) {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(
        &boot.read(herd::release::packages::MANIFEST)?,
    )?))
}

/// nginx's page on port 80 of a VM (from inside host 0's namespace).
fn web_page(ip: Ipv4Addr) -> Option<String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .build(),
    );
    agent
        .get(&format!("http://{ip}/"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

pub fn installed(vms: &[Vm], opts: &Options, manifest: Option<&Manifest>) -> anyhow::Result<()> {
    let Some(m) = manifest else {
        return Ok(());
    };
    let (Some(user), Some(identity)) = (opts.user.as_deref(), opts.ssh_identity.as_deref()) else {
        println!("    packages: skipped (no user and key given)");
        return Ok(());
    };
    let watcher = &vms[0];
    let mut took = Vec::new();
    for vm in vms {
        until(
            Instant::now(),
            INSTALLED_DEADLINE,
            &format!(
                "{}: nginx (from the image's packages) answers on port 80",
                vm.name
            ),
            || web_page(vm.ip).filter(|page| page.contains("nginx")),
        )?;
        let said = ssh(
            vm,
            user,
            identity,
            "if [ -e /boot/firmware/herd-packages ]; then echo copies=left; else echo copies=freed; fi; \
             cat /var/lib/herd-packages/status.json; echo; \
             systemctl show herd-packages.service -p ExecMainStartTimestampMonotonic \
             -p ExecMainExitTimestampMonotonic -p Result",
            None,
        )
        .unwrap_or_default();
        let field = |name: &str| {
            said.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("")
                .to_string()
        };
        if field("copies") != "freed"
            || !said.contains("\"outcome\": \"installed\"")
            || field("Result") != "success"
        {
            bail!(
                "{}: the image's packages are not installed and cleared as they should be:\n{said}",
                vm.name
            );
        }
        let us = |name: &str| field(name).parse::<u64>().unwrap_or(0);
        took.push(
            us("ExecMainExitTimestampMonotonic")
                .saturating_sub(us("ExecMainStartTimestampMonotonic")) as f64
                / 1e6,
        );
        until(
            Instant::now(),
            Duration::from_secs(60),
            &format!("{}'s packages shown installed on {}", vm.name, watcher.name),
            || check_of(watcher.ip, &vm.id, "packages").filter(|(state, _)| state == "ok"),
        )?;
    }
    let (lo, hi) = took
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    println!(
        "    packages: {} ({} files, {:.1} MB) installed at first boot on every VM, offline, in \
         {lo:.0}–{hi:.0} s; nginx answers on port 80; the boot partition's copies freed; each shown ok \
         on {}",
        m.requested.join(", "),
        m.debs.len(),
        m.debs.iter().map(|d| d.size).sum::<u64>() as f64 / 1e6,
        watcher.name
    );
    Ok(())
}
