//! The spool's append throughput against a raw loop of the same storage
//! with the same fsync policy (#28 item 7: ≥ 0.8×), and against redb (the
//! other candidate of #28 item 1), one ratio per policy in one run.
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

/// The spool: `n` appends; batched syncs every 200 ms as the agent's tick does.
fn spool(dir: &std::path::Path, policy: FsyncPolicy, n: u64) -> f64 {
    let config = SpoolConfig {
        path: dir.join("spool"),
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(86_400),
        fsync: policy,
        fsync_interval: Duration::from_millis(200),
        resume_after: Duration::from_secs(60),
        replay_rate: 0,
    };
    let (spool, _) = Spool::open(&config).expect("open");
    let start = Instant::now();
    let mut last_sync = Instant::now();
    for i in 0..n {
        spool
            .append(&message(i), 1_700_000_000_000)
            .expect("append");
        if last_sync.elapsed() >= config.fsync_interval {
            spool.sync().expect("sync");
            last_sync = Instant::now();
        }
    }
    spool.sync().expect("sync");
    n as f64 / start.elapsed().as_secs_f64()
}

/// The raw loop: the same bytes (a frame of the same size) written at the
/// end of one file, with the same fsync policy.
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
    for i in 0..n {
        let m = message(i);
        let mut record = Vec::with_capacity(27 + m.topic.len() + m.payload.len());
        record.extend_from_slice(&[0u8; 27]);
        record.extend_from_slice(m.topic.as_bytes());
        record.extend_from_slice(&m.payload);
        file.write_all_at(&record, at).expect("write");
        at += record.len() as u64;
        match policy {
            FsyncPolicy::Always => file.sync_data().expect("sync"),
            FsyncPolicy::Batched => {
                if last_sync.elapsed() >= Duration::from_millis(200) {
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
            FsyncPolicy::Batched => last_sync.elapsed() >= Duration::from_millis(200),
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
    for (policy, n) in [
        (FsyncPolicy::Batched, 200_000u64),
        (FsyncPolicy::Always, 2_000),
    ] {
        // Each measured three times, the median kept: the disk is shared.
        let median = |f: &dyn Fn(&std::path::Path) -> f64| {
            let mut runs: Vec<f64> = (0..3)
                .map(|r| {
                    let d = dir
                        .path()
                        .join(format!("{policy:?}-{r}-{}", fastrand::u64(..)));
                    std::fs::create_dir_all(&d).expect("dir");
                    f(&d)
                })
                .collect();
            runs.sort_by(|a, b| a.total_cmp(b));
            runs[1]
        };
        let s = median(&|d| spool(d, policy, n));
        let r = median(&|d| raw(d, policy, n));
        let b = median(&|d| redb(d, policy, n));
        println!(
            "fsync={policy:?} n={n}: spool {s:.0} msg/s, raw loop {r:.0} msg/s, redb {b:.0} msg/s; spool/raw = {:.2}x (goal >= 0.8x), spool/redb = {:.2}x",
            s / r,
            s / b
        );
    }
}
