//! Resource limits of the listeners ([`LimitsConfig`], `[server.limits]`):
//! what one client, or many, can hold of the signer before proving
//! anything.
//!
//! - connections: at most `max_connections` at once on the gRPC listener
//!   ([`ConnectionLimit`]), and new ones per peer address at most
//!   `connections_per_ip_per_second` (burst `connection_burst_per_ip`,
//!   [`PeerThrottle`]): the TLS handshake is the work a caller gets before
//!   proving anything. One more is closed right after `accept`, before any
//!   TLS work, and counted (never logged per connection);
//! - HTTP/2 streams per connection (`max_concurrent_streams`, advertised in
//!   SETTINGS: a client queues the rest);
//! - requests in flight over all connections (`max_concurrent_requests`):
//!   one more is answered `ResourceExhausted` at once (load shedding), not
//!   queued;
//! - an import's total size (`import_max_bytes`), besides its row count;
//! - the metrics listener: a request's header must arrive within
//!   `[metrics] header_timeout_secs`, a connection lives at most
//!   `connection_lifetime_secs` (idle keep-alive connections go), and at
//!   most [`METRICS_MAX_CONNECTIONS`] at once; the plain health port: at
//!   most [`HEALTH_MAX_CONNECTIONS`], [`HEALTH_MAX_STREAMS`] streams each,
//!   [`HEALTH_REQUEST_TIMEOUT`] per probe.

use std::{
    io,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::transport::server::Connected;

use crate::listener::metrics::Metrics;

/// `[server.limits]`; every key has a default sized for a fleet of tens
/// of thousands of devices on a small host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// TLS connections open at once on the gRPC listener (devices keep one
    /// each while they refresh credentials; a flood of idle ones must not
    /// exhaust file descriptors).
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once (a gateway
    /// signing for many sub-devices needs a few; one client must not hold
    /// the server's whole request budget).
    pub max_concurrent_streams: u32,
    /// Calls in flight over all connections; above it a call is refused
    /// with `ResourceExhausted` at once, so overload costs almost nothing.
    pub max_concurrent_requests: usize,
    /// Bytes one import may stream in total (the row count has its own
    /// cap, `import::MAX_ROWS`): the import is held in memory until it is
    /// checked whole.
    pub import_max_bytes: usize,
    /// New connections per second one peer address may open (IPv6: per
    /// /64); 0: no throttle. Generous, as a whole fleet behind one NAT
    /// reconnects at once after an outage.
    pub connections_per_ip_per_second: u32,
    /// New connections one peer address may open at once after a quiet
    /// spell.
    pub connection_burst_per_ip: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_concurrent_streams: 64,
            max_concurrent_requests: 2_048,
            import_max_bytes: 256 * 1024 * 1024,
            connections_per_ip_per_second: 1_000,
            connection_burst_per_ip: 10_000,
        }
    }
}

/// The timeouts of an HTTP/1 listener (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// A request's header must arrive within this.
    pub header: Duration,
    /// A connection is closed after this, idle or not.
    pub lifetime: Duration,
}
/// Metrics connections open at once.
pub const METRICS_MAX_CONNECTIONS: usize = 64;
/// Health-port connections open at once (a kubelet opens one per probe).
pub const HEALTH_MAX_CONNECTIONS: usize = 64;
/// Streams per health-port connection.
pub const HEALTH_MAX_STREAMS: u32 = 4;
/// A health probe's deadline.
pub const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// New connections per peer address (GCRA per address, in memory only).
pub struct PeerThrottle {
    /// The budget of every address, and the map of addresses seen (`None`:
    /// no throttle); replaced by an empty one when it holds too many.
    limiter: Option<(
        governor::Quota,
        RwLock<governor::DefaultKeyedRateLimiter<IpAddr>>,
    )>,
}

/// Peer addresses tracked at most; beyond, the map starts afresh (a moment
/// of fresh budgets, rather than memory without bound).
const MAX_TRACKED_PEERS: usize = 100_000;

impl PeerThrottle {
    /// `per_second` new connections per address, `burst` at once; either
    /// 0: none.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter =
            NonZeroU32::new(per_second)
                .zip(NonZeroU32::new(burst))
                .map(|(rate, burst)| {
                    let quota = governor::Quota::per_second(rate).allow_burst(burst);
                    (quota, RwLock::new(governor::RateLimiter::keyed(quota)))
                });
        PeerThrottle { limiter }
    }

    /// Spends one connection of `peer`'s budget; false when it has none.
    pub fn admit(&self, peer: IpAddr) -> bool {
        let Some((quota, limiter)) = &self.limiter else {
            return true;
        };
        let key = throttle_key(peer);
        {
            let current = limiter.read().unwrap_or_else(|p| p.into_inner());
            if current.len() < MAX_TRACKED_PEERS {
                return current.check_key(&key).is_ok();
            }
        }
        let mut current = limiter.write().unwrap_or_else(|p| p.into_inner());
        current.retain_recent();
        if current.len() >= MAX_TRACKED_PEERS {
            *current = governor::RateLimiter::keyed(*quota);
        }
        current.check_key(&key).is_ok()
    }

    /// Forgets addresses whose budget is full again; called periodically.
    pub fn forget_idle(&self) {
        if let Some((_, limiter)) = &self.limiter {
            let current = limiter.read().unwrap_or_else(|p| p.into_inner());
            current.retain_recent();
            current.shrink_to_fit();
        }
    }
}

/// The key of a peer: its IPv4 address, or the /64 of an IPv6 one (one
/// host gets a /64 and may pick any address in it).
fn throttle_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// What a new connection on a listener must get past: the per-address
/// throttle, then the connection limit. Refusals are counted in metrics.
#[derive(Clone)]
pub struct Admission {
    /// New connections per peer address.
    pub throttle: Arc<PeerThrottle>,
    /// Open connections at once.
    pub limit: ConnectionLimit,
    /// Counts refusals by listener and reason.
    pub metrics: Metrics,
    /// `grpc`, `metrics` or `health`, for the counter.
    pub listener: &'static str,
}

impl Admission {
    /// A permit for the connection from `peer`, or `None` (counted).
    pub fn admit(&self, peer: IpAddr) -> Option<ConnectionPermit> {
        if !self.throttle.admit(peer) {
            self.metrics.connection_refused(self.listener, "throttled");
            return None;
        }
        let permit = self.limit.try_admit();
        if permit.is_none() {
            self.metrics.connection_refused(self.listener, "limit");
        }
        permit
    }
}

/// At most N connections at once: each holds a permit for its life.
#[derive(Clone)]
pub struct ConnectionLimit {
    /// One permit per connection that may be open.
    permits: Arc<Semaphore>,
}

impl ConnectionLimit {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// A permit for one more connection, or `None` when at the limit.
    pub fn try_admit(&self) -> Option<ConnectionPermit> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .ok()
            .map(|permit| ConnectionPermit { _permit: permit })
    }
}

/// Held by an open connection; released when it closes.
pub struct ConnectionPermit {
    /// Dropped with the connection.
    _permit: OwnedSemaphorePermit,
}

/// A connection and the permit it holds: as `IO` to tonic and hyper, with
/// `IO`'s connect info (the peer certificates).
pub struct Limited<IO> {
    /// The connection.
    inner: IO,
    /// Released when the connection is dropped.
    _permit: ConnectionPermit,
}

impl<IO> Limited<IO> {
    /// `inner`, counted against the limit `permit` came from.
    pub fn new(inner: IO, permit: ConnectionPermit) -> Self {
        Limited {
            inner,
            _permit: permit,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_budget_and_ipv6_is_keyed_by_its_64() {
        let throttle = PeerThrottle::new(1, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(throttle.admit(a) && throttle.admit(a));
        assert!(!throttle.admit(a), "over its burst");
        assert!(throttle.admit(b), "b is not charged for a");
        let v6 = |s: &str| -> IpAddr { s.parse().expect("ip") };
        assert!(throttle.admit(v6("2001:db8::1")) && throttle.admit(v6("2001:db8::2")));
        assert!(!throttle.admit(v6("2001:db8::ffff:1")), "same /64");
        assert!(throttle.admit(v6("2001:db8:0:1::1")), "another /64");
        assert!(
            !throttle.admit(v6("::ffff:192.0.2.1")),
            "mapped IPv4 is that IPv4"
        );
        let off = PeerThrottle::new(0, 0);
        assert!((0..100).all(|_| off.admit(a)), "0: no throttle");
    }
}
