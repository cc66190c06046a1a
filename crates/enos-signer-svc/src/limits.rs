//! Resource limits of the listeners ([`LimitsConfig`], `[server.limits]`):
//! what one client, or many, can hold of the signer before proving
//! anything.
//!
//! - connections: at most `max_connections` at once on the gRPC listener
//!   ([`ConnectionLimit`]); one more is closed right after `accept`, before
//!   any TLS work, and counted;
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
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::transport::server::Connected;

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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_concurrent_streams: 64,
            max_concurrent_requests: 2_048,
            import_max_bytes: 256 * 1024 * 1024,
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
