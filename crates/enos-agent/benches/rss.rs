//! RSS of the `enos-agent` binary: connected and idle, then bridging
//! 100 msg/s from the local broker (Mosquitto) to EnOS (the sandbox), with
//! credentials from the real signer over mTLS. Goal: ≤ 10 MiB.
//!
//! Beside it, in the same run, the official EnOS Python SDK
//! (`enos-mqtt-sdk-python` 0.1.1, pip-installed into a venv under
//! `target/enos-sdk-venv` on first use) connected to the same sandbox and
//! publishing 100 msg/s: the footprint the agent is compared with.
//! `ENOS_BENCH_SDK=0` skips it.
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

use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use support::{
    CONSOLE, DeviceRow, Mosquitto, TestClient, console_password_file, signer::SignerFixture,
    write_devices,
};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const GW: (&str, &str) = ("pkGw", "gwRss");
const SECRET: &str = "rssGatewaySecret";
/// The device the Python SDK logs in as (its own secret, in the sandbox).
const SDK_DEVICE: (&str, &str) = ("pkGw", "sdkRss");
const SDK_SECRET: &str = "rssSdkDeviceSecret";
const SDK_VERSION: &str = "enos-mqtt-sdk-python==0.1.1";

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
    write_devices(
        &devices,
        &[
            DeviceRow::new(GW.0, GW.1, SECRET),
            DeviceRow::new(SDK_DEVICE.0, SDK_DEVICE.1, SDK_SECRET),
        ],
    );
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
    let agent_hwm = hwm;

    if std::env::var("ENOS_BENCH_SDK").as_deref() != Ok("0") {
        match sdk_python() {
            Ok(python) => {
                let (idle, peak, hwm, received) = sdk_rss(&python, &sandbox, dir.path()).await;
                println!(
                    "official EnOS Python SDK ({SDK_VERSION}, {})",
                    python.display()
                );
                println!("  connected, idle:         VmRSS {:.2} MiB", mib(idle));
                println!(
                    "  publishing 100 msg/s (1000 msgs): VmRSS peak {:.2} MiB (VmHWM {:.2} MiB); {received} seen on EnOS",
                    mib(peak),
                    mib(hwm)
                );
                println!(
                    "  enos-agent / SDK (VmHWM while carrying 100 msg/s): {:.2}x (goal <= 0.25x: {})",
                    agent_hwm as f64 / hwm as f64,
                    if agent_hwm * 4 <= hwm {
                        "met"
                    } else {
                        "MISSED"
                    }
                );
            }
            Err(reason) => println!("official EnOS Python SDK: not measured: {reason}"),
        }
    }
    drop(sandbox);
}

/// The venv's python with the SDK installed, creating the venv on first use.
fn sdk_python() -> Result<std::path::PathBuf, String> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let venv = target.join("enos-sdk-venv");
    let python = venv.join("bin/python");
    let has_sdk = |python: &Path| {
        Command::new(python)
            .args(["-c", "import enos.core.MqttClient"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_sdk(&python) {
        return Ok(python);
    }
    let ran = |cmd: &mut Command| -> Result<(), String> {
        let status = cmd.status().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("exit {status}"))
        }
    };
    ran(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .map_err(|e| format!("python3 -m venv {}: {e}", venv.display()))?;
    ran(Command::new(venv.join("bin/pip")).args(["install", "-q", SDK_VERSION]))
        .map_err(|e| format!("pip install {SDK_VERSION}: {e}"))?;
    if has_sdk(&python) {
        Ok(python)
    } else {
        Err("the SDK does not import after pip install".into())
    }
}

/// Runs the SDK publisher: RSS idle, peak and VmHWM while publishing
/// 1000 messages at 100 msg/s, and the messages EnOS saw.
async fn sdk_rss(python: &Path, sandbox: &Sandbox, dir: &Path) -> (u64, u64, u64, usize) {
    use std::io::{BufRead, BufReader, Write};
    let secret = dir.join("sdk.secret");
    std::fs::write(&secret, SDK_SECRET).expect("secret file");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/enos_sdk_publisher.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(format!("tcp://{}", sandbox.mqtt_addr()))
        .args([SDK_DEVICE.0, SDK_DEVICE.1])
        .arg(&secret)
        .args(["1000", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the SDK publisher");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = move || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let line = tokio::task::block_in_place(&mut next_line);
    assert_eq!(line, "connected", "the SDK did not connect");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle, _) = memory_kib(pid);
    let mut cloud = TestClient::observer(sandbox.mqtt_addr()).await;
    let topic = format!(
        "/sys/{}/{}/thing/measurepoint/post",
        SDK_DEVICE.0, SDK_DEVICE.1
    );
    cloud.subscribe(&topic).await;
    writeln!(stdin, "go").expect("go");
    let collect = tokio::spawn(async move {
        cloud
            .collect_on(&topic, Duration::from_secs(12))
            .await
            .len()
    });
    let mut peak = idle;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(11) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(memory_kib(pid).0);
    }
    let (_, hwm) = memory_kib(pid);
    let received = collect.await.expect("collect");
    let _ = writeln!(stdin, "stop");
    drop(stdin);
    let _ = child.wait();
    (idle, peak, hwm, received)
}
