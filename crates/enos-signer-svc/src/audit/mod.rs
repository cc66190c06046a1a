//! [`Audit`]: one structured record per issuance and per admin change.
//!
//! A record names who asked, for which device, what was issued and the
//! outcome. Issued passwords are never written; their HMAC-SHA256 under
//! the audit key is (as Vault hashes secrets in its audit log), so that a
//! leaked password can be traced to its issuance by whoever holds the key.

pub mod postgres;

use std::{
    fs::File,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use enos_signer_proto::identity::PeerIdentity;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::{
    config::{AuditConfig, AuditSinkConfig},
    error::{Result, SignerError},
    key_file::{self, Key256},
};

/// The log target of audit records when the sink is `log`.
pub const AUDIT_TARGET: &str = "enos_signer::audit";
// (Kept for readers of older logs: the `log` sink now writes its own lines,
// `{"audit":{…}}`, and no longer emits events on this target.)

/// One audit record, serialised as one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// When the record was made (ms since the epoch).
    pub time_ms: u64,
    /// What happened: `issue_mqtt_credential`, `put_device`, ….
    pub event: &'static str,
    /// The caller (`device pk/dk`, `admin name`), or `unauthenticated`.
    pub identity: String,
    /// The device concerned (`pk/dk`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The signed clientId of an issuance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The sign method of an issuance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_method: Option<&'static str>,
    /// The secure mode of an issuance: 2 (the device's secret) or 3 (its
    /// product's: an activation credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_mode: Option<u8>,
    /// The signed timestamp of an issuance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<u64>,
    /// When the issued credential expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// `ok`, or the gRPC code of the refusal (`refused_entries`: the one
    /// record of a batch call's refused entries, listed in `refused`).
    pub outcome: String,
    /// HMAC-SHA256 (hex) of the issued password under the audit key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_hmac: Option<String>,
    /// The entries of a batch call that were refused, all in this one
    /// record: a batch costs one rate-limit token, so it must cost one
    /// record, not one per entry (ids and reasons only, never a secret).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedEntry>,
    /// What an import changed (its `import_summary` record): the trail
    /// says how many secrets, bindings and flags a file changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportCounts>,
    /// The certificate concerned (lower-case hex serial): issued by an
    /// enrollment or a renewal (with `expires_at_ms` its notAfter), the
    /// one renewed, or one revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Free text the change carried: a revocation's reason, the serial a
    /// renewal replaces, the serials a device's revocation covered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One refused entry of a batch call, in its call's record.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedEntry {
    /// The entry as asked (`pk/dk`, cleaned: printable ASCII, 64
    /// characters a key at most), so that an investigator sees what was
    /// tried.
    pub device: String,
    /// The refusal's gRPC code, as in `outcome`.
    pub outcome: &'static str,
    /// Why, as the caller was told (never a secret).
    pub reason: String,
}

/// What an import does to the registry, row by row: the response and the
/// import's audit record carry it. A device new to the registry counts
/// only as new; an existing one as unchanged, or under each change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportCounts {
    /// Devices not in the registry before.
    pub new_devices: u32,
    /// Existing devices the import leaves as they are (not written).
    pub unchanged_devices: u32,
    /// Existing devices given another secret (`replace_secrets`), or a
    /// secret where they awaited activation.
    pub changed_secrets: u32,
    /// Existing devices bound to a gateway they were not bound to.
    pub changed_bindings: u32,
    /// Existing devices whose enabled flag the file changes.
    pub changed_enabled: u32,
}

/// How an identity is written in audit records.
pub fn identity_name(identity: Option<&PeerIdentity>) -> String {
    identity.map_or_else(|| "unauthenticated".to_owned(), PeerIdentity::to_string)
}

/// The device an identity is, `productKey/deviceKey`, for a record's
/// device field; `None` for an admin.
pub fn device_of(identity: &PeerIdentity) -> Option<String> {
    match identity {
        PeerIdentity::Device {
            product_key,
            device_key,
        } => Some(format!("{product_key}/{device_key}")),
        PeerIdentity::Admin { .. } => None,
    }
}

impl AuditRecord {
    /// A record of `event` by `identity` about `device` (if any), made
    /// now; the issuance fields are left for an issuance to fill in.
    pub fn new(
        event: &'static str,
        identity: Option<&PeerIdentity>,
        device: Option<String>,
        outcome: impl Into<String>,
    ) -> Self {
        AuditRecord {
            time_ms: enos_domain::now_ms(),
            event,
            identity: identity_name(identity),
            device,
            client_id: None,
            sign_method: None,
            secure_mode: None,
            timestamp_ms: None,
            expires_at_ms: None,
            outcome: outcome.into(),
            password_hmac: None,
            refused: Vec::new(),
            import: None,
            serial: None,
            detail: None,
        }
    }
}

/// Where records go.
enum Sink {
    /// JSON lines on standard error, written directly, not through
    /// `tracing`: no log filter (`RUST_LOG=warn`) can switch the trail
    /// off, and a failed write is reported, so fail-closed holds.
    Log(std::sync::Mutex<Box<dyn Write + Send>>),
    /// Appended JSON lines, written in groups ([`FileSink`]); a failed
    /// write is reported to every record it held.
    File(FileSink),
    /// Rows of the append-only `audit_records` table; a write returns
    /// once committed.
    Postgres(postgres::PostgresAuditSink),
}

/// The audit trail.
pub struct Audit {
    /// Keys the password HMAC; wiped on drop.
    key: Key256,
    /// Where records go.
    sink: Sink,
    /// Whether a failed write makes issuance fail.
    fail_closed: bool,
    /// Records of decided outcomes that were lost: counted for
    /// [`Audit::losses`], logged at most once every
    /// [`LOSS_LOG_INTERVAL`] (an outage must not flood the log).
    loss: Arc<Loss>,
}

/// How often the loss of audit records reaches the log at most.
pub const LOSS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Records of outcomes already decided ([`Audit::record_detached`]) that
/// did not reach the trail, as counted since the signer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditLosses {
    /// Given up without a write: the `postgres` sink's queue and its
    /// overflow were full (an outage of the audit database).
    pub dropped: u64,
    /// Written, and the write failed (the database refused or was gone,
    /// the file or stderr refused).
    pub failed: u64,
    /// Records waiting now, beyond the queue, each in a task of its own
    /// for room in it: at most [`postgres::OVERFLOW`].
    pub waiting: usize,
}

/// The counters behind [`AuditLosses`], shared with the `postgres` writer.
#[derive(Debug, Default)]
pub(crate) struct Loss {
    /// See [`AuditLosses::dropped`].
    dropped: AtomicU64,
    /// See [`AuditLosses::failed`].
    failed: AtomicU64,
    /// See [`AuditLosses::waiting`]; also what caps the waiting tasks.
    waiting: AtomicUsize,
    /// When the loss was last logged and the totals it reported, so that
    /// the next line gives the count since.
    logged: Mutex<Option<(Instant, u64, u64)>>,
}

impl Loss {
    /// Counts `n` records given up without a write.
    pub(crate) fn dropped(&self, n: u64, why: &str) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.log(why);
    }

    /// Counts `n` records whose write failed with `error`.
    pub(crate) fn failed(&self, n: u64, error: &str) {
        self.failed.fetch_add(n, Ordering::Relaxed);
        self.log(error);
    }

    /// Takes one of the [`postgres::OVERFLOW`] places for a record waiting
    /// for room in the queue; false when all are taken.
    pub(crate) fn wait_start(&self, cap: usize) -> bool {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place taken by [`Loss::wait_start`] back.
    pub(crate) fn wait_end(&self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// The counts now.
    fn snapshot(&self) -> AuditLosses {
        AuditLosses {
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Logs the losses not logged yet, unless a line went out less than
    /// [`LOSS_LOG_INTERVAL`] ago (then a later call reports them); whether
    /// it wrote a line.
    pub(crate) fn log(&self, reason: &str) -> bool {
        self.log_at(reason, Instant::now())
    }

    fn log_at(&self, reason: &str, now: Instant) -> bool {
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (dropped, failed) = (
            self.dropped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        let (since_dropped, since_failed) = match *logged {
            Some((at, _, _)) if now.duration_since(at) < LOSS_LOG_INTERVAL => return false,
            Some((_, d, f)) => (dropped - d, failed - f),
            None => (dropped, failed),
        };
        if since_dropped == 0 && since_failed == 0 {
            return false;
        }
        tracing::error!(
            dropped = since_dropped,
            failed = since_failed,
            dropped_total = dropped,
            failed_total = failed,
            reason,
            "audit records lost (logged at most once every {}s)",
            LOSS_LOG_INTERVAL.as_secs()
        );
        *logged = Some((now, dropped, failed));
        true
    }
}

impl Audit {
    /// A trail writing JSON lines to `writer` (the `log` sink's form), for
    /// tests of the trail itself.
    #[cfg(test)]
    fn to_writer(writer: Box<dyn Write + Send>, fail_closed: bool) -> Self {
        Audit {
            key: Key256::default(),
            sink: Sink::Log(std::sync::Mutex::new(writer)),
            fail_closed,
            loss: Arc::default(),
        }
    }

    /// Opens the sink and loads the audit key.
    pub fn open(config: &AuditConfig) -> Result<Self> {
        let key = key_file::load(&config.key_file)?;
        let loss = Arc::<Loss>::default();
        let sink = match &config.sink {
            AuditSinkConfig::Log => Sink::Log(std::sync::Mutex::new(Box::new(std::io::stderr()))),
            AuditSinkConfig::File { path } => Sink::File(FileSink::new(open_append(path)?)),
            AuditSinkConfig::Postgres(pg) => {
                Sink::Postgres(postgres::PostgresAuditSink::open(pg, Arc::clone(&loss))?)
            }
        };
        Ok(Audit {
            key,
            sink,
            fail_closed: config.fail_closed,
            loss,
        })
    }

    /// Records of decided outcomes lost so far (the metrics exporter reads
    /// these: a trail with holes must be visible without reading logs).
    pub fn losses(&self) -> AuditLosses {
        self.loss.snapshot()
    }

    /// Reads [`Audit::losses`] from anywhere, for as long as it is kept
    /// (the metrics read it on each scrape).
    pub fn losses_reader(&self) -> impl Fn() -> AuditLosses + Send + Sync + 'static {
        let loss = Arc::clone(&self.loss);
        move || loss.snapshot()
    }

    /// HMAC-SHA256 of `password` under the audit key, lower-case hex.
    pub fn password_hmac(&self, password: &str) -> String {
        password_hmac(&self.key, password)
    }

    /// Writes `record` and returns once it is written (committed, for the
    /// `postgres` sink: the caller's task waits, the async workers do
    /// not). A failed write is an error only when the trail is
    /// fail-closed; otherwise it is logged and the caller goes on.
    pub async fn record(&self, record: &AuditRecord) -> Result<()> {
        let written = match &self.sink {
            Sink::Log(writer) => serialise_line(record).and_then(|line| write_log(writer, line)),
            Sink::File(file) => match serialise_line(record) {
                Ok(line) => file.write(line).await,
                Err(e) => Err(e),
            },
            Sink::Postgres(sink) => match serialise(record) {
                Ok(line) => sink.write(record, line).await,
                Err(e) => Err(e),
            },
        };
        self.settle(written)
    }

    /// As [`Audit::record`] for several records at once: the `postgres`
    /// sink commits them together rather than one round trip each.
    pub async fn record_all(&self, records: &[AuditRecord]) -> Result<()> {
        match &self.sink {
            Sink::Postgres(sink) => {
                let mut lines = Vec::with_capacity(records.len());
                for record in records {
                    lines.push((record, serialise(record)?));
                }
                self.settle(sink.write_all(lines).await)
            }
            _ => {
                for record in records {
                    self.record(record).await?;
                }
                Ok(())
            }
        }
    }

    /// Writes `record` for an outcome already decided (a refusal, or a
    /// change already committed), without waiting for it: the `postgres`
    /// sink queues it and its writer counts a failure. Nothing can change
    /// the outcome, so the caller need not wait. When the queue is full
    /// the record waits for room in a task of its own, up to
    /// [`postgres::OVERFLOW`] of them; beyond that it is dropped. Losses are
    /// counted ([`Audit::losses`]) and logged at most once every
    /// [`LOSS_LOG_INTERVAL`].
    pub fn record_detached(&self, record: &AuditRecord) {
        let written = match &self.sink {
            Sink::Log(writer) => serialise_line(record).and_then(|line| write_log(writer, line)),
            Sink::File(file) => {
                serialise_line(record).and_then(|line| write_file(&file.file, &line))
            }
            Sink::Postgres(sink) => serialise(record).map(|line| sink.write_detached(record, line)),
        };
        if let Err(e) = written {
            self.loss.failed(1, &e.to_string());
        }
    }

    /// A write's outcome under `audit.fail_closed`.
    fn settle(&self, written: Result<()>) -> Result<()> {
        match written {
            Err(e) if !self.fail_closed => {
                tracing::error!(error = %e, "audit record lost (audit.fail_closed = false)");
                Ok(())
            }
            other => other,
        }
    }
}

fn serialise(record: &AuditRecord) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| SignerError::Audit(format!("serialising a record: {e}")))
}

/// Bytes reserved for one record's line: an issuance's record is about
/// 350, so it is written into one buffer without growing it (#24: the
/// `String` of `serde_json::to_string` grew several times, then again for
/// the newline).
const LINE_CAPACITY: usize = 512;

/// `record` as one JSON line, newline included.
fn serialise_line(record: &AuditRecord) -> Result<Vec<u8>> {
    let mut line = Vec::with_capacity(LINE_CAPACITY);
    serde_json::to_writer(&mut line, record)
        .map_err(|e| SignerError::Audit(format!("serialising a record: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

/// Writes one record's `line` (newline included) to the `log` sink's
/// writer, as `{"audit":…}`.
fn write_log(writer: &std::sync::Mutex<Box<dyn Write + Send>>, line: Vec<u8>) -> Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 10);
    bytes.extend_from_slice(b"{\"audit\":");
    bytes.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(&line));
    bytes.extend_from_slice(b"}\n");
    let mut writer = writer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    writer
        .write_all(&bytes)
        .and_then(|()| writer.flush())
        .map_err(|e| SignerError::Audit(format!("writing the audit line: {e}")))
}

/// The `file` sink: records that arrive together share one `write`.
///
/// The first record of a group writes it at once; records that other
/// worker threads bring before it takes the group join it; then one
/// `write` appends them all and each record's caller learns its outcome.
/// No record waits longer than one write, no timer is involved, and a
/// caller returns only once the write holding its record returned
/// (fail-closed as before: a failed write fails every record in it).
/// #24: the writer does not yield to gather more: on a quiet machine that
/// yield cost 15 % of issuance throughput (docs/benchmarks.md).
struct FileSink {
    /// The file, `O_APPEND`: each group is one `write`, appended whole.
    file: File,
    /// The group being gathered, if one is.
    gathering: Mutex<Option<Group>>,
}

/// Records gathered for one `write`.
struct Group {
    /// Their lines, back to back.
    lines: Vec<u8>,
    /// Who waits for the outcome: every record but the writer's own.
    waiting: Vec<tokio::sync::oneshot::Sender<std::result::Result<(), String>>>,
}

impl FileSink {
    fn new(file: File) -> Self {
        FileSink {
            file,
            gathering: Mutex::new(None),
        }
    }

    /// Appends `line` and returns once the `write` holding it returned.
    async fn write(&self, line: Vec<u8>) -> Result<()> {
        let waiter = {
            let mut gathering = self.lock();
            match gathering.as_mut() {
                Some(group) => {
                    group.lines.extend_from_slice(&line);
                    let (done, outcome) = tokio::sync::oneshot::channel();
                    group.waiting.push(done);
                    Some(outcome)
                }
                None => {
                    *gathering = Some(Group {
                        lines: line,
                        waiting: Vec::new(),
                    });
                    None
                }
            }
        };
        if let Some(outcome) = waiter {
            return match outcome.await {
                Ok(written) => written.map_err(SignerError::Audit),
                // The writer is dropped only after it wrote and told.
                Err(_) => Err(SignerError::Audit(
                    "the audit write holding this record did not report".into(),
                )),
            };
        }
        // This record writes the group; the guard writes it even if this
        // call unwinds first, so no joined record waits forever.
        let guard = GroupWriter {
            sink: self,
            written: false,
        };
        guard.write_group()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Group>> {
        self.gathering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The writer of the group being gathered: writes it when done waiting,
/// or when dropped before.
struct GroupWriter<'a> {
    /// The sink whose group it writes.
    sink: &'a FileSink,
    /// Whether it wrote (else its drop does).
    written: bool,
}

impl GroupWriter<'_> {
    /// Writes the group gathered (one `write`), tells every record in it
    /// the outcome and returns it.
    fn write_group(mut self) -> Result<()> {
        self.written = true;
        self.flush()
    }

    fn flush(&self) -> Result<()> {
        let Some(group) = self.sink.lock().take() else {
            return Ok(());
        };
        let written = write_file(&self.sink.file, &group.lines);
        let told = written.as_ref().map(|_| ()).map_err(|e| match e {
            SignerError::Audit(why) => why.clone(),
            other => other.to_string(),
        });
        for waiting in group.waiting {
            // A caller that went away needs no answer.
            let _ = waiting.send(told.clone());
        }
        written
    }
}

impl Drop for GroupWriter<'_> {
    fn drop(&mut self) {
        // Dropped before writing: the others' records are written anyway.
        if !self.written {
            let _ = self.flush();
        }
    }
}

/// Appends one record's `line` (newline included) to the `file` sink:
/// one `write` of a few hundred bytes, on the caller's thread (as cheap
/// as a log line). When it returns the record is in the kernel's page
/// cache: it survives the signer's crash, not the host's (no fsync; see
/// docs/signer.md, "Audit").
fn write_file(file: &File, line: &[u8]) -> Result<()> {
    // One write of the whole line: with O_APPEND records never interleave.
    (&*file)
        .write_all(line)
        .map_err(|e| SignerError::Audit(format!("writing the audit file: {e}")))
}

/// HMAC-SHA256 of `password` under `key`, lower-case hex. Public so that an
/// auditor holding the key can trace a leaked password.
pub fn password_hmac(key: &[u8; 32], password: &str) -> String {
    // A 32-byte key is always a valid HMAC key.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(password.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in tag.iter() {
        hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    hex
}

fn open_append(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SignerError::Io {
            action: "opening audit file",
            path: path.to_owned(),
            cause: source,
        })
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            time_ms: 1,
            event: "issue_mqtt_credential",
            identity: "device p/d".into(),
            device: Some("p/d".into()),
            client_id: None,
            sign_method: Some("hmacsha1"),
            secure_mode: Some(2),
            timestamp_ms: Some(1),
            expires_at_ms: Some(2),
            outcome: "ok".into(),
            password_hmac: Some("00".into()),
            refused: Vec::new(),
            import: None,
            serial: None,
            detail: None,
        }
    }

    /// A writer into a shared buffer, or one that always fails.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>, bool);

    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if self.1 {
                return Err(std::io::Error::other("disk full"));
            }
            self.0.lock().expect("lock").extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_sink_is_no_log_event_and_fails_closed() {
        // No tracing subscriber at all here (as with RUST_LOG=warn): the
        // record is written all the same.
        let buffer = Buffer::default();
        let audit = Audit::to_writer(Box::new(buffer.clone()), true);
        block_on(audit.record(&record())).expect("written");
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).expect("one JSON line");
        assert_eq!(line["audit"]["event"], "issue_mqtt_credential");
        // A failing stderr is an error when fail-closed, and not otherwise.
        let failing = Buffer(Default::default(), true);
        assert!(
            block_on(Audit::to_writer(Box::new(failing.clone()), true).record(&record())).is_err()
        );
        assert!(block_on(Audit::to_writer(Box::new(failing), false).record(&record())).is_ok());
    }

    #[test]
    fn file_sink_appends_json_lines_and_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("audit.key");
        key_file::create(&key).expect("key");
        let path = dir.path().join("audit.jsonl");
        let mut config = AuditConfig {
            key_file: key,
            sink: AuditSinkConfig::File { path: path.clone() },
            fail_closed: true,
        };
        let audit = Audit::open(&config).expect("open");
        block_on(audit.record(&record())).expect("written");
        block_on(audit.record(&record())).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "issue_mqtt_credential");

        // /dev/full refuses every write: fail closed is an error, fail
        // open is not.
        config.sink = AuditSinkConfig::File {
            path: "/dev/full".into(),
        };
        let closed = Audit::open(&config).expect("open");
        assert!(matches!(
            block_on(closed.record(&record())),
            Err(SignerError::Audit(_))
        ));
        config.fail_closed = false;
        let open = Audit::open(&config).expect("open");
        assert!(block_on(open.record(&record())).is_ok());
    }

    #[test]
    fn concurrent_records_never_interleave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("audit.key");
        key_file::create(&key).expect("key");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&AuditConfig {
            key_file: key,
            sink: AuditSinkConfig::File { path: path.clone() },
            fail_closed: true,
        })
        .expect("open");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..500 {
                        block_on(audit.record(&record())).expect("written");
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2000);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("whole JSON line");
        }
    }

    /// #24: records written in groups (one `write` for the records that
    /// arrive together) each come back only once written, whole, and a
    /// failed group write fails every record in it (fail-closed).
    #[test]
    fn grouped_file_writes_keep_every_record_whole_and_fail_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("audit.key");
        key_file::create(&key).expect("key");
        let path = dir.path().join("audit.jsonl");
        let open = |path: &Path| {
            Arc::new(
                Audit::open(&AuditConfig {
                    key_file: key.clone(),
                    sink: AuditSinkConfig::File {
                        path: path.to_owned(),
                    },
                    fail_closed: true,
                })
                .expect("open"),
            )
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let run_all = |audit: Arc<Audit>| {
            runtime.block_on(async move {
                let calls: Vec<_> = (0..200)
                    .map(|_| {
                        let audit = Arc::clone(&audit);
                        tokio::spawn(async move { audit.record(&record()).await })
                    })
                    .collect();
                let mut outcomes = Vec::new();
                for call in calls {
                    outcomes.push(call.await.expect("task"));
                }
                outcomes
            })
        };
        let outcomes = run_all(open(&path));
        assert!(outcomes.iter().all(Result::is_ok), "every record written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 200, "each record once");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("whole JSON line");
        }
        let outcomes = run_all(open(Path::new("/dev/full")));
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Err(SignerError::Audit(_)))),
            "no record of a failed write comes back written"
        );
    }

    #[test]
    fn losses_are_counted_and_logged_at_most_once_an_interval() {
        // Issue 23, finding 7: an outage loses records by the thousand;
        // the log gets one line per interval, with the count since.
        let loss = Loss::default();
        let t0 = Instant::now();
        loss.dropped.fetch_add(5, Ordering::Relaxed);
        assert!(loss.log_at("outage", t0), "the first loss is logged");
        loss.failed.fetch_add(3, Ordering::Relaxed);
        loss.dropped.fetch_add(1000, Ordering::Relaxed);
        assert!(!loss.log_at("outage", t0 + Duration::from_secs(1)));
        assert!(!loss.log_at("outage", t0 + LOSS_LOG_INTERVAL / 2));
        assert!(loss.log_at("outage", t0 + LOSS_LOG_INTERVAL));
        assert_eq!(
            *loss.logged.lock().expect("lock"),
            Some((t0 + LOSS_LOG_INTERVAL, 1005, 3))
        );
        // Nothing new: nothing logged, however long after.
        assert!(!loss.log_at("outage", t0 + 10 * LOSS_LOG_INTERVAL));
        assert_eq!(
            loss.snapshot(),
            AuditLosses {
                dropped: 1005,
                failed: 3,
                waiting: 0
            }
        );
        // The waiting places are capped.
        assert!(loss.wait_start(2) && loss.wait_start(2));
        assert!(!loss.wait_start(2), "a third waiter is refused");
        loss.wait_end();
        assert!(loss.wait_start(2));
    }

    #[test]
    fn password_hmac_is_keyed_sha256() {
        // Known answer computed independently (Python's hmac module).
        let a = password_hmac(&[1u8; 32], "97AA97335D6EC3D7E1F9E3119501E399CC0B4125");
        let b = password_hmac(&[2u8; 32], "97AA97335D6EC3D7E1F9E3119501E399CC0B4125");
        assert_eq!(
            a,
            "d8d14e18abcc874907aab43a940b9e36fb35370a8323b4690c5f0e7c0f23d398"
        );
        assert_ne!(a, b);
        assert!(!a.contains("97AA"));
    }
}
