//! herd: the agent that turns a stack of Raspberry Pis into a cluster, and the operator's CLI.
//!
//! Five rooms, and data flows one way through them: [`config`] → [`daemon`] → [`gossip`] ← the daemon's
//! UDP transport; gossip state → [`model`] → the daemon's API and the operator's [`ops`].
//! - [`config`]: the strict TOML configuration.
//! - [`gossip`]: the membership protocol as a sans-IO state machine (state, digests, φ detector, wire
//!   format) and the deterministic simulator that drives it; no clock, socket, file or runtime.
//! - [`daemon`]: what runs on the card: the tokio loop, discovery, monitoring, meta-data, identity,
//!   handlers, the HTTP API and dashboard.
//! - [`ops`]: what runs on the operator's laptop: CLI commands, inventory, launch, upgrade.
//! - [`installer`]: the card's root installer of `herd upgrade`, a program apart from the agent.
//! - [`actuator`]: the card's root side of reboot, shutdown, identify and restart, a program apart too.
//! - [`packages`]: the card's root installer of the packages an image carries, at first boot.
//! - [`swarm`]: the card's root side of the container engine: Docker's Engine API, spoken sans-IO.
//! - [`conductor`]: that root side's loop (`herd engine-apply`): Docker's socket, the report, the plan.
//! - [`client`]: the one blocking client of a node's HTTP API (the operator's tools, the installer).
//! - [`model`]: what the daemon publishes and the API shows, shared by the daemon and the tools.
//! - [`release`]: the signed release artifact of `herd upgrade`, packed by the tools, checked by the daemon
//!   (the `herd-release` crate, shared with `cargo xtask` and the image pipeline).
//!
//! `agent/tests/layout.rs` keeps it so: no import cycle, and a gossip core that uses nothing outside it.

pub mod actuator;
pub mod client;
pub mod conductor;
pub mod config;
pub mod daemon;
pub mod files;
pub mod gossip;
pub mod installer;
pub mod model;
pub mod ops;
pub mod packages;
pub mod swarm;
/// The release format lives in a crate of its own (`agent/release/`), which `cargo xtask` and the image
/// pipeline use too.
pub use herd_release as release;

/// This agent's version: `HERD_VERSION` at build time (how `cargo xtask release --version` builds the
/// agent a rollout installs), else the crate's.
pub const VERSION: &str = match option_env!("HERD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
