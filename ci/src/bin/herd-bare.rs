//! `herd-bare`: runs the README's main command from a fresh clone in a bare Debian root, then installs
//! every package of the test suite there (`cargo xtask bare` calls it; run it as root).

use std::path::PathBuf;

use anyhow::{bail, Context};

const USAGE: &str = "usage: herd-bare --workspace DIR --out DIR";

fn main() -> anyhow::Result<()> {
    let mut workspace = None;
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--workspace" => workspace = Some(value()?),
            "--out" => out = Some(value()?),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let (Some(workspace), Some(out)) = (workspace, out) else {
        bail!("{USAGE}");
    };
    herd_ci::bare::run_all(&herd_ci::bare::Options { workspace, out })
}
