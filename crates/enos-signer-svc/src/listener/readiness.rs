//! [`Readiness`]: what `grpc.health.v1.Health` answers, on the mTLS
//! listener and on the plain health port alike.
//!
//! | service name | SERVING when |
//! |---|---|
//! | `""`, `enos.signer.v1.Credentials`, `enos.signer.v1.Admin` | ready: the registry answers, the custody could sign (HSM session usable), not draining |
//! | [`LIVENESS_SERVICE`] | the process serves at all; never depends on the database, so a registry outage does not get replicas restarted |
//!
//! The checks run every `health.check_interval`, off the async
//! workers, each bounded by [`CHECK_TIMEOUT`]; a probe reads the last
//! result and costs nothing. A change is logged once.
//!
//! The same verdict is `enos_signer_ready` (1 or 0) in the metrics, and
//! each failed check counts in
//! `enos_signer_readiness_check_failures_total{check}`: a dashboard shows
//! every replica's readiness from the scrape it already does.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use enos_registry::Registry;

use crate::{custody::CustodyHandle, listener::metrics::Metrics};

/// The health service name of liveness (a kubelet `grpc` probe's
/// `service`).
pub const LIVENESS_SERVICE: &str = "liveness";

/// How long one registry or custody check may take before it counts as a
/// failure.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The health statuses and what decides them.
#[derive(Clone)]
pub struct Readiness {
    /// Sets the statuses the health service answers.
    reporter: HealthReporter,
    /// Set once shutdown starts: NOT_SERVING from then on, whatever the
    /// checks say.
    draining: Arc<AtomicBool>,
    /// The gRPC services whose readiness this sets (the server names
    /// them; the listener knows no service).
    services: &'static [&'static str],
    /// Where readiness and failed checks are also published.
    metrics: Metrics,
}

impl Readiness {
    /// A reporter whose `services` all start SERVING (the state just
    /// opened, which proved the registry and custody).
    pub async fn new(
        reporter: HealthReporter,
        services: &'static [&'static str],
        metrics: Metrics,
    ) -> Self {
        for &name in services.iter().chain(&["", LIVENESS_SERVICE]) {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        metrics.set_ready(true);
        Readiness {
            reporter,
            draining: Arc::new(AtomicBool::new(false)),
            services,
            metrics,
        }
    }

    /// Shutdown started: not ready any more (liveness stays SERVING
    /// while the drain runs).
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.set_ready(false).await;
    }

    async fn set_ready(&self, ready: bool) {
        let ready = ready && !self.draining.load(Ordering::SeqCst);
        self.metrics.set_ready(ready);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for &name in self.services.iter().chain(&[""]) {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Checks the registry and the custody every `interval` until `stop`,
    /// and sets readiness from the result.
    pub async fn watch(
        self,
        registry: Arc<dyn Registry>,
        custody: CustodyHandle,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Result<(), String> = Ok(());
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = check(registry.as_ref(), &custody)
                .await
                .map_err(|(what, why)| {
                    self.metrics.readiness_check_failed(what);
                    why
                });
            if now != last {
                match &now {
                    Ok(()) => tracing::info!("ready again: registry and custody answer"),
                    Err(why) => tracing::warn!(reason = %why, "not ready"),
                }
            }
            // Only a change is published: health watchers are woken by
            // every status set, even an unchanged one.
            if now.is_ok() != last.is_ok() {
                self.set_ready(now.is_ok()).await;
            }
            last = now;
        }
    }
}

/// Whether the registry answers and the custody could sign; when not,
/// the check that failed (`registry` or `custody`, the metric's label) and
/// the reason (logged, never sent to a client).
async fn check(
    registry: &dyn Registry,
    custody: &CustodyHandle,
) -> Result<(), (&'static str, String)> {
    let registry = tokio::time::timeout(CHECK_TIMEOUT, registry.list(None, None, 1));
    match registry.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(("registry", format!("registry: {e}"))),
        Err(_) => {
            return Err((
                "registry",
                format!("registry: no answer within {CHECK_TIMEOUT:?}"),
            ));
        }
    }
    match tokio::time::timeout(CHECK_TIMEOUT, custody.check()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(("custody", format!("custody: {e}"))),
        Err(_) => Err((
            "custody",
            format!("custody: no answer within {CHECK_TIMEOUT:?}"),
        )),
    }
}
