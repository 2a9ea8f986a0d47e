//! How the CLI finds the cluster when no `--node` is given: the agent of this machine (the CLI run on
//! a card) when it answers, else the agents announcing themselves with mDNS (`_herd._udp.local.`, as
//! every agent does) of the cluster named by `--cluster`, or of the only cluster seen. mDNS is not
//! authenticated: an agent found so is trusted as one named with `--node` is (by address), and the
//! token is only ever proved to the node id it announced, never sent.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mdns_sd::{ServiceDaemon, ServiceEvent};

use crate::model::published::SERVICE_TYPE;

/// How long the CLI listens for announcements at most. Responders answer a query at most once a second
/// (RFC 6762 §6), so a query right after another (a script running `herd` twice) is answered only
/// by the querier's next one, a second or three later.
pub const BROWSE: Duration = Duration::from_secs(6);
/// How long it keeps listening after the last new agent, for other clusters' agents (all answer the
/// same query within a fraction of a second).
const SETTLE: Duration = Duration::from_millis(1500);
/// How long it waits for one agent's API to take a connection.
const CONNECT: Duration = Duration::from_millis(700);
/// The API of the agent on this machine, tried first.
pub const LOCAL: &str = "127.0.0.1:8080";

/// An agent that announced itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub cluster: String,
    pub id: String,
    /// Its API: an announced address and the `http` port.
    pub api: SocketAddr,
}

/// Listens for agents' announcements for up to `wait`: until one of `cluster` is found when a cluster
/// is named, else until [`SETTLE`] has passed without a new one. Agents without an API (no `http` in
/// their TXT record) are left out: the CLI has nothing to ask them.
pub fn browse(wait: Duration, cluster: Option<&str>) -> anyhow::Result<Vec<Found>> {
    let daemon = ServiceDaemon::new().context(
        "cannot browse mDNS for the cluster's agents (UDP port 5353); name a node with --node",
    )?;
    let events = daemon
        .browse(SERVICE_TYPE)
        .context("cannot browse mDNS for the cluster's agents")?;
    let mut deadline = Instant::now() + wait;
    let mut found = BTreeSet::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(event) = events.recv_timeout(left) else {
            break;
        };
        if let ServiceEvent::ServiceResolved(s) = event {
            let props = &s.txt_properties;
            let (Some(name), Some(id), Some(port)) = (
                props.get_property_val_str("cluster"),
                props.get_property_val_str("id"),
                props
                    .get_property_val_str("http")
                    .and_then(|p| p.parse::<u16>().ok()),
            ) else {
                continue;
            };
            // Announced text is hostile: kept only when it looks like what agents announce.
            if crate::config::check_cluster_name(name).is_err()
                || id.len() != 16
                || !id.bytes().all(|b| b.is_ascii_hexdigit())
            {
                continue;
            }
            let mut addrs: Vec<_> = s.get_addresses_v4().into_iter().collect();
            addrs.sort_unstable();
            let Some(ip) = addrs.first() else {
                continue;
            };
            let new = found.insert(Found {
                cluster: name.to_string(),
                id: id.to_string(),
                api: SocketAddr::new(IpAddr::V4(*ip), port),
            });
            match cluster {
                Some(c) if c == name => break,
                None if new => deadline = deadline.min(Instant::now() + SETTLE),
                _ => {}
            }
        }
    }
    let _ = daemon.shutdown();
    Ok(found.into_iter().collect())
}

/// The agents of the cluster to ask: `cluster`'s, or those of the only cluster in `found`.
pub fn choose(found: &[Found], cluster: Option<&str>) -> anyhow::Result<Vec<Found>> {
    let clusters: BTreeSet<&str> = found.iter().map(|f| f.cluster.as_str()).collect();
    let seen = || {
        clusters
            .iter()
            .map(|c| format!("{c} ({})", found.iter().filter(|f| f.cluster == *c).count()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = match cluster {
        Some(c) if clusters.contains(c) => c,
        Some(c) if clusters.is_empty() => bail!(
            "no herd agent announced itself with mDNS within {} s (cluster {c:?} wanted): is this \
             machine on the cluster's LAN, and does it pass multicast (UDP 5353)? Name a node with \
             --node ADDRESS",
            BROWSE.as_secs()
        ),
        Some(c) => bail!(
            "no agent of cluster {c:?} announced itself with mDNS; seen: {} (agents by cluster). Name \
             one with --cluster, or a node with --node ADDRESS",
            seen()
        ),
        None => match clusters.len() {
            0 => bail!(
                "no herd agent answered at {LOCAL} and none announced itself with mDNS within {} s: is \
                 this machine on the cluster's LAN, and does it pass multicast (UDP 5353)? Name a node \
                 with --node ADDRESS",
                BROWSE.as_secs()
            ),
            1 => clusters.first().expect("one"),
            _ => bail!(
                "agents of several clusters announce themselves here: {}; choose one with --cluster NAME",
                seen()
            ),
        },
    };
    Ok(found
        .iter()
        .filter(|f| f.cluster == name)
        .cloned()
        .collect())
}

/// Whether an API takes a connection at `addr` within the connect timeout.
pub fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, CONNECT).is_ok()
}

/// The first of `agents` whose API takes a connection, or an error naming every one tried.
pub fn first_answering(agents: &[Found]) -> anyhow::Result<Found> {
    for f in agents {
        if answers(f.api) {
            return Ok(f.clone());
        }
    }
    bail!(
        "no agent of cluster {:?} took a connection; tried {}",
        agents.first().map_or("", |f| f.cluster.as_str()),
        agents
            .iter()
            .map(|f| format!("{} at {}", f.id, f.api))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(cluster: &str, id: &str, ip: &str) -> Found {
        Found {
            cluster: cluster.into(),
            id: id.into(),
            api: format!("{ip}:8080").parse().unwrap(),
        }
    }

    #[test]
    fn the_named_cluster_or_the_only_one_seen() {
        let two = [
            f("farm", "0000000000000001", "10.0.0.1"),
            f("farm", "0000000000000002", "10.0.0.2"),
            f("lab", "0000000000000003", "10.0.0.3"),
        ];
        assert_eq!(choose(&two, Some("farm")).unwrap().len(), 2);
        assert_eq!(choose(&two[..2], None).unwrap().len(), 2);
        let e = choose(&two, None).unwrap_err().to_string();
        assert!(
            e.contains("farm (2), lab (1)") && e.contains("--cluster"),
            "{e}"
        );
        let e = choose(&two, Some("other")).unwrap_err().to_string();
        assert!(e.contains("\"other\"") && e.contains("farm (2)"), "{e}");
        let e = choose(&[], None).unwrap_err().to_string();
        assert!(e.contains(LOCAL) && e.contains("--node"), "{e}");
    }

    #[test]
    fn an_agent_that_does_not_answer_is_named() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut gone = f("farm", "00000000000000aa", "127.0.0.1");
        gone.api.set_port(port);
        let e = first_answering(&[gone]).unwrap_err().to_string();
        assert!(e.contains("00000000000000aa at 127.0.0.1:"), "{e}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut up = f("farm", "00000000000000bb", "127.0.0.1");
        up.api = listener.local_addr().unwrap();
        assert_eq!(first_answering(&[up.clone()]).unwrap(), up);
    }
}
