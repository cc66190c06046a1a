//! [`PostgresAuditSink`]: audit records as rows of the append-only
//! `audit_records` table (`[audit.sink] kind = "postgres"`).
//!
//! An issuance must not answer before its record is committed, so the
//! sink is a writer thread with a connection of its own: a call queues its
//! record and its task awaits the commit (the async worker is free
//! meanwhile to serve other calls). Records queued while a commit runs go
//! into the next one (group commit), so a busy signer pays one round trip
//! per batch, not per issuance. A failed or unconfirmed write is an error:
//! with `audit.fail_closed` the issuance is refused. Records of outcomes
//! already decided are queued without waiting
//! ([`crate::audit::Audit::record_detached`]); beyond the queue at most
//! [`OVERFLOW`] of them wait for room, the rest are dropped, and every loss
//! is counted and logged at most once every
//! [`crate::audit::LOSS_LOG_INTERVAL`].

use std::{
    sync::{
        Arc,
        mpsc::{SyncSender, sync_channel},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{AuditRecord, Loss};
use crate::{
    config::PostgresAuditSinkConfig,
    error::{Result, SignerError},
};
use enos_registry::postgres::{Connect, Session, db, migrations};

/// Records waiting for the writer at most (then callers wait to queue).
pub const QUEUE: usize = 4096;
/// Records of decided outcomes that wait, beyond a full queue, for room in
/// it at most, each in a task of its own; more are dropped and counted.
/// Bounds the memory and tasks an outage of the audit database (or a
/// locked table) can pile up, whatever the rate of refusals.
pub const OVERFLOW: usize = 1024;
/// Records per INSERT at most.
pub const BATCH: usize = 512;
/// How long a caller waits for its record's commit.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// A record on its way to the table.
struct Pending {
    /// The record's columns and its JSON form.
    row: Row,
    /// Told the outcome of the commit that held the record; `None`: nobody
    /// waits, the writer logs a failure itself.
    done: Option<oneshot::Sender<std::result::Result<(), String>>>,
}

/// The columns of one `audit_records` row.
struct Row {
    /// When the record was made.
    time_ms: i64,
    /// What happened.
    event: String,
    /// Who asked.
    identity: String,
    /// Which device, if any.
    device: Option<String>,
    /// `ok` or the refusal's code.
    outcome: String,
    /// The whole record, as the file sink's line.
    json: String,
}

/// The sink: a queue to the writer thread.
pub(super) struct PostgresAuditSink {
    /// Closed when the sink is dropped, which ends the writer thread.
    queue: mpsc::Sender<Pending>,
    /// Counts (and logs) records of decided outcomes that were lost, and
    /// caps those waiting for room in the queue.
    loss: Arc<Loss>,
}

impl PostgresAuditSink {
    /// Starts the writer; fails if the database cannot be reached or lacks
    /// this binary's schema.
    pub(super) fn open(config: &PostgresAuditSinkConfig, loss: Arc<Loss>) -> Result<Self> {
        let connect = config.connection().connect()?;
        let target = config.connection().display_target();
        let (queue, pending) = mpsc::channel(QUEUE);
        let (ready, started) = sync_channel(1);
        let writer_loss = Arc::clone(&loss);
        std::thread::Builder::new()
            .name("audit-postgres".into())
            .spawn(move || writer(connect, pending, ready, writer_loss))
            .map_err(|e| SignerError::Audit(format!("starting the audit writer: {e}")))?;
        started
            .recv()
            .map_err(|_| SignerError::Audit("the audit writer stopped".into()))?
            .map_err(|e| SignerError::Audit(format!("{target}: {e}")))?;
        Ok(PostgresAuditSink { queue, loss })
    }

    /// Writes `record` (serialised as `json`) and waits for its commit.
    pub(super) async fn write(&self, record: &AuditRecord, json: String) -> Result<()> {
        self.write_all(vec![(record, json)]).await
    }

    /// Writes `records` and waits for their commit: queued together, they
    /// share one (or few) commits.
    pub(super) async fn write_all(&self, records: Vec<(&AuditRecord, String)>) -> Result<()> {
        let waiting = async {
            let mut confirmations = Vec::with_capacity(records.len());
            for (record, json) in records {
                let (done, confirmed) = oneshot::channel();
                self.queue
                    .send(Pending {
                        row: Row::of(record, json),
                        done: Some(done),
                    })
                    .await
                    .map_err(|_| SignerError::Audit("the audit writer stopped".into()))?;
                confirmations.push(confirmed);
            }
            for confirmed in confirmations {
                match confirmed.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(SignerError::Audit(format!("writing the audit table: {e}")));
                    }
                    Err(_) => return Err(SignerError::Audit("the audit writer stopped".into())),
                }
            }
            Ok(())
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, waiting)
            .await
            .unwrap_or_else(|_| {
                Err(SignerError::Audit(format!(
                    "the audit table did not confirm a record within {CONFIRM_TIMEOUT:?}"
                )))
            })
    }

    /// Queues `record` without waiting. A full queue does not lose it at
    /// once: it waits for room in a task of its own (or, outside a
    /// runtime, here), up to [`OVERFLOW`] such tasks; beyond them it is
    /// dropped and counted.
    pub(super) fn write_detached(&self, record: &AuditRecord, json: String) {
        let pending = Pending {
            row: Row::of(record, json),
            done: None,
        };
        match self.queue.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(pending)) => {
                if !self.loss.wait_start(OVERFLOW) {
                    self.loss.dropped(
                        1,
                        "the audit queue and its overflow are full (the audit database is slow or down)",
                    );
                    return;
                }
                let queue = self.queue.clone();
                let loss = Arc::clone(&self.loss);
                let wait = async move {
                    let sent = queue.send(pending).await;
                    loss.wait_end();
                    if sent.is_err() {
                        loss.dropped(1, "the audit writer stopped");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn(wait)),
                    Err(_) => futures::executor::block_on(wait),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.loss.dropped(1, "the audit writer stopped");
            }
        }
    }
}

impl Row {
    fn of(record: &AuditRecord, json: String) -> Row {
        Row {
            time_ms: i64::try_from(record.time_ms).unwrap_or(i64::MAX),
            event: record.event.to_owned(),
            identity: record.identity.clone(),
            device: record.device.clone(),
            outcome: record.outcome.clone(),
            json,
        }
    }
}

/// The writer thread: one connection, batches of queued records.
fn writer(
    connect: Connect,
    mut pending: mpsc::Receiver<Pending>,
    ready: SyncSender<std::result::Result<(), String>>,
    loss: Arc<Loss>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(format!("runtime: {e}")));
            return;
        }
    };
    let first = runtime.block_on(async {
        let session = Session::open(&connect.config, &connect.tls).await?;
        migrations::check(&session.client).await?;
        Ok::<_, SignerError>(session)
    });
    let mut session = match first {
        Ok(session) => {
            let _ = ready.send(Ok(()));
            Some(session)
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    // Ends when the sink (every sender) is gone.
    while let Some(first) = pending.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let rows: Vec<&Row> = batch.iter().map(|p| &p.row).collect();
        // One retry on a fresh connection: the old one may have been cut
        // while idle. (A commit whose answer was lost may then be written
        // twice: a duplicate record, never a missing one.)
        let mut outcome: Result<()> = Ok(());
        for _ in 0..2 {
            outcome = runtime.block_on(async {
                if session.is_none() {
                    session = Some(Session::open(&connect.config, &connect.tls).await?);
                }
                match &session {
                    Some(s) => insert(&s.client, &rows).await,
                    None => Ok(()),
                }
            });
            match &outcome {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "audit table write failed; reconnecting");
                    session = None;
                }
            }
        }
        let outcome = outcome.map_err(|e| e.to_string());
        let mut detached = 0;
        for p in batch {
            match p.done {
                Some(done) => drop(done.send(outcome.clone())),
                None => detached += 1,
            }
        }
        match &outcome {
            // Nobody waits for these: counted, logged at most every 10 s.
            Err(e) if detached > 0 => loss.failed(detached, e),
            // Losses left out of the last line are reported once the
            // interval has passed, even if none follow.
            _ => {
                loss.log("losses left out of the last line");
            }
        }
    }
}

async fn insert(client: &tokio_postgres::Client, rows: &[&Row]) -> Result<()> {
    let time: Vec<i64> = rows.iter().map(|r| r.time_ms).collect();
    let event: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    let identity: Vec<&str> = rows.iter().map(|r| r.identity.as_str()).collect();
    let device: Vec<Option<&str>> = rows.iter().map(|r| r.device.as_deref()).collect();
    let outcome: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    let json: Vec<&str> = rows.iter().map(|r| r.json.as_str()).collect();
    client
        .execute(
            "INSERT INTO audit_records (time_ms, event, identity, device, outcome, record) \
             SELECT t, e, i, d, o, j::jsonb \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
               AS u(t, e, i, d, o, j)",
            &[&time, &event, &identity, &device, &outcome, &json],
        )
        .await
        .map_err(db)?;
    Ok(())
}
