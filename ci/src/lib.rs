//! herd's test harnesses and benchmarks. `netns` builds LANs of hosts in network namespaces for
//! multi-host tests. The benchmarks live in `src/bench/`, one module per benchmark,
//! driven by the `herd-bench` binary that `cargo xtask bench` runs. `e2e` boots herd images in QEMU on
//! such a LAN (the `herd-e2e` binary that `cargo xtask e2e` runs). `bare` proves the README's set-up
//! in a bare Debian root (the `herd-bare` binary that `cargo xtask bare` runs).

pub mod bare;
pub mod bench;
pub mod e2e;
pub mod netns;

/// herd's cache's `name` directory (see [`herd_image::cache_dir`]): slow fixtures survive fresh clones.
pub fn cache_dir(name: &str) -> std::path::PathBuf {
    herd_image::cache_dir().join(name)
}

/// A child process that is killed and reaped when this goes out of scope, test failed or not.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
