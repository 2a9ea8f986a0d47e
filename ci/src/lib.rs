//! herd's test harnesses and benchmarks. The benchmarks live in `src/bench/`, one module per benchmark,
//! driven by the `herd-bench` binary that `cargo xtask bench` runs.

pub mod bench;
