//! What runs on the card: the tokio layer that drives the gossip core over UDP ([`Agent`], [`run`]) and
//! everything around it that touches the machine or the network: mDNS discovery, monitoring, service
//! meta-data, the card's identity, event hooks, and the HTTP API and dashboard.

pub mod actions;
pub mod agent;
pub mod api;
pub mod discovery;
pub mod handle;
pub mod health;
pub mod hooks;
pub mod identity;
pub mod logs;
pub mod metadata;
pub mod sampler;
pub mod upgrade;

pub use agent::{run, Agent};
pub use handle::Handle;
