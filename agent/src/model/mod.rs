//! The shapes the daemon and the operator's tools share: what a node publishes in the gossip
//! ([`published`]), how the API shows the cluster ([`views`]), and the requests and reports of `herd
//! upgrade` ([`upgrade`]), and the token's proof that the CLI sends instead of the token ([`proof`]). Depends on the gossip core only, so both sides can use it without reaching into
//! each other.

pub mod actions;
pub mod engine;
pub mod health;
pub mod history;
pub mod join;
pub mod logs;
pub mod proof;
pub mod published;
pub mod upgrade;
pub mod views;
