//! `enos_signer_certificates_expiring{within="7d"}`: device certificates of
//! this CA that expire within a week and were neither renewed nor revoked.
//! A fleet renews at two thirds of its certificates' lifetime, so a count
//! above zero means gateways that stopped renewing (offline, broken,
//! decommissioned without a revocation), seen a week before they go dark.

use std::{sync::Arc, time::Duration};

use enos_registry::Registry;
use tokio_util::sync::CancellationToken;

/// The window of the gauge.
pub const WITHIN: Duration = Duration::from_secs(7 * 86_400);

/// How often the registry is counted: the gauge moves in days, a
/// PostgreSQL count every minute costs nothing. A certificate change on
/// this replica counts again soon (`changed`), but never more often than
/// every [`MIN_GAP`]: a count reads every live certificate, and a renewal
/// storm must not pay one per renewal.
const EVERY: Duration = Duration::from_secs(60);

/// The least time between two counts.
const MIN_GAP: Duration = Duration::from_secs(2);

/// Sets the gauge through `set` every minute, and whenever `changed` is
/// notified, until `stop`; a failed count leaves the last value (the
/// registry's own health is on the readiness probe).
pub async fn watch(
    registry: Arc<dyn Registry>,
    changed: Arc<tokio::sync::Notify>,
    set: impl Fn(u64) + Send + 'static,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = changed.notified() => {}
        }
        let now = enos_domain::now_ms();
        match registry
            .count_expiring(now, WITHIN.as_millis() as u64)
            .await
        {
            Ok(count) => set(count),
            Err(e) => tracing::debug!(error = %e, "counting expiring certificates failed"),
        }
        // Changes meanwhile are remembered (one permit) and counted after.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(MIN_GAP) => {}
        }
    }
}
