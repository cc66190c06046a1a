//! The change feed: one connection per replica that `LISTEN`s on
//! `enos_devices` and drops from the record cache what another replica
//! changed.
//!
//! While the feed is down (connection cut, database restarting) the cache
//! is cleared and bypassed: every read goes to the database until the feed
//! is back, so a change made through another replica is never missed. A
//! ping every [`PING_EVERY`] notices a connection that died silently.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use enos_sign_core::{DeviceKey, ProductKey};
use tokio_postgres::AsyncMessage;

use super::{Session, Shared, config::Tls, db};
use crate::{
    DeviceId,
    error::{RegistryError, Result},
};

/// The channel the `devices` triggers notify.
pub(super) const CHANNEL: &str = "enos_devices";

/// The `application_name` of the LISTEN connection (what an operator, or
/// a test cutting it, finds in `pg_stat_activity`).
pub const LISTEN_APPLICATION_NAME: &str = "enos-signer-listen";

/// How often the feed checks that its connection is alive.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a ping may take before the feed counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff, doubled per failure up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs the feed for ever: connect, LISTEN, apply notifications; on any
/// failure bypass the cache and reconnect.
pub(super) async fn run(mut config: tokio_postgres::Config, tls: Tls, shared: Arc<Shared>) {
    config.application_name(LISTEN_APPLICATION_NAME);
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let ended = session(&config, &tls, &shared).await;
        shared.feed_down();
        if let Err(e) = ended {
            tracing::warn!(error = %e, "registry change feed down; reading every record from the database until it is back");
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life; returns (with the reason) when it ends.
async fn session(config: &tokio_postgres::Config, tls: &Tls, shared: &Shared) -> Result<()> {
    let mut session = Session::open(config, tls).await?;
    session
        .client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(db)?;
    // From here on every commit is notified: what was cached before may
    // be stale, so start empty.
    shared.feed_up()?;
    tracing::info!("registry change feed up");
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            message = session.messages.recv() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => shared.changed(n.payload())?,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(db(e)),
                None => return Err(RegistryError::Store("change feed connection closed".into())),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, session.client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(db(e)),
                    Err(_) => return Err(RegistryError::Store("change feed ping timed out".into())),
                }
            }
        }
    }
}

impl Shared {
    /// The feed is listening: start from an empty cache and use it.
    fn feed_up(&self) -> Result<()> {
        self.cache.clear()?;
        self.feed_live.store(true, Ordering::Release);
        Ok(())
    }

    /// The feed is gone: stop using the cache, and empty it (a read that
    /// started before cannot fill it: clearing advances the generation).
    fn feed_down(&self) {
        self.feed_live.store(false, Ordering::Release);
        if let Err(e) = self.cache.clear() {
            tracing::error!(error = %e, "clearing the record cache");
        }
    }

    /// A notification: `pk/dk` changed, or `*` (everything may have).
    fn changed(&self, payload: &str) -> Result<()> {
        let id = payload.split_once('/').and_then(|(pk, dk)| {
            Some(DeviceId::new(
                ProductKey::new(pk).ok()?,
                DeviceKey::new(dk).ok()?,
            ))
        });
        match id {
            Some(id) => self.cache.invalidate(&id),
            None => self.cache.clear(),
        }
    }
}
