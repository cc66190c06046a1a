//! The plain health port (`[health] listen`): `grpc.health.v1.Health`
//! without TLS and nothing else, for a kubelet `grpc` probe, which cannot
//! present a client certificate.
//!
//! It answers what the mTLS listener's health service answers (one
//! [`crate::listener::readiness::Readiness`]); every other service gets
//! UNIMPLEMENTED. Nothing on it reveals more than SERVING / NOT_SERVING.

use std::{future::Future, sync::Arc};

use futures::StreamExt;
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::{
    listener::limits::{
        AddressLimit, Admission, ConnectionLimit, Deadlines, HEALTH_CONNECTION_LIFETIME,
        HEALTH_MAX_CONNECTIONS, HEALTH_MAX_CONNECTIONS_PER_IP, HEALTH_MAX_STREAMS,
        HEALTH_REQUEST_TIMEOUT, HEALTH_START_TIMEOUT, HTTP2_PREFACE_LEN, Limited, PeerThrottle,
    },
    listener::metrics::Metrics,
};

/// Serves `health` alone on `listener` until `shutdown`: at most
/// [`HEALTH_MAX_CONNECTIONS`] connections, [`HEALTH_MAX_CONNECTIONS_PER_IP`]
/// of them from one address (one more is closed at accept and counted in
/// `metrics`), [`HEALTH_MAX_STREAMS`] streams each, and a deadline per
/// probe. A connection that sends no HTTP/2 preface within
/// [`HEALTH_START_TIMEOUT`] is closed, and every connection is told to go
/// (GOAWAY) after [`HEALTH_CONNECTION_LIFETIME`] and closed at most as long
/// again later: idle TCP connections cannot keep the probes out for longer
/// than that.
pub async fn serve<H: Health>(
    listener: TcpListener,
    health: HealthServer<H>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let addr = crate::listener::display_addr(&listener);
    tracing::info!(addr = %addr, "health port listening (plain gRPC, health only)");
    let admission = Admission {
        throttle: Arc::new(PeerThrottle::new(0, 0)),
        per_address: AddressLimit::new(HEALTH_MAX_CONNECTIONS_PER_IP),
        limit: ConnectionLimit::new(HEALTH_MAX_CONNECTIONS),
        metrics,
        listener: "health",
    };
    let deadlines = Deadlines {
        start: HEALTH_START_TIMEOUT,
        preface: HTTP2_PREFACE_LEN,
        // The backstop behind the graceful age below.
        lifetime: Some(HEALTH_CONNECTION_LIFETIME * 2),
    };
    let incoming = TcpIncoming::from(listener).filter_map(move |accepted| {
        let admitted = match accepted {
            Ok(tcp) => {
                let peer = tcp.peer_addr().map(|a| a.ip());
                // Refused (counted), or already gone: closed (dropped).
                peer.ok()
                    .and_then(|peer| admission.admit(peer))
                    .map(|permit| Ok(Limited::with_deadlines(tcp, permit, deadlines)))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(admitted)
    });
    let served = Server::builder()
        .max_concurrent_streams(HEALTH_MAX_STREAMS)
        .timeout(HEALTH_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // GOAWAY at its age, closed once its probes are answered.
        .max_connection_age(HEALTH_CONNECTION_LIFETIME)
        .max_connection_age_grace(HEALTH_CONNECTION_LIFETIME)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "health port failed");
    }
}
