//! `cargo xtask screenshot`: the README's picture of the dashboard, taken again. It runs the browser
//! test (`agent/tests/dashboard.rs`: a real 4-agent cluster on loopback, headless Chromium), which copies
//! its desktop screenshot to `docs/dashboard.png` when told where.

use crate::deps::ensure_packages;
use crate::util::{cargo, root, run as run_step};

pub fn run() -> anyhow::Result<()> {
    ensure_packages(
        "the dashboard's screenshot",
        crate::packages::BROWSER_TEST_NEEDS,
    )?;
    let mut test = cargo();
    test.args(["test", "--locked", "-p", "herd", "--test", "dashboard"])
        .env("HERD_SCREENSHOT_DIR", root().join("docs"));
    run_step("the dashboard in headless Chromium", test)?;
    println!(
        "==> screenshot: {}",
        root().join("docs/dashboard.png").display()
    );
    Ok(())
}
