//! [`Metrics`]: Prometheus counters and histograms, and the `/metrics`
//! endpoint on its own port (mTLS like every listener); with `[ca]`, the
//! CA's revocation list at `/crl` on the same port.
//!
//! Labels are bounded: the RPC and the outcome (a gRPC code name). No
//! label names a device, so the series count does not grow with a fleet.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{
    audit::AuditLosses,
    config::HttpTimeouts,
    listener::limits::{ConnectionLimit, METRICS_MAX_CONNECTIONS},
    listener::tls_reload::ReloadingTls,
};

/// Labels of an issuance.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `issue_mqtt_credential` or `sign_sub_device_login`, or the admin RPC.
    rpc: &'static str,
    /// `ok` or the gRPC code name.
    outcome: &'static str,
}

/// Labels of a TLS reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    /// `reloaded` or `refused`.
    outcome: &'static str,
}

/// Labels of a refused connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    /// `grpc`, `metrics` or `health`.
    listener: &'static str,
    /// `limit` (too many open) or `throttled` (too many new from one
    /// address).
    reason: &'static str,
}

/// Labels of the certificates-expiring gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithinLabels {
    /// The window: `7d`.
    within: &'static str,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// The RPC.
    rpc: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 16,
    ))
}

/// The signer's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Encodes everything below.
    registry: Arc<Registry>,
    /// Credentials issued (and refused), by RPC and outcome.
    issuances: Family<OutcomeLabels, Counter>,
    /// Issuance latency, by RPC.
    issue_latency: Family<RpcLabels, Histogram, fn() -> Histogram>,
    /// Admin calls, by RPC and outcome.
    admin_calls: Family<OutcomeLabels, Counter>,
    /// notAfter of the served server certificate (seconds since the
    /// epoch): short-lived certificates must be seen to renew.
    server_cert_expiry: Gauge,
    /// TLS reloads, by outcome: a refused one means the files are broken.
    tls_reloads: Family<ReloadLabels, Counter>,
    /// Connections closed at accept because the listener was at its
    /// connection limit ([`crate::listener::limits`]): counted, never logged per
    /// connection (a flood must not fill the log).
    connections_refused: Family<ListenerLabels, Counter>,
    /// Where the audit trail's losses are read on each scrape: set once
    /// the audit sink is open ([`Metrics::watch_audit`]).
    audit_losses: Arc<OnceLock<AuditLossReader>>,
    /// Device certificates that expire within the window and were not
    /// renewed (with `[ca]`): a fleet going dark is seen a week ahead.
    certificates_expiring: Family<WithinLabels, Gauge>,
    /// Where `/crl` reads the CA's current list: set once the CA is up
    /// ([`Metrics::serve_crl`]); without it `/crl` is 404.
    crl: Arc<OnceLock<CrlSource>>,
    /// The series of a successful `IssueMqttCredential` (its count and
    /// latency), kept from the first one on: the most frequent call then
    /// spares two labelled look-ups (a lock and a hash each).
    issue_ok: Arc<OnceLock<(Counter, Histogram)>>,
}

/// The RPC whose successful calls have their series kept
/// ([`Metrics::issuance`]).
const ISSUE: &str = "issue_mqtt_credential";

/// Reads the CA's current CRL (DER); `None` while it cannot be signed.
pub type CrlSource =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<Arc<Vec<u8>>>> + Send + Sync>;

/// Reads the audit trail's loss counters.
type AuditLossReader = Box<dyn Fn() -> AuditLosses + Send + Sync>;

/// Encodes the audit trail's losses on each scrape: records of decided
/// outcomes dropped or failed (an outage of the audit sink), and those
/// waiting for room.
struct AuditLossCollector(Arc<OnceLock<AuditLossReader>>);

impl std::fmt::Debug for AuditLossCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLossCollector")
    }
}

impl Collector for AuditLossCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(read) = self.0.get() else {
            return Ok(());
        };
        let losses = read();
        let mut lost = encoder.encode_descriptor(
            "audit_records_lost",
            "Audit records of decided outcomes that were lost, by reason (dropped: the sink's queue and overflow were full; failed: the write failed)",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in [("dropped", losses.dropped), ("failed", losses.failed)] {
            ConstCounter::new(count).encode(lost.encode_family(&[("reason", reason)])?)?;
        }
        let waiting = ConstGauge::new(i64::try_from(losses.waiting).unwrap_or(i64::MAX));
        waiting.encode(encoder.encode_descriptor(
            "audit_records_waiting",
            "Audit records waiting, beyond the sink's queue, for room in it",
            None,
            waiting.metric_type(),
        )?)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("enos_signer");
        let issuances = Family::<OutcomeLabels, Counter>::default();
        let issue_latency = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let admin_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "issuances",
            "Credential issuances by RPC and outcome",
            issuances.clone(),
        );
        registry.register(
            "issue_duration_seconds",
            "Time to serve an issuance RPC",
            issue_latency.clone(),
        );
        registry.register(
            "admin_calls",
            "Admin RPCs by RPC and outcome",
            admin_calls.clone(),
        );
        let server_cert_expiry = Gauge::default();
        registry.register(
            "tls_server_cert_expiry_timestamp_seconds",
            "notAfter of the server certificate served to new connections",
            server_cert_expiry.clone(),
        );
        let tls_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Changes of the TLS files, by outcome (reloaded, refused)",
            tls_reloads.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept: the listener was at its limit, or the peer address over its rate",

            connections_refused.clone(),
        );
        let certificates_expiring = Family::<WithinLabels, Gauge>::default();
        registry.register(
            "certificates_expiring",
            "Device certificates issued by this CA that expire within the window and were neither renewed nor revoked",
            certificates_expiring.clone(),
        );
        let audit_losses = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(AuditLossCollector(Arc::clone(&audit_losses))));
        Metrics {
            issue_ok: Arc::default(),
            certificates_expiring,
            crl: Arc::new(OnceLock::new()),
            audit_losses,
            connections_refused,
            registry: Arc::new(registry),
            issuances,
            issue_latency,
            admin_calls,
            server_cert_expiry,
            tls_reloads,
        }
    }

    /// Counts one issuance RPC and observes its latency.
    pub fn issuance(&self, rpc: &'static str, outcome: &'static str, elapsed: Duration) {
        if rpc == ISSUE && outcome == "ok" {
            // The call every device makes: its series, looked up once
            // (#24), and only once it exists (a scrape shows no series
            // before the first issuance, as for the others).
            let (count, latency) = self.issue_ok.get_or_init(|| {
                (
                    self.issuances
                        .get_or_create(&OutcomeLabels { rpc, outcome })
                        .clone(),
                    self.issue_latency.get_or_create(&RpcLabels { rpc }).clone(),
                )
            });
            count.inc();
            latency.observe(elapsed.as_secs_f64());
            return;
        }
        self.issuances
            .get_or_create(&OutcomeLabels { rpc, outcome })
            .inc();
        self.issue_latency
            .get_or_create(&RpcLabels { rpc })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one admin RPC.
    pub fn admin_call(&self, rpc: &'static str, outcome: &'static str) {
        self.admin_calls
            .get_or_create(&OutcomeLabels { rpc, outcome })
            .inc();
    }

    /// Records the served certificate's notAfter.
    pub fn set_server_cert_expiry(&self, not_after: i64) {
        self.server_cert_expiry.set(not_after);
    }

    /// Counts one connection refused at `listener`, for `reason`
    /// (`limit` or `throttled`).
    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ListenerLabels { listener, reason })
            .inc();
    }

    /// Counts one TLS reload (`reloaded` or `refused`).
    pub fn tls_reload(&self, outcome: &'static str) {
        self.tls_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    /// Exposes the audit trail's losses, read by `read` on each scrape
    /// (set once; a second call changes nothing).
    pub fn watch_audit(&self, read: impl Fn() -> AuditLosses + Send + Sync + 'static) {
        let _ = self.audit_losses.set(Box::new(read));
    }

    /// Sets the count of device certificates expiring within 7 days,
    /// unrenewed.
    pub fn set_certificates_expiring_7d(&self, count: u64) {
        self.certificates_expiring
            .get_or_create(&WithinLabels { within: "7d" })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Serves the CA's CRL at `/crl`, read from `source` on each request
    /// (set once).
    pub fn serve_crl(&self, source: CrlSource) {
        let _ = self.crl.set(source);
    }

    /// The CA's current CRL, if a CA is served and its list can be signed.
    async fn crl(&self) -> Option<Option<Arc<Vec<u8>>>> {
        let source = self.crl.get()?.clone();
        Some(source().await)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The name of a result's outcome: `ok` or the gRPC code.
pub fn outcome_name(code: Option<tonic::Code>) -> &'static str {
    use tonic::Code;
    match code {
        None => "ok",
        Some(Code::Unauthenticated) => "unauthenticated",
        Some(Code::PermissionDenied) => "permission_denied",
        Some(Code::NotFound) => "not_found",
        Some(Code::FailedPrecondition) => "failed_precondition",
        Some(Code::InvalidArgument) => "invalid_argument",
        Some(Code::ResourceExhausted) => "resource_exhausted",
        Some(Code::Unavailable) => "unavailable",
        Some(_) => "internal",
    }
}

/// Serves `GET /metrics` over mTLS on `listener` until `shutdown`; each
/// handshake uses the TLS material current when it starts.
pub async fn serve(
    metrics: Metrics,
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    timeouts: HttpTimeouts,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let limit = ConnectionLimit::new(METRICS_MAX_CONNECTIONS);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limit.try_admit() else {
            metrics.connection_refused("metrics", "limit");
            continue;
        };
        let acceptor = TlsAcceptor::from(Arc::clone(&tls.current().metrics));
        let metrics = metrics.clone();
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "metrics: TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    if request.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(metrics.encode())))
                    } else if request.uri().path() == "/crl"
                        && let Some(crl) = metrics.crl().await
                    {
                        match crl {
                            Some(der) => Response::builder()
                                .header("content-type", "application/pkix-crl")
                                .body(Full::new(Bytes::from(der.as_ref().clone()))),
                            None => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .body(Full::new(Bytes::from_static(
                                    b"the CRL cannot be signed now; retry later\n",
                                ))),
                        }
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found\n")))
                    }
                }
            });
            // A header sent slowly, or a kept-alive connection left idle,
            // holds a connection slot: both are bounded.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.header)
                .serve_connection(TokioIo::new(tls), service);
            match tokio::time::timeout(timeouts.lifetime, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "metrics: connection ended with an error")
                }
                Err(_) => tracing::debug!("metrics: connection closed at its lifetime"),
            }
        });
    }
    connections.shutdown().await;
}
