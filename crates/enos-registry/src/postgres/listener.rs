//! The change feed: one connection per replica that `LISTEN`s on
//! `enos_devices` and drops from the record cache what another replica
//! changed.
//!
//! While the feed is down (connection cut, database restarting) the cache
//! is cleared and bypassed: every read goes to the database until the feed
//! is back, so a change made through another replica is never missed. The
//! feed proves itself by a round trip of its own `NOTIFY` every
//! [`FEED_PING_EVERY`] (back within [`FEED_PING_TIMEOUT`]), which also
//! notices a connection that died silently or stopped delivering.
//!
//! It also `LISTEN`s on `enos_certificates` (issue 25): a reported
//! revocation makes the revoked set untrusted (checks read the row) and
//! the feed reloads it once the messages already received are handled;
//! so does a revocation committed through this replica, and the feed
//! coming up. A reload that a newer revocation overtook is not installed
//! and is read again.

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
/// The channel the `certificates` triggers notify when a revocation
/// changes (migration 0005): the replica reloads its revoked set.
pub(super) const REVOCATIONS_CHANNEL: &str = "enos_certificates";

/// The `application_name` of the LISTEN connection (what an operator, or
/// a test cutting it, finds in `pg_stat_activity`).
pub const LISTEN_APPLICATION_NAME: &str = "enos-signer-listen";

/// How often the feed proves itself: it sends a `NOTIFY` of its own on
/// its channel (a ping with a nonce) and must receive it back.
pub const FEED_PING_EVERY: Duration = Duration::from_millis(500);
/// How long a ping may take to come back before the feed counts as down.
/// A feed that stopped delivering (a pooler that dropped the `LISTEN`, a
/// connection dead without a word) is noticed within
/// [`FEED_PING_EVERY`] + [`FEED_PING_TIMEOUT`] of its last delivery.
pub const FEED_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection backoff, doubled per failure up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The payload prefix of the feed's pings. A ping has no `/` (a device's
/// payload is `pk/dk`) and is not `*`, so no replica takes it for a
/// change; an older replica (before pings) takes it for `*` and empties
/// its cache, which is safe.
const PING_PREFIX: &str = "ping:";

/// Runs the feed for ever: connect, LISTEN, prove, apply notifications; on
/// any failure bypass the cache and reconnect.
pub(super) async fn run(mut config: tokio_postgres::Config, tls: Tls, shared: Arc<Shared>) {
    config.application_name(LISTEN_APPLICATION_NAME);
    // This feed's pings (other replicas' pings share the channel).
    let feed_id = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let mut pings = 0_u64;
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let ended = session(&config, &tls, &shared, feed_id, &mut pings).await;
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
///
/// The cache is used only once the feed has proven that it delivers: its
/// first ping came back. From then on a ping goes out every
/// [`FEED_PING_EVERY`] and must be back within [`FEED_PING_TIMEOUT`]; a
/// `SELECT 1` would not do, since a connection may answer queries and
/// still receive no notification (a pooler in transaction mode drops
/// `LISTEN`).
async fn session(
    config: &tokio_postgres::Config,
    tls: &Tls,
    shared: &Shared,
    feed_id: u64,
    pings: &mut u64,
) -> Result<()> {
    let mut session = Session::open(config, tls).await?;
    session
        .client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {REVOCATIONS_CHANNEL}"))
        .await
        .map_err(db)?;
    let mut live = false;
    // A revocation was reported (or the feed just came up): reload the
    // revoked set once the messages already here are handled.
    let mut reload_due = false;
    // The ping awaited and when it is due back; the next ping's time.
    let mut awaited: Option<(String, Instant)> = None;
    let mut next_ping = Instant::now();
    loop {
        if reload_due && session.messages.is_empty() {
            reload_due = false;
            if super::certificates::reload_revoked(&session.client, &shared.revoked).await? {
                tracing::debug!("registry: revoked set reloaded");
            } else {
                // A revocation came meanwhile (reported, or committed
                // here with its notification maybe already handled):
                // read again, or the set would stay untrusted for good.
                reload_due = true;
            }
        }
        let wake = awaited.as_ref().map_or(next_ping, |(_, due)| *due);
        tokio::select! {
            () = shared.reload_revoked.notified() => {
                // Before the feed is up its own first reload comes.
                reload_due |= live;
            }
            message = session.messages.recv() => match message {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == REVOCATIONS_CHANNEL => {
                    if live {
                        shared.revoked.stale();
                        reload_due = true;
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let payload = n.payload();
                    if !payload.starts_with(PING_PREFIX) {
                        shared.changed(payload)?;
                    } else if awaited.as_ref().is_some_and(|(p, _)| p == payload) {
                        awaited = None;
                        if !live {
                            // From here on every commit is notified: what
                            // was cached before may be stale, so start
                            // empty.
                            shared.feed_up()?;
                            live = true;
                            reload_due = true;
                            tracing::info!("registry change feed up");
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(db(e)),
                None => return Err(RegistryError::Store("change feed connection closed".into())),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                if awaited.is_some() {
                    return Err(RegistryError::Store(format!(
                        "change feed did not receive its own NOTIFY within {FEED_PING_TIMEOUT:?}"
                    )));
                }
                *pings += 1;
                let payload = format!("{PING_PREFIX}{feed_id:016x}:{pings}");
                let sent = Instant::now();
                awaited = Some((payload.clone(), sent + FEED_PING_TIMEOUT));
                next_ping = sent + FEED_PING_EVERY;
                let notify = format!("NOTIFY {CHANNEL}, '{payload}'");
                match tokio::time::timeout(FEED_PING_TIMEOUT, session.client.simple_query(&notify)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(db(e)),
                    Err(_) => return Err(RegistryError::Store("change feed ping timed out".into())),
                }
            }
        }
    }
}

impl Shared {
    /// The feed has proven it delivers: start from an empty cache and use
    /// it.
    fn feed_up(&self) -> Result<()> {
        self.cache.clear()?;
        // Revocations may have been missed: untrusted until reloaded.
        self.revoked.stale();
        self.feed_live.store(true, Ordering::Release);
        Ok(())
    }

    /// The feed is gone: stop using the cache, and empty it (a read that
    /// started before cannot fill it: clearing advances the generation).
    fn feed_down(&self) {
        self.feed_live.store(false, Ordering::Release);
        self.revoked.stale();
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
