//! Issue 28, 3, in VMs that already boot (the first arm64 round): herd's actions through the card's real
//! herd-action.path and herd-action.service. identify answers "no activity LED" (QEMU's `virt` board has
//! none); restart brings the agent back with a new generation; reboot is seen `left`, then the card
//! comes back with a new generation (both on the third VM, the plain one, which the round then crashes);
//! shutdown ([`shutdown`], the round's leave, on the second) is seen `left` and the card stays off. QEMU runs with `-no-reboot`, so a guest's reboot ends its QEMU, and the harness powers
//! the card on again, as a Pi's firmware does after the reset: the kernel's last console line says which
//! of the two the card asked for.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd::client::Client;
use herd::model::actions::Action;

use super::vm::{console_has, Vm};
use super::{agents_up, get_json, secs, state_of, until, Restart, LEAVE_DEADLINE};

/// (state, generation) of node `id` as the VM at `ip` shows it.
fn seen(ip: std::net::Ipv4Addr, id: &str) -> Option<(String, u64)> {
    let v = get_json(ip, "/api/v1/nodes").ok()?;
    let n = v.as_array()?.iter().find(|n| n["id"] == id)?;
    Some((n["state"].as_str()?.to_string(), n["generation"].as_u64()?))
}

fn ask(vm: &Vm, token: &str, action: Action) -> anyhow::Result<String> {
    let view = Client::new(&vm.ip.to_string(), Some(token.to_string()))?
        .action(action)
        .with_context(|| format!("{}: herd {}", vm.name, action.as_str()))?;
    Ok(view.said)
}

/// Until `watcher` sees `id` alive with a generation above `above`; when.
fn back(
    watcher: &Vm,
    id: &str,
    above: u64,
    limit: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    let since = Instant::now();
    until(since, limit, what, || {
        seen(watcher.ip, id)
            .filter(|(state, generation)| state == "alive" && *generation > above)
            .map(|_| since.elapsed())
    })
}

/// identify on the first VM; restart and reboot on the third, watched from the first.
/// Asks `vms[i]` to reboot or shut down: vm0 must see it left, then its QEMU ends, with the kernel's
/// last words of that action on the console. When it was seen left, and when QEMU ended.
fn power_action(
    vms: &mut [Vm],
    i: usize,
    token: &str,
    action: Action,
) -> anyhow::Result<(Duration, Duration)> {
    let (verb, last_words) = match action {
        Action::Reboot => ("reboot", "reboot: Restarting system"),
        Action::Shutdown => ("shutdown", "reboot: Power down"),
        other => bail!("{other:?} does not end the VM"),
    };
    let (watcher, watcher_name) = (vms[0].ip, vms[0].name.clone());
    let vm = &mut vms[i];
    let id = vm.id.clone();
    let asked = Instant::now();
    ask(vm, token, action)?;
    let left = until(
        asked,
        LEAVE_DEADLINE,
        &format!("{watcher_name} sees {} left after herd {verb}", vm.name),
        || (state_of(watcher, &id).as_deref() == Some("left")).then(|| asked.elapsed()),
    )?;
    let ended = until(
        asked,
        LEAVE_DEADLINE,
        &format!("{}'s QEMU ends after herd {verb}", vm.name),
        || vm.child.try_wait().ok().flatten().map(|_| asked.elapsed()),
    )?;
    if !console_has(vm, last_words) {
        bail!(
            "{}: herd {verb} did not end in {last_words:?} (the console's end: {:?})",
            vm.name,
            super::vm::console_tail(vm)
        );
    }
    Ok((left, ended))
}

pub(super) fn run(vms: &mut [Vm], secrets: &Path, restart: Restart) -> anyhow::Result<()> {
    let token = super::upgrade::secret(secrets, "api_token")?;
    let e = ask(&vms[0], &token, Action::Identify)
        .err()
        .context("identify on a board without LEDs was taken")?;
    if !format!("{e:#}").contains("no activity LED") {
        bail!("{}: identify: {e:#}", vms[0].name);
    }

    let id = vms[2].id.clone();
    let (_, before) = seen(vms[0].ip, &id).context("vm0 does not list vm2")?;
    ask(&vms[2], &token, Action::Restart)?;
    let restarted = back(
        &vms[0],
        &id,
        before,
        Duration::from_secs(120),
        "vm0 sees vm2's agent back with a new generation after herd restart",
    )?;
    if !console_has(&vms[2], "herd action-apply: restart asked by") {
        bail!(
            "{}: herd-action.service did not log the restart and who asked",
            vms[2].name
        );
    }

    let (_, before) = seen(vms[0].ip, &id).context("vm0 does not list vm2")?;
    let (left, _) = power_action(vms, 2, &token, Action::Reboot)?;
    // The round's table keeps the first boot's figures.
    let (up, joined) = (vms[2].up, vms[2].joined);
    vms[2] = restart(2)?;
    agents_up(&mut vms[2..3], "vm2's agent answers after herd reboot")?;
    (vms[2].up, vms[2].joined) = (up, joined);
    let rebooted = back(
        &vms[0],
        &id,
        before,
        super::JOIN_DEADLINE,
        "vm0 sees vm2 back with a new generation after herd reboot",
    )?;
    // Every VM lists all three alive again before the round goes on (vm2's crash comes next, and
    // vm0 and vm1 must both see it).
    let mut all: Vec<String> = vms.iter().map(|v| v.ip.to_string()).collect();
    all.sort();
    for vm in vms.iter() {
        until(
            Instant::now(),
            super::JOIN_DEADLINE,
            &format!("{} lists all three alive after vm2's reboot", vm.name),
            || super::alive(vm.ip).ok().filter(|a| *a == all),
        )?;
    }
    println!(
        "    actions: identify on {}: no activity LED; herd restart {}: back after {}; herd reboot: \
         left after {}, back (new generation) {} after power-on",
        vms[0].name,
        vms[2].name,
        secs(Some(restarted)),
        secs(Some(left)),
        secs(Some(rebooted))
    );
    Ok(())
}

/// The round's leave, by `herd shutdown` on `vms[1]`: seen left on vm0, then the VM powers off (the
/// kernel's "Power down", not a restart). When vm0 saw it left.
pub(super) fn shutdown(vms: &mut [Vm], secrets: &Path) -> anyhow::Result<Duration> {
    let token = super::upgrade::secret(secrets, "api_token")?;
    let (left, off) = power_action(vms, 1, &token, Action::Shutdown)?;
    println!(
        "    {} herd shutdown: left on {} after {}, powered off after {}",
        vms[1].name,
        vms[0].name,
        secs(Some(left)),
        secs(Some(off))
    );
    Ok(left)
}
