//! `cargo xtask`: all of herd's build logic, in Rust (the cargo-xtask convention). A thin `main` that
//! dispatches to one module per task.

mod bare;
mod base;
mod bench;
mod build;
mod ci;
mod deps;
mod e2e;
mod image;
mod release;
mod screenshot;
mod util;
mod zig;

use anyhow::bail;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  build                  static release builds of herd for 64-bit (aarch64) and 32-bit (ARMv6: every
                         Pi, Zero and 1 included) Raspberry Pi OS (installs what it needs)
  image --cluster NAME [--base IMG|URL] [--user U --password-file F] [--ssh-key F] [--xz] …
                         a flashable SD-card image with herd baked in (`cargo xtask image --help`)
  base debian [--arch arm64|armhf]
                         a Raspberry Pi-layout base image made from Debian's packages, cached in
                         ~/.cache/herd/base (for `image --base debian`; needs root)
  fixture PATH [--armhf] [--old-layout]
                         write a small Pi-layout test image (to try `image --base PATH` offline)
  e2e [--no-armhf]       boot-and-join: three VMs boot copies of one herd image in QEMU, find each
                         other by mDNS, one is killed and one powered off; on the Bookworm image,
                         herd upgrade (refusals, a rollback, a power cut mid-upgrade) (needs root)
  deps                   install every Debian package the test suite and the image pipeline use (root),
                         or print the command that does
  bare                   the README's commands in a bare Debian root: a fresh clone makes an image with
                         only the Rust toolchain brought in, then installs the test suite's packages
                         (needs root)
  release --cluster NAME [--version V] [--out FILE]
                         the signed artifact `herd upgrade --to FILE` installs: herd built for both
                         CPU families, signed with the cluster's key (`cargo xtask release --help`)
  ci                     everything CI checks: formatting, clippy -D warnings, all tests, quick benchmarks
  screenshot             the README's picture of the dashboard (docs/dashboard.png), taken again by the
                         browser test from a real 3-agent cluster
  bench [NAME…] [--quick]
                         run benchmarks and print their figures (names: gossip, peers, footprint,
                         http, image; default: all, and then docs/BENCHMARKS.md is written)
";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("build") => build::run(&args[1..]),
        Some("image") => image::run(&args[1..]),
        Some("base") => base::run(&args[1..]),
        Some("e2e") => e2e::run(&args[1..]),
        Some("fixture") => image::fixture(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("deps") => deps::run(&args[1..]),
        Some("bare") => bare::run(&args[1..]),
        Some("release") => release::run(&args[1..]),
        Some("screenshot") => screenshot::run_task(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}
