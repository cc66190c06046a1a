//! RSS of the `enos-agent` binary: connected and idle, then bridging
//! 100 msg/s from the local broker (Mosquitto) to EnOS (the sandbox), with
//! credentials from the real signer over mTLS. Goal: ≤ 10 MiB.
//!
//! `cargo bench -p enos-agent --bench rss` (release build of the agent).
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enos_sandbox::{Sandbox, SandboxBinary};
use support::{
    CONSOLE, DeviceRow, Mosquitto, TestClient, console_password_file, signer::SignerFixture,
    write_devices,
};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const GW: (&str, &str) = ("pkGw", "gwRss");
const SECRET: &str = "rssGatewaySecret";

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn wait_connected(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::fs::read_to_string(dir.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|s| s["state"] == "connected" && s["local_broker_connected"] == true);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "the agent did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    enos_agent::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, SECRET)]);
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .log_filter("warn")
        .console(CONSOLE.0, console_password_file(dir.path()))
        .start()
        .expect("sandbox");
    let local = Mosquitto::start();
    let signer = SignerFixture::start(dir.path(), GW, SECRET, 300).await;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[device]
product_key = "{pk}"
device_key = "{dk}"

{signer}
[enos]
broker = "tcp://{broker}"

[status]
file = "{status}"

[bridge]
local_broker = "tcp://{local}"

[[bridge.upstream]]
local = "gw/mp"
target = "measurepoint-post"
"#,
            pk = GW.0,
            dk = GW.1,
            signer = signer.toml(),
            broker = sandbox.mqtt_addr(),
            status = dir.path().join("status.json").display(),
            local = local.addr,
        ),
    )
    .expect("config");

    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("ENOS_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn agent");
    let pid = child.id();
    let status_dir = dir.path().to_owned();
    tokio::task::spawn_blocking(move || wait_connected(&status_dir))
        .await
        .expect("join");

    // Idle: connected, nothing to carry.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle_rss, idle_hwm) = memory_kib(pid);

    // Bridging 100 msg/s for 10 s.
    let mut cloud = TestClient::observer(sandbox.mqtt_addr()).await;
    let topic = format!("/sys/{}/{}/thing/measurepoint/post", GW.0, GW.1);
    cloud.subscribe(&topic).await;
    let app = TestClient::connect(local.addr, "rss-app", None).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut peak_rss = 0;
    let started = Instant::now();
    let mut sent = 0u64;
    // 1000 messages on a 10 ms schedule: 100 msg/s for 10 s.
    while sent < 1000 {
        tick.tick().await;
        let payload = format!(
            r#"{{"measurepoints":{{"temp":{}.5,"pressure":1013}},"time":{}}}"#,
            sent % 40,
            enos_agent::now_ms()
        );
        app.publish("gw/mp", payload).await;
        sent += 1;
        if sent % 100 == 0 {
            peak_rss = peak_rss.max(memory_kib(pid).0);
        }
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    let received = cloud.collect_on(&topic, Duration::from_secs(2)).await.len();
    let (end_rss, hwm) = memory_kib(pid);
    peak_rss = peak_rss.max(end_rss);

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    println!("enos-agent RSS (release binary, current-thread runtime)");
    println!(
        "  connected, idle:         VmRSS {:.2} MiB (VmHWM {:.2} MiB)",
        mib(idle_rss),
        mib(idle_hwm)
    );
    println!(
        "  bridging {rate:.0} msg/s ({sent} msgs): VmRSS peak {:.2} MiB, at end {:.2} MiB (VmHWM {:.2} MiB)",
        mib(peak_rss),
        mib(end_rss),
        mib(hwm)
    );
    println!("  messages: {sent} published locally, {received} seen on EnOS");
    println!(
        "  goal <= 10 MiB: idle {}, bridging {}",
        if idle_rss <= 10 * 1024 {
            "met"
        } else {
            "MISSED"
        },
        if hwm <= 10 * 1024 { "met" } else { "MISSED" }
    );
    drop(sandbox);
}
