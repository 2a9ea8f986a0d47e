//! Wi-Fi, proven on a booted image with a simulated radio: the VM's kernel gets two `mac80211_hwsim`
//! radios; on the second a WPA2-PSK access point (hostapd, with busybox's udhcpd handing out addresses)
//! runs inside the VM, left alone by NetworkManager; the first, `wlan0`, is the card's own radio, which
//! only what `cargo xtask image --wifi-*` baked can bring up (the network's key, the radio unblocked and
//! switched on in NetworkManager). The test logs in and waits for `wlan0` to get an address from the
//! access point; then the access point changes to another passphrase and `wlan0` must lose it and stay
//! without one: a card with the wrong key does not join.
//!
//! Everything here is a test fixture written into one VM's disk copy, not part of what herd bakes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd_image::ext4::Entry;

use super::vm::Vm;
use super::{secs, ssh, until};

/// What the Wi-Fi test needs.
pub struct Options {
    /// The network the image was built for (`--wifi-ssid`).
    pub ssid: String,
    /// Its passphrase (`--wifi-password-file`): the access point's.
    pub passphrase: String,
    /// The `--user`'s password: the test switches the access point to another passphrase with sudo.
    pub password: String,
    /// The Debian packages of the access point (hostapd, busybox) for the image's release and CPU.
    pub debs: PathBuf,
}

/// The access point's network (`@AP_PREFIX@` and `@AP_ADDRESS@` in the fixtures below stand for them).
const AP_PREFIX: &str = "192.168.77.";
const AP_ADDRESS: &str = "192.168.77.1";

const AP_SCRIPT: &str = r#"#!/bin/sh
# herd e2e test fixture: the Wi-Fi test's access point on the second simulated radio (wlan1).
# herd-e2e-ap right: starts hostapd with the network's passphrase (and udhcpd);
# herd-e2e-ap wrong: makes the running hostapd take another passphrase (SIGHUP: it reloads its
# configuration and restarts the network under the same name, so stations must authenticate again).
set -eu
conf=/etc/herd-e2e/hostapd-$1.conf
test -f "$conf"
mkdir -p /run/herd-e2e
cp "$conf" /run/herd-e2e/hostapd.conf
if [ -f /run/herd-e2e/hostapd.pid ] && kill -0 "$(cat /run/herd-e2e/hostapd.pid)" 2>/dev/null; then
    kill -HUP "$(cat /run/herd-e2e/hostapd.pid)"
else
    # The access point's own radio (another machine's, in the story) is not the card's: the radios are
    # blocked at boot (rfkill.default_state=0), and only the card's is herd's to unblock.
    for r in /sys/class/net/wlan1/phy80211/rfkill*/soft; do echo 0 > "$r"; done
    ip addr replace @AP_ADDRESS@/24 dev wlan1
    tries=0
    until /usr/local/lib/herd-e2e/hostapd -B -P /run/herd-e2e/hostapd.pid /run/herd-e2e/hostapd.conf \
        </dev/null >/run/herd-e2e/hostapd.log 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 5 ]; then
            echo "herd-e2e-ap: hostapd did not start:"
            cat /run/herd-e2e/hostapd.log
            exit 1
        fi
        sleep 3
    done
    touch /run/herd-e2e/udhcpd.leases
    /usr/local/lib/herd-e2e/busybox udhcpd /etc/herd-e2e/udhcpd.conf </dev/null >/dev/null 2>&1
    # In the story the access point is another machine, up before the card boots, so NetworkManager's
    # first scans find it. Here it comes up after NetworkManager, whose scans of a disconnected radio
    # back off to minutes apart (a CI run waited over 180 s): ask for one scan now, as its first would
    # have been. It changes nothing of what the card was given (a blocked radio or a missing profile
    # still never joins) and is allowed to fail (a scan already under way).
    nmcli device wifi rescan ifname wlan0 >/dev/null 2>&1 || true
fi
echo "herd-e2e-ap: access point up on wlan1 ($1 passphrase)"
"#;

const AP_UNIT: &str =
    "# herd e2e test fixture\n[Unit]\nDescription=The Wi-Fi test's access point (herd e2e)\n\
Wants=sys-subsystem-net-devices-wlan1.device\nAfter=sys-subsystem-net-devices-wlan1.device \
NetworkManager.service\n\n\
[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/herd-e2e-ap right\n\n\
[Install]\nWantedBy=multi-user.target\n";

const UDHCPD_CONF: &str =
    "# herd e2e test fixture: addresses for the Wi-Fi test's stations; no router\n\
start @AP_PREFIX@100\nend @AP_PREFIX@150\ninterface wlan1\nmax_leases 50\n\
lease_file /run/herd-e2e/udhcpd.leases\npidfile /run/herd-e2e/udhcpd.pid\n\
option subnet 255.255.255.0\noption lease 3600\n";

fn hostapd_conf(ssid: &str, passphrase: &str) -> String {
    format!(
        "# herd e2e test fixture\ninterface=wlan1\ndriver=nl80211\nssid={ssid}\nhw_mode=g\nchannel=6\n\
         wpa=2\nwpa_key_mgmt=WPA-PSK\nrsn_pairwise=CCMP\nwpa_passphrase={passphrase}\n"
    )
}

/// Writes the access point into a VM's disk: two simulated radios at boot, NetworkManager told to leave
/// the second alone, hostapd and udhcpd on it.
pub(super) fn prepare(disk: &Path, opts: &Options) -> anyhow::Result<()> {
    // Another passphrase of the same length, so only its value differs.
    let wrong: String = opts
        .passphrase
        .chars()
        .map(|c| if c == 'x' { 'y' } else { 'x' })
        .collect();
    let mut entries = vec![
        Entry::root_file(
            "/etc/modules-load.d/herd-e2e-hwsim.conf",
            b"mac80211_hwsim\n",
            0o644,
        ),
        Entry::root_file(
            "/etc/modprobe.d/herd-e2e-hwsim.conf",
            b"options mac80211_hwsim radios=2\n",
            0o644,
        ),
        Entry::root_file(
            "/etc/NetworkManager/conf.d/90-herd-e2e-ap.conf",
            b"# herd e2e test fixture: wlan1 is the access point's\n[keyfile]\nunmanaged-devices=interface-name:wlan1\n"
                ,
            0o644,
        ),
        Entry::root_file(
            "/etc/herd-e2e/hostapd-right.conf",
            hostapd_conf(&opts.ssid, &opts.passphrase),
            0o600,
        ),
        Entry::root_file(
            "/etc/herd-e2e/hostapd-wrong.conf",
            hostapd_conf(&opts.ssid, &wrong),
            0o600,
        ),
        Entry::root_file(
            "/etc/herd-e2e/udhcpd.conf",
            UDHCPD_CONF.replace("@AP_PREFIX@", AP_PREFIX),
            0o644,
        ),
        Entry::root_file(
            "/usr/local/sbin/herd-e2e-ap",
            AP_SCRIPT.replace("@AP_ADDRESS@", AP_ADDRESS),
            0o755,
        ),
        Entry::root_file(
            "/etc/systemd/system/herd-e2e-ap.service",
            AP_UNIT,
            0o644,
        ),
        Entry::Symlink {
            path: "/etc/systemd/system/multi-user.target.wants/herd-e2e-ap.service".into(),
            target: "/etc/systemd/system/herd-e2e-ap.service".into(),
        },
    ];
    // The two programs, taken out of their packages here (installing them in the VM would run their
    // maintainer scripts and rebuild its initramfs, minutes under emulation); their libraries are the
    // base's (wpa_supplicant's).
    for (package, program) in [("hostapd", "hostapd"), ("busybox", "busybox")] {
        let bytes = program_of(&opts.debs, package, program)?;
        entries.push(Entry::root_file(
            format!("/usr/local/lib/herd-e2e/{program}"),
            bytes,
            0o755,
        ));
    }
    herd_image::Image::open(disk)?.root().apply(&entries)?;
    Ok(())
}

/// The program `program` out of the package `package` (a `.deb` in `debs`), extracted with dpkg-deb.
fn program_of(debs: &Path, package: &str, program: &str) -> anyhow::Result<Vec<u8>> {
    let mut found = None;
    for e in std::fs::read_dir(debs)
        .with_context(|| format!("the access point's packages: {}", debs.display()))?
    {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(&format!("{package}_")) && name.ends_with(".deb") {
            found = Some(p);
        }
    }
    let Some(deb) = found else {
        bail!(
            "{}: no {package}_*.deb (the Trixie base's test packages; rebuild the base with \
             cargo xtask base debian --suite trixie --rebuild)",
            debs.display()
        );
    };
    let dir = tempfile::tempdir()?;
    let status = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.path())
        .status()
        .context("cannot run dpkg-deb (apt-get install dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    for sub in ["usr/sbin", "usr/bin", "sbin", "bin"] {
        let p = dir.path().join(sub).join(program);
        if p.is_file() {
            return std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()));
        }
    }
    bail!("{}: no {program} in it", deb.display())
}

/// What the Wi-Fi test saw.
pub(super) struct Seen {
    /// VM start → `wlan0` has an address from the access point.
    pub(super) up: Duration,
    pub(super) address: String,
    /// Access point switched to another passphrase → `wlan0` without an address.
    pub(super) lost: Duration,
    /// How long `wlan0` then stayed without one.
    pub(super) held: Duration,
}

/// `wlan0`'s address on the access point's network, and NetworkManager's state of it.
fn wlan0(vm: &Vm, user: &str, identity: &Path) -> Option<(Option<String>, String)> {
    let text = ssh(
        vm,
        user,
        identity,
        "ip -4 -o addr show dev wlan0; echo \"nm=$(nmcli -t -g GENERAL.STATE,GENERAL.CONNECTION device show wlan0 | tr '\\n' ' ')\"",
        None,
    )?;
    let address = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .filter(|a| a.starts_with(AP_PREFIX))
        .map(String::from);
    let nm = text
        .lines()
        .find_map(|l| l.strip_prefix("nm="))
        .unwrap_or("")
        .trim()
        .to_string();
    Some((address, nm))
}

/// Waits for `wlan0` to join the access point, then switches the access point to another passphrase and
/// checks that `wlan0` loses its address and does not get one back.
pub(super) fn check(vm: &Vm, user: &str, identity: &Path, opts: &Options) -> anyhow::Result<Seen> {
    const JOIN: Duration = Duration::from_secs(180);
    const LOSE: Duration = Duration::from_secs(90);
    const HOLD: Duration = Duration::from_secs(20);
    let mut last = String::new();
    let address = until(
        Instant::now(),
        JOIN,
        &format!(
            "{}: wlan0 gets an address from the access point {:?} (NetworkManager's last word on \
             wlan0: see the console)",
            vm.name, opts.ssid
        ),
        || {
            let (address, nm) = wlan0(vm, user, identity)?;
            last = nm;
            address
        },
    )
    .with_context(|| {
        // What the card and the access point said, to tell a card that never tried from a key
        // refused, an access point that never started or a DHCP server that never answered.
        let said = ssh(
            vm,
            user,
            identity,
            "sudo -S -p '' sh -c 'cat /run/herd-e2e/hostapd.log; systemctl status --no-pager \
             herd-e2e-ap; nmcli -f GENERAL,WIFI-PROPERTIES device show wlan0; rfkill; \
             journalctl -b --no-pager -u NetworkManager -u wpa_supplicant -u herd-e2e-ap \
             | tail -n 60'",
            Some(&format!("{}\n", opts.password)),
        )
        .unwrap_or_else(|| "(ssh failed)".into());
        format!("wlan0 was last: {last}; the card and the access point said:\n{said}")
    })?;
    let up = vm.started.elapsed();
    println!(
        "    {}: Wi-Fi: wlan0 joined {:?} and has {address} from the access point's DHCP after {} \
         (NetworkManager: {last})",
        vm.name,
        opts.ssid,
        secs(Some(up))
    );
    // The access point takes another passphrase (sudo with the user's password from userconf.txt).
    let switched = Instant::now();
    let said = ssh(
        vm,
        user,
        identity,
        "sudo -S -p '' /usr/local/sbin/herd-e2e-ap wrong",
        Some(&format!("{}\n", opts.password)),
    )
    .with_context(|| {
        format!(
            "{}: {user} could not switch the access point's passphrase with sudo",
            vm.name
        )
    })?;
    if !said.contains("wrong passphrase") {
        bail!("{}: herd-e2e-ap wrong said {said:?}", vm.name);
    }
    until(
        switched,
        LOSE,
        &format!(
            "{}: wlan0 loses its address once the access point has another passphrase",
            vm.name
        ),
        || matches!(wlan0(vm, user, identity), Some((None, _))).then_some(()),
    )?;
    let lost = switched.elapsed();
    // And it is the key that was refused, not the network that went away: wpa_supplicant says so in the
    // journal (the user is in the adm group, which reads it).
    let refused = until(
        switched,
        LOSE,
        &format!(
            "{}: wpa_supplicant reports the key refused (WRONG_KEY, a failed 4-way handshake)",
            vm.name
        ),
        || {
            let text = ssh(
                vm,
                user,
                identity,
                "journalctl -b -q --no-pager | grep -E 'WRONG_KEY|4-Way Handshake failed|no-secrets'",
                None,
            )?;
            text.lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        },
    )?;
    let held_from = Instant::now();
    while held_from.elapsed() < HOLD {
        std::thread::sleep(Duration::from_secs(2));
        if let Some((Some(a), nm)) = wlan0(vm, user, identity) {
            bail!(
                "{}: wlan0 got {a} from an access point whose passphrase is not the image's \
                 (NetworkManager: {nm})",
                vm.name
            );
        }
    }
    let held = held_from.elapsed();
    let nm = wlan0(vm, user, identity).map(|w| w.1).unwrap_or_default();
    println!(
        "    {}: Wi-Fi: with another passphrase on the access point wlan0 lost its address after {} \
         and got none in {} more (NetworkManager: {nm}; journal: {refused:?}); {AP_ADDRESS} is the \
         access point",
        vm.name,
        secs(Some(lost)),
        secs(Some(held))
    );
    Ok(Seen {
        up,
        address,
        lost,
        held,
    })
}
