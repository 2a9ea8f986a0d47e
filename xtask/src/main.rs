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
mod packages;
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
        Some("deps") => packages::run(&args[1..]),
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// xtask's modules form a tree, as rust-analyzer's tasks do: read from their `crate::` paths, no
    /// module uses one that uses it back, however far round; and no file is compiled in from elsewhere
    /// by `#[path]` (the agent's own layout test, `agent/tests/layout.rs`, is this test's twin).
    #[test]
    fn the_tasks_form_a_tree() {
        let dir = crate::util::root().join("xtask/src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.lines().any(|l| l.trim_start().starts_with("#[path")),
                "{name}.rs includes a file by #[path]"
            );
            let uses = graph.entry(name.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let used: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !used.is_empty() && used != name {
                    uses.insert(used);
                }
            }
        }
        assert!(graph.len() > 10, "xtask's modules not found: {graph:?}");
        // Depth-first, with the path so far: a module met again on it closes a circle.
        fn visit(
            m: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == m) {
                let mut c = path[at..].to_vec();
                c.push(m.to_string());
                return Some(c);
            }
            if !done.insert(m.to_string()) {
                return None;
            }
            path.push(m.to_string());
            for next in g.get(m).into_iter().flatten() {
                if let Some(c) = visit(next, g, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            if let Some(c) = visit(m, &graph, &mut Vec::new(), &mut done) {
                panic!("xtask's modules in a circle: {}", c.join(" → "));
            }
        }
    }
}
