//! `herd-e2e`: boots herd images in QEMU and checks that they form a cluster (`cargo xtask e2e` builds the
//! images and calls it; run it as root).

use std::path::PathBuf;

use anyhow::{bail, Context};

const USAGE: &str =
    "usage: herd-e2e --arm64 IMAGE [--arm64 IMAGE] [--armhf IMAGE] [--user NAME [--ssh-identity KEY] \
     [--password-file FILE]] [--wifi-ssid SSID --wifi-password-file FILE --wifi-debs DIR] \
     [--upgrade ARTIFACT --upgrade-broken ARTIFACT --secrets FILE] --out DIR";

/// The first line of a file holding a secret.
fn first_line(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn main() -> anyhow::Result<()> {
    let mut arm64 = None;
    let mut arm64_other = None;
    let mut armhf = None;
    let mut out = None;
    let mut user = None;
    let mut ssh_identity = None;
    let (mut ssid, mut wifi_password, mut password, mut debs) = (None, None, None, None);
    let (mut good, mut broken, mut secrets) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--arm64" if arm64.is_none() => arm64 = Some(value()?),
            "--arm64" => arm64_other = Some(value()?),
            "--armhf" => armhf = Some(value()?),
            "--out" => out = Some(value()?),
            "--user" => user = Some(value()?.to_string_lossy().into_owned()),
            "--ssh-identity" => ssh_identity = Some(value()?),
            "--wifi-ssid" => ssid = Some(value()?.to_string_lossy().into_owned()),
            "--wifi-password-file" => wifi_password = Some(first_line(&value()?)?),
            "--password-file" => password = Some(first_line(&value()?)?),
            "--wifi-debs" => debs = Some(value()?),
            "--upgrade" => good = Some(value()?),
            "--upgrade-broken" => broken = Some(value()?),
            "--secrets" => secrets = Some(value()?),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let (Some(arm64), Some(out)) = (arm64, out) else {
        bail!("{USAGE}");
    };
    let wifi = match (ssid, wifi_password, password.clone(), debs) {
        (None, None, _, None) => None,
        (Some(ssid), Some(passphrase), Some(password), Some(debs)) => {
            Some(herd_ci::e2e::WifiOptions {
                ssid,
                passphrase,
                password,
                debs,
            })
        }
        _ => bail!(
            "the Wi-Fi test needs --wifi-ssid, --wifi-password-file, --password-file and --wifi-debs; \
             {USAGE}"
        ),
    };
    let upgrade = match (good, broken, secrets) {
        (None, None, None) => None,
        (Some(good), Some(broken), Some(secrets)) => Some(herd_ci::e2e::UpgradeOptions {
            good,
            broken,
            secrets,
        }),
        _ => bail!("the upgrade test needs --upgrade, --upgrade-broken and --secrets; {USAGE}"),
    };
    herd_ci::e2e::run(&herd_ci::e2e::Options {
        arm64,
        arm64_other,
        armhf,
        out,
        user,
        ssh_identity,
        password,
        wifi,
        upgrade,
    })
}
