//! herd: the agent that turns a stack of Raspberry Pis into a cluster, and the operator's CLI.
//!
//! The membership protocol lives in [`gossip`] as a sans-IO state machine; [`sim`] drives it in a
//! deterministic simulated network; [`agent`] drives it over real UDP with tokio, configured by [`config`].

pub mod agent;
pub mod config;
pub mod discovery;
pub mod gossip;
pub mod sim;
