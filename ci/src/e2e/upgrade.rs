//! `herd upgrade` on booted VMs: artifacts signed with another key or with an altered binary are refused
//! by every node; a broken build (it says its version, then exits at start) is installed on the first
//! node only, which rolls itself back, and the rollout stops naming it; a second build of the agent
//! (same code, another version) is rolled out to all three, and the third VM loses power (QMP `quit`)
//! while its new agent proves itself (the rollout waiting on it meanwhile): it boots into a working
//! agent, and every VM ends up reporting the new version. The operator's side is `herd upgrade` itself
//! (the library the CLI runs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd::ops::upgrade::Upgrade;
use herd::release::{self, Arch, SigningKey};

use super::vm::{power_cut, Vm};
use super::{get_json, secs, until};

/// The artifacts (made by `cargo xtask e2e` with `cargo xtask release`) and the cluster's secrets.
#[derive(Debug, Clone)]
pub struct Options {
    /// A second build of the agent: same code, another version.
    pub good: PathBuf,
    /// A build that says its version and exits at start.
    pub broken: PathBuf,
    /// `secrets/e2e.toml`: the API token and the public signing key.
    pub secrets: PathBuf,
}

/// What the power cut showed, for the round's table.
pub(super) struct Cut {
    /// When vm0 and vm1 saw the VM that lost power dead, from the cut.
    pub detected: [Option<Duration>; 2],
}

pub(super) fn secret(secrets: &Path, key: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(secrets)
        .with_context(|| format!("cannot read {}", secrets.display()))?;
    let table: toml::Table = text.parse()?;
    table
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no {key}", secrets.display()))
}

fn rollout(opts: &Options, to: &Path, entry: &Vm, timeout: Duration) -> Upgrade {
    Upgrade {
        to: Some(to.to_path_buf()),
        build: false,
        status: false,
        batch: 1,
        timeout,
        dry_run: false,
        allow_downgrade: false,
        target: herd::ops::cli::Target {
            node: Some(format!("http://{}:8080", entry.ip)),
            cluster: None,
            token: None,
            secrets: Some(opts.secrets.clone()),
            json: false,
            token_to_older_agents: false,
            entry: Default::default(),
        },
    }
}

/// The version each VM reports for each node (`/api/v1/nodes`), when every VM lists all alive.
fn versions(vms: &[Vm]) -> Option<Vec<Vec<String>>> {
    let mut all = Vec::new();
    for vm in vms {
        let v = get_json(vm.ip, "/api/v1/nodes").ok()?;
        let list = v.as_array()?;
        if list.len() != vms.len() || list.iter().any(|n| n["state"] != "alive") {
            return None;
        }
        all.push(
            list.iter()
                .map(|n| n["version"].as_str().unwrap_or("").to_string())
                .collect(),
        );
    }
    Some(all)
}

/// Until every VM sees every VM alive at `version`.
fn all_at(vms: &[Vm], version: &str, limit: Duration, what: &str) -> anyhow::Result<Duration> {
    let since = Instant::now();
    until(since, limit, what, || {
        versions(vms)
            .filter(|v| v.iter().flatten().all(|x| x == version))
            .map(|_| since.elapsed())
    })
}

pub(super) fn run(
    opts: &Options,
    vms: &mut [Vm],
    restart: &dyn Fn(usize) -> anyhow::Result<Vm>,
) -> anyhow::Result<Cut> {
    let good = std::fs::read(&opts.good)?;
    let new_version = release::peek(&good)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.good.display()))?
        .version;
    let old_version = versions(vms)
        .and_then(|v| v.first().and_then(|x| x.first().cloned()))
        .context("the VMs do not all list each other alive")?;
    let token = secret(&opts.secrets, "api_token")?;
    let public = release::PublicKey::from_base64(&secret(&opts.secrets, "signing_public_key")?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("==> e2e: herd upgrade from {old_version} to {new_version}");

    // 1. Another key; a binary altered after signing: every node refuses both, and keeps neither.
    let binary = release::open(&good, &public, "e2e")
        .and_then(|a| a.binary(Arch::Arm64))
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.good.display()))?;
    let stranger = SigningKey::generate()?;
    let foreign = release::pack(&stranger, "e2e", &new_version, &[(Arch::Arm64, binary)])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut altered = good.clone();
    let at = altered.len() - 4096;
    altered[at] ^= 0x01;
    for vm in vms.iter() {
        let node = herd::client::Client::new(&vm.ip.to_string(), Some(token.clone()))?;
        for (what, bytes, want) in [
            (
                "signed with another key",
                &foreign,
                "not signed by this cluster",
            ),
            ("with an altered binary", &altered, "SHA-256"),
        ] {
            match node.upload(bytes) {
                Ok(_) => bail!("{}: took an artifact {what}", vm.name),
                Err(e) if format!("{e:#}").contains(want) => {}
                Err(e) => bail!(
                    "{}: refused an artifact {what}, but not for that: {e:#}",
                    vm.name
                ),
            }
        }
        if node.upgrade_view()?.artifact.is_some() {
            bail!("{}: kept a refused artifact", vm.name);
        }
    }
    println!(
        "    an artifact signed with another key and one with an altered binary: refused by all {} \
         (\"not signed by this cluster's signing key\", \"does not match its SHA-256\")",
        vms.len()
    );

    // 2. A broken build: the first node installs it, fails to prove it, rolls back; the rollout stops.
    let t = Instant::now();
    let broken = herd::ops::upgrade::run(&rollout(
        opts,
        &opts.broken,
        &vms[0],
        Duration::from_secs(30),
    ));
    let e = match broken {
        Ok(r) => bail!("the broken build was rolled out: {r:?}"),
        Err(e) => format!("{e:#}"),
    };
    if !e.contains(&vms[0].hostname) || !e.contains("rolled back") {
        bail!(
            "the rollout of the broken build did not stop naming {}: {e}",
            vms[0].hostname
        );
    }
    let back = all_at(
        vms,
        &old_version,
        Duration::from_secs(120),
        "every VM sees all three alive at the old version after the rollback",
    )?;
    println!(
        "    a broken build (exits at start): {} rolled it back by itself, the rollout stopped naming it \
         after {}, all three alive at {old_version} {} later",
        vms[0].name,
        secs(Some(t.elapsed() - back)),
        secs(Some(back))
    );
    println!(
        "      herd upgrade said: {}",
        e.lines().next().unwrap_or("")
    );

    // 3. The second build to all three; the third VM loses power while its new agent proves itself.
    let t = Instant::now();
    let plan = rollout(opts, &opts.good, &vms[0], Duration::from_secs(60));
    let good_sha = release::sha256_hex(&good);
    let operator = std::thread::spawn(move || herd::ops::upgrade::run(&plan));
    // The cut comes once the new agent answers and is still on trial (its installer has not yet seen
    // every peer agree): the binary swapped, the old one kept, the outcome open. Polled often: that
    // window lasts a second or two.
    let proving = loop {
        if let Ok(v) = get_json(vms[2].ip, "/api/v1/upgrade") {
            if v["last"]["stage"] == "proving"
                && v["last"]["sha256"] == good_sha.as_str()
                && v["version"] == new_version.as_str()
            {
                break t.elapsed();
            }
        }
        if t.elapsed() > Duration::from_secs(400) {
            bail!("vm2's new agent was never seen on trial within 400 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let cut = Instant::now();
    power_cut(&vms[2].qmp)?;
    vms[2].child.wait()?;
    let dead_id = vms[2].id.clone();
    // Its peers call it dead, or left: its old agent said goodbye when it was restarted, and the new
    // one may have lost power before they heard from it (it answers HTTP before its first gossip
    // round reaches anyone). Either way, not alive.
    let mut detected = [None, None];
    let mut verdicts = [String::new(), String::new()];
    until(
        cut,
        super::DETECT_DEADLINE,
        "vm0 and vm1 report the VM that lost power dead (or left)",
        || {
            for (i, d) in detected.iter_mut().enumerate() {
                let state = super::state_of(vms[i].ip, &dead_id);
                if d.is_none() && matches!(state.as_deref(), Some("dead" | "left")) {
                    *d = Some(cut.elapsed());
                    verdicts[i] = state.unwrap_or_default();
                }
            }
            detected.iter().all(Option::is_some).then_some(())
        },
    )?;
    println!(
        "    {} lost power {} into the rollout, its new agent on trial: {} on {} after {}, {} on {} after {}",
        vms[2].name,
        secs(Some(proving)),
        verdicts[0],
        vms[0].name,
        secs(detected[0]),
        verdicts[1],
        vms[1].name,
        secs(detected[1])
    );
    let old_id = vms[2].id.clone();
    vms[2] = restart(2)?;
    super::agents_up(
        &mut vms[2..],
        "the VM that lost power boots into a working agent",
    )?;
    if vms[2].id != old_id {
        bail!(
            "{}: came back as node {}, not {old_id}",
            vms[2].name,
            vms[2].id
        );
    }
    let after = get_json(vms[2].ip, "/api/v1/upgrade")?;
    println!(
        "    {} powered on: agent {} up after {}, its upgrade {}",
        vms[2].name,
        after["version"].as_str().unwrap_or("?"),
        secs(vms[2].up),
        after["last"]["stage"].as_str().unwrap_or("?")
    );
    let first = operator
        .join()
        .map_err(|_| anyhow::anyhow!("the rollout thread panicked"))?;
    match &first {
        Ok(r) => println!("    herd upgrade finished: upgraded {:?}", r.upgraded),
        Err(e) => println!(
            "    herd upgrade stopped: {}",
            format!("{e:#}").lines().next().unwrap_or("")
        ),
    }
    // Whatever the cut left, running the rollout again finishes it.
    let again =
        herd::ops::upgrade::run(&rollout(opts, &opts.good, &vms[0], Duration::from_secs(60)))
            .context("herd upgrade, run again after the power cut")?;
    all_at(
        vms,
        &new_version,
        Duration::from_secs(120),
        "every VM sees all three alive at the new version",
    )?;
    println!(
        "    run again: upgraded {:?}; every VM reports all three alive at {new_version} ({} in all)",
        again.upgraded,
        secs(Some(t.elapsed()))
    );
    Ok(Cut { detected })
}
