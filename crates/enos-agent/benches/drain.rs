//! Drain rate of a spool backlog (#28 item 7: ≥ 0.5× a raw client).
//!
//! A spool file holding 360,000 measurepoint posts (one hour at 100 msg/s,
//! the newest spooled now; `ENOS_BENCH_BACKLOG` changes the count) is
//! drained by the `enos-agent` binary as it ships (`agent-release`, or
//! `$ENOS_AGENT_BIN`) into the sandbox (the real binary), `replay_rate = 0`
//! (unlimited); the messages held longer than `resume_after` (60 s) go up
//! through `thing.measurepoint.resume`, as the agent must. Beside it, in
//! the same run, a raw rumqttc client (QoS 1, rumqttc's default in-flight
//! window, as the agent's) publishes the same envelopes live on
//! `…/measurepoint/post` to the same sandbox, as fast as it can.
//!
//! Both are timed the same way: from the connection's CONNACK to the
//! sandbox's PUBACK of the last message (the agent: its status file's
//! `state` turning `connected` and `spool.delivered` reaching the count,
//! polled every 20 ms; the file is rewritten at most every 200 ms). The
//! agent's start (signer, connect) is printed apart. The agent's VmHWM
//! during the drain is printed too (#28 item 7: ≤ 8 MiB).
//!
//! `cargo bench -p enos-agent --bench drain`. Prints; asserts nothing but
//! that every message arrived.
#![allow(clippy::print_stdout, missing_docs)]

#[path = "support/backlog.rs"]
mod backlog;
#[path = "support/shipped.rs"]
mod shipped;
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enos_sign_core::{ExposeSecret, SignMethod};
use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use support::{CONSOLE, DeviceRow, console_password_file, signer::SignerFixture, write_devices};
use tokio::sync::oneshot;

const GW: (&str, &str) = ("pkDrain", "gwDrain");
const SECRET: &str = "drainGatewaySecret";
/// The device the raw client logs in as.
const RAW: (&str, &str) = ("pkDrain", "rawDrain");
const RAW_SECRET: &str = "drainRawDeviceSecret";

/// How long either side may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(900);

fn backlog_size() -> u64 {
    std::env::var("ENOS_BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(360_000)
}

/// The span from the first message handed over to the last one
/// acknowledged by the sandbox.
struct Seen {
    first: Instant,
    last: Instant,
}

impl Seen {
    fn rate(&self, n: u64) -> f64 {
        n as f64 / (self.last - self.first).as_secs_f64()
    }
}

/// The agent's status file, parsed (`Null` while unreadable).
fn status(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn memory_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the agent's drain measured.
struct AgentDrain {
    /// From the first message seen to the last.
    seen: Seen,
    /// From the agent's start to the first message seen.
    start: Duration,
    /// The agent's VmHWM at the end, KiB.
    hwm: u64,
    /// The spool file's size before the drain.
    spool_bytes: u64,
}

/// The agent binary draining a backlog of `n` messages.
async fn agent_drain(bin: &Path, sandbox: &Sandbox, dir: &Path, n: u64) -> AgentDrain {
    let spool = dir.join("upstream.spool");
    let spool_bytes = backlog::write_backlog(&spool, GW, n, enos_agent::now_ms());
    let signer = SignerFixture::start(dir, GW, SECRET, 3600).await;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
{head}
[enos]
broker = "tcp://{broker}"

[status]
file = "{status}"

[spool]
path = "{spool}"
replay_rate = 0
"#,
            status = dir.join("status.json").display(),
            head = signer.toml(),
            broker = sandbox.mqtt_addr(),
            spool = spool.display(),
        ),
    )
    .expect("config");
    std::fs::read(bin).expect("read the agent binary");
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn agent");
    let pid = child.id();
    let status_file = dir.join("status.json");
    let deadline = Instant::now() + PATIENCE;
    let mut first = None;
    let last = loop {
        let s = status(&status_file);
        let now = Instant::now();
        if first.is_none() && s["state"] == "connected" {
            first = Some(now);
        }
        if s["spool"]["delivered"].as_u64() >= Some(n) {
            break now;
        }
        assert!(
            now < deadline,
            "the agent did not drain its backlog in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen = Seen {
        first: first.unwrap_or(last),
        last,
    };
    let hwm = memory_hwm_kib(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    AgentDrain {
        start: seen.first - started,
        seen,
        hwm,
        spool_bytes,
    }
}

/// A raw rumqttc client publishing the same `n` envelopes live.
async fn raw_publish(sandbox: &Sandbox, n: u64) -> Seen {
    let login = enos_testkit::device_login(
        RAW.0,
        RAW.1,
        RAW_SECRET,
        SignMethod::HmacSha1,
        enos_agent::now_ms(),
    );
    let addr = sandbox.mqtt_addr();
    let mut options = MqttOptions::new(
        login.mqtt_client_id.clone(),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_credentials(
        login.username.clone(),
        login.password.expose_secret().to_owned(),
    );
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (connected_tx, connected_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let poll = tokio::spawn(async move {
        let mut connected = Some(connected_tx);
        let mut done = Some(done_tx);
        let mut acked = 0u64;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    acked += 1;
                    if acked == n {
                        if let Some(tx) = done.take() {
                            let _ = tx.send(Instant::now());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("the raw client lost the sandbox: {e}"),
            }
        }
    });
    let topic = backlog::post_topic(RAW);
    let now = enos_agent::now_ms();
    for i in 0..n {
        client
            .publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                backlog::envelope(i, backlog::taken_at(i, n, now)),
            )
            .await
            .expect("publish");
    }
    let last = tokio::time::timeout(PATIENCE, done_rx)
        .await
        .expect("the raw client's messages are acknowledged in time")
        .expect("the raw client's event loop");
    poll.abort();
    Seen {
        first: connected_rx.await.expect("connack"),
        last,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    enos_agent::install_crypto_provider();
    let n = backlog_size();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(
        &devices,
        &[
            DeviceRow::new(GW.0, GW.1, SECRET),
            DeviceRow::new(RAW.0, RAW.1, RAW_SECRET),
        ],
    );
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .log_filter("warn")
        .console(CONSOLE.0, console_password_file(dir.path()))
        .start()
        .expect("sandbox");
    let agent_bin = shipped::agent_binary();

    let agent = agent_drain(&agent_bin, &sandbox, dir.path(), n).await;
    let raw = raw_publish(&sandbox, n).await;
    let (a, r) = (agent.seen.rate(n), raw.rate(n));
    println!("enos-agent ({})", agent_bin.display());
    println!(
        "  drained a backlog of {n} messages ({:.1} MiB of spool): {a:.0} msg/s ({:.1} s first to last; {:.2} s from start to the first), VmHWM {:.2} MiB (goal <= 8 MiB: {})",
        agent.spool_bytes as f64 / (1 << 20) as f64,
        (agent.seen.last - agent.seen.first).as_secs_f64(),
        agent.start.as_secs_f64(),
        agent.hwm as f64 / 1024.0,
        if agent.hwm <= 8 * 1024 {
            "met"
        } else {
            "MISSED"
        },
    );
    println!(
        "raw rumqttc client, the same {n} messages live: {r:.0} msg/s ({:.1} s first to last)",
        (raw.last - raw.first).as_secs_f64()
    );
    println!(
        "drain / raw = {:.2}x (goal >= 0.5x: {})",
        a / r,
        if a >= 0.5 * r { "met" } else { "MISSED" }
    );
    drop(sandbox);
}
