//! A spool file holding a backlog, as an agent leaves it after an outage:
//! measurepoint posts in the EnOS envelope, one every 10 ms (100 msg/s),
//! the last one spooled now.

use std::{path::Path, time::Duration};

use enos_agent::{
    Outbound,
    config::SpoolConfig,
    spool::{FsyncPolicy, Spool},
};
use rumqttc::QoS;

/// The spool's settings in the benches: the agent's defaults, except the
/// size bound (a backlog is never evicted here).
pub(crate) fn spool_config(path: &Path) -> SpoolConfig {
    SpoolConfig {
        path: path.to_owned(),
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(7 * 86_400),
        fsync: FsyncPolicy::Batched,
        fsync_interval: Duration::from_millis(200),
        resume_after: Duration::from_secs(60),
        replay_rate: 0,
    }
}

/// Message `i`'s envelope, as the agent's bridge builds it for a local
/// `measurepoint-post` taken at `time_ms`.
pub(crate) fn envelope(i: u64, time_ms: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"{i}","version":"1.0","method":"thing.measurepoint.post","params":{{"measurepoints":{{"temp":{}.5,"pressure":1013}},"time":{time_ms}}}}}"#,
        i % 40
    )
    .into_bytes()
}

/// `/sys/{pk}/{dk}/thing/measurepoint/post`.
pub(crate) fn post_topic(device: (&str, &str)) -> String {
    format!("/sys/{}/{}/thing/measurepoint/post", device.0, device.1)
}

/// The time message `i` of `n` was taken: 10 ms apart, the last now.
pub(crate) fn taken_at(i: u64, n: u64, now_ms: u64) -> u64 {
    now_ms - (n - 1 - i) * 10
}

/// Writes a spool at `path` holding `n` posts of `device`, as
/// [`taken_at`] spreads them; returns the file's size.
pub(crate) fn write_backlog(path: &Path, device: (&str, &str), n: u64, now_ms: u64) -> u64 {
    let (spool, _) = Spool::open(&spool_config(path)).expect("open the backlog spool");
    let topic = post_topic(device);
    for i in 0..n {
        let at = taken_at(i, n, now_ms);
        let m = Outbound {
            topic: topic.clone(),
            payload: envelope(i, at),
            qos: QoS::AtLeastOnce,
        };
        spool.append(&m, at).expect("append to the backlog");
    }
    spool.sync().expect("sync the backlog");
    drop(spool);
    std::fs::metadata(path).expect("stat the backlog").len()
}
