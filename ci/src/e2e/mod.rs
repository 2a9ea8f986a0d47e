//! Boot-and-join, proven on the real image: copies of one herd image boot in QEMU (`-M virt`, kernel and
//! initrd read from the image's own root file system, the disk as virtio), their NICs on the bridge of a
//! `netns::Lan`, with dnsmasq handing out addresses from the LAN's first host, which is also where the
//! harness talks to the VMs' APIs from. Nothing leaves the namespaces. The VMs find each other with mDNS
//! alone (the image has no seeds); then one is killed (SIGKILL to QEMU: a crash) and one is powered off
//! through its power button (QMP `system_powerdown`: systemd stops herd, which says goodbye), and the
//! survivors must tell the two apart. Each VM's serial console is kept in the output directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd_image::Arch;

use crate::netns::Lan;

mod actions;
mod packages;
mod upgrade;
mod vm;
mod wifi;

pub use upgrade::Options as UpgradeOptions;
pub use wifi::Options as WifiOptions;

use vm::{
    check_running, console_has, disk_copy, extract_boot, power_button, start_dhcp, start_vm, Vm,
};

/// What to boot.
pub struct Options {
    /// The herd image for arm64 (three VMs boot copies of it).
    pub arm64: PathBuf,
    /// Another arm64 herd image (another Raspberry Pi OS release): three more VMs, after the first three.
    pub arm64_other: Option<PathBuf>,
    /// The herd image for armhf (one VM), if any.
    pub armhf: Option<PathBuf>,
    /// Where the disks, kernels and serial consoles go.
    pub out: PathBuf,
    /// The user the images were built with (`--user`): each VM must have created it from userconf.txt.
    pub user: Option<String>,
    /// The private half of the key the images authorise for `user` (`--ssh-key`): the test logs in.
    pub ssh_identity: Option<PathBuf>,
    /// The `user`'s password (`--password-file`): sudo asks for it, as on Raspberry Pi OS since 2026.
    pub password: Option<String>,
    /// The Wi-Fi network the images were built for: the second VM of a round whose image has Wi-Fi and
    /// NetworkManager gets a simulated radio and an access point (`wifi.rs`).
    pub wifi: Option<WifiOptions>,
    /// `herd upgrade`'s artifacts: tried on the last arm64 round (`upgrade.rs`), whose third VM then
    /// loses power mid-upgrade instead of being killed.
    pub upgrade: Option<UpgradeOptions>,
}

/// What Raspberry Pi Imager wrote onto the boot partition of a round's first VM, as it does when its
/// user customises the OS: names the card `imager-name`, allows password SSH and (on Trixie) adds a user.
/// On a herd image, herd's per-card name must still win, an image built key-only stays key-only, herd's
/// `--user` is still made and its Wi-Fi is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imager {
    /// Trixie (`init_format: cloudinit-rpi`): cloud-init user-data.
    UserData,
    /// Bookworm (`init_format: systemd`): `firstrun.sh`, run from the kernel command line.
    FirstRun,
}

/// The user Imager's user-data adds.
const IMAGER_USER: &str = "imager-user";

/// The user-data Imager writes (rpi-imager `src/customization_generator.cpp` at commit 72ad1179,
/// `generateCloudInitUserData`): `hostname` and `manage_etc_hosts: true` (lines 554-555), the singular
/// `user:` with `name`, `shell`, `lock_passwd: false`, the quoted `passwd` hash and `sudo: null`
/// (lines 608-650), `ssh_pwauth: true` (line 663). Left out: the `packages: [avahi-daemon]` and `apt:`
/// lines it writes with a host name (559-569): the VMs have no Debian mirror, and herd images have
/// avahi-daemon.
fn imager_user_data(hash: &str) -> String {
    format!(
        "#cloud-config\nhostname: imager-name\nmanage_etc_hosts: true\nuser:\n  name: {IMAGER_USER}\n  \
         shell: /bin/bash\n  lock_passwd: false\n  passwd: \"{hash}\"\n  sudo: null\n\nssh_pwauth: true\n"
    )
}

/// The `firstrun.sh` Imager writes for the same choices on Bookworm (`generateSystemdScript` at the same
/// commit): its header (lines 322-325), the host name, by the fallback branch taken where there is no
/// `/usr/lib/raspberrypi-sys-mods/imager_custom`, as on our bases (327-335), the first user's name and
/// home (338-339), password SSH (358-364). Its last lines (530-532) are as raspberrypi-sys-mods' initramfs
/// script leaves them on Raspberry Pi OS Bookworm (`scripts/local-bottom/imager_fixup` lines 26-32,
/// bookworm branch at 3af395f): Imager writes `/boot/...`, which that script turns into
/// `/boot/firmware/...`, here and on the command line. Our bases have no such initramfs script.
const IMAGER_FIRSTRUN: &str = r#"#!/bin/sh

set +e

CURRENT_HOSTNAME=$(cat /etc/hostname | tr -d " \t\n\r")
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname imager-name
else
   echo imager-name >/etc/hostname
   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\timager-name/g" /etc/hosts
fi
FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)
FIRSTUSERHOME=$(getent passwd 1000 | cut -d: -f6)
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh
else
   systemctl enable ssh
fi
rm -f /boot/firmware/firstrun.sh
sed -i 's| systemd\.[^ ]*||g' /boot/firmware/cmdline.txt
exit 0
"#;

/// What Imager adds to `cmdline.txt` beside `firstrun.sh` (`src/downloadthread.cpp` line 2590), with
/// the path `imager_fixup` gives it.
const IMAGER_FIRSTRUN_CMDLINE: &str = " systemd.run=/boot/firmware/firstrun.sh \
systemd.run_success_action=reboot systemd.unit=kernel-command-line.target";

/// Writes what Imager writes for `imager` onto `disk`'s boot partition.
fn write_imager_files(disk: &Path, imager: Imager) -> anyhow::Result<()> {
    let img = herd_image::Image::open(disk)?;
    let boot = img.boot()?;
    match imager {
        Imager::UserData => {
            // Imager hashes the password it is given; the test gives it the `--user`'s.
            let userconf = String::from_utf8_lossy(&boot.read("userconf.txt")?).into_owned();
            let hash = userconf
                .lines()
                .next()
                .and_then(|l| l.split_once(':'))
                .map(|(_, h)| h.to_string())
                .context("userconf.txt has no name:hash line")?;
            boot.write("user-data", imager_user_data(&hash).as_bytes())?;
        }
        Imager::FirstRun => {
            boot.write("firstrun.sh", IMAGER_FIRSTRUN.as_bytes())?;
            let cmdline = String::from_utf8_lossy(&boot.read("cmdline.txt")?).into_owned();
            boot.write(
                "cmdline.txt",
                format!("{}{IMAGER_FIRSTRUN_CMDLINE}\n", cmdline.trim_end()).as_bytes(),
            )?;
        }
    }
    boot.close()?;
    Ok(())
}

/// After the boot that ran Imager's `firstrun.sh` (QEMU quits at the reboot it asks for): the script
/// removed itself and its command line, and named the card as Imager was told to.
fn firstrun_done(vm: &mut Vm, disk: &Path) -> anyhow::Result<()> {
    let exited = until(
        Instant::now(),
        BOOT_DEADLINE,
        &format!("{}: firstrun.sh runs and reboots", vm.name),
        || vm.child.try_wait().ok().flatten(),
    )?;
    if !exited.success() {
        bail!(
            "{}: QEMU ended with {exited} in the firstrun.sh boot",
            vm.name
        );
    }
    let img = herd_image::Image::open(disk)?;
    let boot = img.boot()?;
    let cmdline = String::from_utf8_lossy(&boot.read("cmdline.txt")?).into_owned();
    if boot.exists("firstrun.sh") || cmdline.contains("systemd.") {
        bail!(
            "{}: firstrun.sh did not finish: it is {}there, cmdline.txt is {cmdline:?}",
            vm.name,
            if boot.exists("firstrun.sh") {
                "still "
            } else {
                "not "
            }
        );
    }
    let hostname = String::from_utf8_lossy(&img.root().read("/etc/hostname")?).into_owned();
    if hostname.trim() != "imager-name" {
        bail!(
            "{}: firstrun.sh ran, but /etc/hostname is {hostname:?}, not imager-name",
            vm.name
        );
    }
    println!(
        "    {}: firstrun.sh ran ({:.0} s), named the card imager-name, removed itself and its \
         command line, and rebooted",
        vm.name,
        vm.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How long a step may take before the run fails (TCG on a 2-core machine, three guests at once: Trixie
/// agents are up in 210–250 s on a quiet machine, cloud-init's stages and Wi-Fi's taking their share).
/// A CI machine was seen twice as slow: its three guests were still starting cloud-init's and userconf's
/// units at 415 s, and were up 380–400 s after a power cycle. Waiting costs nothing when a guest is fast.
const BOOT_DEADLINE: Duration = Duration::from_secs(600);
const JOIN_DEADLINE: Duration = Duration::from_secs(120);
const DETECT_DEADLINE: Duration = Duration::from_secs(60);
const LEAVE_DEADLINE: Duration = Duration::from_secs(90);

/// The VMs must find each other by mDNS alone: the image's config has mDNS on and no seeds.
fn mdns_only(image: &Path) -> anyhow::Result<()> {
    let img = herd_image::Image::open(image)?;
    let text = img.root().read("/etc/herd/herd.toml")?;
    let config = herd::config::Config::parse(&String::from_utf8_lossy(&text))
        .with_context(|| format!("{}: /etc/herd/herd.toml", image.display()))?;
    if !config.gossip.seeds.is_empty() || !config.discovery.mdns {
        bail!(
            "{}: the image must rely on mDNS alone (seeds {:?}, mdns {})",
            image.display(),
            config.gossip.seeds,
            config.discovery.mdns
        );
    }
    Ok(())
}

/// GET `path` from a VM's API (from inside host 0's namespace).
fn get_json(ip: Ipv4Addr, path: &str) -> anyhow::Result<serde_json::Value> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .build(),
    );
    let text = agent
        .get(&format!("http://{ip}:8080{path}"))
        .call()?
        .body_mut()
        .read_to_string()?;
    Ok(serde_json::from_str(&text)?)
}

/// A node as one VM's API shows it.
struct Seen {
    id: String,
    name: String,
    state: String,
    is_self: bool,
}

/// The node list one VM serves.
fn nodes(ip: Ipv4Addr) -> anyhow::Result<Vec<Seen>> {
    let v = get_json(ip, "/api/v1/nodes")?;
    let list = v.as_array().context("/api/v1/nodes is not a list")?;
    Ok(list
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
            Seen {
                id: s("id"),
                name: s("name"),
                state: s("state"),
                is_self: n["is_self"].as_bool().unwrap_or(false),
            }
        })
        .collect())
}

fn alive(ip: Ipv4Addr) -> anyhow::Result<Vec<String>> {
    let v = get_json(ip, "/nodes/alive")?;
    let mut ips: Vec<String> = v
        .as_array()
        .context("/nodes/alive is not a list")?
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    ips.sort();
    Ok(ips)
}

/// Polls `ok` every half second until it holds or `limit` has passed since `since`.
fn until<T>(
    since: Instant,
    limit: Duration,
    what: &str,
    mut ok: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        if let Some(t) = ok() {
            return Ok(t);
        }
        if since.elapsed() > limit {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

/// The whole run; the error names the step and the consoles to read.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.out)?;
    let result = run_inner(opts);
    if result.is_err() {
        eprintln!(
            "e2e: the VMs' serial consoles are in {} (*-console.log), dnsmasq's log beside them",
            opts.out.display()
        );
    }
    result
}

fn run_inner(opts: &Options) -> anyhow::Result<()> {
    let out = &opts.out;
    let total = Instant::now();
    let boot32 = match &opts.armhf {
        Some(img) => {
            let b = extract_boot(img, out, "armhf")?;
            let d = out.join("vm3-armhf.img");
            disk_copy(img, &d)?;
            Some((b, d))
        }
        None => None,
    };

    let lan = Lan::new(1)?;
    let vm_count = 3 + usize::from(boot32.is_some());
    let _dhcp = crate::KillOnDrop(start_dhcp(&lan, out, vm_count)?);

    // Three arm64 VMs of each image, one image after the other (same addresses, new disks).
    let mut rounds = vec![(opts.arm64.as_path(), "vm")];
    if let Some(other) = &opts.arm64_other {
        rounds.push((other.as_path(), "bw"));
    }
    let last = rounds.len() - 1;
    for (i, (image, prefix)) in rounds.into_iter().enumerate() {
        arm64_round(opts, &lan, image, prefix, i == last)?;
    }

    if let Some((b, d)) = &boot32 {
        println!("==> e2e: booting vm3 (armhf, qemu-system-arm -M virt, the ARMv6 agent)");
        let mut vm = start_vm(&lan, 3, Arch::Armhf, b, d, out, "vm3-armhf")?;
        let host = lan.host(0).clone();
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<()> {
                crate::netns::enter_host(&host)?;
                armhf_answers(&mut vm)
            })
            .join()
            .expect("the e2e thread panicked")
        })?;
        drop(vm);
    }
    // The disks are only worth keeping when something failed.
    let _ = std::fs::remove_file(out.join("vm3-armhf.img"));
    println!(
        "==> e2e: passed in {:.0} s; serial consoles in {}",
        total.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Three arm64 VMs from copies of `image` (named `prefix`0..2, at the LAN's first three addresses): they
/// join by mDNS, one is killed, one powered off.
fn arm64_round(
    opts: &Options,
    lan: &Lan,
    image: &Path,
    prefix: &str,
    upgrade: bool,
) -> anyhow::Result<()> {
    let out = &opts.out;
    let os = herd_image::Image::open(image)?
        .root()
        .read_resolved("/etc/os-release")
        .map(|t| {
            String::from_utf8_lossy(&t)
                .lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .unwrap_or("")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default();
    println!("==> e2e: {os}: kernel from the image, three disks");
    mdns_only(image)?;
    let carried = packages::carried(image)?;
    let boot64 = extract_boot(image, out, &format!("arm64-{prefix}"))?;
    let mut disks = Vec::new();
    for i in 0..3 {
        let d = out.join(format!("{prefix}{i}.img"));
        disk_copy(image, &d)?;
        disks.push(d);
    }
    // The first VM gets what Imager writes when its user customises the OS.
    let imager = if herd_image::Image::open(&disks[0])?
        .root()
        .exists("/usr/bin/cloud-init")
    {
        Imager::UserData
    } else {
        Imager::FirstRun
    };
    write_imager_files(&disks[0], imager)?;
    println!(
        "    {prefix}0: {}",
        match imager {
            Imager::UserData =>
                "Imager's user-data on the boot partition (hostname: imager-name, a user, ssh_pwauth)",
            Imager::FirstRun =>
                "Imager's firstrun.sh on the boot partition and its tokens in cmdline.txt (imager-name, \
                 password SSH)",
        }
    );

    // The second VM gets simulated radios and an access point, if the image has Wi-Fi.
    let wifi = match &opts.wifi {
        Some(w) => {
            let img = herd_image::Image::open(&disks[1])?;
            let root = img.root();
            (root.exists(herd_image::wifi::UNBLOCK_RULE_PATH)
                && root.exists("/usr/sbin/NetworkManager"))
            .then_some(w)
        }
        None => None,
    };
    if let Some(w) = wifi {
        wifi::prepare(&disks[1], w)?;
        println!(
            "    {prefix}1: two simulated radios (mac80211_hwsim); a WPA2 access point {:?} with DHCP on \
             the second (hostapd, udhcpd)",
            w.ssid
        );
    }

    println!(
        "==> e2e: booting {prefix}0, {prefix}1, {prefix}2 (arm64, qemu-system-aarch64 -M virt)"
    );
    let mut vms = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        vms.push(start_vm(
            lan,
            i,
            Arch::Arm64,
            &boot64,
            disk,
            out,
            &format!("{prefix}{i}"),
        )?);
    }
    if imager == Imager::FirstRun {
        firstrun_done(&mut vms[0], &disks[0])?;
        vms[0] = start_vm(
            lan,
            0,
            Arch::Arm64,
            &boot64,
            &disks[0],
            out,
            &format!("{prefix}0-after-firstrun"),
        )?;
    }
    // A VM powered on again boots from its own disk, its console in a file of its own.
    let restart = |i: usize| {
        start_vm(
            lan,
            i,
            Arch::Arm64,
            &boot64,
            &disks[i],
            out,
            &format!("{prefix}{i}-again"),
        )
    };
    // Everything that talks to the VMs runs in host 0's namespace.
    let host = lan.host(0).clone();
    let upgrade = opts.upgrade.as_ref().filter(|_| upgrade);
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<()> {
            crate::netns::enter_host(&host)?;
            join_kill_poweroff(
                &mut vms,
                opts,
                imager,
                wifi,
                &restart,
                upgrade,
                carried.as_ref(),
            )
        })
        .join()
        .expect("the e2e thread panicked")
    })?;
    // The VMs stop here (their CPU goes to what comes next); the disks are kept only on failure.
    drop(vms);
    for d in disks {
        let _ = std::fs::remove_file(d);
    }
    Ok(())
}

/// Fails unless systemd's console shows it started herd.service.
fn herd_started(vm: &Vm) -> anyhow::Result<()> {
    if !console_has(vm, "Started herd.service") {
        bail!(
            "{}: the console does not show systemd starting herd.service",
            vm.name
        );
    }
    Ok(())
}

/// Waits until the VM's agent answers and records who it says it is.
fn wait_up(vm: &mut Vm) -> anyhow::Result<bool> {
    check_running(vm)?;
    if vm.up.is_some() {
        return Ok(true);
    }
    let Ok(list) = nodes(vm.ip) else {
        return Ok(false);
    };
    let Some(me) = list.into_iter().find(|n| n.is_self) else {
        return Ok(false);
    };
    vm.up = Some(vm.started.elapsed());
    vm.id = me.id;
    vm.hostname = me.name;
    println!(
        "    {}: agent up at {} after {}: node {} named {}",
        vm.name,
        vm.ip,
        secs(vm.up),
        vm.id,
        vm.hostname
    );
    Ok(true)
}

/// The VM's ed25519 SSH host key, as `ssh-keyscan` reads it from the network.
fn ssh_host_key(vm: &Vm) -> anyhow::Result<String> {
    until(
        Instant::now(),
        DETECT_DEADLINE,
        &format!("{}: sshd answers", vm.name),
        || {
            let out = Command::new("ssh-keyscan")
                .args(["-T", "5", "-t", "ed25519"])
                .arg(vm.ip.to_string())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.contains("ssh-ed25519"))
                .and_then(|l| l.split_whitespace().nth(2))
                .map(String::from)
        },
    )
}

/// The Debian base's userconf.service created `user` (it says so in the journal, forwarded to the console).
fn user_created(vm: &Vm, user: &str) -> anyhow::Result<()> {
    until(
        Instant::now(),
        DETECT_DEADLINE,
        &format!("{}: userconf made {user}", vm.name),
        || console_has(vm, &format!("userconf: user {user} is ready")).then_some(()),
    )
}

/// Logs in to `vm` as `user` with `identity` over SSH and checks what a user of the card relies on: a
/// login shell, the card's herd name as its host name (also when cloud-init's user-data named it
/// otherwise) resolving to 127.0.1.1, and, under NetworkManager, herd started once the network was
/// online.
fn logged_in(vm: &Vm, user: &str, identity: &Path) -> anyhow::Result<()> {
    let script = "echo \"shell=$(getent passwd \"$(id -un)\" | cut -d: -f7)\"; echo \"host=$(hostname)\"; \
                  echo \"hosts=$(getent hosts \"$(hostname)\")\"; \
                  echo \"herd=$(systemctl show -P ExecMainStartTimestampMonotonic herd.service)\"; \
                  echo \"online=$(systemctl show -P ActiveEnterTimestampMonotonic NetworkManager-wait-online.service)\"";
    let text = until(
        Instant::now(),
        DETECT_DEADLINE,
        &format!("{}: {user} logs in over SSH", vm.name),
        || ssh(vm, user, identity, script, None),
    )?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let (shell, host, hosts) = (field("shell"), field("host"), field("hosts"));
    if shell.ends_with("nologin") || shell.ends_with("false") || shell.is_empty() {
        bail!("{}: {user}'s shell is {shell:?}", vm.name);
    }
    if host != vm.hostname {
        bail!(
            "{}: the host name is {host:?}, not herd's {:?} (cloud-init or Imager won)",
            vm.name,
            vm.hostname
        );
    }
    if !hosts.starts_with("127.0.1.1") {
        bail!("{}: {host} resolves to {hosts:?}, not 127.0.1.1", vm.name);
    }
    let (herd, online) = (field("herd"), field("online"));
    let (herd, online): (u64, u64) = (herd.parse().unwrap_or(0), online.parse().unwrap_or(0));
    if online > 0 && herd < online {
        bail!(
            "{}: herd started at {herd} µs, before NetworkManager had the network online ({online} µs)",
            vm.name
        );
    }
    // Built key-only (`--ssh-key`): the server offers no password, whatever user-data says (vm0 of a
    // cloud-init round has Imager's `ssh_pwauth: true`, which makes cloud-init write
    // `PasswordAuthentication yes` into sshd_config.d/50-cloud-init.conf). With no key to offer and
    // prompts off, ssh lists the methods the server allows.
    let out = Command::new("ssh")
        .args(SSH_OPTIONS)
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .arg(format!("{user}@{}", vm.ip))
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh")?;
    let err = String::from_utf8_lossy(&out.stderr);
    let methods = err
        .lines()
        .find_map(|l| l.split("Permission denied (").nth(1))
        .map(|m| m.trim_end_matches(['.', ')']).to_string());
    match &methods {
        Some(m)
            if !m
                .split(',')
                .any(|a| a == "password" || a == "keyboard-interactive") => {}
        _ => bail!(
            "{}: the image was built key-only, but sshd allows {methods:?} ({}: {})",
            vm.name,
            out.status,
            err.trim()
        ),
    }
    println!(
        "    {}: {user} logs in with the key (shell {shell}); host name {host} ({}){}; SSH offers {}",
        vm.name,
        hosts.split_whitespace().next().unwrap_or(""),
        if online > 0 {
            format!(
                "; herd started {:.1} s after NetworkManager-wait-online",
                (herd - online) as f64 / 1e6
            )
        } else {
            String::new()
        },
        methods.unwrap_or_default()
    );
    Ok(())
}

/// What only root sees, through sudo, which asks for the user's password as Raspberry Pi OS's has since
/// 2026 (pi-gen c020178c: raspberrypi-sys-mods no longer ships `010_pi-nopasswd`): sshd's effective
/// settings (`sshd -T`), which drop-in set what, the accounts, the NetworkManager profiles. On the VM
/// that got Imager's files, the outcome of each: Imager's `ssh_pwauth: true` made cloud-init write
/// `PasswordAuthentication yes` (so the attack was there) and sshd still takes herd's `no`; Imager's user
/// was made beside herd's `--user` (uid 1000); herd's Wi-Fi profile is still there.
fn as_root(
    vm: &Vm,
    user: &str,
    identity: &Path,
    password: &str,
    imager: Option<Imager>,
    wifi: Option<&WifiOptions>,
) -> anyhow::Result<()> {
    let said = ssh(
        vm,
        user,
        identity,
        "sudo -n true 2>&1; echo \"rc=$?\"",
        None,
    )
    .with_context(|| format!("{}: {user} cannot run sudo -n", vm.name))?;
    if said.contains("rc=0") || !said.contains("password") {
        bail!(
            "{}: sudo ran without asking {user}'s password: {said:?}",
            vm.name
        );
    }
    let script = format!(
        "sshd -T | grep -E \"^(passwordauthentication|kbdinteractiveauthentication) \"; \
         for f in /etc/ssh/sshd_config.d/*.conf; do \
         echo \"file $f $(grep -i \"^passwordauthentication\" \"$f\" | head -n 1)\"; done; \
         getent passwd 1000 {IMAGER_USER} | cut -d: -f1,3,7 | sed \"s/^/user /\"; \
         nmcli -t -f TYPE,NAME connection show 2>/dev/null | sed \"s/^/nm /\"; true"
    );
    let text = ssh(
        vm,
        user,
        identity,
        &format!("sudo -S -p '' sh -c '{script}'"),
        Some(&format!("{password}\n")),
    )
    .with_context(|| format!("{}: {user} cannot run sudo with the password", vm.name))?;
    let has = |l: &str| text.lines().any(|t| t.trim() == l);
    for want in [
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
    ] {
        if !has(want) {
            bail!("{}: sshd -T lacks {want:?}:\n{text}", vm.name);
        }
    }
    if !text
        .lines()
        .any(|l| l.starts_with(&format!("user {user}:1000:")))
    {
        bail!("{}: {user} is not uid 1000:\n{text}", vm.name);
    }
    let mut seen = Vec::new();
    if imager == Some(Imager::UserData) {
        let attack = "file /etc/ssh/sshd_config.d/50-cloud-init.conf PasswordAuthentication yes";
        if !has(attack) {
            bail!(
                "{}: Imager's ssh_pwauth left no 50-cloud-init.conf turning password SSH on, so the \
                 test proves nothing:\n{text}",
                vm.name
            );
        }
        seen.push("cloud-init's 50-cloud-init.conf says PasswordAuthentication yes".to_string());
        let theirs = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("user {IMAGER_USER}:")))
            .with_context(|| {
                format!(
                    "{}: Imager's user {IMAGER_USER} was not made:\n{text}",
                    vm.name
                )
            })?;
        seen.push(format!(
            "Imager's {IMAGER_USER} made beside it (uid:shell {theirs})"
        ));
        if wifi.is_some() {
            let profile = text
                .lines()
                .find_map(|l| l.strip_prefix("nm 802-11-wireless:"))
                .with_context(|| format!("{}: no Wi-Fi profile:\n{text}", vm.name))?;
            seen.push(format!("herd's Wi-Fi profile {profile:?} kept"));
        }
    }
    println!(
        "    {}: sudo asks {user}'s password; sshd -T: passwordauthentication no, \
         kbdinteractiveauthentication no; {user} is uid 1000{}",
        vm.name,
        seen.iter().map(|s| format!("; {s}")).collect::<String>()
    );
    Ok(())
}

/// How the test runs ssh: never a prompt, a VM's fresh host key taken and not remembered.
const SSH_OPTIONS: [&str; 8] = [
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "ConnectTimeout=10",
];

/// Runs `script` on `vm` as `user` over SSH with the key `identity` (and `input` on its standard input);
/// its output, if it succeeded.
fn ssh(vm: &Vm, user: &str, identity: &Path, script: &str, input: Option<&str>) -> Option<String> {
    let mut child = Command::new("ssh")
        .arg("-i")
        .arg(identity)
        .args(SSH_OPTIONS)
        .args(["-o", "LogLevel=ERROR"])
        .arg(format!("{user}@{}", vm.ip))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    if let Some(input) = input {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).ok()?;
    }
    drop(stdin);
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until every VM's agent answers (recording who it is) and checks that systemd started it.
fn agents_up(vms: &mut [Vm], what: &str) -> anyhow::Result<()> {
    until(Instant::now(), BOOT_DEADLINE, what, || {
        let mut all = true;
        for vm in vms.iter_mut() {
            match wait_up(vm) {
                Ok(up) => all &= up,
                Err(e) => return Some(Err(e)),
            }
        }
        all.then_some(Ok(()))
    })??;
    for vm in vms.iter() {
        herd_started(vm)?;
    }
    Ok(())
}

type Restart<'a> = &'a (dyn Fn(usize) -> anyhow::Result<Vm> + Sync);

/// One round's scenario, phase by phase: the agents come up, each card is itself, the users log in (and
/// what Imager wrote did not win), the cards find each other, one crashes, one leaves; then the timings.
fn join_kill_poweroff(
    vms: &mut [Vm],
    opts: &Options,
    imager: Imager,
    wifi: Option<&WifiOptions>,
    restart: Restart,
    upgrade: Option<&UpgradeOptions>,
    carried: Option<&herd::release::packages::Manifest>,
) -> anyhow::Result<()> {
    agents_come_up(vms, restart)?;
    each_card_is_itself(vms)?;
    let wifi_seen = users_log_in(vms, opts, imager, wifi)?;
    all_find_each_other(vms)?;
    logs_are_read(vms, opts)?;
    health_is_seen(vms, opts)?;
    packages::installed(vms, opts, carried)?;
    // herd's actions on the round without an upgrade (the other keeps the power button).
    let actions = opts.upgrade.as_ref().filter(|_| upgrade.is_none());
    if let Some(a) = actions {
        actions::run(vms, &a.secrets, restart)?;
    }
    let detected = one_crashes(vms, restart, upgrade)?;
    let left = match actions {
        Some(a) => actions::shutdown(vms, &a.secrets)?,
        None => one_leaves(vms)?,
    };
    print_timings(vms, upgrade.is_some(), detected, left, wifi_seen);
    Ok(())
}

/// Every agent comes up, started by systemd. A VM whose agent is not up by the deadline is powered off
/// and on again, once: under TCG on two busy cores a guest has been seen to stall for minutes (soft
/// lockups verifying module signatures, then silence). A card must survive a power cycle during its
/// first boot anyway; an agent that never starts still fails the run.
fn agents_come_up(vms: &mut [Vm], restart: Restart) -> anyhow::Result<()> {
    if let Err(e) = agents_up(vms, "every VM's agent answers on :8080") {
        for (i, vm) in vms.iter_mut().enumerate() {
            if vm.up.is_some() {
                continue;
            }
            println!(
                "    {}: {e:#}; its console ends: {:?}; powered off and on again (once)",
                vm.name,
                vm::console_tail(vm)
            );
            *vm = restart(i)?;
        }
        agents_up(
            vms,
            "every VM's agent answers on :8080 (after a power cycle)",
        )?;
    }
    Ok(())
}

/// Each card has a node id, a host name derived from it (`hostname_template = "herd-{id:6}"`) and SSH host
/// keys of its own, all made at first boot.
fn each_card_is_itself(vms: &[Vm]) -> anyhow::Result<()> {
    let mut ids: Vec<&str> = vms.iter().map(|v| v.id.as_str()).collect();
    let mut names: Vec<&str> = vms.iter().map(|v| v.hostname.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    names.sort_unstable();
    names.dedup();
    if ids.len() != vms.len() || names.len() != vms.len() {
        bail!(
            "the cards do not have an id and a name each: ids {:?}, names {:?}",
            vms.iter().map(|v| &v.id).collect::<Vec<_>>(),
            vms.iter().map(|v| &v.hostname).collect::<Vec<_>>()
        );
    }
    for vm in vms.iter() {
        // hostname_template = "herd-{id:6}": the name is the id's first six hex digits.
        if Some(vm.hostname.as_str()) != vm.id.get(..6).map(|p| format!("herd-{p}")).as_deref() {
            bail!(
                "{}: host name {:?} is not herd-<first 6 digits of {}>",
                vm.name,
                vm.hostname,
                vm.id
            );
        }
    }

    let mut keys = Vec::new();
    for vm in vms.iter() {
        keys.push(ssh_host_key(vm)?);
    }
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != keys.len() {
        bail!("two VMs share an SSH host key: {keys:?}");
    }
    println!("    three distinct SSH host keys (ssh-keyscan)");
    Ok(())
}

/// Each VM made the image's user from userconf.txt, who logs in with the key and finds the card as herd
/// baked it, even where Imager's files tried otherwise; and, on the Wi-Fi image, the radio joins.
fn users_log_in(
    vms: &[Vm],
    opts: &Options,
    imager: Imager,
    wifi: Option<&WifiOptions>,
) -> anyhow::Result<Option<wifi::Seen>> {
    let (user, identity, password) = (
        opts.user.as_deref(),
        opts.ssh_identity.as_deref(),
        opts.password.as_deref(),
    );
    let mut wifi_seen = None;
    if let Some(user) = user {
        for vm in vms.iter() {
            user_created(vm, user)?;
        }
        println!("    every VM made the user {user} from userconf.txt");
        if let Some(identity) = identity {
            for (i, vm) in vms.iter().enumerate() {
                logged_in(vm, user, identity)?;
                if let Some(password) = password {
                    as_root(
                        vm,
                        user,
                        identity,
                        password,
                        (i == 0).then_some(imager),
                        wifi,
                    )?;
                }
            }
            if let Some(w) = wifi {
                wifi_seen = Some(wifi::check(&vms[1], user, identity, w)?);
            }
        }
    }
    Ok(wifi_seen)
}

/// Every VM lists all three as alive, found by mDNS alone.
fn all_find_each_other(vms: &mut [Vm]) -> anyhow::Result<()> {
    let mut want: Vec<String> = vms.iter().map(|v| v.ip.to_string()).collect();
    want.sort();
    let joined_at = Instant::now();
    until(
        joined_at,
        JOIN_DEADLINE,
        "every VM lists all three alive",
        || {
            let mut all = true;
            for vm in vms.iter_mut() {
                if vm.joined.is_none() {
                    if alive(vm.ip).is_ok_and(|a| a == want) {
                        vm.joined = Some(vm.started.elapsed());
                    } else {
                        all = false;
                    }
                }
            }
            all.then_some(())
        },
    )?;
    println!("    every VM lists {want:?} alive");
    Ok(())
}

/// `GET /api/v1/logs` (what `herd logs` asks) through the real herd.service: a dynamic user whose one
/// extra privilege is the systemd-journal group, under a seccomp filter its journalctl must live with.
/// Each VM's agent serves a token holder its own start line and PID 1's lines (the whole system
/// journal, not the agent's alone), logs who read, and refuses a reader without the token.
fn logs_are_read(vms: &[Vm], opts: &Options) -> anyhow::Result<()> {
    use std::io::Read;
    let Some(secrets) = opts.upgrade.as_ref().map(|u| &u.secrets) else {
        println!("    logs: skipped (no --secrets, so no token)");
        return Ok(());
    };
    let token = upgrade::secret(secrets, "api_token")?;
    let read = |vm: &Vm, unit: Option<&str>| -> anyhow::Result<String> {
        let q = herd::model::logs::LogQuery {
            lines: 2000,
            unit: unit.map(str::to_string),
            since: None,
            follow: false,
        };
        let client = herd::client::Client::new(&vm.ip.to_string(), Some(token.clone()))?;
        let mut text = String::new();
        client
            .logs(&q)
            .with_context(|| format!("{}: the journal ({unit:?})", vm.name))?
            .read_to_string(&mut text)?;
        Ok(text)
    };
    for vm in vms {
        let herd = read(vm, Some("herd.service"))?;
        if !herd.contains("serving the dashboard and API") {
            bail!(
                "{}: herd.service's journal, read through its agent, lacks its start line: {herd:?}",
                vm.name
            );
        }
        let all = read(vm, None)?;
        if !all.contains(" systemd[1]: ") {
            bail!(
                "{}: the journal, read through the agent, has no line of systemd's: {all:?}",
                vm.name
            );
        }
        let again = read(vm, Some("herd.service"))?;
        if !again.contains("journal read") {
            bail!("{}: the agent did not log the read: {again:?}", vm.name);
        }
        let anyone = herd::client::Client::new(&vm.ip.to_string(), None)?;
        let refused = anyone.raw("GET", "/api/v1/logs", false)?;
        if refused.status != 401 {
            bail!(
                "{}: /api/v1/logs without the token: HTTP {} {}",
                vm.name,
                refused.status,
                refused.body
            );
        }
    }
    println!(
        "    logs: every VM's agent (herd.service's sandbox, group systemd-journal) serves its own and \
         the system's journal to the token, logs the read, and answers 401 without it"
    );
    Ok(())
}

/// A check of `node` as the VM at `ip` shows it: (state, detail).
fn check_of(ip: Ipv4Addr, node: &str, check: &str) -> Option<(String, String)> {
    let v = get_json(ip, "/api/v1/nodes").ok()?;
    let n = v.as_array()?.iter().find(|n| n["id"] == node)?;
    let c = n["health"]["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == check)?;
    Some((c["state"].as_str()?.into(), c["detail"].as_str()?.into()))
}

/// Health, seen from another card: the test LAN has no NTP server, so every VM's clock is
/// unsynchronised, and the third VM's root file system remounted read-only (what ext4's
/// `errors=remount-ro` does to a failing card) is "critical" on the first VM's API, then ok again once
/// it is writable. Needs the image's user and password (for sudo).
fn health_is_seen(vms: &[Vm], opts: &Options) -> anyhow::Result<()> {
    let (Some(user), Some(identity), Some(password)) = (
        opts.user.as_deref(),
        opts.ssh_identity.as_deref(),
        opts.password.as_deref(),
    ) else {
        println!("    health: skipped (no user, key and password given)");
        return Ok(());
    };
    let (watcher, card) = (&vms[0], &vms[2]);
    let clock = until(
        Instant::now(),
        Duration::from_secs(60),
        &format!(
            "{}'s clock shown unsynchronised on {}",
            card.name, watcher.name
        ),
        || check_of(watcher.ip, &card.id, "clock").filter(|(state, _)| state == "warning"),
    )?;
    // A writable root is "ok" first, though the agent sees `/` through its sandbox's read-only bind
    // (ProtectSystem=strict): the file system's own options are what count.
    until(
        Instant::now(),
        Duration::from_secs(60),
        &format!("{}'s writable root shown ok on {}", card.name, watcher.name),
        || check_of(watcher.ip, &card.id, "filesystem").filter(|(state, _)| state == "ok"),
    )?;
    // journald holds files open for writing under /var/log/journal: it moves to /run first, else the
    // remount is refused as busy; should another writer hold one, the kernel's emergency remount (what
    // SysRq-U does, all file systems read-only at once) stands in.
    let sudo = |script: &str| {
        ssh(
            card,
            user,
            identity,
            &format!("sudo -S -p '' sh -c '{script}' 2>&1; echo \"rc=$?\""),
            Some(&format!("{password}\n")),
        )
        .unwrap_or_default()
    };
    let said = sudo(
        "journalctl --relinquish-var; sync; mount -o remount,ro / || (echo u > /proc/sysrq-trigger; \
         sleep 2; grep -Eq \" / [^ ]+ ro[, ]\" /proc/mounts)",
    );
    if !said.contains("rc=0") {
        bail!("{}: cannot remount / read-only: {said}", card.name);
    }
    let since = Instant::now();
    let result = until(
        since,
        Duration::from_secs(60),
        &format!(
            "{}'s read-only root shown critical on {}",
            card.name, watcher.name
        ),
        || check_of(watcher.ip, &card.id, "filesystem").filter(|(state, _)| state == "critical"),
    );
    let back = sudo(
        "mount -o remount,rw / && (mount -o remount,rw /boot/firmware 2>/dev/null; true) && \
         journalctl --flush",
    );
    let (_, detail) = result?;
    let shown = since.elapsed();
    if !back.contains("rc=0") {
        bail!("{}: cannot remount / writable again: {back}", card.name);
    }
    until(
        Instant::now(),
        Duration::from_secs(60),
        &format!("{}'s root writable again on {}", card.name, watcher.name),
        || check_of(watcher.ip, &card.id, "filesystem").filter(|(state, _)| state == "ok"),
    )?;
    println!(
        "    health on {}: {}'s clock {:?} (no NTP server on the test LAN); its root remounted \
         read-only: {detail:?}, critical after {:.1} s, ok again once writable",
        watcher.name,
        card.name,
        clock.1,
        shown.as_secs_f64()
    );
    Ok(())
}

/// The third VM crashes: the others must call it dead, not left. With `herd upgrade`, it loses power
/// (QMP quit) in the middle of its upgrade; else QEMU is killed. When each survivor saw it dead.
fn one_crashes(
    vms: &mut [Vm],
    restart: Restart,
    upgrade: Option<&UpgradeOptions>,
) -> anyhow::Result<[Option<Duration>; 2]> {
    let detected = match upgrade {
        Some(u) => upgrade::run(u, vms, restart)?.detected,
        None => {
            let killed = Instant::now();
            vms[2].child.kill()?;
            vms[2].child.wait()?;
            let dead_id = vms[2].id.clone();
            let mut detected = [None, None];
            until(
                killed,
                DETECT_DEADLINE,
                "vm0 and vm1 report vm2 dead",
                || {
                    for (i, d) in detected.iter_mut().enumerate() {
                        if d.is_none() && state_of(vms[i].ip, &dead_id).as_deref() == Some("dead") {
                            *d = Some(killed.elapsed());
                        }
                    }
                    detected.iter().all(Option::is_some).then_some(())
                },
            )?;
            println!(
                "    {} killed: dead on {} after {}, on {} after {}",
                vms[2].name,
                vms[0].name,
                secs(detected[0]),
                vms[1].name,
                secs(detected[1])
            );
            detected
        }
    };
    Ok(detected)
}

/// The second VM is powered off cleanly (its power button): the first must call it left. When it did.
fn one_leaves(vms: &mut [Vm]) -> anyhow::Result<Duration> {
    let pressed = Instant::now();
    power_button(&vms[1].qmp)?;
    let left_id = vms[1].id.clone();
    let left = until(pressed, LEAVE_DEADLINE, "vm0 reports vm1 left", || {
        (state_of(vms[0].ip, &left_id).as_deref() == Some("left")).then(|| pressed.elapsed())
    })?;
    let off = until(pressed, LEAVE_DEADLINE, "vm1 powers off", || {
        vms[1]
            .child
            .try_wait()
            .ok()
            .flatten()
            .map(|_| pressed.elapsed())
    })?;
    println!(
        "    {} power button: left on {} after {}, powered off after {}",
        vms[1].name,
        vms[0].name,
        secs(Some(left)),
        secs(Some(off))
    );
    Ok(left)
}

/// The round's timings, as tables.
fn print_timings(
    vms: &[Vm],
    power_cut: bool,
    detected: [Option<Duration>; 2],
    left: Duration,
    wifi_seen: Option<wifi::Seen>,
) {
    let crash = if power_cut { "power cut" } else { "kill" };
    println!("\n    | VM | start → agent up | start → all joined | {crash} → dead seen here | power-off → left seen here |");
    println!("    |---|---|---|---|---|");
    for (i, vm) in vms.iter().enumerate() {
        let dead = detected.get(i).copied().flatten();
        let left_here = (i == 0).then_some(left);
        println!(
            "    | {} | {} | {} | {} | {} |",
            vm.name,
            secs(vm.up),
            secs(vm.joined),
            if i == 2 {
                format!("({crash})")
            } else {
                secs(dead)
            },
            if i == 1 {
                "(powered off)".into()
            } else {
                secs(left_here)
            }
        );
    }
    if let Some(w) = wifi_seen {
        println!(
            "\n    | VM | Wi-Fi: start → wlan0 has an address | address | other passphrase on the AP → \
             address lost | then without one for |"
        );
        println!("    |---|---|---|---|---|");
        println!(
            "    | {} | {} | {} | {} | {} |",
            vms[1].name,
            secs(Some(w.up)),
            w.address,
            secs(Some(w.lost)),
            secs(Some(w.held))
        );
    }
    println!();
}

fn state_of(ip: Ipv4Addr, id: &str) -> Option<String> {
    nodes(ip)
        .ok()?
        .into_iter()
        .find(|n| n.id == id)
        .map(|n| n.state)
}

fn armhf_answers(vm: &mut Vm) -> anyhow::Result<()> {
    agents_up(std::slice::from_mut(vm), "the armhf VM's agent answers")?;
    let ips = alive(vm.ip)?;
    if ips != [vm.ip.to_string()] {
        bail!("{}: /nodes/alive is {ips:?}, not itself", vm.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imager's files as the VMs get them: the script is valid sh, its last lines undo what the
    /// command line got, and the user-data is YAML with what Imager puts there.
    #[test]
    fn imager_files_parse_and_firstrun_undoes_its_command_line() {
        let check = Command::new("sh")
            .args(["-n", "-c", IMAGER_FIRSTRUN])
            .status()
            .unwrap();
        assert!(check.success());
        println!("{IMAGER_FIRSTRUN}");
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline.txt");
        let card = "console=tty1 root=LABEL=rootfs rootfstype=ext4 fsck.repair=yes rootwait cfg80211.ieee80211_regdom=GB";
        std::fs::write(&cmdline, format!("{card}{IMAGER_FIRSTRUN_CMDLINE}\n")).unwrap();
        let sed = IMAGER_FIRSTRUN
            .lines()
            .find(|l| l.starts_with("sed -i 's| systemd"))
            .unwrap()
            .replace("/boot/firmware/cmdline.txt", &cmdline.to_string_lossy());
        assert!(Command::new("sh")
            .args(["-c", &sed])
            .status()
            .unwrap()
            .success());
        assert_eq!(
            std::fs::read_to_string(&cmdline).unwrap(),
            format!("{card}\n")
        );
        let doc = &yaml_rust2::YamlLoader::load_from_str(&imager_user_data("$6$s$h")).unwrap()[0];
        assert_eq!(doc["hostname"].as_str(), Some("imager-name"));
        assert_eq!(doc["user"]["name"].as_str(), Some(IMAGER_USER));
        assert_eq!(doc["user"]["passwd"].as_str(), Some("$6$s$h"));
        assert!(doc["user"]["sudo"].is_null());
        assert_eq!(doc["ssh_pwauth"].as_bool(), Some(true));
    }
}
