//! herd's test harnesses and benchmarks. `netns` builds LANs of hosts in network namespaces for
//! multi-host tests. The benchmarks live in `src/bench/`, one module per benchmark,
//! driven by the `herd-bench` binary that `cargo xtask bench` runs. `e2e` boots herd images in QEMU on
//! such a LAN (the `herd-e2e` binary that `cargo xtask e2e` runs). `bare` proves the README's set-up
//! in a bare Debian root (the `herd-bare` binary that `cargo xtask bare` runs).

pub mod bare;
pub mod bench;
pub mod e2e;
pub mod netns;
