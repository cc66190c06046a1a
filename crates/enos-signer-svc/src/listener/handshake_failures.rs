//! [`HandshakeFailures`]: a TLS handshake that fails on a listener is
//! counted (`enos_signer_tls_handshake_failures_total{reason}`, a fixed
//! set of reasons: [`TlsFailure::LABELS`]) and logged at `warn` with the
//! peer address and why, at most one line per address every
//! [`LOG_EVERY`]; the next line of that address says how many were not
//! logged meanwhile. A device with an expired certificate retrying every
//! second, or a scan, costs one line a minute, not a full disk.
//!
//! A connection closed before or during the handshake without a word
//! (a TCP port probe, a client that gave up) is counted as `closed` and
//! logged at `debug` only: load balancers probe every few seconds.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use enos_signer_proto::tls_failure::{Reason, TlsFailure};

use crate::listener::metrics::Metrics;

/// One log line per peer address at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Addresses remembered at most: beyond, lines are suppressed and
/// counted together (a scan from many addresses cannot grow the map).
const MAX_ADDRESSES: usize = 4096;

/// When an address was last logged, and what was not logged since.
#[derive(Debug, Clone, Copy)]
struct Logged {
    /// The last line's time.
    at: Instant,
    /// Failures of this address not logged since.
    suppressed: u64,
}

/// The rate-limited log and the counter of one listener's failed
/// handshakes.
pub struct HandshakeFailures {
    /// `grpc` or `enroll`, in the log line.
    listener: &'static str,
    /// Where the counter is.
    metrics: Metrics,
    /// Per address: the last line and what was suppressed since; and
    /// lines suppressed because the map was full.
    state: Mutex<(HashMap<IpAddr, Logged>, u64)>,
}

/// What [`HandshakeFailures::record_at`] did with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Logged at `warn`, with this many earlier failures of the address
    /// not logged.
    Logged {
        /// Failures suppressed since the address's last line.
        suppressed: u64,
    },
    /// Counted, not logged (the address had a line less than
    /// [`LOG_EVERY`] ago, or too many addresses are remembered).
    Suppressed,
    /// A connection closed without a word: counted, logged at `debug`.
    Quiet,
}

impl HandshakeFailures {
    /// The failures of `listener`, counted in `metrics`.
    pub fn new(listener: &'static str, metrics: Metrics) -> Self {
        HandshakeFailures {
            listener,
            metrics,
            state: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Counts and (rate-limited) logs the failed handshake of `peer`.
    pub fn record(&self, peer: SocketAddr, failure: &TlsFailure) -> Recorded {
        self.record_at(peer, failure, Instant::now())
    }

    /// [`HandshakeFailures::record`] at `now` (the tests' clock).
    pub fn record_at(&self, peer: SocketAddr, failure: &TlsFailure, now: Instant) -> Recorded {
        let reason = failure.label();
        self.metrics.tls_handshake_failure(reason);
        if failure.reason == Reason::Closed {
            tracing::debug!(listener = self.listener, peer = %peer, reason, "TLS handshake: the peer closed the connection");
            return Recorded::Quiet;
        }
        let suppressed = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (addresses, overflow) = &mut *state;
            if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(&peer.ip()) {
                addresses.retain(|_, logged| now.saturating_duration_since(logged.at) < LOG_EVERY);
            }
            let full = addresses.len() >= MAX_ADDRESSES;
            match addresses.get_mut(&peer.ip()) {
                Some(logged) if now.saturating_duration_since(logged.at) < LOG_EVERY => {
                    logged.suppressed += 1;
                    return Recorded::Suppressed;
                }
                Some(logged) => {
                    let suppressed = logged.suppressed + std::mem::take(overflow);
                    *logged = Logged {
                        at: now,
                        suppressed: 0,
                    };
                    suppressed
                }
                None if full => {
                    *overflow += 1;
                    return Recorded::Suppressed;
                }
                None => {
                    addresses.insert(
                        peer.ip(),
                        Logged {
                            at: now,
                            suppressed: 0,
                        },
                    );
                    std::mem::take(overflow)
                }
            }
        };
        tracing::warn!(
            listener = self.listener,
            peer = %peer,
            reason,
            suppressed,
            "TLS handshake failed: {}",
            failure.server_message()
        );
        Recorded::Logged { suppressed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired() -> TlsFailure {
        TlsFailure::from_rustls(&rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ))
    }

    #[test]
    fn one_line_per_address_per_minute_then_the_count_of_the_rest() {
        let metrics = Metrics::new();
        let failures = HandshakeFailures::new("grpc", metrics.clone());
        let a: SocketAddr = "10.0.0.1:40000".parse().expect("addr");
        let a_again: SocketAddr = "10.0.0.1:40001".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:40000".parse().expect("addr");
        let t0 = Instant::now();
        assert_eq!(
            failures.record_at(a, &expired(), t0),
            Recorded::Logged { suppressed: 0 }
        );
        // The same address (another port) within the minute: counted only.
        for s in 1..=5 {
            assert_eq!(
                failures.record_at(a_again, &expired(), t0 + Duration::from_secs(s)),
                Recorded::Suppressed
            );
        }
        // Another address has its own line.
        assert_eq!(
            failures.record_at(b, &expired(), t0 + Duration::from_secs(1)),
            Recorded::Logged { suppressed: 0 }
        );
        // A minute later: a line, saying what was not logged.
        assert_eq!(
            failures.record_at(a, &expired(), t0 + LOG_EVERY),
            Recorded::Logged { suppressed: 5 }
        );
        // Every failure counted, by reason.
        assert!(
            metrics
                .encode()
                .contains("enos_signer_tls_handshake_failures_total{reason=\"expired\"} 8"),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn a_closed_connection_is_counted_quietly() {
        let metrics = Metrics::new();
        let failures = HandshakeFailures::new("grpc", metrics.clone());
        let peer: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let closed = TlsFailure::from_io(&std::io::ErrorKind::UnexpectedEof.into());
        assert_eq!(failures.record(peer, &closed), Recorded::Quiet);
        assert!(
            metrics
                .encode()
                .contains("enos_signer_tls_handshake_failures_total{reason=\"closed\"} 1")
        );
    }

    #[test]
    fn a_full_address_map_suppresses_and_counts_instead_of_growing() {
        let failures = HandshakeFailures::new("grpc", Metrics::new());
        let t0 = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            failures.record_at(SocketAddr::from((ip, 1)), &expired(), t0);
        }
        let new: SocketAddr = "192.168.0.1:1".parse().expect("addr");
        assert_eq!(
            failures.record_at(new, &expired(), t0),
            Recorded::Suppressed
        );
        // Once the old entries are a minute old, room again; the line
        // carries what was suppressed meanwhile.
        assert_eq!(
            failures.record_at(new, &expired(), t0 + LOG_EVERY),
            Recorded::Logged { suppressed: 1 }
        );
    }
}
