//! The plain health port (`[health] listen`): `grpc.health.v1.Health`
//! without TLS and nothing else, for a kubelet `grpc` probe, which cannot
//! present a client certificate.
//!
//! It answers what the mTLS listener's health service answers (one
//! [`crate::listener::readiness::Readiness`]); every other service gets
//! UNIMPLEMENTED. Nothing on it reveals more than SERVING / NOT_SERVING.

use std::future::Future;

use futures::StreamExt;
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::{
    listener::limits::{
        ConnectionLimit, HEALTH_MAX_CONNECTIONS, HEALTH_MAX_STREAMS, HEALTH_REQUEST_TIMEOUT,
        Limited,
    },
    listener::metrics::Metrics,
};

/// Serves `health` alone on `listener` until `shutdown`: at most
/// [`HEALTH_MAX_CONNECTIONS`] connections (one more is closed at accept and
/// counted in `metrics`), [`HEALTH_MAX_STREAMS`] streams each, and a
/// deadline per probe.
pub async fn serve<H: Health>(
    listener: TcpListener,
    health: HealthServer<H>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "health port listening (plain gRPC, health only)");
    let limit = ConnectionLimit::new(HEALTH_MAX_CONNECTIONS);
    let incoming = TcpIncoming::from(listener).filter_map(move |accepted| {
        let admitted = match accepted {
            Ok(tcp) => match limit.try_admit() {
                Some(permit) => Some(Ok(Limited::new(tcp, permit))),
                None => {
                    metrics.connection_refused("health", "limit");
                    None
                }
            },
            Err(e) => Some(Err(e)),
        };
        std::future::ready(admitted)
    });
    let served = Server::builder()
        .max_concurrent_streams(HEALTH_MAX_STREAMS)
        .timeout(HEALTH_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "health port failed");
    }
}
