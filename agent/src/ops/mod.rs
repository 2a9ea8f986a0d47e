//! What runs on the operator's laptop: the HTTP client of a node's API, the CLI commands, the Ansible
//! inventory, service launch, and upgrades of the agents. It reads the cluster through the API only, never through the gossip.

pub mod cli;
pub mod find;
pub mod inventory;
pub mod launch;
pub mod upgrade;
