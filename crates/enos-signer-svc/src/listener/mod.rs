//! Everything that runs before a call reaches a service: the accept loop
//! and its TLS handshakes, the TLS material (re-read when its files
//! change), the caller's identity from its certificate, connection and
//! request limits with the per-address throttle, metrics and readiness,
//! and the plain health port for probes. Services use [`peer`]'s identity;
//! nothing here imports a service.
//!
//! | module | what it holds |
//! |---|---|
//! | [`tls_incoming`] | the gRPC listener's accept loop: each handshake with the current material |
//! | [`handshake_failures`] | failed handshakes: counted by reason, logged with the peer's address, rate-limited |
//! | [`tls_reload`] | server TLS material, re-read when its files change (and on SIGHUP) |
//! | [`peer`] | the caller's identity from its client certificate, re-verified per material generation |
//! | [`limits`] | `[server.limits]`: connections, streams, requests in flight, the per-address throttle, listener timeouts |
//! | [`metrics`] | Prometheus metrics and their mTLS `/metrics` endpoint |
//! | [`readiness`] | what the health service answers: registry, custody, draining; liveness |
//! | [`health_port`] | the plain (no TLS) health port for kubelet probes |

pub mod handshake_failures;
pub mod health_port;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod readiness;
pub mod tls_incoming;
pub mod tls_reload;

/// A listener's address for a log line (`127.0.0.1:9464`), never Rust's
/// `Some(…)` / `Err(…)` of the `local_addr` result.
pub(crate) fn display_addr(listener: &tokio::net::TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}
