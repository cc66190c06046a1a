//! [`Signer`] and [`run`]: the gRPC server (Credentials, Admin, health,
//! reflection) and the metrics endpoint, with a graceful shutdown.
//!
//! Shutdown: health turns NOT_SERVING, the listeners stop accepting,
//! in-flight calls drain (up to `server.drain_timeout`), then `run`
//! returns.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use enos_signer_proto::v1::{
    admin_server::AdminServer, certificates_server::CertificatesServer,
    credentials_server::CredentialsServer, enos_certificates_server::EnosCertificatesServer,
    enrollment_server::EnrollmentServer,
};
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
    listener::limits::{AddressLimit, Admission, ConnectionLimit, CountShedLayer, PeerThrottle},
    listener::metrics,
    listener::readiness::Readiness,
    listener::tls_incoming::{ConnectionTimeouts, enroll_config, grpc_config, tls_incoming},
    listener::tls_reload::{self, ReloadingTls},
    services::admin::AdminService,
    services::certificates::CertificatesService,
    services::credentials::CredentialsService,
    services::enos_certificates::EnosCertificatesService,
    services::enrollment::EnrollmentService,
    state::SignerState,
};

/// The fully-qualified names of the API's services, for health checks.
pub const SERVICE_NAMES: [&str; 4] = [
    "enos.signer.v1.Credentials",
    "enos.signer.v1.Certificates",
    "enos.signer.v1.Enrollment",
    "enos.signer.v1.Admin",
];

/// Calls in flight on the enrollment listener: enrollment is rare (once
/// per gateway), and its callers have proved nothing yet, so they get a
/// small share of the machine; more are shed at once.
const ENROLL_MAX_CONCURRENT: usize = 32;

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
    /// The enrollment listener (`[ca] enroll_listen`), when one is served.
    enroll_listener: Option<TcpListener>,
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
            enroll_listener: None,
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

    /// Also serves `Enrollment` on `listener` (server-authenticated TLS,
    /// no client certificate; see [`crate::services::enrollment`]).
    pub fn with_enroll_listener(mut self, listener: TcpListener) -> Self {
        self.enroll_listener = Some(listener);
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
        let readiness = Readiness::new(health, &SERVICE_NAMES, self.state.metrics.clone()).await;
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
                let metrics_addr = crate::listener::display_addr(&l);
                tracing::info!(addr = %metrics_addr, "metrics listening (mTLS)");
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
        let ca_tasks = self.start_ca(&stop).await;
        let enrollment = self.enroll_listener.take().map(|listener| {
            let addr = crate::listener::display_addr(&listener);
            tracing::info!(addr = %addr, "enrollment listening (TLS, one-time tokens)");
            let incoming = tls_incoming(
                listener,
                Arc::clone(&self.tls),
                enroll_config,
                Admission {
                    throttle: Arc::clone(&throttle),
                    per_address: AddressLimit::new(self.limits.max_connections_per_ip),
                    limit: ConnectionLimit::new(self.limits.max_connections),
                    metrics: self.state.metrics.clone(),
                    listener: "enroll",
                },
                ConnectionTimeouts {
                    handshake: self.limits.handshake_timeout(),
                    http2_start: self.limits.http2_start_timeout(),
                },
                stop.clone(),
            );
            tokio::spawn(
                Server::builder()
                    .max_concurrent_streams(8)
                    .load_shed(true)
                    .layer(CountShedLayer {
                        metrics: self.state.metrics.clone(),
                        listener: "enroll",
                    })
                    .layer(GlobalConcurrencyLimitLayer::new(ENROLL_MAX_CONCURRENT))
                    .timeout(Duration::from_secs(30))
                    .add_service(EnrollmentServer::new(EnrollmentService::new(Arc::clone(
                        &self.state,
                    ))))
                    .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
            )
        });

        let incoming = tls_incoming(
            listener,
            Arc::clone(&self.tls),
            grpc_config,
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
            .layer(CountShedLayer {
                metrics: self.state.metrics.clone(),
                listener: "grpc",
            })
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
            .add_service(CertificatesServer::new(CertificatesService::new(
                Arc::clone(&self.state),
            )))
            // Without `[enos_api]` it answers FailedPrecondition.
            .add_service(EnosCertificatesServer::new(EnosCertificatesService::new(
                Arc::clone(&self.state),
            )))
            // Enrollment is served here too, for a device that already has a
            // certificate (say, of the operator's PKI) and a token; without
            // `[ca]` it answers "this signer is not a CA".
            .add_service(EnrollmentServer::new(EnrollmentService::new(Arc::clone(
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
                        tracing::warn!(timeout = %humantime::format_duration(self.drain_timeout), "drain timed out; closing the remaining connections");
                        Ok(())
                    }
                }
            }
        };
        stop.cancel();
        if let Some(task) = enrollment {
            let _ = tokio::time::timeout(self.drain_timeout, task).await;
        }
        for task in ca_tasks {
            task.abort();
        }
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

impl Signer {
    /// With `[ca]`: trusts the CA's chain for device certificates (read now
    /// and every [`crate::ca::REFRESH`]), publishes its CRL, serves it at
    /// `/crl` and keeps the expiring-certificates gauge. Returns the
    /// tasks, stopped with `stop`.
    async fn start_ca(&self, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(ca) = self.state.ca.clone() else {
            return Vec::new();
        };
        let trust = {
            let ca = Arc::clone(&ca);
            let tls = Arc::clone(&self.tls);
            let stop = stop.clone();
            let first = trust_own_ca(&ca, &tls, true).await;
            tokio::spawn(async move {
                let mut warned = !first;
                let mut tick = tokio::time::interval(crate::ca::REFRESH);
                tick.tick().await;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let ok = trust_own_ca(&ca, &tls, !warned).await;
                    warned = !ok;
                }
            })
        };
        let publisher = Arc::new(crate::ca::crl::CrlPublisher::new(Arc::clone(&ca)));
        {
            let publisher = Arc::clone(&publisher);
            self.state.metrics.serve_crl(Arc::new(move || {
                let publisher = Arc::clone(&publisher);
                Box::pin(async move { publisher.current().await.ok() })
            }));
        }
        let crl = tokio::spawn(publisher.publish(ca.config().crl_file.clone(), stop.clone()));
        let expiry = {
            let metrics = self.state.metrics.clone();
            tokio::spawn(crate::ca::expiry::watch(
                Arc::clone(&self.state.registry),
                ca.changes(),
                move |count| metrics.set_certificates_expiring_7d(count),
                stop.clone(),
            ))
        };
        vec![trust, crl, expiry]
    }
}

/// Installs the CA's current chain as a trust anchor of device
/// certificates; false (warned when `warn`) while the CA is not ready.
async fn trust_own_ca(
    ca: &crate::ca::CertificateAuthority,
    tls: &Arc<ReloadingTls>,
    warn: bool,
) -> bool {
    match ca.chain().await {
        Ok(chain) => {
            let tls = Arc::clone(tls);
            let _ = tokio::task::spawn_blocking(move || tls.set_own_ca(chain)).await;
            true
        }
        Err(e) => {
            if warn {
                tracing::warn!(error = %e, "[ca] is configured but the CA is not ready; enrollment and renewal are refused until it is");
            }
            false
        }
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
    if let Some(addr) = config.ca.as_ref().and_then(|ca| ca.enroll_listen) {
        signer = signer.with_enroll_listener(bind(addr).await?);
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
