//! The spool's append throughput against a raw loop of the same storage
//! with the same fsync policy (#28 item 7: ≥ 0.8×), and against redb (the
//! other candidate of #28 item 1), one ratio per policy in one run.
//!
//! Both sides do, per message, the same work but what the spool adds:
//! build the message (the same envelope), take the time (`now_ms`), frame
//! it with a 27-byte header of the spool's layout (`len | crc | seq | time
//! | qos | topic_len`) in a reused buffer, and write it with one `pwrite`
//! at the end of one file; `always`: one `fdatasync` after each write;
//! `batched`: one `fdatasync` every 200 ms (the agent's tick). The raw
//! loop leaves the checksum zero and keeps no state; the spool computes
//! the CRC, takes its lock, checks its bounds and counts.
//!
//! Under `always`, a third figure: 4 threads appending at once to one
//! spool (its group commit: one `pwrite` and one `fdatasync` per group).
//!
//! `cargo bench -p enos-agent --bench spool`. Prints messages/s and ratios;
//! asserts nothing (speed goals are not test assertions).
#![allow(missing_docs, clippy::print_stdout)]

use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt,
    time::{Duration, Instant},
};

use enos_agent::{
    Outbound,
    config::SpoolConfig,
    spool::{FsyncPolicy, Spool},
};
use rumqttc::QoS;

const TOPIC: &str = "/sys/pkBench/gwBench/thing/measurepoint/post";
/// The batched policy's interval, as the agent's default.
const INTERVAL: Duration = Duration::from_millis(200);
/// Appending threads in the group-commit figure.
const THREADS: u64 = 4;

fn message(i: u64) -> Outbound {
    Outbound {
        topic: TOPIC.into(),
        payload: format!(
            r#"{{"id":"{i}","version":"1.0","method":"thing.measurepoint.post","params":{{"measurepoints":{{"temp":21.5,"seq":{i}}},"time":1700000000000}}}}"#
        )
        .into_bytes(),
        qos: QoS::AtLeastOnce,
    }
}

fn open_spool(dir: &std::path::Path, policy: FsyncPolicy) -> Spool {
    let config = SpoolConfig {
        path: dir.join("spool"),
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(86_400),
        fsync: policy,
        fsync_interval: INTERVAL,
        resume_after: Duration::from_secs(60),
        replay_rate: 0,
    };
    Spool::open(&config).expect("open").0
}

/// The spool: `n` appends, each stamped now as the agent does; batched
/// syncs every 200 ms as the agent's tick does.
fn spool(dir: &std::path::Path, policy: FsyncPolicy, n: u64) -> f64 {
    let spool = open_spool(dir, policy);
    let start = Instant::now();
    let mut last_sync = Instant::now();
    for i in 0..n {
        spool
            .append(&message(i), enos_agent::now_ms())
            .expect("append");
        if policy == FsyncPolicy::Batched && last_sync.elapsed() >= INTERVAL {
            spool.sync().expect("sync");
            last_sync = Instant::now();
        }
    }
    spool.sync().expect("sync");
    n as f64 / start.elapsed().as_secs_f64()
}

/// [`THREADS`] threads appending `n` in all to one spool at once.
fn spool_concurrent(dir: &std::path::Path, policy: FsyncPolicy, n: u64) -> f64 {
    let spool = open_spool(dir, policy);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let spool = &spool;
            s.spawn(move || {
                for i in (t..n).step_by(THREADS as usize) {
                    spool
                        .append(&message(i), enos_agent::now_ms())
                        .expect("append");
                }
            });
        }
    });
    spool.sync().expect("sync");
    n as f64 / start.elapsed().as_secs_f64()
}

/// The raw loop: the same message and time per append, framed with a
/// header of the spool's size (checksum left zero) in a reused buffer,
/// one `pwrite` at the end of one file, the same fsync policy.
fn raw(dir: &std::path::Path, policy: FsyncPolicy, n: u64) -> f64 {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw"))
        .expect("open");
    let start = Instant::now();
    let mut at = 0u64;
    let mut last_sync = Instant::now();
    let mut record = Vec::new();
    for i in 0..n {
        let m = message(i);
        let time = enos_agent::now_ms();
        record.clear();
        record.extend_from_slice(&((19 + m.topic.len() + m.payload.len()) as u32).to_le_bytes());
        record.extend_from_slice(&[0u8; 4]);
        record.extend_from_slice(&(i + 1).to_le_bytes());
        record.extend_from_slice(&time.to_le_bytes());
        record.push(1);
        record.extend_from_slice(&(m.topic.len() as u16).to_le_bytes());
        record.extend_from_slice(m.topic.as_bytes());
        record.extend_from_slice(&m.payload);
        file.write_all_at(&record, at).expect("write");
        at += record.len() as u64;
        match policy {
            FsyncPolicy::Always => file.sync_data().expect("sync"),
            FsyncPolicy::Batched => {
                if last_sync.elapsed() >= INTERVAL {
                    file.sync_data().expect("sync");
                    last_sync = Instant::now();
                }
            }
        }
    }
    file.sync_data().expect("sync");
    n as f64 / start.elapsed().as_secs_f64()
}

const TABLE: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("spool");

/// redb: one transaction per message (the agent appends one at a time);
/// `Immediate` durability per message for `always`, `None` with an
/// `Immediate` commit every 200 ms for `batched`.
fn redb(dir: &std::path::Path, policy: FsyncPolicy, n: u64) -> f64 {
    let db = redb::Database::create(dir.join("redb")).expect("create");
    let start = Instant::now();
    let mut last_sync = Instant::now();
    for i in 0..n {
        let m = message(i);
        let mut value = m.topic.into_bytes();
        value.extend_from_slice(&m.payload);
        let mut tx = db.begin_write().expect("begin");
        let durable = match policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Batched => last_sync.elapsed() >= INTERVAL,
        };
        if durable {
            last_sync = Instant::now();
        } else {
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut table = tx.open_table(TABLE).expect("table");
            table.insert(i, value.as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().expect("dir");
    // Messages per measurement: (spool and raw, redb). redb's rate is
    // steady long before its count.
    for (policy, n, n_redb) in [
        (FsyncPolicy::Batched, 500_000u64, 20_000u64),
        (FsyncPolicy::Always, 2_000, 1_000),
    ] {
        // Each measured three times, alternating, the median kept: the
        // disk is shared.
        let mut runs: [Vec<f64>; 3] = Default::default();
        for r in 0..3 {
            let d = dir.path().join(format!("{policy}-{r}"));
            std::fs::create_dir_all(&d).expect("dir");
            // Which goes first alternates: neither inherits the other's
            // writeback the same way every time.
            if r % 2 == 0 {
                runs[0].push(spool(&d, policy, n));
                runs[1].push(raw(&d, policy, n));
            } else {
                runs[1].push(raw(&d, policy, n));
                runs[0].push(spool(&d, policy, n));
            }
            if r == 0 || policy == FsyncPolicy::Always {
                runs[2].push(redb(&d, policy, n_redb));
            }
            std::fs::remove_dir_all(&d).expect("clean");
        }
        println!(
            "fsync={policy}: runs spool {:?}, raw {:?} msg/s",
            runs[0].iter().map(|v| v.round()).collect::<Vec<_>>(),
            runs[1].iter().map(|v| v.round()).collect::<Vec<_>>()
        );
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let [s, r, b] = runs.each_mut().map(median);
        println!(
            "fsync={policy} n={n}: spool {s:.0} msg/s, raw loop {r:.0} msg/s, redb {b:.0} msg/s; spool/raw = {:.2}x (goal >= 0.8x: {}), spool/redb = {:.2}x",
            s / r,
            if s >= 0.8 * r { "met" } else { "MISSED" },
            s / b
        );
        if policy == FsyncPolicy::Always {
            let d = dir.path().join("concurrent");
            std::fs::create_dir_all(&d).expect("dir");
            let c = spool_concurrent(&d, policy, 4 * n);
            println!(
                "fsync={policy}, {THREADS} threads appending at once (group commit): spool {c:.0} msg/s, {:.2}x the single-writer raw loop",
                c / r
            );
        }
    }
}
