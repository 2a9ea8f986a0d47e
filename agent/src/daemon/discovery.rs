//! Zero-conf discovery: announces the agent as DNS-SD service `_herd._udp.local.` with `mdns-sd`, and
//! browses for the other agents of its cluster, whose addresses become gossip seeds.
//!
//! The announcement uses a host name of its own, `herd-<node id>.local.`, never the machine's: on
//! Raspberry Pi OS avahi-daemon owns the machine's name and renames the host when another stack claims it.
//! Addresses follow the interfaces (DHCP renewals, a cable moved), and the announcement is withdrawn (a
//! goodbye with TTL 0) when the agent stops gracefully.
//!
//! It also resolves `.local` seed names: the agent is a static musl program, whose resolver reads
//! `/etc/hosts` and asks DNS but never libnss-mdns, so it asks mDNS itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use mdns_sd::{
    DaemonEvent, HostnameResolutionEvent, IfKind, IfPredicate, Receiver, ServiceDaemon,
    ServiceEvent, ServiceInfo, UnregisterStatus,
};
use nix::net::if_::InterfaceFlags;

use crate::gossip::NodeId;

pub use crate::model::published::SERVICE_TYPE;

/// What an agent announces about itself.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub cluster: String,
    pub id: NodeId,
    /// The UDP port gossip listens on (also the SRV record's port).
    pub gossip_port: u16,
    /// The port of the HTTP API, when it runs.
    pub http_port: Option<u16>,
    /// Interface names to use; empty means every suitable IPv4 interface.
    pub interfaces: Vec<String>,
}

/// A change worth the gossip layer's attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The set of discovered peers changed; [`Mdns::peers`] has the new one.
    Peers,
    /// An address of this machine appeared or went away.
    LocalAddresses,
}

/// A running mDNS responder and browser.
pub struct Mdns {
    daemon: ServiceDaemon,
    fullname: String,
    cluster: String,
    id: NodeId,
    browse: Receiver<ServiceEvent>,
    monitor: Receiver<DaemonEvent>,
    /// Service instance name → the peer's gossip addresses.
    peers: BTreeMap<String, Vec<SocketAddr>>,
}

impl Mdns {
    /// Starts announcing and browsing. Must be called in the network namespace the agent serves: the
    /// responder's thread is created here.
    pub fn start(a: &Announcement) -> anyhow::Result<Mdns> {
        let daemon =
            ServiceDaemon::new().context("cannot start the mDNS responder (UDP port 5353)")?;
        daemon
            .disable_interface(IfKind::All)
            .and_then(|()| daemon.enable_interface(interface_filter(&a.interfaces)))
            .context("cannot select mDNS interfaces")?;
        let monitor = daemon.monitor().context("mDNS monitor")?;

        let id = a.id.to_string();
        let mut txt = vec![
            ("cluster", a.cluster.clone()),
            ("id", id.clone()),
            ("gossip", a.gossip_port.to_string()),
            ("version", crate::VERSION.to_string()),
        ];
        if let Some(port) = a.http_port {
            txt.push(("http", port.to_string()));
        }
        let name = format!("herd-{id}");
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &name,
            &format!("{name}.local."),
            "",
            a.gossip_port,
            &txt[..],
        )
        .context("mDNS service record")?
        .enable_addr_auto();
        info.set_interfaces(vec![interface_filter(&a.interfaces)]);
        let fullname = info.get_fullname().to_string();
        daemon
            .register(info)
            .context("cannot announce the mDNS service")?;
        let browse = daemon
            .browse(SERVICE_TYPE)
            .context("cannot browse for mDNS services")?;
        tracing::info!(service = %fullname, interfaces = ?a.interfaces, "mDNS discovery started");
        Ok(Mdns {
            daemon,
            fullname,
            cluster: a.cluster.clone(),
            id: a.id,
            browse,
            monitor,
            peers: BTreeMap::new(),
        })
    }

    /// A handle on the running responder, for [`resolve_local`].
    pub fn daemon(&self) -> ServiceDaemon {
        self.daemon.clone()
    }

    /// The gossip addresses of every discovered peer of this cluster.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.values().flatten().copied()
    }

    /// Waits for the next change. Cancel-safe: an event is taken off its channel and handled without an
    /// await in between.
    pub async fn next(&mut self) -> Change {
        loop {
            tokio::select! {
                e = self.browse.recv_async() => match e {
                    Ok(e) => if self.on_service(e) { return Change::Peers },
                    Err(_) => std::future::pending().await,
                },
                e = self.monitor.recv_async() => match e {
                    Ok(DaemonEvent::IpAdd(ip)) => {
                        tracing::info!(%ip, "local address added");
                        return Change::LocalAddresses;
                    }
                    Ok(DaemonEvent::IpDel(ip)) => {
                        tracing::info!(%ip, "local address removed");
                        return Change::LocalAddresses;
                    }
                    Ok(DaemonEvent::NameChange(c)) => {
                        tracing::warn!(from = %c.original, to = %c.new_name, "mDNS name conflict resolved by renaming");
                    }
                    Ok(DaemonEvent::Error(e)) => tracing::warn!(error = %e, "mDNS"),
                    Ok(_) => {}
                    Err(_) => std::future::pending().await,
                },
            }
        }
    }

    /// Updates the peer table; true when it changed.
    fn on_service(&mut self, event: ServiceEvent) -> bool {
        match event {
            ServiceEvent::ServiceResolved(s) => {
                let props = &s.txt_properties;
                if props.get_property_val_str("cluster") != Some(self.cluster.as_str()) {
                    tracing::debug!(service = %s.fullname, "ignoring an agent of another cluster");
                    return false;
                }
                let Some(id) = props
                    .get_property_val_str("id")
                    .and_then(|id| id.parse::<NodeId>().ok())
                else {
                    tracing::debug!(service = %s.fullname, "ignoring a service without a node id");
                    return false;
                };
                if id == self.id {
                    return false;
                }
                let port = props
                    .get_property_val_str("gossip")
                    .and_then(|p| p.parse::<u16>().ok())
                    .unwrap_or(s.port);
                let mut addrs: Vec<SocketAddr> = s
                    .get_addresses_v4()
                    .into_iter()
                    .map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
                    .collect();
                addrs.sort_unstable();
                if addrs.is_empty() || self.peers.get(&s.fullname) == Some(&addrs) {
                    return false;
                }
                tracing::info!(peer = %id, addrs = ?addrs, "discovered with mDNS");
                self.peers.insert(s.fullname.clone(), addrs);
                true
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let removed = self.peers.remove(&fullname).is_some();
                if removed {
                    tracing::info!(service = %fullname, "mDNS announcement withdrawn");
                }
                removed
            }
            _ => false,
        }
    }

    /// Withdraws the announcement (peers' caches drop it at once) and stops the responder.
    pub async fn stop(self) {
        let timeout = std::time::Duration::from_secs(2);
        match self.daemon.unregister(&self.fullname) {
            Ok(r) => match tokio::time::timeout(timeout, r.recv_async()).await {
                Ok(Ok(UnregisterStatus::OK)) => tracing::info!("mDNS announcement withdrawn"),
                other => tracing::warn!(result = ?other, "mDNS announcement not withdrawn cleanly"),
            },
            Err(e) => tracing::warn!(error = %e, "mDNS announcement not withdrawn"),
        }
        if let Ok(r) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(timeout, r.recv_async()).await;
        }
    }
}

impl Drop for Mdns {
    /// The responder runs on a thread of its own that outlives its handle: stop it. (After [`Mdns::stop`]
    /// this is a no-op.)
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Which interfaces mDNS runs on: the named ones, or else every IPv4 interface that is up,
/// multicast-capable and not loopback (checked again whenever the responder rescans interfaces, so an
/// interface that comes up later is used).
fn interface_filter(names: &[String]) -> IfKind {
    let names = names.to_vec();
    IfKind::Predicate(IfPredicate::new(move |intf| {
        intf.ip().is_ipv4()
            && if names.is_empty() {
                !intf.is_loopback() && is_multicast_up(&intf.name)
            } else {
                names.contains(&intf.name)
            }
    }))
}

fn is_multicast_up(name: &str) -> bool {
    lan_ipv4s().iter().any(|(n, _)| n == name)
}

/// `(interface, address)` for every IPv4 address on an interface that is up, multicast-capable and not
/// loopback, in the kernel's order.
pub fn lan_ipv4s() -> Vec<(String, std::net::Ipv4Addr)> {
    let wanted = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_MULTICAST;
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter(|i| i.flags.contains(wanted) && !i.flags.contains(InterfaceFlags::IFF_LOOPBACK))
        .filter_map(|i| {
            let ip = i.address?.as_sockaddr_in()?.ip();
            Some((i.interface_name, ip))
        })
        .collect()
}

/// Whether `host` is a multicast DNS name (RFC 6762: a name in `local.`), which unicast DNS never answers.
pub fn is_mdns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() > ".local".len()
        && host
            .get(host.len() - ".local".len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".local"))
}

/// How long a `.local` name may take to answer: responders answer within 20–120 ms (RFC 6762 §6).
pub const MDNS_RESOLVE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The IPv4 addresses of the `.local` name `host`, asked with an mDNS query through `daemon` (the
/// agent's own responder), or through a responder started for the question when discovery is off.
pub async fn resolve_local(
    daemon: Option<ServiceDaemon>,
    host: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Ipv4Addr>> {
    let (daemon, own) = match daemon {
        Some(d) => (d, false),
        None => (
            ServiceDaemon::new().context("cannot start an mDNS resolver (UDP port 5353)")?,
            true,
        ),
    };
    let fqdn = format!("{}.", host.strip_suffix('.').unwrap_or(host));
    let result = async {
        let events = daemon
            .resolve_hostname(&fqdn, Some(timeout.as_millis() as u64))
            .with_context(|| format!("cannot ask mDNS for {fqdn}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv_async()).await;
            match event {
                Ok(Ok(HostnameResolutionEvent::AddressesFound(_, found))) => {
                    let mut v4: Vec<Ipv4Addr> = found
                        .iter()
                        .filter_map(|ip| match ip.to_ip_addr() {
                            IpAddr::V4(a) => Some(a),
                            IpAddr::V6(_) => None,
                        })
                        .collect();
                    if !v4.is_empty() {
                        v4.sort_unstable();
                        return Ok(v4);
                    }
                }
                Ok(Ok(HostnameResolutionEvent::SearchTimeout(_))) | Err(_) => {
                    anyhow::bail!("no mDNS answer for {fqdn} within {timeout:?}")
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => anyhow::bail!("the mDNS resolver stopped"),
            }
        }
    }
    .await;
    let _ = daemon.stop_resolve_hostname(&fqdn);
    if own {
        if let Ok(done) = daemon.shutdown() {
            let _ = done.recv_async().await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::is_mdns_name;

    #[test]
    fn local_names_are_told_from_dns_names() {
        for yes in ["pi1.local", "pi1.local.", "herd-3f2a9c.LOCAL", "a.b.local"] {
            assert!(is_mdns_name(yes), "{yes}");
        }
        for no in [
            "local",
            ".local",
            "pi1.localdomain",
            "pi1.lan",
            "localhost",
            "10.0.0.1",
            "",
        ] {
            assert!(!is_mdns_name(no), "{no}");
        }
    }
}
