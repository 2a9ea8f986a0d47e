//! The shapes the daemon and the operator's tools share: what a node publishes in the gossip
//! ([`published`]) and how the API shows the cluster ([`views`]). Depends on the gossip core only, so both
//! sides can use it without reaching into each other.

pub mod published;
pub mod views;
