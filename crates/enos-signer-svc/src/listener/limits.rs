//! Resource limits of the listeners
//! ([`LimitsConfig`](crate::config::LimitsConfig), `[server.limits]`):
//! what one client, or many, can hold of the signer before proving
//! anything.
//!
//! - connections: at most `max_connections` at once on the gRPC listener
//!   ([`ConnectionLimit`]), at most `max_connections_per_ip` of them from
//!   one peer address ([`AddressLimit`], counted while held), and new ones
//!   per peer address at most `connections_per_ip_per_second` (burst
//!   `connection_burst_per_ip`, [`PeerThrottle`]): the TLS handshake is the
//!   work a caller gets before proving anything. One more is closed right
//!   after `accept`, before any TLS work, and counted (never logged per
//!   connection);
//! - time: the TLS handshake (which requires a client certificate) must
//!   end within `handshake_timeout`, and the client's HTTP/2
//!   connection preface must arrive within `http2_start_timeout`
//!   after it ([`Limited::with_deadlines`]); else the connection is closed
//!   and its slots are free again;
//! - HTTP/2 streams per connection (`max_concurrent_streams`, advertised in
//!   SETTINGS: a client queues the rest);
//! - requests in flight over all connections (`max_concurrent_requests`):
//!   one more is answered `ResourceExhausted` at once (load shedding), not
//!   queued;
//! - an import's total size (`import_max_bytes`), besides its row count;
//! - the metrics listener: a request's header must arrive within
//!   `[metrics] header_timeout`, a connection lives at most
//!   `connection_lifetime` (idle keep-alive connections go), and at
//!   most [`METRICS_MAX_CONNECTIONS`] at once; the plain health port: at
//!   most [`HEALTH_MAX_CONNECTIONS`], [`HEALTH_MAX_CONNECTIONS_PER_IP`] of
//!   them from one address, [`HEALTH_MAX_STREAMS`] streams each,
//!   [`HEALTH_REQUEST_TIMEOUT`] per probe, the HTTP/2 preface within
//!   [`HEALTH_START_TIMEOUT`] and a connection closed after
//!   [`HEALTH_CONNECTION_LIFETIME`].

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::transport::server::Connected;

use crate::listener::metrics::{Metrics, OpenConnection};

/// Metrics connections open at once.
pub const METRICS_MAX_CONNECTIONS: usize = 64;
/// Health-port connections open at once (a kubelet opens one per probe).
pub const HEALTH_MAX_CONNECTIONS: usize = 64;
/// Health-port connections one address may hold (a kubelet runs at most
/// its startup, liveness and readiness probes at once): one address never
/// holds the port's every slot.
pub const HEALTH_MAX_CONNECTIONS_PER_IP: usize = 8;
/// A health-port client must send its HTTP/2 preface within this after
/// connecting (a probe sends it at once).
pub const HEALTH_START_TIMEOUT: Duration = Duration::from_secs(2);
/// A health-port connection is told to go (HTTP/2 GOAWAY) after this, and
/// closed at most as long again later, busy or idle (a probe takes
/// milliseconds and the kubelet opens a new connection per probe).
pub const HEALTH_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// The HTTP/2 client connection preface: what a client must send first.
pub const HTTP2_PREFACE_LEN: usize = 24;
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

/// Connections held at once per peer address (keyed as [`PeerThrottle`]
/// keys: IPv4 address, IPv6 /64), counted while they are open.
#[derive(Clone)]
pub struct AddressLimit {
    /// Open connections per address; an address with none is removed, so
    /// the map holds only addresses with a connection open.
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// The cap per address; 0: none.
    max: usize,
}

impl AddressLimit {
    /// At most `max` connections per address; 0: no cap.
    pub fn new(max: usize) -> Self {
        AddressLimit {
            held: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    /// A hold on one more connection of `peer`, or `None` when it has
    /// `max` open already (`Some(None)`: no cap).
    fn try_hold(&self, peer: IpAddr) -> Option<Option<AddressHold>> {
        if self.max == 0 {
            return Some(None);
        }
        let key = throttle_key(peer);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Some(AddressHold {
            held: Arc::clone(&self.held),
            key,
        }))
    }

    /// Connections `peer` holds now.
    pub fn held_by(&self, peer: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&throttle_key(peer)).copied().unwrap_or(0)
    }
}

/// One connection counted against its address; uncounted on drop.
struct AddressHold {
    /// The counts it is part of.
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Its address's key.
    key: IpAddr,
}

impl Drop for AddressHold {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// What a new connection on a listener must get past: the per-address
/// throttle, the per-address cap, then the connection limit. Refusals are
/// counted in metrics.
#[derive(Clone)]
pub struct Admission {
    /// New connections per peer address.
    pub throttle: Arc<PeerThrottle>,
    /// Open connections per peer address.
    pub per_address: AddressLimit,
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
        let Some(address) = self.per_address.try_hold(peer) else {
            self.metrics
                .connection_refused(self.listener, "per_address");
            return None;
        };
        let Some(mut permit) = self.limit.try_admit() else {
            self.metrics.connection_refused(self.listener, "limit");
            return None;
        };
        permit._address = address;
        permit.count_open(self.metrics.connection_open(self.listener));
        Some(permit)
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
            .map(|permit| ConnectionPermit {
                _permit: permit,
                _address: None,
                _open: None,
            })
    }
}

/// Held by an open connection; released when it closes.
pub struct ConnectionPermit {
    /// Dropped with the connection.
    _permit: OwnedSemaphorePermit,
    /// Its count against its address, when addresses are capped.
    _address: Option<AddressHold>,
    /// Its count in `enos_signer_connections_open`, when counted.
    _open: Option<OpenConnection>,
}

impl ConnectionPermit {
    /// Counts the connection as open until the permit is dropped.
    pub fn count_open(&mut self, open: OpenConnection) {
        self._open = Some(open);
    }
}

/// Counts the calls load shedding refuses on a listener
/// (`enos_signer_requests_shed_total`): put right inside tonic's
/// `load_shed`, around the concurrency limit. A call arrives when the
/// limit is not ready exactly when `load_shed` answers it
/// `ResourceExhausted` at once, so a not-ready poll is one shed call.
#[derive(Clone)]
pub struct CountShedLayer {
    /// Where the count goes.
    pub metrics: Metrics,
    /// `grpc` or `enroll`.
    pub listener: &'static str,
}

impl<S> tower::Layer<S> for CountShedLayer {
    type Service = CountShed<S>;

    fn layer(&self, inner: S) -> CountShed<S> {
        CountShed {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`CountShedLayer`].
#[derive(Clone)]
pub struct CountShed<S> {
    /// The concurrency limit (and the services behind it).
    inner: S,
    /// The metrics and the listener's name.
    layer: CountShedLayer,
}

impl<S: tower::Service<R>, R> tower::Service<R> for CountShed<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let ready = self.inner.poll_ready(cx);
        if ready.is_pending() {
            self.layer.metrics.request_shed(self.layer.listener);
        }
        ready
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}

/// When a connection must have said something, and when it ends: a peer
/// that holds a connection without using it gives its slot back.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// The first `preface` bytes must arrive within this.
    pub start: Duration,
    /// How many bytes must arrive by `start` (the HTTP/2 preface).
    pub preface: usize,
    /// The connection is closed after this, busy or not (`None`: never).
    pub lifetime: Option<Duration>,
}

/// The running state of a connection's [`Deadlines`].
struct Timers {
    /// Until the preface has arrived: bytes still missing, and when they
    /// are due.
    start: Option<(usize, Pin<Box<Sleep>>)>,
    /// When the connection ends.
    lifetime: Option<Pin<Box<Sleep>>>,
}

/// A connection and the permit it holds: as `IO` to tonic and hyper, with
/// `IO`'s connect info (the peer certificates).
pub struct Limited<IO> {
    /// The connection.
    inner: IO,
    /// Released when the connection is dropped.
    _permit: ConnectionPermit,
    /// Its deadlines, if it has any: past one, reads fail with `TimedOut`
    /// and the server closes the connection.
    timers: Option<Timers>,
}

impl<IO> Limited<IO> {
    /// `inner`, counted against the limit `permit` came from.
    pub fn new(inner: IO, permit: ConnectionPermit) -> Self {
        Limited {
            inner,
            _permit: permit,
            timers: None,
        }
    }

    /// `inner` as with [`Limited::new`], closed when it misses `deadlines`
    /// (counted from now).
    pub fn with_deadlines(inner: IO, permit: ConnectionPermit, deadlines: Deadlines) -> Self {
        Limited {
            inner,
            _permit: permit,
            timers: Some(Timers {
                start: (deadlines.preface > 0).then(|| {
                    (
                        deadlines.preface,
                        Box::pin(tokio::time::sleep(deadlines.start)),
                    )
                }),
                lifetime: deadlines
                    .lifetime
                    .map(|lifetime| Box::pin(tokio::time::sleep(lifetime))),
            }),
        }
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(timers) = &mut this.timers else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let ended = timers
            .lifetime
            .as_mut()
            .is_some_and(|lifetime| lifetime.as_mut().poll(cx).is_ready());
        if ended {
            return Poll::Ready(Err(timed_out("connection lifetime reached")));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some((missing, due)) = &mut timers.start {
            match &read {
                Poll::Ready(Ok(())) => {
                    *missing = missing.saturating_sub(buf.filled().len() - before);
                    if *missing == 0 {
                        timers.start = None;
                    }
                }
                Poll::Ready(Err(_)) => {}
                // Waiting for the preface: the deadline wakes this read.
                Poll::Pending => {
                    if due.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(timed_out("no HTTP/2 preface in time")));
                    }
                }
            }
        }
        read
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
    fn an_address_holds_at_most_its_cap_and_gets_it_back_on_close() {
        let limit = AddressLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = limit.try_hold(a).expect("first");
        let second = limit.try_hold(a).expect("second");
        assert!(limit.try_hold(a).is_none(), "over the cap");
        assert!(limit.try_hold(b).is_some(), "b is not charged for a");
        drop(first);
        assert_eq!(limit.held_by(a), 1);
        let third = limit.try_hold(a).expect("a slot came back");
        drop((second, third));
        assert_eq!(limit.held_by(a), 0);
        assert!(limit.held.lock().expect("lock").is_empty(), "forgotten");
        let off = AddressLimit::new(0);
        let holds: Vec<_> = (0..100).map(|_| off.try_hold(a)).collect();
        assert!(holds.iter().all(Option::is_some), "0: no cap");
    }

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
