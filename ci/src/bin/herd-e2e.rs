//! `herd-e2e`: boots herd images in QEMU and checks that they form a cluster (`cargo xtask e2e` builds the
//! images and calls it; run it as root).

use std::path::PathBuf;

use anyhow::{bail, Context};

const USAGE: &str =
    "usage: herd-e2e --arm64 IMAGE [--arm64 IMAGE] [--armhf IMAGE] [--user NAME [--ssh-identity KEY]] \
     --out DIR";

fn main() -> anyhow::Result<()> {
    let mut arm64 = None;
    let mut arm64_other = None;
    let mut armhf = None;
    let mut out = None;
    let mut user = None;
    let mut ssh_identity = None;
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
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let (Some(arm64), Some(out)) = (arm64, out) else {
        bail!("{USAGE}");
    };
    herd_ci::e2e::run(&herd_ci::e2e::Options {
        arm64,
        arm64_other,
        armhf,
        out,
        user,
        ssh_identity,
    })
}
