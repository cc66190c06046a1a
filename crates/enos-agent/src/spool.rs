//! [`Spool`]: the crash-safe upstream spool, one append-only file.
//!
//! Every upstream message is appended here before it goes to EnOS, and
//! leaves only once EnOS acknowledged it (QoS 1: its PUBACK; QoS 0: once
//! written to the socket), or when the bounds evict it.
//!
//! # Design
//!
//! - One file: an 88-byte header (magic, then two checksummed slots that
//!   hold the *head*: the offset and sequence number of the first record
//!   not yet delivered, and the eviction count), then records, appended
//!   only.
//! - A record is `len u32 | crc32 u32 | seq u64 | time_ms u64 | qos u8 |
//!   topic_len u16 | topic | payload`, the checksum over everything after it.
//! - The head is written to the slots alternately (the newer valid one
//!   wins at start), so a torn header write loses at most the last head
//!   move: those messages are sent again (at least once, never lost).
//! - Nothing of a record is kept in memory but the messages in flight:
//!   delivery reads the file at two cursors, so a backlog costs disk, not
//!   RAM. The live cursor hands out what is fresh at once and passes what
//!   its caller defers (held longer than `resume_after`); the replay
//!   cursor hands out what the live one passed, behind it, at the replay
//!   rate ([`Spool::peek_live`], [`Spool::peek_replay`]). Records
//!   delivered past the head (live ones, while older ones wait) are kept
//!   as merged ranges until the head reaches them.
//! - The file is rewritten (live part copied to `<file>.tmp`, synced,
//!   renamed over) once the delivered prefix outgrows the live part's
//!   bound, so its size stays ≤ about twice `max_bytes`.
//!
//! # Why a segment log and not redb
//!
//! Measured with `cargo bench -p enos-agent --bench spool` (one append =
//! one transaction for redb, as the agent appends one message at a time;
//! the raw loop builds the same message, stamps it, frames it with a
//! header of the same 27 bytes in a reused buffer and does one `pwrite`,
//! plus one `fdatasync` per message (`always`) or every 200 ms
//! (`batched`); each figure the median of 3 alternating runs inside one
//! bench run; three bench runs, load average 3-4 on 2 shared cores;
//! `always` is noisy, its raw loop ranged 430-1,350 msg/s):
//!
//! | fsync | spool | raw loop | redb | spool / raw (3 runs) | spool / redb |
//! |---|---|---|---|---|---|
//! | batched (200 ms) | 866,529 msg/s | 1,047,950 msg/s | 8,618 msg/s | 0.92×, 0.83×, 1.02× | ~100× |
//! | always | 793 msg/s | 893 msg/s | 711 msg/s | 0.80×, 1.14×, 0.89× | ~1.1× |
//!
//! With 4 threads appending at once under `always`, group commit carries
//! 6,537-7,611 msg/s (one `pwrite` and one `fdatasync` per group).
//!
//! What the profile (`perf record` on the bench) showed before #28 item 7,
//! batched at 0.26×: reading the head record back and checksumming it,
//! 31 % (the bench stamped messages older than `max_age`, so every append
//! evicted the one before, and compacted, with an fsync, every MiB: a bench
//! defect, the agent stamps messages now); `encode`, 22 %, nearly all its
//! byte-at-a-time CRC; the `pwrite` itself, 19 %. Now: crc32fast, one
//! encode buffer kept, the write outside the lock under `always`.
//!
//! The queue is written once and read once in order: a log needs one
//! `write` and (per the policy) one `fdatasync` per append; redb's
//! copy-on-write B-tree commits pages per transaction, and would grow the
//! agent's binary (its RSS budget).
//!
//! # Draining
//!
//! `cargo bench -p enos-agent --bench drain`: the agent binary
//! (`agent-release`) drains a 360,000-message backlog (73.6 MiB, one hour
//! at 100 msg/s) into the sandbox against a raw rumqttc client publishing
//! the same messages live, CONNACK to last PUBACK on both sides; three
//! runs with the two delivery lanes: 1.41×, 1.40×, 1.20× (goal ≥ 0.5×;
//! `resume.batch` carries 25 messages a PUBLISH), the agent's VmHWM 6.54,
//! 6.73, 6.62 MiB (goal ≤ 8 MiB). Delivery reads the file 32 KiB at a time and `taken`
//! reuses what `peek` decoded (before: two `pread`s, two allocations and a
//! byte-wise CRC per record, twice; that binary drained at 0.63×, one run).
//!
//! # Crash safety
//!
//! `fsync = "always"`: `append` returns once the record is on disk
//! (`fdatasync`). `fsync = "batched"`: a background tick syncs every
//! `fsync_interval`; a power cut loses at most the records appended in the
//! last interval (a process crash, SIGKILL included, loses nothing: the
//! data is in the kernel's page cache). At start a record cut short at the
//! end (a write torn by the crash) is dropped; any other damage moves the
//! file aside and keeps its readable records.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use rumqttc::QoS;
use tokio::sync::Notify;

use crate::{config::SpoolConfig, error::AgentError, shared::Outbound};

/// The file's first bytes.
/// `2`: the head slots carry the eviction count (a version 1 file is
/// moved aside and its waiting records kept, as for a damaged one).
const MAGIC: &[u8; 8] = b"ENOSSPL2";
/// Version 1's magic: its records are kept (moved into a version 2 file).
const MAGIC_V1: &[u8; 8] = b"ENOSSPL1";
/// One head slot: `gen u64 | head_off u64 | head_seq u64 | evicted u64 |
/// crc u32 | 4 zero bytes`. The eviction count goes with the head it
/// belongs to, so a restart counts exactly the evictions the head shows
/// (those after the last head write are evicted, and counted, again).
const SLOT: u64 = 40;
/// Where records start.
const DATA_START: u64 = 8 + 2 * SLOT;
/// `len u32 | crc u32`.
const FRAME: u64 = 8;
/// `seq u64 | time_ms u64 | qos u8 | topic_len u16`.
const FIXED: usize = 19;
/// No record is larger (EnOS's packets are far smaller): a length beyond
/// it is damage, not a record.
const MAX_RECORD: u32 = 16 * 1024 * 1024;
/// Delivery reads the file this much at a time (one `pread` for ~150
/// typical records instead of two per record): small beside the agent's
/// RSS budget.
const READ_AHEAD: u64 = 32 * 1024;
/// Write failures of `fsync = "always"` groups remembered for the callers
/// still waiting on them.
const FAILED_GROUPS: usize = 16;

/// CRC-32 (IEEE), enough to tell a torn or damaged record. crc32fast
/// (PCLMULQDQ where the CPU has it): a byte-at-a-time table loop was about
/// a quarter of an append's CPU time in the spool bench's profile.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// `fdatasync` before `append` returns: a power cut loses nothing
    /// appended.
    Always,
    /// `fdatasync` every `fsync_interval`: a power cut loses at most what
    /// was appended in the last interval.
    Batched,
}

impl std::fmt::Display for FsyncPolicy {
    /// The config's spelling, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Batched => "batched",
        })
    }
}

/// A spooled message, as read back.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Its sequence number: unique in this spool's life, never reused.
    pub seq: u64,
    /// When it was accepted (ms since the epoch): the original time a
    /// late measurepoint is resumed with.
    pub time_ms: u64,
    /// The message.
    pub message: Outbound,
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records waiting for delivery.
    pub recovered: u64,
    /// Bytes of a record cut short at the end, dropped.
    pub torn_tail_bytes: u64,
    /// Where a damaged file was moved, its readable records kept.
    pub moved_aside: Option<PathBuf>,
}

/// The spool's counters, for the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Messages waiting (or in flight, not yet acknowledged).
    pub messages: u64,
    /// Bytes of those messages in the file.
    pub bytes: u64,
    /// Messages evicted by the bounds since the spool was created (kept
    /// in the file with the head, so a restart does not reset it).
    pub evicted: u64,
    /// Messages appended since start.
    pub appended: u64,
    /// Messages acknowledged by EnOS (or written, at QoS 0) since start.
    pub delivered: u64,
    /// Messages handed to EnOS again after a connection was lost before
    /// their acknowledgement: the possible duplicates.
    pub resent: u64,
}

/// A late measurepoint post as EnOS wants it: `…/measurepoint/resume`,
/// method `thing.measurepoint.resume`, `params.time` the original time
/// (kept when the message has one, else the time it was spooled). `None`
/// when `m` is not a measurepoint post in the EnOS envelope.
pub fn as_resume(m: &Outbound, time_ms: u64) -> Option<Outbound> {
    let base = m.topic.strip_suffix("/thing/measurepoint/post")?;
    if !base.starts_with("/sys/") {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
    if v.get("method").and_then(|x| x.as_str()) != Some("thing.measurepoint.post") {
        return None;
    }
    v["method"] = "thing.measurepoint.resume".into();
    let params = v.get_mut("params")?.as_object_mut()?;
    if !params.get("time").is_some_and(serde_json::Value::is_u64) {
        params.insert("time".into(), time_ms.into());
    }
    Some(Outbound {
        topic: format!("{base}/thing/measurepoint/resume"),
        payload: serde_json::to_vec(&v).ok()?,
        qos: m.qos,
    })
}

/// One entry of a `thing.measurepoint.resume.batch`, as the official Java
/// SDK's `MeasurepointResumeBatchRequest` builds it: `{productKey,
/// deviceKey, measurepoints, time}`, `time` the original one (kept when
/// the message has one, else the time it was spooled). `None` when `m` is
/// not a measurepoint post (with `params.measurepoints`) in the EnOS
/// envelope.
pub fn resume_entry(m: &Outbound, time_ms: u64) -> Option<serde_json::Value> {
    let base = m.topic.strip_suffix("/thing/measurepoint/post")?;
    let mut keys = base.strip_prefix("/sys/")?.split('/');
    let (pk, dk) = (keys.next()?, keys.next()?);
    if keys.next().is_some() {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
    if v.get("method").and_then(|x| x.as_str()) != Some("thing.measurepoint.post") {
        return None;
    }
    let params = v.get_mut("params")?.as_object_mut()?;
    let time = params
        .get("time")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(time_ms);
    let measurepoints = params.remove("measurepoints").filter(|p| p.is_object())?;
    Some(serde_json::json!({
        "productKey": pk,
        "deviceKey": dk,
        "measurepoints": measurepoints,
        "time": time,
    }))
}

/// A message handed out and not yet acknowledged (keyed by its sequence
/// number).
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Where it starts: once acknowledged, `start..end` is delivered.
    start: u64,
    /// Where the next record starts.
    end: u64,
}

/// Acknowledged records past the head (keyed by where they start): the
/// live lane's messages delivered while older ones still wait to be
/// replayed. The head moves over them once the records before are
/// delivered too; adjacent ranges merge, so live data delivered during a
/// long replay costs one entry, not one per message.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    /// Where the range ends.
    end: u64,
    /// The sequence number of its last record.
    last_seq: u64,
    /// How many records it holds.
    count: u64,
}

/// How a spooled message leaves, once the connection is up (see
/// [`Spool::peek_live`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// At once, on its own topic: what the live cursor hands out.
    Live,
    /// Behind the live lane, paced: a message held longer than
    /// `resume_after` (or otherwise deferred), which a measurepoint post
    /// takes through `resume`.
    Replay,
}

/// Whether `topic` has a late path (`thing.measurepoint.resume`): a
/// deferred message on another topic keeps its topic in order by
/// deferring the messages after it on that topic too.
pub fn has_late_path(topic: &str) -> bool {
    topic.starts_with("/sys/") && topic.ends_with("/thing/measurepoint/post")
}

/// The mutable part.
#[derive(Debug)]
struct Inner {
    /// The open file; shared so that a group commit writes and syncs it
    /// without holding the lock (appenders meanwhile stage the next group).
    file: Arc<File>,
    /// End of the last record written to the file (staged ones excluded):
    /// what readers may read.
    len: u64,
    /// First record not yet acknowledged.
    head_off: u64,
    /// The time of the record at `head_off`, once read: the age bound
    /// needs it, and reading it back per append would cost a read each.
    head_time: Option<(u64, u64)>,
    /// Its sequence number (`next_seq` when empty).
    head_seq: u64,
    /// The replay lane's cursor: the next record (at or past the head)
    /// the live cursor passed without handing it out.
    read_off: u64,
    /// The live lane's cursor: the next record it looks at. Records
    /// before it are handed out, delivered, or deferred to the replay
    /// lane (`read_off..live_off`).
    live_off: u64,
    /// Topics without a late path whose older messages wait in the replay
    /// lane: the live lane defers their newer messages too, so that each
    /// topic stays in order. Cleared once the replay lane caught up.
    blocked: HashSet<String>,
    /// Delivered ranges past the head.
    delivered: BTreeMap<u64, Delivered>,
    /// The sequence number the next append gets.
    next_seq: u64,
    /// Handed out and not acknowledged, by sequence number.
    in_flight: BTreeMap<u64, InFlight>,
    /// What was in flight at a rewind: handed out again, each is a
    /// possible duplicate.
    resend: BTreeSet<u64>,
    /// The head slot generation last written.
    generation: u64,
    /// The head as last written to a slot.
    written_head: u64,
    /// Appended (or head moved) since the last sync.
    dirty: bool,
    /// Every record up to this sequence number is on disk (per the
    /// policy): the bridge acknowledges local publishes up to it.
    synced_upto: u64,
    /// The counters.
    stats: SpoolStats,
    /// The encode buffer of `fsync = "batched"` appends, kept: no
    /// allocation per append.
    encoded: Vec<u8>,
    /// `fsync = "always"`: records encoded and not yet written, the next
    /// group commit's (one `write` and one `fdatasync` for all of them).
    staged: Vec<u8>,
    /// The first sequence number in `staged` and how many it holds.
    staged_seqs: (u64, u64),
    /// A group commit is writing and syncing (outside the lock): the next
    /// group waits for it, and the file is not compacted meanwhile.
    committing: bool,
    /// Bytes staged or being committed: the byte bound counts them.
    unwritten: u64,
    /// The highest sequence number written to the file: what a sync
    /// makes durable.
    written_upto: u64,
    /// Groups whose write failed, `(first seq, last seq, cause)`: their
    /// callers get the error. The most recent [`FAILED_GROUPS`].
    failed: VecDeque<(u64, u64, String)>,
    /// Read-ahead for delivery: the file's bytes from `ahead_off`.
    ahead: Vec<u8>,
    /// Where `ahead` starts in the file.
    ahead_off: u64,
}

impl Inner {
    /// Reads the record at `off` for delivery, through the read-ahead
    /// buffer; the exact, unbuffered [`read_at`] where the buffer does not
    /// hold it whole or it does not check out.
    fn read_record(&mut self, off: u64) -> Read {
        if off >= self.len {
            return Read::End;
        }
        if let Some(r) = self.buffered(off) {
            return r;
        }
        let want = usize::try_from((self.len - off).min(READ_AHEAD)).unwrap_or(0);
        self.ahead.resize(want, 0);
        if self.file.read_exact_at(&mut self.ahead, off).is_err() {
            self.ahead.clear();
            return read_at(&self.file, off, self.len);
        }
        self.ahead_off = off;
        self.buffered(off)
            .unwrap_or_else(|| read_at(&self.file, off, self.len))
    }

    /// The good record at `off` if the read-ahead buffer holds it whole.
    fn buffered(&self, off: u64) -> Option<Read> {
        let start = usize::try_from(off.checked_sub(self.ahead_off)?).ok()?;
        let frame = self.ahead.get(start..start + FRAME as usize)?;
        let body_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if body_len > MAX_RECORD || (body_len as usize) < FIXED {
            return None;
        }
        let body_start = start + FRAME as usize;
        let body = self.ahead.get(body_start..body_start + body_len as usize)?;
        if crc32(body) != crc {
            return None;
        }
        let s = decode(body)?;
        Some(Read::Good(s, off + FRAME + u64::from(body_len)))
    }

    /// The read-ahead buffer no longer matches the file (rewritten).
    fn forget_reads(&mut self) {
        self.ahead.clear();
        self.ahead_off = 0;
    }

    /// `count` records from `first` on are in the file: counted, and the
    /// head's sequence number set if they are the only ones.
    fn record_written(&mut self, first: u64, count: u64, bytes: u64) {
        if self.stats.messages == 0 {
            self.head_seq = first;
        }
        self.len += bytes;
        self.written_upto = self.written_upto.max(first + count - 1);
        self.stats.messages += count;
        self.stats.appended += count;
        self.stats.bytes = self.len - self.head_off;
    }
}

/// The upstream spool. Methods are synchronous file I/O, short except
/// `append` under `fsync = "always"` (one `fdatasync`).
#[derive(Debug)]
pub struct Spool {
    /// The file.
    path: PathBuf,
    /// The bounds and the sync policy.
    config: SpoolConfig,
    /// The state, behind one lock: the bridge appends, the session reads.
    inner: Mutex<Inner>,
    /// Signalled when a group commit ends: the appenders whose records it
    /// carried return, the next group's leader starts.
    committed: Condvar,
    /// Wakes the session when something was appended.
    pushed: Notify,
    /// Wakes the bridge after a sync: its held local acknowledgements
    /// may go.
    synced: Notify,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> AgentError {
    AgentError::Spool {
        path: path.to_owned(),
        cause: format!("{what}: {e}"),
    }
}

/// One record's bytes.
fn encode(seq: u64, time_ms: u64, m: &Outbound) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(m) as usize);
    encode_into(&mut out, seq, time_ms, m);
    out
}

/// The size of `m`'s record.
fn encoded_len(m: &Outbound) -> u64 {
    FRAME + (FIXED + m.topic.len().min(usize::from(u16::MAX)) + m.payload.len()) as u64
}

/// Appends one record's bytes to `out` (a buffer kept across appends: no
/// allocation per message once it has grown).
fn encode_into(out: &mut Vec<u8>, seq: u64, time_ms: u64, m: &Outbound) {
    let start = out.len();
    let topic = m.topic.as_bytes();
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let topic = &topic[..usize::from(topic_len)];
    let body_len = FIXED + topic.len() + m.payload.len();
    out.reserve(FRAME as usize + body_len);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.push(match m.qos {
        QoS::AtMostOnce => 0,
        _ => 1,
    });
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&m.payload);
    let crc = crc32(&out[start + FRAME as usize..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a record body (after the frame).
fn decode(body: &[u8]) -> Option<Spooled> {
    if body.len() < FIXED {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let time_ms = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let qos = if body[16] == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let topic_len = usize::from(u16::from_le_bytes(body[17..19].try_into().ok()?));
    let topic = body.get(FIXED..FIXED + topic_len)?;
    let topic = String::from_utf8(topic.to_vec()).ok()?;
    Some(Spooled {
        seq,
        time_ms,
        message: Outbound {
            topic,
            payload: body[FIXED + topic_len..].to_vec(),
            qos,
        },
    })
}

/// How a record read at an offset turned out.
enum Read {
    /// A good record and where the next starts.
    Good(Spooled, u64),
    /// The file ends here.
    End,
    /// A record cut short by the end of the file, or only zeros to the
    /// end: a torn last write.
    Torn,
    /// A record that does not check out, with data after it.
    Damaged,
}

fn read_at(file: &File, off: u64, len: u64) -> Read {
    if off >= len {
        return Read::End;
    }
    let torn_or_damaged = || {
        // Only zeros to the end: space the file system allocated for a
        // write that never landed.
        let mut rest = vec![0u8; usize::try_from((len - off).min(1 << 20)).unwrap_or(0)];
        if (len - off) <= (1 << 20)
            && file.read_exact_at(&mut rest, off).is_ok()
            && rest.iter().all(|&b| b == 0)
        {
            Read::Torn
        } else {
            Read::Damaged
        }
    };
    if len - off < FRAME {
        return Read::Torn;
    }
    let mut frame = [0u8; FRAME as usize];
    if file.read_exact_at(&mut frame, off).is_err() {
        return Read::Damaged;
    }
    let body_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if body_len > MAX_RECORD || (body_len as usize) < FIXED {
        return torn_or_damaged();
    }
    let end = off + FRAME + u64::from(body_len);
    if end > len {
        return Read::Torn;
    }
    let mut body = vec![0u8; body_len as usize];
    if file.read_exact_at(&mut body, off + FRAME).is_err() {
        return Read::Damaged;
    }
    if crc32(&body) != crc {
        // The last record, damaged: torn (the length landed, the data not).
        return if end == len {
            Read::Torn
        } else {
            torn_or_damaged()
        };
    }
    match decode(&body) {
        Some(s) => Read::Good(s, end),
        None => Read::Damaged,
    }
}

fn encode_slot(generation: u64, head_off: u64, head_seq: u64, evicted: u64) -> [u8; SLOT as usize] {
    let mut slot = [0u8; SLOT as usize];
    slot[0..8].copy_from_slice(&generation.to_le_bytes());
    slot[8..16].copy_from_slice(&head_off.to_le_bytes());
    slot[16..24].copy_from_slice(&head_seq.to_le_bytes());
    slot[24..32].copy_from_slice(&evicted.to_le_bytes());
    let crc = crc32(&slot[0..32]);
    slot[32..36].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// `(generation, head_off, head_seq, evicted)` of a valid slot.
fn decode_slot(slot: &[u8]) -> Option<(u64, u64, u64, u64)> {
    let crc = u32::from_le_bytes(slot[32..36].try_into().ok()?);
    if crc32(&slot[0..32]) != crc {
        return None;
    }
    Some((
        u64::from_le_bytes(slot[0..8].try_into().ok()?),
        u64::from_le_bytes(slot[8..16].try_into().ok()?),
        u64::from_le_bytes(slot[16..24].try_into().ok()?),
        u64::from_le_bytes(slot[24..32].try_into().ok()?),
    ))
}

/// Writes a fresh spool file holding `records` (the head at the first of
/// them), synced, and renames it to `path`.
fn write_fresh(path: &Path, head_seq: u64, evicted: u64, records: &[u8]) -> Result<(), AgentError> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
    let mut header = Vec::with_capacity(DATA_START as usize);
    header.extend_from_slice(MAGIC);
    // Generation 1 goes where `sync` would put it (slot `1 % 2`), so the
    // next head write (generation 2) goes to the other slot, never over it.
    header.extend_from_slice(&[0; SLOT as usize]);
    header.extend_from_slice(&encode_slot(1, DATA_START, head_seq, evicted));
    f.write_all(&header)
        .and_then(|()| f.write_all(records))
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, "rename", e))?;
    sync_dir(path);
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Makes a rename durable; best effort (some file systems refuse).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// `off`, or the end of the delivered range it falls in.
fn skip_delivered(inner: &Inner, mut off: u64) -> u64 {
    while let Some((_, d)) = inner.delivered.range(..=off).next_back() {
        if d.end <= off {
            break;
        }
        off = d.end;
    }
    off
}

/// Moves the head over the delivered ranges that start at it (and the
/// lanes' cursors with it: nothing behind the head is handed out again).
fn advance_head(inner: &mut Inner) {
    while let Some(d) = inner.delivered.remove(&inner.head_off) {
        inner.head_off = d.end;
        inner.head_seq = d.last_seq + 1;
        inner.stats.messages = inner.stats.messages.saturating_sub(d.count);
        inner.dirty = true;
    }
    inner.read_off = inner.read_off.max(inner.head_off);
    inner.live_off = inner.live_off.max(inner.head_off);
}

impl Spool {
    /// Opens (or creates) the spool at `config.path`. Never fails because
    /// of the file's content: a torn last record is dropped, a damaged
    /// file is moved aside (`<file>.corrupt-<ms>`) and its readable records
    /// are kept in a new one. Fails only when the file cannot be created or
    /// written at all.
    pub fn open(config: &SpoolConfig) -> Result<(Spool, OpenReport), AgentError> {
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create directory", e))?;
        }
        // A rewrite that did not finish: the original is intact.
        let _ = std::fs::remove_file(tmp_path(&path));
        let mut report = OpenReport::default();
        if !path.exists() {
            write_fresh(&path, 1, 0, &[])?;
        }
        let inner = match Self::recover(&path, &mut report)? {
            Some(inner) => inner,
            None => {
                // Damaged: keep the readable records, move the file aside.
                let (head_seq, records, count) = Self::salvage(&path);
                let aside = {
                    let mut name = path.as_os_str().to_owned();
                    name.push(format!(".corrupt-{}", enos_domain::now_ms()));
                    PathBuf::from(name)
                };
                std::fs::rename(&path, &aside).map_err(|e| io_err(&path, "move aside", e))?;
                tracing::error!(
                    spool = %path.display(),
                    moved_to = %aside.display(),
                    kept = count,
                    "the spool file is damaged; moved it aside and kept its {count} readable messages"
                );
                report.moved_aside = Some(aside);
                write_fresh(&path, head_seq, 0, &records)?;
                Self::recover(&path, &mut report)?.ok_or_else(|| AgentError::Spool {
                    path: path.clone(),
                    cause: "the rewritten spool does not read back".into(),
                })?
            }
        };
        report.recovered = inner.stats.messages;
        let spool = Spool {
            path,
            config: config.clone(),
            inner: Mutex::new(inner),
            committed: Condvar::new(),
            pushed: Notify::new(),
            synced: Notify::new(),
        };
        {
            let mut inner = spool.lock();
            spool.enforce_bounds(&mut inner, 0, enos_domain::now_ms());
        }
        Ok((spool, report))
    }

    /// Reads the file: `None` if it is damaged (other than a torn tail).
    fn recover(path: &Path, report: &mut OpenReport) -> Result<Option<Inner>, AgentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, "open", e))?;
        let len = file.metadata().map_err(|e| io_err(path, "stat", e))?.len();
        let mut header = [0u8; DATA_START as usize];
        if len < DATA_START || file.read_exact_at(&mut header, 0).is_err() || &header[0..8] != MAGIC
        {
            return Ok(None);
        }
        let slots = [
            decode_slot(&header[8..8 + SLOT as usize]),
            decode_slot(&header[8 + SLOT as usize..]),
        ];
        let Some((generation, head_off, head_seq, evicted)) = slots.into_iter().flatten().max()
        else {
            return Ok(None);
        };
        // The head may point past a tail a crash cut off: empty then.
        let mut off = head_off.clamp(DATA_START, len);
        let mut count = 0u64;
        let mut next_seq = head_seq;
        loop {
            match read_at(&file, off, len) {
                Read::Good(s, end) => {
                    if count == 0 && s.seq != head_seq && off == head_off {
                        // The slot and the record disagree: trust the record.
                        tracing::debug!(slot = head_seq, record = s.seq, "spool head adjusted");
                    }
                    next_seq = s.seq + 1;
                    count += 1;
                    off = end;
                }
                Read::End => break,
                Read::Torn => {
                    report.torn_tail_bytes = len - off;
                    tracing::warn!(
                        spool = %path.display(),
                        bytes = len - off,
                        "the spool's last write was cut short (a crash); dropped it"
                    );
                    file.set_len(off).map_err(|e| io_err(path, "truncate", e))?;
                    break;
                }
                Read::Damaged => return Ok(None),
            }
        }
        let head_off = head_off.clamp(DATA_START, off);
        let head_seq = match read_at(&file, head_off, off) {
            Read::Good(s, _) => s.seq,
            _ => next_seq,
        };
        Ok(Some(Inner {
            file: Arc::new(file),
            len: off,
            head_off,
            head_time: None,
            head_seq,
            read_off: head_off,
            live_off: head_off,
            blocked: HashSet::new(),
            delivered: BTreeMap::new(),
            next_seq: next_seq.max(head_seq),
            in_flight: BTreeMap::new(),
            resend: BTreeSet::new(),
            generation,
            written_head: head_off,
            dirty: false,
            synced_upto: next_seq.max(head_seq).saturating_sub(1),
            stats: SpoolStats {
                messages: count,
                bytes: off - head_off,
                evicted,
                ..SpoolStats::default()
            },
            encoded: Vec::new(),
            staged: Vec::new(),
            staged_seqs: (0, 0),
            committing: false,
            unwritten: 0,
            written_upto: next_seq.max(head_seq).saturating_sub(1),
            failed: VecDeque::new(),
            ahead: Vec::new(),
            ahead_off: 0,
        }))
    }

    /// The readable records of a damaged file, from its head (or from the
    /// start when the header is unreadable) to the first damage: `(first
    /// seq, bytes, count)`.
    fn salvage(path: &Path) -> (u64, Vec<u8>, u64) {
        let Ok(file) = File::open(path) else {
            return (1, Vec::new(), 0);
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut header = [0u8; DATA_START as usize];
        let read = file.read_exact_at(&mut header, 0).is_ok();
        let (head, data_start) = if read && &header[0..8] == MAGIC {
            let head = [
                decode_slot(&header[8..8 + SLOT as usize]),
                decode_slot(&header[8 + SLOT as usize..]),
            ]
            .into_iter()
            .flatten()
            .max()
            .map(|(_, off, _, _)| off);
            (head, DATA_START)
        } else if read && &header[0..8] == MAGIC_V1 {
            // Version 1 (32-byte slots, no eviction count, records at 72):
            // its records are read as they are, into a version 2 file.
            let slot = |s: &[u8]| {
                let crc = u32::from_le_bytes(s[24..28].try_into().ok()?);
                (crc32(&s[0..24]) == crc).then(|| {
                    let word =
                        |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or_default());
                    (word(0), word(8))
                })
            };
            let head = [slot(&header[8..40]), slot(&header[40..72])]
                .into_iter()
                .flatten()
                .max()
                .map(|(_, off)| off);
            (head, 72)
        } else {
            (None, DATA_START)
        };
        let mut off = head
            .unwrap_or(data_start)
            .clamp(data_start, len.max(data_start));
        let mut out = Vec::new();
        let mut first = None;
        let mut last = 0;
        let mut count = 0;
        while let Read::Good(s, end) = read_at(&file, off, len) {
            first.get_or_insert(s.seq);
            last = s.seq;
            out.extend_from_slice(&encode(s.seq, s.time_ms, &s.message));
            count += 1;
            off = end;
        }
        (first.unwrap_or(last + 1).max(1), out, count)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is plain numbers and a file: usable after a panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sync policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.config.fsync
    }

    /// How often a batched spool syncs.
    pub fn fsync_interval(&self) -> Duration {
        self.config.fsync_interval
    }

    /// The bounds, sync policy and replay settings.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Appends `m`, accepted at `time_ms`; evicts the oldest first when
    /// a bound would be exceeded. Returns its sequence number and how many
    /// were evicted for it. Under `fsync = "always"` the record is on
    /// disk when this returns.
    ///
    /// `batched`: one `pwrite` under the lock (the record is in the page
    /// cache when this returns: a process crash loses nothing).
    /// `always`: the record is staged, then written and synced by a group
    /// commit: the first caller to find no commit running writes every
    /// staged record with one `pwrite` and one `fdatasync`, outside the
    /// lock; callers arriving meanwhile stage theirs for the next group
    /// and share its sync. A lone caller does one `pwrite` and one
    /// `fdatasync`, as a plain loop would.
    pub fn append(&self, m: &Outbound, time_ms: u64) -> Result<(u64, u64), AgentError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let seq = inner.next_seq;
        let evicted = self.enforce_bounds(inner, encoded_len(m), enos_domain::now_ms());
        match self.config.fsync {
            FsyncPolicy::Batched => {
                inner.encoded.clear();
                encode_into(&mut inner.encoded, seq, time_ms, m);
                inner
                    .file
                    .write_all_at(&inner.encoded, inner.len)
                    .map_err(|e| io_err(&self.path, "append", e))?;
                inner.dirty = true;
                inner.next_seq += 1;
                let bytes = inner.encoded.len() as u64;
                inner.record_written(seq, 1, bytes);
                drop(guard);
            }
            FsyncPolicy::Always => {
                let before = inner.staged.len();
                encode_into(&mut inner.staged, seq, time_ms, m);
                inner.unwritten += (inner.staged.len() - before) as u64;
                if inner.staged_seqs.1 == 0 {
                    inner.staged_seqs.0 = seq;
                }
                inner.staged_seqs.1 += 1;
                inner.next_seq += 1;
                self.commit_through(guard, seq)?;
            }
        }
        self.pushed.notify_one();
        Ok((seq, evicted))
    }

    /// `fsync = "always"`: returns once record `seq` (staged) is written
    /// and synced, leading group commits while none runs.
    fn commit_through<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        seq: u64,
    ) -> Result<(), AgentError> {
        loop {
            if let Some((_, _, cause)) = inner
                .failed
                .iter()
                .find(|(a, b, _)| (*a..=*b).contains(&seq))
            {
                return Err(AgentError::Spool {
                    path: self.path.clone(),
                    cause: cause.clone(),
                });
            }
            if inner.synced_upto >= seq && inner.written_upto >= seq {
                return Ok(());
            }
            if inner.committing {
                inner = self
                    .committed
                    .wait(inner)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Lead the next group: everything staged so far.
            inner.committing = true;
            let group = std::mem::take(&mut inner.staged);
            let (first, count) = std::mem::take(&mut inner.staged_seqs);
            let at = inner.len;
            let file = Arc::clone(&inner.file);
            drop(inner);
            let result = file
                .write_all_at(&group, at)
                .map_err(|e| format!("append: {e}"))
                .and_then(|()| file.sync_data().map_err(|e| format!("fdatasync: {e}")));
            inner = self.lock();
            inner.committing = false;
            inner.unwritten = inner.unwritten.saturating_sub(group.len() as u64);
            match result {
                Ok(()) => {
                    inner.record_written(first, count, group.len() as u64);
                    inner.synced_upto = inner.synced_upto.max(first + count - 1);
                }
                Err(cause) => {
                    // Whatever landed of the group is cut off again: the
                    // next group is written where this one started.
                    let _ = file.set_len(at);
                    if inner.failed.len() == FAILED_GROUPS {
                        inner.failed.pop_front();
                    }
                    inner.failed.push_back((first, first + count - 1, cause));
                }
            }
            if inner.staged.is_empty() {
                // Its buffer serves the next group: no allocation per commit.
                let mut group = group;
                group.clear();
                inner.staged = group;
            }
            self.committed.notify_all();
        }
    }

    /// Evicts the oldest records until `extra` more bytes fit and none is
    /// older than `max_age`, stopping at one in flight; returns how many.
    fn enforce_bounds(&self, inner: &mut Inner, extra: u64, now_ms: u64) -> u64 {
        let max_age = u64::try_from(self.config.max_age.as_millis()).unwrap_or(u64::MAX);
        let mut evicted = 0;
        while inner.head_off < inner.len {
            let over_bytes =
                inner.len - inner.head_off + inner.unwritten + extra > self.config.max_bytes;
            if !over_bytes {
                if let Some((off, time)) = inner.head_time {
                    if off == inner.head_off && now_ms.saturating_sub(time) <= max_age {
                        break;
                    }
                }
            }
            let Read::Good(s, end) = read_at(&inner.file, inner.head_off, inner.len) else {
                break;
            };
            inner.head_time = Some((inner.head_off, s.time_ms));
            let too_old = now_ms.saturating_sub(s.time_ms) > max_age;
            // Nor one in flight: EnOS is about to have it, and counting
            // it evicted would report lost what arrives; the bound is
            // exceeded by what is in flight until EnOS acknowledges it.
            if (!over_bytes && !too_old) || inner.in_flight.contains_key(&s.seq) {
                break;
            }
            inner.head_off = end;
            inner.head_seq = s.seq + 1;
            inner.stats.messages = inner.stats.messages.saturating_sub(1);
            inner.stats.evicted += 1;
            inner.dirty = true;
            evicted += 1;
            advance_head(inner);
        }
        inner.stats.bytes = inner.len - inner.head_off;
        if evicted > 0 {
            self.maybe_compact(inner);
        }
        evicted
    }

    /// Evicts what `max_age` no longer allows; returns how many.
    pub fn evict_expired(&self, now_ms: u64) -> u64 {
        let mut inner = self.lock();
        self.enforce_bounds(&mut inner, 0, now_ms)
    }

    /// The next message to hand to EnOS, without taking it: the live
    /// lane, deferring nothing (tests and benches drive the spool so).
    pub fn peek(&self) -> Option<Spooled> {
        self.peek_live(|_| false)
    }

    /// Marks the message [`Spool::peek`] returned (sequence `seq`) as
    /// handed to EnOS; `true` if it was handed out before (a possible
    /// duplicate).
    pub fn taken(&self, seq: u64) -> bool {
        self.take_live(seq)
    }

    /// The live lane's next message, without taking it. On the way the
    /// live cursor passes, leaving them to the replay lane, the messages
    /// `defer` picks (held longer than `resume_after`, say), and the
    /// messages on a topic without a late path ([`has_late_path`]) whose
    /// older messages wait there: each topic stays in order.
    pub fn peek_live(&self, mut defer: impl FnMut(&Spooled) -> bool) -> Option<Spooled> {
        let mut inner = self.lock();
        loop {
            let off = skip_delivered(&inner, inner.live_off);
            inner.live_off = off;
            let Read::Good(s, end) = inner.read_record(off) else {
                return None;
            };
            if inner.in_flight.contains_key(&s.seq) {
                inner.live_off = end;
                continue;
            }
            let blocked = inner.blocked.contains(&s.message.topic);
            if blocked || defer(&s) {
                if !blocked && !has_late_path(&s.message.topic) {
                    inner.blocked.insert(s.message.topic.clone());
                }
                inner.live_off = end;
                continue;
            }
            return Some(s);
        }
    }

    /// Marks the message [`Spool::peek_live`] returned (sequence `seq`)
    /// as handed to EnOS; `true` if it was handed out before (a possible
    /// duplicate).
    pub fn take_live(&self, seq: u64) -> bool {
        let mut inner = self.lock();
        let start = inner.live_off;
        let Read::Good(s, end) = inner.read_record(start) else {
            return false;
        };
        if s.seq != seq {
            return false;
        }
        // The replay lane had nothing waiting: it follows along.
        if inner.read_off >= start {
            inner.read_off = end;
        }
        inner.live_off = end;
        Self::hand_out(&mut inner, seq, start, end)
    }

    /// Up to `max` of the replay lane's next messages, in order, without
    /// taking them: the first, then those after it `more` accepts (it is
    /// asked in order and ends the run at its first `false`).
    pub fn peek_replay(&self, max: usize, mut more: impl FnMut(&Spooled) -> bool) -> Vec<Spooled> {
        let mut inner = self.lock();
        // Past what the live lane handed out or was delivered.
        loop {
            let off = skip_delivered(&inner, inner.read_off);
            inner.read_off = off;
            if off >= inner.live_off {
                // Caught up: nothing waits behind the live lane.
                inner.read_off = inner.live_off;
                inner.blocked.clear();
                return Vec::new();
            }
            match inner.read_record(off) {
                Read::Good(s, end) if inner.in_flight.contains_key(&s.seq) => inner.read_off = end,
                Read::Good(..) => break,
                _ => return Vec::new(),
            }
        }
        let mut out = Vec::new();
        let mut off = inner.read_off;
        while out.len() < max.max(1) {
            off = skip_delivered(&inner, off);
            if off >= inner.live_off {
                break;
            }
            let Read::Good(s, end) = inner.read_record(off) else {
                break;
            };
            off = end;
            if inner.in_flight.contains_key(&s.seq) {
                continue;
            }
            if !out.is_empty() && !more(&s) {
                break;
            }
            out.push(s);
        }
        out
    }

    /// Marks the messages [`Spool::peek_replay`] returned (these sequence
    /// numbers, ascending) as handed to EnOS; returns how many were handed
    /// out before (possible duplicates). One evicted meanwhile is skipped.
    pub fn take_replay(&self, seqs: &[u64]) -> u64 {
        let mut inner = self.lock();
        let mut again = 0;
        let mut off = inner.read_off;
        for &seq in seqs {
            loop {
                off = skip_delivered(&inner, off);
                if off >= inner.live_off {
                    break;
                }
                let Read::Good(s, end) = inner.read_record(off) else {
                    break;
                };
                if s.seq > seq {
                    break;
                }
                let start = off;
                off = end;
                if s.seq == seq {
                    again += u64::from(Self::hand_out(&mut inner, seq, start, end));
                    break;
                }
            }
        }
        inner.read_off = inner.read_off.max(off.min(inner.live_off));
        again
    }

    /// Records `seq` (at `start..end`) as in flight; `true` if it is
    /// handed out again after a rewind.
    fn hand_out(inner: &mut Inner, seq: u64, start: u64, end: u64) -> bool {
        inner.in_flight.insert(seq, InFlight { start, end });
        let again = inner.resend.remove(&seq);
        if again {
            inner.stats.resent += 1;
        }
        again
    }

    /// EnOS acknowledged `seq` (or it was written at QoS 0): the head moves
    /// past every delivered message at the front.
    pub fn acknowledged(&self, seq: u64) {
        let mut inner = self.lock();
        let Some(f) = inner.in_flight.remove(&seq) else {
            return;
        };
        inner.stats.delivered += 1;
        // Merge with the delivered ranges either side.
        let mut start = f.start;
        let mut range = Delivered {
            end: f.end,
            last_seq: seq,
            count: 1,
        };
        if let Some((&before, d)) = inner.delivered.range(..start).next_back() {
            if d.end == start {
                range.count += d.count;
                start = before;
                inner.delivered.remove(&before);
            }
        }
        if let Some(after) = inner.delivered.remove(&range.end) {
            range.end = after.end;
            range.last_seq = after.last_seq;
            range.count += after.count;
        }
        inner.delivered.insert(start, range);
        advance_head(&mut inner);
        inner.stats.bytes = inner.len - inner.head_off;
        self.maybe_compact(&mut inner);
    }

    /// The connection was lost: everything handed out and not acknowledged
    /// goes again, from the head, in order, each lane deciding afresh.
    pub fn rewind(&self) {
        let mut inner = self.lock();
        let in_flight: Vec<u64> = inner.in_flight.keys().copied().collect();
        inner.resend.extend(in_flight);
        inner.in_flight.clear();
        inner.read_off = inner.head_off;
        inner.live_off = inner.head_off;
        inner.blocked.clear();
    }

    /// Messages handed out and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Whether nothing waits to be handed out.
    pub fn is_drained(&self) -> bool {
        let inner = self.lock();
        inner.live_off >= inner.len && inner.read_off >= inner.live_off
    }

    /// The counters.
    pub fn stats(&self) -> SpoolStats {
        self.lock().stats
    }

    /// The sequence number the next append gets: message ids built after
    /// opening start here, so they never repeat one still spooled.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Resolves once something is (or was, since the last call) appended.
    pub async fn wait_pushed(&self) {
        if !self.is_drained() {
            return;
        }
        self.pushed.notified().await;
    }

    /// Writes the head (if it moved) and syncs appended records: the
    /// batched policy's tick, and the last act at shutdown.
    pub fn sync(&self) -> Result<(), AgentError> {
        let result = self.sync_locked();
        self.synced.notify_waiters();
        result
    }

    fn sync_locked(&self) -> Result<(), AgentError> {
        let mut inner = self.lock();
        // What is written (staged `always` records are not) is what this
        // sync makes durable.
        let written = inner.written_upto;
        if !inner.dirty {
            inner.synced_upto = inner.synced_upto.max(written);
            return Ok(());
        }
        if inner.written_head != inner.head_off {
            let generation = inner.generation + 1;
            let slot = encode_slot(
                generation,
                inner.head_off,
                inner.head_seq,
                inner.stats.evicted,
            );
            let at = 8 + (generation % 2) * SLOT;
            inner
                .file
                .write_all_at(&slot, at)
                .map_err(|e| io_err(&self.path, "write the head", e))?;
            inner.generation = generation;
            inner.written_head = inner.head_off;
        }
        inner
            .file
            .sync_data()
            .map_err(|e| io_err(&self.path, "fdatasync", e))?;
        inner.dirty = false;
        inner.synced_upto = inner.synced_upto.max(written);
        Ok(())
    }

    /// Every record up to this sequence number is on disk.
    pub fn synced_upto(&self) -> u64 {
        self.lock().synced_upto
    }

    /// Resolves at the next [`Spool::sync`].
    pub async fn wait_synced(&self) {
        self.synced.notified().await;
    }

    /// Rewrites the file without its delivered prefix once that prefix
    /// outgrows `max_bytes` (or 1 MiB, whichever is larger), or empties it
    /// once everything was delivered and it holds more than 1 MiB.
    fn maybe_compact(&self, inner: &mut Inner) {
        let dead = inner.head_off - DATA_START;
        let live = inner.len - inner.head_off;
        let threshold = self.config.max_bytes.max(1 << 20);
        if dead < threshold && !(live == 0 && dead >= 1 << 20) {
            return;
        }
        if inner.committing {
            // A group commit writes to the current file at its end: the
            // rewrite waits for a later acknowledgement.
            return;
        }
        if let Err(e) = self.compact(inner) {
            tracing::warn!(error = %e, "could not compact the spool; it keeps growing until it can");
        }
    }

    fn compact(&self, inner: &mut Inner) -> Result<(), AgentError> {
        let live = inner.len - inner.head_off;
        let mut records = vec![0u8; usize::try_from(live).unwrap_or(0)];
        inner
            .file
            .read_exact_at(&mut records, inner.head_off)
            .map_err(|e| io_err(&self.path, "read", e))?;
        write_fresh(&self.path, inner.head_seq, inner.stats.evicted, &records)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| io_err(&self.path, "reopen", e))?;
        let shift = inner.head_off - DATA_START;
        inner.file = Arc::new(file);
        inner.forget_reads();
        inner.len -= shift;
        inner.head_off = DATA_START;
        inner.head_time = None;
        let moved = |off: u64| off.saturating_sub(shift).max(DATA_START);
        inner.read_off = moved(inner.read_off);
        inner.live_off = moved(inner.live_off);
        for f in inner.in_flight.values_mut() {
            f.start = moved(f.start);
            f.end = moved(f.end);
        }
        inner.delivered = std::mem::take(&mut inner.delivered)
            .into_iter()
            .map(|(start, mut d)| {
                d.end = moved(d.end);
                (moved(start), d)
            })
            .collect();
        inner.generation = 1;
        inner.written_head = DATA_START;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, fsync: FsyncPolicy, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            path: dir.join("spool"),
            max_bytes,
            max_age: Duration::from_secs(3600),
            fsync,
            fsync_interval: Duration::from_millis(50),
            resume_after: Duration::from_secs(60),
            replay_rate: 0,
        }
    }

    fn msg(i: u64) -> Outbound {
        Outbound {
            topic: "/sys/pk/dk/thing/measurepoint/post".into(),
            // Padded: every record has the same size.
            payload: format!("{{\"i\":{i:>4}}}").into_bytes(),
            qos: QoS::AtLeastOnce,
        }
    }

    /// Takes and acknowledges everything waiting; returns the payload
    /// indices in order.
    fn drain(spool: &Spool) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(s) = spool.peek() {
            spool.taken(s.seq);
            spool.acknowledged(s.seq);
            let v: serde_json::Value = serde_json::from_slice(&s.message.payload).expect("json");
            out.push(v["i"].as_u64().expect("i"));
        }
        out
    }

    /// #28 item 1: the spool survives a restart: what was not acknowledged is there, in order.
    #[test]
    fn undelivered_messages_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Batched, 1 << 20);
        {
            let (spool, report) = Spool::open(&cfg).expect("open");
            assert_eq!(report, OpenReport::default());
            for i in 0..10 {
                spool
                    .append(&msg(i), enos_domain::now_ms())
                    .expect("append");
            }
            // 0..3 delivered, 3 and 4 in flight when the process dies.
            for _ in 0..5 {
                let s = spool.peek().expect("peek");
                spool.taken(s.seq);
            }
            for seq in 1..=3 {
                spool.acknowledged(seq);
            }
            spool.sync().expect("sync");
            // Dropped without a sync of anything after: a crash.
        }
        let (spool, report) = Spool::open(&cfg).expect("reopen");
        assert_eq!(report.recovered, 7);
        assert_eq!(drain(&spool), (3..10).collect::<Vec<_>>());
        // Sequence numbers go on after the recovered ones.
        assert_eq!(spool.next_seq(), 11);
    }

    /// #28 item 1: a head write torn by a power cut falls back to the previous head: messages sent again, none lost, the file not moved aside.
    #[test]
    fn a_torn_head_write_falls_back_to_the_previous_head() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Batched, 1 << 20);
        let newest = {
            let (spool, _) = Spool::open(&cfg).expect("open");
            for i in 0..6 {
                spool
                    .append(&msg(i), enos_domain::now_ms())
                    .expect("append");
            }
            for round in [2u64, 4] {
                while spool.stats().delivered < round {
                    let s = spool.peek().expect("peek");
                    spool.taken(s.seq);
                    spool.acknowledged(s.seq);
                }
                spool.sync().expect("sync");
            }
            spool.lock().generation
        };
        // Tear the newest slot (generation 3: 2 delivered, then 4).
        let f = OpenOptions::new()
            .write(true)
            .open(&cfg.path)
            .expect("open");
        f.write_all_at(&[0xAB; 8], 8 + (newest % 2) * SLOT + 8)
            .expect("tear");
        drop(f);
        let (spool, report) = Spool::open(&cfg).expect("reopen");
        assert_eq!(report.moved_aside, None);
        assert_eq!(
            drain(&spool),
            [2, 3, 4, 5],
            "the previous head: 2 and 3 again"
        );
    }

    /// #28 item 1: the bounds evict the oldest first and count each.
    #[test]
    fn bounds_evict_the_oldest_and_count_them() {
        let dir = tempfile::tempdir().expect("dir");
        let one = encode(1, 0, &msg(0)).len() as u64;
        let cfg = config(dir.path(), FsyncPolicy::Batched, one * 5);
        let (spool, _) = Spool::open(&cfg).expect("open");
        let now = enos_domain::now_ms();
        let mut evicted = 0;
        for i in 0..12 {
            evicted += spool.append(&msg(i), now).expect("append").1;
        }
        assert_eq!(evicted, 7);
        assert_eq!(spool.stats().evicted, 7);
        assert_eq!(spool.stats().messages, 5);
        assert_eq!(drain(&spool), [7, 8, 9, 10, 11]);

        // By age: the old ones go, the young stay.
        let (aged, _) = Spool::open(&config(&dir.path().join("b"), FsyncPolicy::Always, 1 << 20))
            .expect("open");
        aged.append(&msg(1), now - 3_500_000).expect("append");
        aged.append(&msg(2), now).expect("append");
        // 200 s later the first is older than the hour allowed.
        assert_eq!(aged.evict_expired(now + 200_000), 1);
        assert_eq!(drain(&aged), [2]);
    }

    /// #28 item 1: a record cut short by a crash is dropped; the rest is kept.
    #[test]
    fn a_torn_last_record_is_dropped_quietly() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Always, 1 << 20);
        {
            let (spool, _) = Spool::open(&cfg).expect("open");
            for i in 0..3 {
                spool
                    .append(&msg(i), enos_domain::now_ms())
                    .expect("append");
            }
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(&cfg.path)
            .expect("open");
        let half = encode(9, 0, &msg(9));
        f.write_all(&half[..half.len() / 2]).expect("write");
        drop(f);
        let (spool, report) = Spool::open(&cfg).expect("reopen");
        assert!(report.torn_tail_bytes > 0);
        assert_eq!(report.moved_aside, None);
        assert_eq!(drain(&spool), [0, 1, 2]);
        spool
            .append(&msg(3), enos_domain::now_ms())
            .expect("append after");
        assert_eq!(drain(&spool), [3]);
    }

    /// #28 item 1: a damaged spool never stops the start: moved aside, its readable part kept.
    #[test]
    fn a_damaged_spool_is_moved_aside_and_its_readable_part_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Always, 1 << 20);
        let offsets = {
            let (spool, _) = Spool::open(&cfg).expect("open");
            let mut offsets = Vec::new();
            for i in 0..6 {
                offsets.push(spool.lock().len);
                spool
                    .append(&msg(i), enos_domain::now_ms())
                    .expect("append");
            }
            offsets
        };
        // Damage the fourth record's payload.
        let f = OpenOptions::new()
            .write(true)
            .open(&cfg.path)
            .expect("open");
        f.write_all_at(b"XX", offsets[3] + FRAME + FIXED as u64 + 3)
            .expect("damage");
        drop(f);
        let (spool, report) = Spool::open(&cfg).expect("a damaged spool still opens");
        let aside = report.moved_aside.expect("moved aside");
        assert!(aside.exists());
        assert_eq!(report.recovered, 3);
        assert_eq!(drain(&spool), [0, 1, 2]);
        // The next message does not reuse a kept sequence number.
        let (seq, _) = spool
            .append(&msg(6), enos_domain::now_ms())
            .expect("append");
        assert!(seq > 3, "{seq}");

        // Garbage from the first byte: moved aside, empty, usable.
        std::fs::write(&cfg.path, b"this is not a spool at all").expect("write");
        drop(spool);
        let (spool, report) = Spool::open(&cfg).expect("garbage still opens");
        assert!(report.moved_aside.is_some());
        assert_eq!(report.recovered, 0);
        spool
            .append(&msg(7), enos_domain::now_ms())
            .expect("append");
        assert_eq!(drain(&spool), [7]);
    }

    /// #28 item 4: what was in flight when the connection dropped goes again, counted.
    #[test]
    fn a_rewind_resends_the_unacknowledged_and_counts_them() {
        let dir = tempfile::tempdir().expect("dir");
        let (spool, _) =
            Spool::open(&config(dir.path(), FsyncPolicy::Batched, 1 << 20)).expect("open");
        for i in 0..4 {
            spool
                .append(&msg(i), enos_domain::now_ms())
                .expect("append");
        }
        for _ in 0..3 {
            let s = spool.peek().expect("peek");
            assert!(!spool.taken(s.seq));
        }
        spool.acknowledged(1);
        spool.rewind();
        assert_eq!(drain(&spool), [1, 2, 3]);
        assert_eq!(spool.stats().resent, 2);
        assert_eq!(spool.stats().messages, 0);
    }

    /// A minute ago: within `max_age`, and what the tests' `defer`
    /// ([`is_old`]) passes to the replay lane.
    fn old() -> u64 {
        now() - 60_000
    }

    fn is_old(s: &Spooled) -> bool {
        s.time_ms < now() - 30_000
    }

    fn now() -> u64 {
        enos_domain::now_ms()
    }

    fn on(topic: &str, i: u64) -> Outbound {
        Outbound {
            topic: topic.into(),
            payload: format!("{{\"i\":{i:>4}}}").into_bytes(),
            qos: QoS::AtLeastOnce,
        }
    }

    fn index(s: &Spooled) -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&s.message.payload).expect("json");
        v["i"].as_u64().expect("i")
    }

    /// #28 item 2 (live data first): the live lane passes what `defer` picks and goes on; the replay lane then hands out exactly what it passed, in order; everything is delivered once and the head gets past all of it.
    #[test]
    fn the_live_lane_passes_deferred_messages_to_the_replay_lane() {
        let dir = tempfile::tempdir().expect("dir");
        let (spool, _) =
            Spool::open(&config(dir.path(), FsyncPolicy::Batched, 1 << 20)).expect("open");
        let post = "/sys/pk/dk/thing/measurepoint/post";
        // 0..6 are old (a backlog), 6..9 new.
        for i in 0..9 {
            spool
                .append(&on(post, i), if i < 6 { old() } else { now() })
                .expect("append");
        }
        let mut live = Vec::new();
        while let Some(s) = spool.peek_live(is_old) {
            live.push(index(&s));
            assert!(!spool.take_live(s.seq));
            spool.acknowledged(s.seq);
        }
        assert_eq!(live, [6, 7, 8], "live first");
        assert_eq!(spool.stats().messages, 9, "the head waits for the backlog");
        let mut replayed = Vec::new();
        loop {
            let batch = spool.peek_replay(4, |_| true);
            if batch.is_empty() {
                break;
            }
            let seqs: Vec<u64> = batch.iter().map(|s| s.seq).collect();
            replayed.extend(batch.iter().map(index));
            assert_eq!(spool.take_replay(&seqs), 0);
            for seq in seqs {
                spool.acknowledged(seq);
            }
        }
        assert_eq!(replayed, [0, 1, 2, 3, 4, 5], "the backlog, in order");
        assert_eq!(spool.stats().messages, 0);
        assert_eq!(spool.stats().delivered, 9);
        assert!(spool.is_drained());
        // A new message goes live at once.
        spool.append(&on(post, 9), now()).expect("append");
        assert_eq!(spool.peek_live(|_| false).map(|s| index(&s)), Some(9));
    }

    /// #28 item 2: a deferred message on a topic without a late path (an event) holds back the newer messages on that topic, so the topic stays in order; other topics go live.
    #[test]
    fn a_topic_without_a_late_path_stays_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let (spool, _) =
            Spool::open(&config(dir.path(), FsyncPolicy::Batched, 1 << 20)).expect("open");
        let event = "/sys/pk/dk/thing/event/alarm/post";
        let post = "/sys/pk/dk/thing/measurepoint/post";
        spool.append(&on(event, 0), old()).expect("append");
        spool.append(&on(post, 1), old()).expect("append");
        spool.append(&on(event, 2), now()).expect("append");
        spool.append(&on(post, 3), now()).expect("append");
        let mut live = Vec::new();
        while let Some(s) = spool.peek_live(is_old) {
            live.push(index(&s));
            spool.take_live(s.seq);
        }
        assert_eq!(live, [3], "the new event waits behind the old one");
        let replay: Vec<u64> = spool.peek_replay(10, |_| true).iter().map(index).collect();
        assert_eq!(replay, [0, 1, 2]);
    }

    /// #28 item 2: after a lost connection both lanes start over from the head; what was in flight goes again (counted), what was acknowledged does not.
    #[test]
    fn a_rewind_keeps_what_was_delivered_past_the_head() {
        let dir = tempfile::tempdir().expect("dir");
        let (spool, _) =
            Spool::open(&config(dir.path(), FsyncPolicy::Batched, 1 << 20)).expect("open");
        let post = "/sys/pk/dk/thing/measurepoint/post";
        for i in 0..6 {
            spool
                .append(&on(post, i), if i < 3 { old() } else { now() })
                .expect("append");
        }
        // Live: 3 acknowledged, 4 in flight; replay: 0 in flight.
        let s = spool.peek_live(is_old).expect("live");
        spool.take_live(s.seq);
        spool.acknowledged(s.seq);
        let s = spool.peek_live(is_old).expect("live");
        spool.take_live(s.seq);
        let first = spool.peek_replay(1, |_| true);
        spool.take_replay(&[first[0].seq]);
        spool.rewind();
        let mut order = Vec::new();
        while let Some(s) = spool.peek_live(|_| false) {
            order.push(index(&s));
            spool.take_live(s.seq);
            spool.acknowledged(s.seq);
        }
        assert_eq!(order, [0, 1, 2, 4, 5], "3 was delivered");
        assert_eq!(spool.stats().resent, 2, "0 and 4 again");
        assert_eq!(spool.stats().messages, 0);
    }

    /// #28 item 6: the eviction count is kept with the head across a restart, exactly: evictions after the last head write are made (and counted) again.
    #[test]
    fn the_eviction_count_survives_a_restart_exactly() {
        let dir = tempfile::tempdir().expect("dir");
        let one = encode(1, 0, &msg(0)).len() as u64;
        let cfg = config(dir.path(), FsyncPolicy::Batched, one * 5);
        let now = enos_domain::now_ms();
        {
            let (spool, _) = Spool::open(&cfg).expect("open");
            for i in 0..10 {
                spool.append(&msg(i), now).expect("append");
            }
            spool.sync().expect("sync");
            assert_eq!(spool.stats().evicted, 5);
            // Two more evictions, not synced: a SIGKILL now.
            for i in 10..12 {
                spool.append(&msg(i), now).expect("append");
            }
            assert_eq!(spool.stats().evicted, 7);
        }
        let (spool, _) = Spool::open(&cfg).expect("reopen");
        assert_eq!(spool.stats().evicted, 7, "5 kept, 2 made again");
        assert_eq!(drain(&spool), [7, 8, 9, 10, 11]);
    }

    /// #28 item 1: a message in flight is not evicted (EnOS is about to have it): the bound waits for its acknowledgement.
    #[test]
    fn a_message_in_flight_is_not_evicted() {
        let dir = tempfile::tempdir().expect("dir");
        let one = encode(1, 0, &msg(0)).len() as u64;
        let (spool, _) =
            Spool::open(&config(dir.path(), FsyncPolicy::Batched, one * 2)).expect("open");
        let now = enos_domain::now_ms();
        spool.append(&msg(0), now).expect("append");
        let s = spool.peek().expect("peek");
        spool.taken(s.seq);
        spool.append(&msg(1), now).expect("append");
        assert_eq!(spool.append(&msg(2), now).expect("append").1, 0);
        spool.acknowledged(s.seq);
        assert_eq!(
            spool.append(&msg(3), now).expect("append").1,
            1,
            "then 1 goes"
        );
        assert_eq!(drain(&spool), [2, 3]);
    }

    /// #28: a version 1 spool (before the eviction count) is moved aside and its waiting messages kept.
    #[test]
    fn a_version_1_spool_keeps_its_messages() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Batched, 1 << 20);
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC_V1);
        file.extend_from_slice(&[0; 32]);
        let mut slot = [0u8; 32];
        slot[0..8].copy_from_slice(&1u64.to_le_bytes());
        // The head at the second record: the first was delivered.
        let first = encode(1, 0, &msg(0));
        slot[8..16].copy_from_slice(&(72 + first.len() as u64).to_le_bytes());
        slot[16..24].copy_from_slice(&2u64.to_le_bytes());
        let crc = crc32(&slot[0..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        file.extend_from_slice(&slot);
        file.extend_from_slice(&first);
        let now = enos_domain::now_ms();
        for i in 1..4 {
            file.extend_from_slice(&encode(i + 1, now, &msg(i)));
        }
        std::fs::write(&cfg.path, &file).expect("write");
        let (spool, report) = Spool::open(&cfg).expect("open");
        assert!(report.moved_aside.is_some());
        assert_eq!(report.recovered, 3);
        assert_eq!(drain(&spool), [1, 2, 3]);
        assert_eq!(spool.next_seq(), 5);
    }

    /// #28 item 1: the file does not grow without bound while it drains.
    #[test]
    fn the_file_is_compacted_once_the_delivered_part_outgrows_the_bound() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Batched, 64 * 1024);
        let (spool, _) = Spool::open(&cfg).expect("open");
        let big = Outbound {
            topic: "t".into(),
            payload: vec![7u8; 10_000],
            qos: QoS::AtLeastOnce,
        };
        for _ in 0..400 {
            let (seq, _) = spool.append(&big, enos_domain::now_ms()).expect("append");
            let s = spool.peek().expect("peek");
            assert_eq!(s.seq, seq);
            spool.taken(seq);
            spool.acknowledged(seq);
        }
        let len = std::fs::metadata(&cfg.path).expect("stat").len();
        assert!(len < 3 * (1 << 20), "{len}");
        spool
            .append(&msg(1), enos_domain::now_ms())
            .expect("append");
        spool.sync().expect("sync");
        drop(spool);
        let (spool, report) = Spool::open(&cfg).expect("reopen");
        assert_eq!(report.recovered, 1);
        assert_eq!(drain(&spool), [1]);
    }

    /// #28 item 7: concurrent appenders under `always` share group commits; every append returned is on disk, each thread's order kept, no sequence number twice.
    #[test]
    fn concurrent_always_appends_are_all_durable_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Always, 1 << 20);
        let threads = 4u64;
        let per = 50u64;
        {
            let (spool, _) = Spool::open(&cfg).expect("open");
            let seqs: Vec<Vec<u64>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let spool = &spool;
                        s.spawn(move || {
                            (0..per)
                                .map(|i| {
                                    let (seq, _) = spool
                                        .append(&msg(t * 1000 + i), enos_domain::now_ms())
                                        .expect("append");
                                    // Returned: synced that far.
                                    assert!(spool.synced_upto() >= seq);
                                    seq
                                })
                                .collect()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("join"))
                    .collect()
            });
            let mut all: Vec<u64> = seqs.concat();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len() as u64, threads * per);
            assert_eq!(spool.stats().appended, threads * per);
            // Dropped without a sync: only the group commits made it durable.
        }
        let (spool, report) = Spool::open(&cfg).expect("reopen");
        assert_eq!(report.recovered, threads * per);
        let got = drain(&spool);
        for t in 0..threads {
            let mine: Vec<u64> = got.iter().copied().filter(|i| i / 1000 == t).collect();
            assert_eq!(mine, (t * 1000..t * 1000 + per).collect::<Vec<_>>());
        }
    }

    /// #28 item 7: delivery reads through a read-ahead buffer; records larger than it, and records appended after it was filled, are read right.
    #[test]
    fn delivery_reads_records_of_any_size_through_the_read_ahead() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), FsyncPolicy::Batched, 16 << 20);
        let (spool, _) = Spool::open(&cfg).expect("open");
        let sized = |i: u64, len: usize| Outbound {
            topic: format!("/t/{i}"),
            payload: vec![(i % 251) as u8; len],
            qos: QoS::AtLeastOnce,
        };
        let sizes = [10usize, 40_000, 20, 100_000, 5, 32 * 1024, 7];
        let mut want = Vec::new();
        for round in 0..3u64 {
            for (k, len) in sizes.iter().enumerate() {
                let i = round * 10 + k as u64;
                spool
                    .append(&sized(i, *len), enos_domain::now_ms())
                    .expect("append");
                want.push((format!("/t/{i}"), *len));
            }
            // Half taken now (the buffer filled), the rest after more appends.
            for _ in 0..4 {
                let s = spool.peek().expect("peek");
                assert!(!spool.taken(s.seq));
                spool.acknowledged(s.seq);
                let (topic, len) = want.remove(0);
                assert_eq!((s.message.topic, s.message.payload.len()), (topic, len));
            }
        }
        while let Some(s) = spool.peek() {
            spool.taken(s.seq);
            spool.acknowledged(s.seq);
            let (topic, len) = want.remove(0);
            assert_eq!((s.message.topic, s.message.payload.len()), (topic, len));
        }
        assert!(want.is_empty(), "{want:?}");
    }

    /// The record checksum is the IEEE CRC-32 (files written before stay readable).
    #[test]
    fn crc32_is_the_ieee_checksum() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
