//! herd: the agent that turns a stack of Raspberry Pis into a cluster, and the operator's CLI.
//!
//! The membership protocol lives in [`gossip`] as a sans-IO state machine; [`sim`] drives it in a
//! deterministic simulated network; [`agent`] drives it over real UDP with tokio, configured by [`config`],
//! finds peers with [`discovery`], publishes [`monitor`] samples and [`metadata`] services, and serves
//! [`api`] (dashboard and REST).

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod discovery;
pub mod gossip;
pub mod handlers;
pub mod identity;
pub mod inventory;
pub mod launch;
pub mod metadata;
pub mod monitor;
pub mod sim;
