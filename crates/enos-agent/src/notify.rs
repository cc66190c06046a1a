//! systemd integration: READY, STATUS, WATCHDOG and STOPPING through
//! `sd_notify`. Without `NOTIFY_SOCKET` (not under systemd) every call is a
//! no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::status::{AgentStatus, ConnectionState};

/// Tells systemd the agent is up.
pub fn ready() {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}

/// Tells systemd the agent is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// The watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval and mirrors the connection state
/// into systemd's STATUS, until `shutdown`. The pings come from the same
/// runtime as the connect loop, so a wedged runtime stops them.
pub async fn run(mut status: watch::Receiver<AgentStatus>, shutdown: CancellationToken) {
    let watchdog = watchdog_interval();
    let mut tick = tokio::time::interval(
        watchdog
            .map(|w| w / 2)
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(10)),
    );
    let mut last_state = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if watchdog.is_some() {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = status.borrow_and_update().state;
                if last_state != Some(state) {
                    last_state = Some(state);
                    let text = match state {
                        ConnectionState::Starting => "starting",
                        ConnectionState::Connecting => "connecting to EnOS",
                        ConnectionState::Connected => "connected to EnOS",
                        ConnectionState::Backoff => "waiting to reconnect",
                        ConnectionState::Stopped => "stopped",
                    };
                    let _ = sd_notify::notify(false, &[NotifyState::Status(text)]);
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
}
