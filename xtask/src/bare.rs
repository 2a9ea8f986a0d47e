//! `cargo xtask bare`: the README's commands on a bare Debian root (`ci/src/bare.rs`): a fresh clone of
//! this workspace's HEAD runs the main command to a finished image, then installs every package the test
//! suite uses, where only the Rust toolchain was brought in. Needs root (mounts, chroot) and mmdebstrap.

use anyhow::bail;

use crate::deps::{ensure_packages, is_root};
use crate::util::{root, run as run_step, test_profile_run};

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the bare-root test makes a Debian root and chroots into it, which needs root; run:\n    \
             sudo env PATH=\"$PATH\" cargo xtask bare"
        );
    }
    ensure_packages("bare-root test", crate::packages::BARE_NEEDS)?;
    let mut harness = test_profile_run("herd-ci", "herd-bare");
    harness
        .arg("--workspace")
        .arg(root())
        .arg("--out")
        .arg(root().join("target/bare"));
    run_step("bare-root test (herd-bare)", harness)
}
