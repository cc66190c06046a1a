//! [`Signer`] and [`run`]: the gRPC server (Credentials, Admin, health,
//! reflection) and the metrics endpoint, with a graceful shutdown.
//!
//! Shutdown: health turns NOT_SERVING, the listeners stop accepting,
//! in-flight calls drain (up to `server.drain_timeout_secs`), then `run`
//! returns.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use enos_signer_proto::v1::{admin_server::AdminServer, credentials_server::CredentialsServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::{
    admin::AdminService,
    config::SignerConfig,
    credentials::CredentialsService,
    error::{Result, SignerError},
    metrics,
    state::SignerState,
    tls::ServerTlsMaterial,
};

/// The fully-qualified names of the API's services, for health checks.
pub const SERVICE_NAMES: [&str; 2] = ["enos.signer.v1.Credentials", "enos.signer.v1.Admin"];

/// A signer with its state open, ready to serve.
pub struct Signer {
    /// Registry, custody, policy, audit, limits, metrics.
    state: Arc<SignerState>,
    /// Certificates for both listeners.
    tls: ServerTlsMaterial,
    /// How long shutdown waits for in-flight calls.
    drain_timeout: Duration,
}

impl Signer {
    /// Opens the registry, custody, audit sink and TLS material.
    pub fn open(config: &SignerConfig) -> Result<Self> {
        Ok(Signer {
            tls: ServerTlsMaterial::load(&config.server)?,
            state: Arc::new(SignerState::open(config)?),
            drain_timeout: config.server.drain_timeout(),
        })
    }

    /// Serves gRPC on `listener` (and metrics on `metrics_listener`) until
    /// `shutdown` completes, then drains.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let addr = listener
            .local_addr()
            .map_err(|e| SignerError::Config(format!("listener: {e}")))?;
        let stop = CancellationToken::new();

        let (health, health_service) = tonic_health::server::health_reporter();
        for name in SERVICE_NAMES {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(enos_signer_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| SignerError::Config(format!("reflection: {e}")))?;
        // grpcurl and older tools still ask v1alpha.
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| SignerError::Config(format!("reflection: {e}")))?;

        let metrics_task = match metrics_listener {
            Some(l) => {
                let metrics_addr = l.local_addr().ok();
                tracing::info!(addr = ?metrics_addr, "metrics listening (mTLS)");
                Some(tokio::spawn(metrics::serve(
                    self.state.metrics.clone(),
                    l,
                    self.tls.metrics()?,
                    stop.clone(),
                )))
            }
            None => None,
        };

        // Forget idle identities in the rate limiter now and then.
        let housekeeping = {
            let state = Arc::clone(&self.state);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => state.limiter.forget_idle(),
                    }
                }
            })
        };

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = Server::builder()
            .tls_config(self.tls.grpc())?
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .timeout(Duration::from_secs(30))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(CredentialsServer::new(CredentialsService::new(Arc::clone(
                &self.state,
            ))))
            .add_service(AdminServer::new(AdminService::new(Arc::clone(&self.state))))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::pin!(server);
        tracing::info!(%addr, "signer listening (mTLS)");

        let served = tokio::select! {
            served = &mut server => served,
            () = shutdown => {
                tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
                for name in SERVICE_NAMES.into_iter().chain([""]) {
                    health.set_service_status(name, ServingStatus::NotServing).await;
                }
                stop.cancel();
                match tokio::time::timeout(self.drain_timeout, &mut server).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!(timeout = ?self.drain_timeout, "drain timed out; closing the remaining connections");
                        Ok(())
                    }
                }
            }
        };
        stop.cancel();
        housekeeping.abort();
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        tracing::info!("signer stopped");
        Ok(served?)
    }
}

/// Opens the signer the config names and serves on `listener` until
/// `shutdown` completes; binds the metrics listener from the config. The
/// binary runs through here; the test fixture (`enos_testkit::signer`)
/// calls [`Signer::open`] and [`Signer::serve`] itself, on listeners it
/// binds with `SO_REUSEADDR` so that a restart gets the same port.
pub async fn run(
    config: SignerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let signer = Signer::open(&config)?;
    let metrics_listener = match &config.metrics {
        Some(m) => Some(bind(m.listen).await?),
        None => None,
    };
    signer.serve(listener, metrics_listener, shutdown).await
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| SignerError::Config(format!("cannot listen on {addr}: {e}")))
}
