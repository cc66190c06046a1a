//! [`Metrics`]: Prometheus counters and histograms, and the `/metrics`
//! endpoint on its own port (mTLS like every listener); with `[ca]`, the
//! CA's revocation list at `/crl` on the same port.
//!
//! Labels are bounded: the RPC and the outcome (a gRPC code name). No
//! label names a device, so the series count does not grow with a fleet.
//!
//! Series a dashboard or an alert reads are there from the start, at zero
//! (issue 29 item 12): every issuance RPC's `ok` counter and latency
//! histogram, each listener's refusal reasons, shed requests and open
//! connections, both TLS reload outcomes, both readiness checks. A rule
//! like `rate(x[5m])` over a series that appears only with its first event
//! misses that event; `deploy/observability/` holds the dashboard and the
//! alerting rules, and a test scrapes a running signer for every name they
//! use.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use enos_signer_proto::tls_failure::TlsFailure;

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

/// Labels of a failed TLS handshake.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    /// One of [`TlsFailure::LABELS`]: bounded.
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

/// Labels of a per-listener series (open connections, shed requests).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerOnly {
    /// `grpc`, `enroll`, `metrics` or `health`.
    listener: &'static str,
}

/// Labels of a failed readiness check.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    /// `registry` or `custody`.
    check: &'static str,
}

/// The RPCs whose calls [`Metrics::issuance`] counts: each has its `ok`
/// counter and its latency histogram from the start.
pub const ISSUANCE_RPCS: [&str; 6] = [
    "issue_mqtt_credential",
    "sign_sub_device_login",
    "sign_sub_device_login_batch",
    "complete_activation",
    "enroll",
    "renew_certificate",
];

/// The listeners every signer has (`enroll` only with `[ca]
/// enroll_listen`): their refusal, open-connection and shed series start at
/// zero.
const LISTENERS: [&str; 3] = ["grpc", "metrics", "health"];

/// Why a connection is closed at accept ([`crate::listener::limits`]).
const REFUSAL_REASONS: [&str; 3] = ["throttled", "per_address", "limit"];

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
    /// The EnOS API client's calls (issue 26): how long the signer waits
    /// on EnOS, how often it is refused, how many calls are in flight.
    enos_api: EnosApiMetrics,
    /// notAfter of the served server certificate (seconds since the
    /// epoch; 0: none yet): short-lived certificates must be seen to
    /// renew. Encoded with its `state` at each scrape
    /// ([`ServerCertExpiryCollector`]).
    server_cert_expiry: Arc<AtomicI64>,
    /// notBefore of the served server certificate (seconds since the
    /// epoch): with the expiry, the certificate's lifetime, so the expiry
    /// alert can ask for "a fifth of its lifetime left" and suit a
    /// one-hour certificate as well as a one-year one.
    server_cert_not_before: Gauge,
    /// Failed TLS handshakes on the gRPC and enrollment listeners, by
    /// reason: an expired fleet or a wrong CA shows here first.
    tls_handshake_failures: Family<HandshakeLabels, Counter>,
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
    /// 1 while this replica reports ready (registry and custody answer,
    /// not draining), else 0: per-replica readiness on a dashboard, and
    /// the "replica not ready" alert, without scraping the health port.
    ready: Gauge,
    /// Readiness checks that failed, by check (`registry`, `custody`):
    /// which dependency made a replica not ready.
    readiness_failures: Family<CheckLabels, Counter>,
    /// Connections open now, by listener: how close a listener is to its
    /// `max_connections` before it refuses.
    connections_open: Family<ListenerOnly, Gauge>,
    /// Calls answered `ResourceExhausted` at once because the listener had
    /// `max_concurrent_requests` in flight (load shedding), by listener;
    /// they never reach a service, so no issuance counter sees them.
    requests_shed: Family<ListenerOnly, Counter>,
    /// Where the registry's change-feed state is read on each scrape: set
    /// once the registry is open ([`Metrics::watch_registry`]).
    change_feed: Arc<OnceLock<ChangeFeedReader>>,
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

/// Reads whether the registry's change feed is up (`None`: no feed).
type ChangeFeedReader = Box<dyn Fn() -> Option<bool> + Send + Sync>;

/// Encodes `enos_signer_registry_change_feed_up` on each scrape: 1 while
/// the PostgreSQL registry's change feed listens (reads served from the
/// cache), 0 while it is down (every read goes to the database). Absent
/// without a feed (redb, or `cache = false`), and until the feed starts
/// with the registry's first cached read.
struct ChangeFeedCollector(Arc<OnceLock<ChangeFeedReader>>);

impl std::fmt::Debug for ChangeFeedCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeFeedCollector")
    }
}

impl Collector for ChangeFeedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(up) = self.0.get().and_then(|read| read()) else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::from(up));
        gauge.encode(encoder.encode_descriptor(
            "registry_change_feed_up",
            "1 while the registry's change feed listens and reads are served from the cache; 0 while it is down and every read goes to the database",
            None,
            gauge.metric_type(),
        )?)
    }
}

/// Held by an open connection: counts it in `connections_open` until it
/// is dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

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

/// How near its end a server certificate is, at `now` (seconds since
/// the epoch): `expired`, `expiring` (within 7 days), or `ok`. The
/// expiry metric's `state` label and the signer's warning.
pub fn server_cert_state(not_after: i64, now: i64) -> &'static str {
    const WEEK: i64 = 7 * 86_400;
    if now >= not_after {
        "expired"
    } else if not_after - now < WEEK {
        "expiring"
    } else {
        "ok"
    }
}

/// Seconds since the epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Encodes the served certificate's notAfter with its `state` at the
/// time of the scrape (`ok`, `expiring` within 7 days, `expired`): one
/// series, whose label an alert can match without arithmetic.
struct ServerCertExpiryCollector(Arc<AtomicI64>);

impl std::fmt::Debug for ServerCertExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCertExpiryCollector")
    }
}

impl Collector for ServerCertExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let not_after = self.0.load(Ordering::Relaxed);
        if not_after == 0 {
            return Ok(());
        }
        let gauge = ConstGauge::new(not_after);
        let mut family = encoder.encode_descriptor(
            "tls_server_cert_expiry_timestamp_seconds",
            "notAfter of the server certificate served to new connections; state: ok, expiring (within 7 days) or expired",
            None,
            gauge.metric_type(),
        )?;
        let state = server_cert_state(not_after, unix_now());
        gauge.encode(family.encode_family(&[("state", state)])?)
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
        let server_cert_expiry = Arc::new(AtomicI64::new(0));
        registry.register_collector(Box::new(ServerCertExpiryCollector(Arc::clone(
            &server_cert_expiry,
        ))));
        let tls_handshake_failures = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes on the gRPC and enrollment listeners, by reason (expired, not_yet_valid, unknown_issuer, revoked, no_certificate, bad_certificate, protocol, timeout, closed, server_certificate_refused, other)",
            tls_handshake_failures.clone(),
        );
        let server_cert_not_before = Gauge::default();
        registry.register(
            "tls_server_cert_not_before_timestamp_seconds",
            "notBefore of the server certificate served to new connections",
            server_cert_not_before.clone(),
        );
        // Every reason from the start: a rate over a series that appears
        // with its first failure misses that failure.
        for reason in TlsFailure::LABELS {
            let _ = tls_handshake_failures.get_or_create(&HandshakeLabels { reason });
        }
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
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while this replica is ready (registry and custody answer, not draining), else 0",
            ready.clone(),
        );
        let readiness_failures = Family::<CheckLabels, Counter>::default();
        registry.register(
            "readiness_check_failures",
            "Readiness checks that failed, by check (registry, custody)",
            readiness_failures.clone(),
        );
        let connections_open = Family::<ListenerOnly, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections open now, by listener",
            connections_open.clone(),
        );
        let requests_shed = Family::<ListenerOnly, Counter>::default();
        registry.register(
            "requests_shed",
            "Calls refused with ResourceExhausted at once because the listener had max_concurrent_requests in flight",
            requests_shed.clone(),
        );
        let change_feed = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(ChangeFeedCollector(Arc::clone(&change_feed))));
        let enos_api = EnosApiMetrics::default();
        enos_api.register(&mut registry);

        // Zero-valued series from the start (see the module docs).
        for rpc in ISSUANCE_RPCS {
            drop(issuances.get_or_create(&OutcomeLabels { rpc, outcome: "ok" }));
            drop(issue_latency.get_or_create(&RpcLabels { rpc }));
        }
        for outcome in ["reloaded", "refused"] {
            drop(tls_reloads.get_or_create(&ReloadLabels { outcome }));
        }
        for listener in LISTENERS {
            for reason in REFUSAL_REASONS {
                drop(connections_refused.get_or_create(&ListenerLabels { listener, reason }));
            }
            drop(connections_open.get_or_create(&ListenerOnly { listener }));
        }
        drop(requests_shed.get_or_create(&ListenerOnly { listener: "grpc" }));
        for check in ["registry", "custody"] {
            drop(readiness_failures.get_or_create(&CheckLabels { check }));
        }
        Metrics {
            enos_api,
            ready,
            readiness_failures,
            connections_open,
            requests_shed,
            change_feed,
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
            server_cert_not_before,
            tls_handshake_failures,
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

    /// The EnOS API client's series, for [`crate::enos_api::EnosApi`].
    pub fn enos_api(&self) -> EnosApiMetrics {
        self.enos_api.clone()
    }

    /// Counts one admin RPC.
    pub fn admin_call(&self, rpc: &'static str, outcome: &'static str) {
        self.admin_calls
            .get_or_create(&OutcomeLabels { rpc, outcome })
            .inc();
    }

    /// Records the served certificate's notAfter.
    pub fn set_server_cert_expiry(&self, not_after: i64) {
        self.server_cert_expiry.store(not_after, Ordering::Relaxed);
    }

    /// Counts one failed TLS handshake, for `reason` (one of
    /// [`TlsFailure::LABELS`]).
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&HandshakeLabels { reason })
            .inc();
    }

    /// Records the served certificate's notBefore.
    pub fn set_server_cert_not_before(&self, not_before: i64) {
        self.server_cert_not_before.set(not_before);
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

    /// Exposes whether the registry's change feed is up, read by `read`
    /// on each scrape (set once).
    pub fn watch_registry(&self, read: impl Fn() -> Option<bool> + Send + Sync + 'static) {
        let _ = self.change_feed.set(Box::new(read));
    }

    /// Sets this replica's readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Counts one failed readiness check (`registry` or `custody`).
    pub fn readiness_check_failed(&self, check: &'static str) {
        self.readiness_failures
            .get_or_create(&CheckLabels { check })
            .inc();
    }

    /// Counts a connection open on `listener` until the guard is dropped.
    pub fn connection_open(&self, listener: &'static str) -> OpenConnection {
        let gauge = self
            .connections_open
            .get_or_create(&ListenerOnly { listener })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Counts one call shed on `listener`.
    pub fn request_shed(&self, listener: &'static str) {
        self.requests_shed
            .get_or_create(&ListenerOnly { listener })
            .inc();
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

/// Labels of an EnOS API call's duration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    /// One of [`EnosApiMetrics::OPERATIONS`].
    operation: &'static str,
}

/// Labels of a counted EnOS API call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnosCallLabels {
    /// One of [`EnosApiMetrics::OPERATIONS`].
    operation: &'static str,
    /// One of [`EnosApiMetrics::OUTCOMES`].
    outcome: &'static str,
}

fn enos_api_histogram() -> Histogram {
    // 1 ms to ~33 s: a call to EnOS over the internet, up to past the
    // client's default 15 s timeout.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// The EnOS API client's series (issue 26), every operation and outcome
/// at zero from the start:
///
/// - `enos_signer_enos_api_request_duration_seconds{operation}`: one
///   HTTP exchange with EnOS's gateway (connect, TLS, request, reply),
///   from when the call holds its concurrency permit; its sum over a
///   window is the time the signer spent waiting on EnOS.
/// - `enos_signer_enos_api_calls_total{operation,outcome}`: `ok`,
///   `refused` (EnOS answered with a code other than 0) or `unreachable`
///   (no answer, a timeout, not EnOS's envelope).
/// - `enos_signer_enos_api_queue_seconds`: time a call waited for a
///   permit (`[enos_api] concurrency`).
/// - `enos_signer_enos_api_in_flight` and `…_in_flight_peak`: exchanges
///   under way now, and the most at once since the start (the bound
///   seen to hold).
#[derive(Clone)]
pub struct EnosApiMetrics {
    /// Exchange duration by operation: the time spent waiting on EnOS.
    duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Calls by operation and outcome: EnOS's refusals and outages apart.
    calls: Family<EnosCallLabels, Counter>,
    /// Time waiting for a permit: a bound set too tight shows here.
    queue: Histogram,
    /// Exchanges under way now.
    in_flight: Gauge,
    /// The most exchanges under way at once since the start: shows that
    /// `concurrency` held (a scrape of `in_flight` would miss a peak).
    in_flight_peak: Gauge,
}

impl Default for EnosApiMetrics {
    /// Series of their own, not registered (a client made outside a
    /// serving signer: the CLI, tests).
    fn default() -> Self {
        let metrics = EnosApiMetrics {
            duration: Family::new_with_constructor(enos_api_histogram),
            calls: Family::default(),
            queue: enos_api_histogram(),
            in_flight: Gauge::default(),
            in_flight_peak: Gauge::default(),
        };
        for operation in Self::OPERATIONS {
            drop(
                metrics
                    .duration
                    .get_or_create(&OperationLabels { operation }),
            );
            for outcome in Self::OUTCOMES {
                drop(
                    metrics
                        .calls
                        .get_or_create(&EnosCallLabels { operation, outcome }),
                );
            }
        }
        metrics
    }
}

impl std::fmt::Debug for EnosApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnosApiMetrics")
            .field("in_flight", &self.in_flight.get())
            .finish_non_exhaustive()
    }
}

/// Held while an exchange with EnOS is under way: counted in
/// `in_flight` until dropped.
pub struct EnosApiInFlight(Gauge);

impl Drop for EnosApiInFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl EnosApiMetrics {
    /// The operations: the token, then the certificates' actions.
    pub const OPERATIONS: [&'static str; 5] = ["token", "apply", "renew", "revoke", "list"];
    /// The outcomes of a call.
    pub const OUTCOMES: [&'static str; 3] = ["ok", "refused", "unreachable"];

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "enos_api_request_duration_seconds",
            "One HTTP exchange with EnOS's API gateway (connect, TLS, request, reply), by operation (token, apply, renew, revoke, list)",
            self.duration.clone(),
        );
        registry.register(
            "enos_api_calls",
            "Calls to EnOS's API, by operation and outcome (ok; refused: an EnOS code other than 0; unreachable: no answer, a timeout, not EnOS's envelope)",
            self.calls.clone(),
        );
        registry.register(
            "enos_api_queue_seconds",
            "Time a call to EnOS's API waited for one of [enos_api] concurrency permits",
            self.queue.clone(),
        );
        registry.register(
            "enos_api_in_flight",
            "Exchanges with EnOS's API under way now",
            self.in_flight.clone(),
        );
        registry.register(
            "enos_api_in_flight_peak",
            "The most exchanges with EnOS's API under way at once since the start (at most [enos_api] concurrency)",
            self.in_flight_peak.clone(),
        );
    }

    /// Observes the wait for a permit.
    pub fn queued(&self, waited: Duration) {
        self.queue.observe(waited.as_secs_f64());
    }

    /// Counts an exchange under way until the guard is dropped.
    pub fn exchange_started(&self) -> EnosApiInFlight {
        let now = self.in_flight.inc() + 1;
        self.in_flight_peak
            .inner()
            .fetch_max(now, Ordering::Relaxed);
        EnosApiInFlight(self.in_flight.clone())
    }

    /// Observes one exchange of `operation` that took `elapsed`.
    pub fn exchanged(&self, operation: &'static str, elapsed: Duration) {
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one call of `operation` with `outcome` (`ok`, `refused`,
    /// `unreachable`).
    pub fn called(&self, operation: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&EnosCallLabels { operation, outcome })
            .inc();
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
        let Some(mut permit) = limit.try_admit() else {
            metrics.connection_refused("metrics", "limit");
            continue;
        };
        permit.count_open(metrics.connection_open("metrics"));
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
