//! Start → CONNACK of the `enos-agent` binary on loopback: process start,
//! config, mTLS to the real signer, credential, MQTT CONNECT to the
//! sandbox, CONNACK (the agent's `connected to EnOS` log line), over
//! `ENOS_BENCH_STARTS` starts (default 100). Beside it, in the same run, a
//! raw rumqttc client with a pre-signed password connecting to the same
//! sandbox: the floor. Goal: p50 ≤ 20 ms, p99 ≤ 50 ms. Measured for the
//! binary as it ships (the `agent-release` profile: size over speed) and,
//! beside it, the `release` build of the bench itself, starts alternating.
//!
//! `cargo bench -p enos-agent --bench connect_latency`.
#![allow(clippy::print_stdout, missing_docs)]

#[path = "support/shipped.rs"]
mod shipped;
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enos_sign_core::{ExposeSecret, MqttCredential, SignMethod};
use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
use support::{DeviceRow, signer::SignerFixture, write_devices};

/// The `release` build of the agent (the bench's own profile).
const RELEASE_BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const GW: (&str, &str) = ("pkLat", "gwLatency");
const SECRET: &str = "latencyGatewaySecret";

fn starts() -> usize {
    std::env::var("ENOS_BENCH_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn quantile(values: &mut [Duration], p: f64) -> Duration {
    values.sort_unstable();
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One start of the binary: the time until it logs its CONNACK; then it
/// is stopped with SIGTERM (clean DISCONNECT) and reaped.
fn one_start(bin: &std::path::Path, config: &std::path::Path) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let took = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("connected to EnOS") => break started.elapsed(),
            Some(Ok(_)) => {}
            _ => panic!("the agent ended before connecting"),
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    // Drain the rest so that the agent never blocks on a full pipe.
    for _ in lines {}
    let _ = child.wait();
    took
}

fn login() -> MqttCredential {
    enos_testkit::device_login(
        GW.0,
        GW.1,
        SECRET,
        SignMethod::HmacSha1,
        enos_agent::now_ms(),
    )
}

/// One raw rumqttc connect with a pre-signed password: time to CONNACK.
async fn one_raw(addr: std::net::SocketAddr, credential: &MqttCredential) -> Duration {
    let mut options = MqttOptions::new(
        credential.mqtt_client_id.clone(),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_credentials(
        credential.username.clone(),
        credential.password.expose_secret().to_owned(),
    );
    let started = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let took = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                break started.elapsed();
            }
            Ok(_) => {}
            Err(e) => panic!("raw connect failed: {e}"),
        }
    };
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    enos_agent::install_crypto_provider();
    let n = starts();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, SECRET)]);
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .log_filter("warn")
        .start()
        .expect("sandbox");
    let signer = SignerFixture::start(dir.path(), GW, SECRET, 300).await;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[enos]\nbroker = \"tcp://{}\"\n",
            signer.toml(),
            sandbox.mqtt_addr()
        ),
    )
    .expect("config");

    // One start of each to warm the page cache and the signer; then the
    // two builds alternate, so that both see the same machine.
    let shipped_bin = shipped::agent_binary();
    let release_bin = std::path::PathBuf::from(RELEASE_BIN);
    let config_path = config.clone();
    let (mut agent, mut release) = tokio::task::spawn_blocking(move || {
        one_start(&shipped_bin, &config_path);
        one_start(&release_bin, &config_path);
        let mut agent = Vec::with_capacity(n);
        let mut release = Vec::with_capacity(n);
        for _ in 0..n {
            agent.push(one_start(&shipped_bin, &config_path));
            release.push(one_start(&release_bin, &config_path));
        }
        (agent, release)
    })
    .await
    .expect("starts");

    let credential = login();
    let _ = one_raw(sandbox.mqtt_addr(), &credential).await;
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        raw.push(one_raw(sandbox.mqtt_addr(), &credential).await);
    }

    let (a50, a99) = (quantile(&mut agent, 0.5), quantile(&mut agent, 0.99));
    let (r50, r99) = (quantile(&mut raw, 0.5), quantile(&mut raw, 0.99));
    let (b50, b99) = (quantile(&mut release, 0.5), quantile(&mut release, 0.99));
    println!(
        "enos-agent start -> CONNACK on loopback ({n} starts of the shipped binary, profile {})",
        shipped::SHIPPED_PROFILE
    );
    println!(
        "  agent (exec, config, mTLS to the signer, credential, CONNECT): p50 {:.1} ms, p99 {:.1} ms",
        ms(a50),
        ms(a99)
    );
    println!(
        "  the same, release profile ({n} starts, alternating):         p50 {:.1} ms, p99 {:.1} ms",
        ms(b50),
        ms(b99)
    );
    println!(
        "  raw rumqttc, pre-signed password (CONNECT only):              p50 {:.1} ms, p99 {:.1} ms",
        ms(r50),
        ms(r99)
    );
    println!(
        "  ratio agent / raw: p50 {:.1}x, p99 {:.1}x",
        a50.as_secs_f64() / r50.as_secs_f64().max(1e-9),
        a99.as_secs_f64() / r99.as_secs_f64().max(1e-9)
    );
    println!(
        "  goal p50 <= 20 ms: {}; p99 <= 50 ms: {}",
        if ms(a50) <= 20.0 { "met" } else { "MISSED" },
        if ms(a99) <= 50.0 { "met" } else { "MISSED" }
    );
    drop(signer);
    drop(sandbox);
}
