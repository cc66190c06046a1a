//! [`AgentStatus`]: what an operator (and a test) sees of the agent, and
//! the status file that publishes it.
//!
//! The status lives in a `tokio::sync::watch` channel: the connect loop,
//! the bridge and the sub-device logins update it; the status-file writer
//! and the tests read it. The file is JSON, replaced atomically (write to a
//! temporary file, then rename), so a reader never sees half of it.

use std::{path::PathBuf, time::Duration};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;

/// The state of the EnOS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Not yet tried.
    Starting,
    /// Getting a credential or waiting for CONNACK.
    Connecting,
    /// CONNACK received; the session is up.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    /// Shut down.
    Stopped,
}

/// How a sub-device's login went on the current connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SubDeviceState {
    /// Not logged in yet on this connection.
    Pending,
    /// EnOS answered 200.
    Online,
    /// Gave up on this connection: the signer or EnOS said no.
    Refused {
        /// The code and message, e.g. `signer: PermissionDenied …` or `740 …`.
        reason: String,
    },
    /// Retries ran out on this connection.
    Failed {
        /// The last failure.
        reason: String,
    },
}

/// Where the device is in its dynamic activation (`securemode=3`); absent
/// for a device that logs in with its own secret. Never carries the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationState {
    /// Connected with the product's secret, waiting for EnOS's push.
    AwaitingPush,
    /// Received the pushed secret; handing it to the signer (retrying
    /// while the signer is unreachable).
    HandingOver,
    /// The signer sealed it; EnOS was told (200); reconnecting with the
    /// device's own secret.
    Activated,
}

/// Where the renewal of the device certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewalState {
    /// Waiting for `next_renewal_ms` (after a failure: the retry).
    Scheduled,
    /// Asking the signer, proving or promoting the new pair.
    Renewing,
    /// `[renewal] enabled = false`: the certificate is only reported.
    Disabled,
    /// The signer is not a CA (or too old to renew): retried rarely.
    NotOffered,
    /// The certificate expired: it cannot renew, only `enos-agent enroll`
    /// with a new token helps (`last_renewal_error` gives the command).
    Expired,
}

/// The device certificate (`[signer]` `cert`) and its renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateStatus {
    /// Its `notAfter`, ms since the epoch.
    pub not_after_ms: u64,
    /// When it will be renewed (or the renewal retried), ms since the
    /// epoch; `None` when disabled or expired.
    pub next_renewal_ms: Option<u64>,
    /// Where the renewal stands.
    pub renewal: RenewalState,
    /// Renewals promoted since start.
    pub renewals: u64,
    /// Why the last renewal attempt failed (cleared by a success);
    /// secret-free.
    pub last_renewal_error: Option<String>,
}

/// The EnOS device certificate (`[enos.tls]`) when the signer brokers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnosCertificateStatus {
    /// Its EnOS serial (`certSN`): what `enos-signer enos-cert list`
    /// shows, to tell which certificate a gateway holds.
    pub serial: String,
    /// Its `notAfter`, ms since the epoch.
    pub not_after_ms: u64,
    /// When it will be renewed (or the renewal retried), ms since the
    /// epoch; `None` when renewal is disabled.
    pub next_renewal_ms: Option<u64>,
    /// Renewals promoted since start.
    pub renewals: u64,
    /// Why the last renewal attempt failed (cleared by a success).
    pub last_error: Option<String>,
}

/// One sub-device's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubDeviceStatus {
    /// Its product key.
    pub product_key: String,
    /// Its device key.
    pub device_key: String,
    /// Its login state.
    #[serde(flatten)]
    pub state: SubDeviceState,
    /// The EnOS connection (1 for the first, counted like `connects`) the
    /// state belongs to: logins start over on every connection.
    pub connection: u64,
}

/// Everything the agent reports.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// The EnOS connection state.
    pub state: ConnectionState,
    /// When `state` last changed, ms since the epoch.
    pub since_ms: u64,
    /// The broker URL.
    pub broker: String,
    /// Successful connects (CONNACKs) since start.
    pub connects: u64,
    /// Connect attempts refused by the broker since start.
    pub refusals: u64,
    /// Network failures (connect or established session) since start.
    pub network_failures: u64,
    /// Credentials fetched from the signer since start.
    pub credentials_issued: u64,
    /// Connects that reused a cached credential because the signer was down.
    pub credentials_reused: u64,
    /// Expiry of the credential in use, ms since the epoch.
    pub credential_expires_at_ms: Option<u64>,
    /// The last failure, secret-free.
    pub last_error: Option<String>,
    /// The last backoff delay, ms.
    pub last_backoff_ms: Option<u64>,
    /// The ceiling that delay was drawn under, ms.
    pub last_backoff_ceiling_ms: Option<u64>,
    /// Upstream messages waiting.
    pub upstream_queued: usize,
    /// Upstream messages dropped because the queue was full.
    pub upstream_dropped: u64,
    /// Upstream messages handed to the EnOS session.
    pub upstream_sent: u64,
    /// Downstream messages handed to the local broker.
    pub downstream_delivered: u64,
    /// Downstream messages dropped because the local queue was full.
    pub downstream_dropped: u64,
    /// Whether the bridge's local broker connection is up and its
    /// subscriptions acknowledged (`None`: no bridge).
    pub local_broker_connected: Option<bool>,
    /// The sub-devices, in config order.
    pub sub_devices: Vec<SubDeviceStatus>,
    /// The dynamic activation, while one is under way (and `activated`
    /// once it completed); `None` for a device with its own secret.
    pub activation: Option<ActivationState>,
    /// The device certificate and its renewal; `None` until it was read.
    pub certificate: Option<CertificateStatus>,
    /// The EnOS device certificate brokered by the signer; `None` for
    /// one from files (or until it was read).
    pub enos_certificate: Option<EnosCertificateStatus>,
    /// The disk spool's counters; `None` without `[spool]`.
    pub spool: Option<SpoolStatus>,
    /// Whether an EnOS flow-control notice (`traffic/control`) paces
    /// upstream now.
    pub traffic_limited: bool,
    /// Flow-control notices received since start.
    pub traffic_notices: u64,
}

/// The disk spool, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolStatus {
    /// The spool file, so the operator knows what to look at.
    pub path: String,
    /// Messages waiting for EnOS's acknowledgement.
    pub messages: u64,
    /// Their bytes in the file: how close `max_bytes` is.
    pub bytes: u64,
    /// Messages evicted by `max_bytes` / `max_age` over the spool's life
    /// (kept in the file, so a restart does not reset it): data lost,
    /// counted so that nobody has to guess.
    pub evicted: u64,
    /// Messages spooled since start.
    pub appended: u64,
    /// Messages EnOS acknowledged since start.
    pub delivered: u64,
    /// Messages sent again after a connection dropped before their
    /// acknowledgement: the upper bound on duplicates EnOS saw.
    pub resent: u64,
    /// Late measurepoints sent through `thing.measurepoint.resume` or
    /// `thing.measurepoint.resume.batch` since start.
    pub resumed: u64,
    /// `resume` / `resume.batch` replies with a code other than 200 (each
    /// logged; a batch counts once).
    pub resume_refused: u64,
}

impl AgentStatus {
    /// The status before anything happened.
    pub fn new(broker: String) -> Self {
        AgentStatus {
            state: ConnectionState::Starting,
            since_ms: enos_domain::now_ms(),
            broker,
            connects: 0,
            refusals: 0,
            network_failures: 0,
            credentials_issued: 0,
            credentials_reused: 0,
            credential_expires_at_ms: None,
            last_error: None,
            last_backoff_ms: None,
            last_backoff_ceiling_ms: None,
            upstream_queued: 0,
            upstream_dropped: 0,
            upstream_sent: 0,
            downstream_delivered: 0,
            downstream_dropped: 0,
            local_broker_connected: None,
            sub_devices: Vec::new(),
            activation: None,
            certificate: None,
            enos_certificate: None,
            spool: None,
            traffic_limited: false,
            traffic_notices: 0,
        }
    }

    /// Sets `state` and its timestamp.
    pub fn set_state(&mut self, state: ConnectionState) {
        if self.state != state {
            self.state = state;
            self.since_ms = enos_domain::now_ms();
        }
    }
}

/// Writes the status to `path` whenever it changes, at most every
/// `min_interval`, until `shutdown`; then once more (the final state).
pub async fn write_status_file(
    path: PathBuf,
    mut status: watch::Receiver<AgentStatus>,
    min_interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    loop {
        let snapshot = status.borrow_and_update().clone();
        write_atomically(&path, &snapshot).await?;
        tokio::select! {
            changed = status.changed() => if changed.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(min_interval) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    let last = status.borrow().clone();
    write_atomically(&path, &last).await
}

async fn write_atomically(path: &std::path::Path, status: &AgentStatus) -> Result<(), AgentError> {
    let err = |source| AgentError::StatusFile {
        path: path.to_owned(),
        cause: source,
    };
    let mut json = serde_json::to_vec_pretty(status).map_err(|e| err(e.into()))?;
    json.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, &json).await.map_err(err)?;
    tokio::fs::rename(&tmp, path).await.map_err(err)
}
