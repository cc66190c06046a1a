//! [`Agent`]: wires the session, the bridge, the sub-device logins and the
//! status file together and runs them until shutdown.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    bridge,
    config::Config,
    error::AgentError,
    renewal, session,
    shared::Shared,
    signer::SignerClient,
    spool::Spool,
    status::{self, AgentStatus},
    sub_device,
};

/// How often the status file may be rewritten.
const STATUS_FILE_INTERVAL: Duration = Duration::from_millis(200);

/// A configured agent, ready to run.
pub struct Agent<S> {
    /// The validated config.
    config: Config,
    /// Where credentials come from.
    signer: S,
    /// State shared by the tasks.
    shared: Arc<Shared>,
    /// Why the spool could not be opened (the file cannot be created or
    /// written at all; damaged content never stops the start): `run`
    /// returns it.
    spool_error: Option<AgentError>,
}

impl<S> std::fmt::Debug for Agent<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("broker", &self.config.enos.broker)
            .finish_non_exhaustive()
    }
}

impl<S: SignerClient> Agent<S> {
    /// Prepares an agent; nothing connects until [`Agent::run`].
    pub fn new(config: Config, signer: S) -> Self {
        let (spool, spool_error) = match config.spool.as_ref().map(Spool::open) {
            None => (None, None),
            Some(Ok((spool, report))) => {
                tracing::info!(
                    spool = %spool.path().display(),
                    waiting = report.recovered,
                    fsync = %spool.policy(),
                    "spool open"
                );
                (Some(spool), None)
            }
            Some(Err(e)) => (None, Some(e)),
        };
        let shared = Arc::new(Shared::new(&config, spool));
        shared.refresh_counters();
        Agent {
            config,
            signer,
            shared,
            spool_error,
        }
    }

    /// Watches the status (the tests and the binary's notifier use it).
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.shared.status.subscribe()
    }

    /// Runs until `shutdown` is cancelled, then disconnects cleanly from
    /// EnOS and the local broker and writes the final status.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        if let Some(e) = self.spool_error {
            return Err(e);
        }
        // An EnOS certificate brokered by the signer is applied for
        // before the first connect, which needs it.
        if !crate::enos_cert::ensure(&self.config, &self.signer, &shutdown).await? {
            return Ok(());
        }
        let (enos_client, enos_loop) = session::enos_client(&self.config)?;
        let local = match &self.config.bridge {
            Some(b) => Some(bridge::local_client(b)?),
            None => None,
        };
        let shared = &*self.shared;
        let config = &self.config;
        let signer = &self.signer;

        let status_stop = CancellationToken::new();
        let status_file = async {
            let Some(path) = &config.status.file else {
                return Ok(());
            };
            let written = status::write_status_file(
                path.clone(),
                shared.status.subscribe(),
                STATUS_FILE_INTERVAL,
                status_stop.clone(),
            )
            .await;
            match written {
                // The default place may not be writable (a read-only
                // certificate directory): that costs the file, not the
                // connection.
                Err(e) if config.status.best_effort => {
                    tracing::warn!(error = %e, "no status file; set [status] file to a writable path");
                    Ok(())
                }
                other => other,
            }
        };
        let work = async {
            let session = session::run(
                config,
                signer,
                enos_client.clone(),
                enos_loop,
                shared,
                shutdown.clone(),
            );
            let logins = sub_device::run(config, signer, enos_client, shared, shutdown.clone());
            let bridge = async {
                if let (Some(b), Some((client, eventloop))) = (&config.bridge, local) {
                    bridge::run(
                        b,
                        &config.backoff,
                        client,
                        eventloop,
                        shared,
                        shutdown.clone(),
                    )
                    .await;
                }
            };
            let renewal = renewal::run(config, signer, shared, shutdown.clone());
            let enos_renewal = crate::enos_cert::run(config, signer, shared, shutdown.clone());
            let spool_tick = spool_tick(shared, shutdown.clone());
            tokio::join!(session, logins, bridge, renewal, enos_renewal, spool_tick);
            if let Some(spool) = &shared.spool {
                if let Err(e) = spool.sync() {
                    tracing::error!(error = %e, "could not sync the spool at shutdown");
                }
            }
            shared.refresh_counters();
            status_stop.cancel();
        };
        let (status_result, ()) = tokio::join!(status_file, work);
        status_result
    }
}

/// The spool's clock: syncs every `fsync_interval` (the batched policy's
/// bound; under `always` it writes the moved head), and evicts what
/// `max_age` no longer allows, until `shutdown`.
async fn spool_tick(shared: &Shared, shutdown: CancellationToken) {
    let Some(spool) = &shared.spool else { return };
    let mut tick = tokio::time::interval(spool.fsync_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let evicted = spool.evict_expired(enos_domain::now_ms());
        if evicted > 0 {
            shared.report_evictions(evicted);
            shared.refresh_counters();
        }
        match spool.sync() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot sync the spool; retrying every tick");
            }
            Err(_) => {}
        }
    }
}
