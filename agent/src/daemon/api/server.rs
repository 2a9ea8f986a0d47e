//! The API's TCP front, which bounds what clients can hold: connections in all, per client address and
//! per subnet (over the cap a connection is closed at once and counted), with a few kept for the card
//! itself and the cluster's members, whoever holds the rest; a header-read timeout (a client that
//! connects and sends nothing, or too slowly, or idles between requests, is dropped), a write-stall
//! timeout (a client that stops reading a response or an event stream is dropped), 16 KiB of request
//! head. A failing connection is counted and logged at debug level: clients must not be able to flood
//! the journal. The routes are warp's, served by hyper's HTTP/1.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;

/// What one agent's API lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Open connections in all.
    pub connections: usize,
    /// Open connections from one client address.
    pub per_address: usize,
    /// Open connections from one subnet (/24 for IPv4, /64 for IPv6): many addresses of one network
    /// cannot take every connection.
    pub per_subnet: usize,
    /// Connections beyond `connections` that only this card (127.0.0.1, ::1) and the cluster's members
    /// may take, when the others are held.
    pub reserved: usize,
    /// Time to send a request's head, counted from the connection or the previous response.
    pub header_timeout: Duration,
    /// Time a response (or an event stream) may wait on a client that does not read.
    pub stall_timeout: Duration,
    /// Event streams (`/api/v1/events`) in all.
    pub event_streams: usize,
    /// Event streams from one client address, and from one subnet: a client acknowledging what it never
    /// reads looks like a slow reader until its receive window fills, so what bounds it is its share.
    pub streams_per_address: usize,
    pub streams_per_subnet: usize,
    /// Event streams beyond `event_streams` for this card and the cluster's members.
    pub reserved_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 256,
            per_address: 16,
            per_subnet: 128,
            reserved: 32,
            header_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            event_streams: 64,
            streams_per_address: 4,
            streams_per_subnet: 16,
            reserved_streams: 8,
        }
    }
}

/// File descriptors kept out of the API's reach: the gossip socket, mDNS, state files, and the event
/// handlers' processes and pipes must always find one.
pub const FD_RESERVE: usize = 256;

/// What the front counted, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    /// Connections closed at once: over the cap in all or per address.
    pub refused: AtomicU64,
    /// Connections dropped for a header-read or write-stall timeout.
    pub timed_out: AtomicU64,
    /// Connections that ended in another error (a reset, a malformed request).
    pub failed: AtomicU64,
    pub open: AtomicUsize,
}

/// Serves `filter` on `listener` until `shutdown` completes, then lets open requests finish (5 s at most).
pub async fn run<F>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    counters: Arc<Counters>,
    trusted: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let pools = Admission::new(
        limits.connections,
        limits.reserved,
        limits.per_address,
        limits.per_subnet,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: wait, do not spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = pools.admit(peer.ip(), &*trusted) else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let (filter, counters, mut stop) = (filter.clone(), Arc::clone(&counters), stop_rx.clone());
        tokio::spawn(async move {
            counters.open.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(Stalling::new(stream, limits.stall_timeout));
            let service = WithPeer {
                inner: hyper_util::service::TowerToHyperService::new(warp::service(filter)),
                peer: Peer(peer),
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024);
            let conn = http.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(Duration::from_secs(5), conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                let timed_out = e.is_timeout()
                    || std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
                let counter = if timed_out {
                    &counters.timed_out
                } else {
                    &counters.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "API connection ended in error");
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Wait for the connections to finish: every slot back.
    let _ = tokio::time::timeout(Duration::from_secs(6), pools.drained()).await;
}

/// The client address of the connection a request came on, for routes that bound what one client
/// holds beyond its connection (event streams): `warp::ext::optional::<Peer>()`.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// A connection's service, which puts the connection's [`Peer`] into each request's extensions.
struct WithPeer<S> {
    inner: S,
    peer: Peer,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for WithPeer<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: hyper::Request<B>) -> S::Future {
        request.extensions_mut().insert(self.peer);
        self.inner.call(request)
    }
}

/// Whether `ip` is this card itself: the CLI and the upgrade installer ask from there.
pub fn is_local(ip: IpAddr) -> bool {
    ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
}

/// The subnet `ip` counts against: its /24 (IPv4) or /64 (IPv6).
fn subnet(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// Places of one kind (connections, event streams): a general pool, of which one address and one
/// subnet may hold only so many, and a few reserved places for the addresses `trusted` names when the
/// general pool, or the client's subnet's share of it, is taken.
pub struct Admission {
    general: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    held: Arc<Mutex<Held>>,
    sizes: (u32, u32),
    per_address: usize,
    per_subnet: usize,
}

#[derive(Debug, Default)]
struct Held {
    addresses: HashMap<IpAddr, usize>,
    subnets: HashMap<IpAddr, usize>,
}

impl Held {
    fn take(&mut self, ip: IpAddr) {
        *self.addresses.entry(ip).or_insert(0) += 1;
        *self.subnets.entry(subnet(ip)).or_insert(0) += 1;
    }

    fn give_back(&mut self, ip: IpAddr) {
        for (map, key) in [(&mut self.addresses, ip), (&mut self.subnets, subnet(ip))] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

/// A client's place: a slot of one pool, and its count against its address and subnet; all given back
/// on drop.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    held: Arc<Mutex<Held>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.held.lock().expect("held lock").give_back(self.ip);
    }
}

impl Admission {
    pub fn new(
        general: usize,
        reserved: usize,
        per_address: usize,
        per_subnet: usize,
    ) -> Admission {
        Admission {
            general: Arc::new(Semaphore::new(general)),
            reserved: Arc::new(Semaphore::new(reserved)),
            held: Default::default(),
            sizes: (general as u32, reserved as u32),
            per_address,
            per_subnet,
        }
    }

    /// A place for a client at `ip`: within its address's cap; from the general pool while its subnet
    /// is within its cap, else (or when the pool is empty) from the reserved one if `trusted` says `ip`
    /// may have it.
    pub fn admit(&self, ip: IpAddr, trusted: &dyn Fn(IpAddr) -> bool) -> Option<Slot> {
        let mut held = self.held.lock().expect("held lock");
        if held.addresses.get(&ip).copied().unwrap_or(0) >= self.per_address {
            return None;
        }
        let subnet_full = held.subnets.get(&subnet(ip)).copied().unwrap_or(0) >= self.per_subnet;
        let general = if subnet_full {
            None
        } else {
            Arc::clone(&self.general).try_acquire_owned().ok()
        };
        let permit = match general {
            Some(p) => p,
            None if trusted(ip) => Arc::clone(&self.reserved).try_acquire_owned().ok()?,
            None => return None,
        };
        held.take(ip);
        Some(Slot {
            _permit: permit,
            held: Arc::clone(&self.held),
            ip,
        })
    }

    /// Completes once every place is back.
    async fn drained(&self) {
        let _ = self.general.acquire_many(self.sizes.0).await;
        let _ = self.reserved.acquire_many(self.sizes.1).await;
    }
}

/// A stream whose writes fail with `TimedOut` once they have waited `limit` on a peer that does not read.
struct Stalling {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Stalling {
    fn new(inner: TcpStream, limit: Duration) -> Self {
        Stalling {
            inner,
            limit,
            stalled: None,
        }
    }

    /// `Pending` from the socket: arm (or check) the stall timer.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stall(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stall(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit of open files to its hard limit (systemd gives services 1,024 soft
/// and 524,288 hard) and returns the limits that fit in it: the API never takes the [`FD_RESERVE`].
pub fn fit_to_file_limit(mut limits: Limits) -> Limits {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return limits;
    };
    let wanted = hard.min(65_536).max(soft);
    let soft = if wanted > soft && setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).is_ok() {
        wanted
    } else {
        soft
    };
    let room = (soft as usize).saturating_sub(FD_RESERVE).max(8);
    limits.reserved = limits.reserved.min(room / 4);
    let room = room - limits.reserved;
    if limits.connections > room {
        tracing::warn!(
            open_files = soft,
            connections = room,
            "the open-file limit is low: the API takes fewer connections"
        );
        limits.connections = room;
        limits.per_address = limits.per_address.min(room);
        limits.event_streams = limits.event_streams.min(room / 2);
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_in_all_per_address_and_per_subnet_and_gives_back() {
        let p = Admission::new(4, 0, 2, 3);
        let never = |_: IpAddr| false;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = p.admit(ip("10.0.0.1"), &never).unwrap();
        let a2 = p.admit(ip("10.0.0.1"), &never).unwrap();
        assert!(
            p.admit(ip("10.0.0.1"), &never).is_none(),
            "third from one address"
        );
        let b1 = p.admit(ip("10.0.0.2"), &never).unwrap();
        assert!(
            p.admit(ip("10.0.0.3"), &never).is_none(),
            "fourth from one /24"
        );
        let c1 = p.admit(ip("10.0.1.1"), &never).unwrap();
        assert!(
            p.admit(ip("10.0.2.1"), &never).is_none(),
            "over the cap in all"
        );
        drop(a1);
        assert!(p.admit(ip("10.0.0.3"), &never).is_some());
        drop((a2, b1, c1));
        let held = p.held.lock().unwrap();
        assert!(
            held.addresses.is_empty() && held.subnets.is_empty(),
            "{held:?}"
        );
    }

    #[test]
    fn the_reserved_connections_go_only_to_the_card_and_members() {
        let p = Admission::new(1, 1, 16, 128);
        let member: IpAddr = "192.168.1.20".parse().unwrap();
        let trusted = move |ip: IpAddr| is_local(ip) || ip == member;
        let _other = p.admit("192.168.1.99".parse().unwrap(), &trusted).unwrap();
        assert!(p.admit("192.168.1.98".parse().unwrap(), &trusted).is_none());
        let m = p.admit(member, &trusted).unwrap();
        assert!(
            p.admit("127.0.0.1".parse().unwrap(), &trusted).is_none(),
            "one reserved"
        );
        drop(m);
        assert!(p.admit("127.0.0.1".parse().unwrap(), &trusted).is_some());
        assert!(!is_local("127.0.0.2".parse().unwrap()));
    }
}
