//! Connects per second through the sandbox: N clients (default 500), each
//! with its own signed login, connect at once; the time until all have
//! their CONNACK, best of a few rounds.
//!
//! `ENOS_BENCH_BASELINE_SANDBOX=/path/to/enos-sandbox` runs the same load
//! against another build (e.g. one without the front) in the same run and
//! prints the ratio. `ENOS_BENCH_CLIENTS` and `ENOS_BENCH_ROUNDS` size it.
#![allow(clippy::print_stdout, missing_docs)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use enos_sign_core::{ExposeSecret, MqttCredential, SignMethod};
use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_devices(dir: &Path, n: usize) -> PathBuf {
    let mut csv = String::from("productKey,deviceKey,deviceSecret\n");
    for i in 0..n {
        csv.push_str(&format!("pkBench,dev{i},secret-of-dev{i}\n"));
    }
    let path = dir.join("devices.csv");
    std::fs::write(&path, csv).expect("write devices");
    path
}

fn login(i: usize) -> MqttCredential {
    enos_testkit::device_login(
        "pkBench",
        &format!("dev{i}"),
        &format!("secret-of-dev{i}"),
        SignMethod::HmacSha1,
        enos_domain::now_ms(),
    )
}

/// All `n` clients connect at once; returns the time until the last CONNACK.
async fn storm(addr: std::net::SocketAddr, n: usize) -> Duration {
    let logins: Vec<MqttCredential> = (0..n).map(login).collect();
    let start = Instant::now();
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for credential in logins {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let mut options = MqttOptions::new(
                credential.mqtt_client_id.clone(),
                addr.ip().to_string(),
                addr.port(),
            );
            options.set_credentials(
                credential.username.clone(),
                credential.password.expose_secret().to_owned(),
            );
            options.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = AsyncClient::new(options, 4);
            barrier.wait().await;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        assert_eq!(ack.code, ConnectReturnCode::Success);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connect failed: {e}"),
                }
            }
            let done = Instant::now();
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            done
        }));
    }
    let mut last = start;
    for task in tasks {
        last = last.max(task.await.expect("client task"));
    }
    last - start
}

async fn measure(binary: SandboxBinary, devices: &Path, n: usize, rounds: usize) -> f64 {
    let sandbox = Sandbox::builder(binary, devices)
        .log_filter("warn")
        .start()
        .expect("sandbox starts");
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let took = storm(sandbox.mqtt_addr(), n).await;
        best = best.min(took.as_secs_f64());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    n as f64 / best
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_usize("ENOS_BENCH_CLIENTS", 500);
    let rounds = env_usize("ENOS_BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = write_devices(dir.path(), n);
    let ours = measure(
        SandboxBinary::at(env!("CARGO_BIN_EXE_enos-sandbox")),
        &devices,
        n,
        rounds,
    )
    .await;
    println!("sandbox (front + rumqttd): {n} clients, {ours:.0} connects/s (best of {rounds})");
    if let Ok(baseline) = std::env::var("ENOS_BENCH_BASELINE_SANDBOX") {
        let theirs = measure(SandboxBinary::at(baseline), &devices, n, rounds).await;
        println!(
            "baseline sandbox:          {n} clients, {theirs:.0} connects/s (best of {rounds})"
        );
        println!("ratio (ours / baseline):   {:.2}", ours / theirs);
    }
}
