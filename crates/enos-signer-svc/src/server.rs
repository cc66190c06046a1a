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
use tonic::transport::Server;
use tower::limit::GlobalConcurrencyLimitLayer;

/// The server's deadline for any call: long enough for an import of
/// hundreds of thousands of rows. Reads have their own, shorter one
/// (`admin::READ_TIMEOUT`); issuance answers in milliseconds or is refused.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

use crate::{
    config::{HealthConfig, HttpTimeouts, LimitsConfig, MetricsConfig, SignerConfig},
    error::{Result, SignerError},
    listener::health_port,
    listener::limits::{AddressLimit, Admission, ConnectionLimit, PeerThrottle},
    listener::metrics,
    listener::readiness::Readiness,
    listener::tls_incoming::{ConnectionTimeouts, tls_incoming},
    listener::tls_reload::{self, ReloadingTls},
    services::admin::AdminService,
    services::credentials::CredentialsService,
    state::SignerState,
};

/// The fully-qualified names of the API's services, for health checks.
pub const SERVICE_NAMES: [&str; 2] = ["enos.signer.v1.Credentials", "enos.signer.v1.Admin"];

/// How often readiness is checked without a `[health]` section.
const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(5);

/// A signer with its state open, ready to serve.
pub struct Signer {
    /// Registry, custody, policy, audit, limits, metrics.
    state: Arc<SignerState>,
    /// Certificates for both listeners, following their files.
    tls: Arc<ReloadingTls>,
    /// How often the TLS files are polled (`None`: only on request).
    tls_reload_interval: Option<Duration>,
    /// How long shutdown waits for in-flight calls.
    drain_timeout: Duration,
    /// How often readiness (registry, custody) is checked.
    readiness_interval: Duration,
    /// The plain health port's listener, when one is served.
    health_listener: Option<TcpListener>,
    /// Connections, streams and requests in flight ([`crate::listener::limits`]).
    limits: LimitsConfig,
    /// Header and connection timeouts of the metrics listener.
    metrics_timeouts: HttpTimeouts,
}

impl Signer {
    /// Opens the registry, custody, audit sink and TLS material.
    pub fn open(config: &SignerConfig) -> Result<Self> {
        let state = Arc::new(SignerState::open(config)?);
        Ok(Signer {
            tls: Arc::clone(&state.tls),
            tls_reload_interval: config.server.tls_reload_interval(),
            state,
            drain_timeout: config.server.drain_timeout(),
            readiness_interval: config
                .health
                .as_ref()
                .map_or(DEFAULT_READINESS_INTERVAL, HealthConfig::check_interval),
            health_listener: None,
            limits: config.server.limits.clone(),
            metrics_timeouts: config.metrics.as_ref().map_or_else(
                || MetricsConfig::on(([0, 0, 0, 0], 0).into()).timeouts(),
                MetricsConfig::timeouts,
            ),
        })
    }

    /// Also serves the plain health port on `listener` (see
    /// [`crate::listener::health_port`]).
    pub fn with_health_listener(mut self, listener: TcpListener) -> Self {
        self.health_listener = Some(listener);
        self
    }

    /// The TLS material, to reload it on request (SIGHUP).
    pub fn tls(&self) -> Arc<ReloadingTls> {
        Arc::clone(&self.tls)
    }

    /// Serves gRPC on `listener` (and metrics on `metrics_listener`) until
    /// `shutdown` completes, then drains.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let addr = listener
            .local_addr()
            .map_err(|e| SignerError::Config(format!("listener: {e}")))?;
        let stop = CancellationToken::new();

        let (health, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(health, &SERVICE_NAMES).await;
        let readiness_task = tokio::spawn(readiness.clone().watch(
            Arc::clone(&self.state.registry),
            self.state.custody.clone(),
            self.readiness_interval,
            stop.clone(),
        ));
        // The health port outlives the drain: probes see NOT_SERVING (and
        // liveness SERVING) until the process is gone.
        let health_port_stop = CancellationToken::new();
        let health_port = self.health_listener.take().map(|listener| {
            tokio::spawn(health_port::serve(
                listener,
                health_service.clone(),
                self.state.metrics.clone(),
                health_port_stop.clone().cancelled_owned(),
            ))
        });
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
                    Arc::clone(&self.tls),
                    self.metrics_timeouts,
                    stop.clone(),
                )))
            }
            None => None,
        };

        let throttle = Arc::new(PeerThrottle::new(
            self.limits.connections_per_ip_per_second,
            self.limits.connection_burst_per_ip,
        ));
        // Forget idle identities and addresses in the limiters now and then.
        let housekeeping = {
            let state = Arc::clone(&self.state);
            let throttle = Arc::clone(&throttle);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {
                            state.limiter.forget_idle();
                            throttle.forget_idle();
                        }
                    }
                }
            })
        };

        let tls_watch = tokio::spawn(tls_reload::watch(
            Arc::clone(&self.tls),
            self.tls_reload_interval,
            stop.clone(),
        ));

        let incoming = tls_incoming(
            listener,
            Arc::clone(&self.tls),
            Admission {
                throttle: Arc::clone(&throttle),
                per_address: AddressLimit::new(self.limits.max_connections_per_ip),
                limit: ConnectionLimit::new(self.limits.max_connections),
                metrics: self.state.metrics.clone(),
                listener: "grpc",
            },
            ConnectionTimeouts {
                handshake: self.limits.handshake_timeout(),
                http2_start: self.limits.http2_start_timeout(),
            },
            stop.clone(),
        );
        // Calls in flight over every connection: one more is shed with
        // ResourceExhausted at once (load_shed turns "not ready" into that
        // status), never queued. Only peers with a valid client certificate
        // get this far (the handshake requires one), so no anonymous peer
        // can take these slots.
        let server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(self.limits.max_concurrent_streams)
            .load_shed(true)
            .layer(GlobalConcurrencyLimitLayer::new(
                self.limits.max_concurrent_requests,
            ))
            .timeout(REQUEST_TIMEOUT)
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
                readiness.drain().await;
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
        tls_watch.abort();
        readiness_task.abort();
        health_port_stop.cancel();
        if let Some(task) = health_port {
            let _ = task.await;
        }
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
    let mut signer = Signer::open(&config)?;
    if let Some(health) = &config.health {
        signer = signer.with_health_listener(bind(health.listen).await?);
    }
    let sighup = tokio::spawn(tls_reload::reload_on_sighup(signer.tls()));
    let metrics_listener = match &config.metrics {
        Some(m) => Some(bind(m.listen).await?),
        None => None,
    };
    let served = signer.serve(listener, metrics_listener, shutdown).await;
    sighup.abort();
    served
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| SignerError::Config(format!("cannot listen on {addr}: {e}")))
}
