//! herd's test harnesses and benchmarks. `netns` builds LANs of hosts in network namespaces for
//! multi-host tests. The benchmarks live in `src/bench/`, one module per benchmark,
//! driven by the `herd-bench` binary that `cargo xtask bench` runs.

pub mod bench;
pub mod netns;
