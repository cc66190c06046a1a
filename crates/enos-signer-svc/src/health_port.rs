//! The plain health port (`[health] listen`): `grpc.health.v1.Health`
//! without TLS and nothing else, for a kubelet `grpc` probe, which cannot
//! present a client certificate.
//!
//! It answers what the mTLS listener's health service answers (one
//! [`crate::readiness::Readiness`]); every other service gets
//! UNIMPLEMENTED. Nothing on it reveals more than SERVING / NOT_SERVING.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::pb::health_server::{Health, HealthServer};

/// Serves `health` alone on `listener` until `shutdown`.
pub async fn serve<H: Health>(
    listener: TcpListener,
    health: HealthServer<H>,
    shutdown: impl Future<Output = ()>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "health port listening (plain gRPC, health only)");
    let served = Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "health port failed");
    }
}
