//! RSS of the `enos-agent` binary: connected and idle, then bridging
//! 100 msg/s from the local broker (Mosquitto) to EnOS (the sandbox), with
//! credentials from the real signer over mTLS.
//!
//! Beside it, in the same run, the official EnOS Python SDK
//! (`enos-mqtt-sdk-python` 0.1.1, pip-installed into a venv under
//! `target/enos-sdk-venv` on first use) connected to the same sandbox and
//! publishing 100 msg/s: the footprint the agent is compared with.
//! `ENOS_BENCH_SDK=0` skips it.
//!
//! The SDK is measured after the agent, with its own console observer
//! (two observers with one client id take each other's session over, and
//! the second one then sees nothing); it must say it is connected
//! (`is_connected()`, not just "connect returned") and report how many
//! messages it published, and EnOS must see them all.
//!
//! The agent measured is the build that ships: the workspace's
//! `agent-release` profile (size over speed: `opt-level = "z"`, fat LTO,
//! one codegen unit, `panic = "abort"`), which the bench builds itself, not
//! the bench profile's build. `ENOS_AGENT_BIN=PATH` measures another build
//! instead (to compare choices one by one).
//!
//! The agent is measured bridging twice: without a spool (upstream data
//! in memory) and with `[spool]` on (every message appended to the disk
//! spool before it goes, #28), the median of `ENOS_BENCH_RUNS` runs each;
//! then once draining a spool backlog of `ENOS_BENCH_BACKLOG` messages
//! (default 360,000: one hour at 100 msg/s; #28 item 7: ≤ 8 MiB), its
//! VmHWM from start until the spool is empty.
//!
//! `cargo bench -p enos-agent --bench rss`.
#![allow(clippy::print_stdout)]

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

use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use support::{
    CONSOLE, DeviceRow, Mosquitto, TestClient, console_password_file, signer::SignerFixture,
    write_devices,
};

const GW: (&str, &str) = ("pkGw", "gwRss");
const SECRET: &str = "rssGatewaySecret";
/// The device the Python SDK logs in as (its own secret, in the sandbox).
const SDK_DEVICE: (&str, &str) = ("pkGw", "sdkRss");
const SDK_SECRET: &str = "rssSdkDeviceSecret";
const SDK_VERSION: &str = "enos-mqtt-sdk-python==0.1.1";
/// Messages each side carries: 100 msg/s for 10 s.
const MESSAGES: u64 = 1000;

/// A `/proc/PID/status` field in KiB (or a count), 0 when absent.
fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn status_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status")
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = status_of(pid);
    (
        status_field(&status, "VmRSS:"),
        status_field(&status, "VmHWM:"),
    )
}

/// What the resident set is made of: heap and stacks (anonymous), pages
/// of the executable and libraries (file), and the thread count.
fn breakdown(pid: u32) -> String {
    let status = status_of(pid);
    format!(
        "RssAnon {:.2} MiB + RssFile {:.2} MiB, {} threads",
        mib(status_field(&status, "RssAnon:")),
        mib(status_field(&status, "RssFile:") + status_field(&status, "RssShmem:")),
        status_field(&status, "Threads:")
    )
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

/// How many times the agent is measured: `$ENOS_BENCH_RUNS`, default 3.
fn agent_runs() -> usize {
    std::env::var("ENOS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// What one side measured while carrying [`MESSAGES`] at 100 msg/s.
struct Footprint {
    /// VmRSS connected and idle, KiB.
    idle: u64,
    /// Highest VmRSS sampled while carrying, KiB.
    peak: u64,
    /// VmHWM at the end: the high-water mark of the whole run, KiB.
    hwm: u64,
    /// RSS composition at the end.
    breakdown: String,
    /// Messages EnOS saw.
    received: usize,
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
    let agent_bin = shipped::agent_binary();
    // RSS differs by up to 0.3 MiB from one start of the same binary to the
    // next (where the randomised mappings fall decides which neighbouring
    // pages fault-around maps): the median of several runs.
    println!("enos-agent RSS ({})", agent_bin.display());
    let mut medians = Vec::new();
    let mut all_carried = true;
    for spool in [false, true] {
        let mut runs = Vec::new();
        for run in 0..agent_runs() {
            let run_dir = dir.path().join(format!("agent-{spool}-{run}"));
            std::fs::create_dir(&run_dir).expect("run dir");
            runs.push(agent_rss(&agent_bin, &sandbox, &run_dir, spool).await);
        }
        runs.sort_by_key(|r| r.hwm);
        let hwms: Vec<String> = runs.iter().map(|r| format!("{:.2}", mib(r.hwm))).collect();
        let agent = runs.swap_remove(runs.len() / 2);
        all_carried &= runs
            .iter()
            .chain([&agent])
            .all(|r| r.received as u64 == MESSAGES);
        let label = if spool { "spool on" } else { "no spool" };
        println!(
            "  {label}, connected, idle: VmRSS {:.2} MiB",
            mib(agent.idle)
        );
        println!(
            "  {label}, bridging 100 msg/s ({MESSAGES} msgs): VmHWM {:.2} MiB, the median of {} runs [{}] (peak VmRSS {:.2} MiB; {})",
            mib(agent.hwm),
            hwms.len(),
            hwms.join(", "),
            mib(agent.peak),
            agent.breakdown
        );
        println!(
            "  {label}, messages: {MESSAGES} published locally per run, seen on EnOS: {}",
            runs.iter()
                .chain([&agent])
                .map(|r| r.received.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        medians.push((label, agent));
    }
    let backlog = backlog_size();
    if backlog > 0 {
        let drain_dir = dir.path().join("drain");
        std::fs::create_dir(&drain_dir).expect("drain dir");
        let (hwm, took) = agent_drain_rss(&agent_bin, &sandbox, &drain_dir, backlog).await;
        println!(
            "  spool on, draining a backlog of {backlog} msgs ({:.1} s): VmHWM {:.2} MiB (goal <= 8 MiB: {})",
            took.as_secs_f64(),
            mib(hwm),
            if hwm <= 8 * 1024 { "met" } else { "MISSED" }
        );
    }

    if std::env::var("ENOS_BENCH_SDK").as_deref() != Ok("0") {
        match sdk_python() {
            Ok(python) => {
                let sdk = sdk_rss(&python, &sandbox, dir.path()).await;
                println!(
                    "official EnOS Python SDK ({SDK_VERSION}, {})",
                    python.display()
                );
                println!("  connected, idle:         VmRSS {:.2} MiB", mib(sdk.idle));
                println!(
                    "  publishing 100 msg/s ({MESSAGES} msgs): VmRSS peak {:.2} MiB (VmHWM {:.2} MiB; {})",
                    mib(sdk.peak),
                    mib(sdk.hwm),
                    sdk.breakdown
                );
                println!("  messages: {} seen on EnOS", sdk.received);
                let carried = all_carried && sdk.received as u64 == MESSAGES;
                for (label, agent) in &medians {
                    let ratio = agent.hwm as f64 / sdk.hwm as f64;
                    println!(
                        "  enos-agent ({label}) / SDK (VmHWM while carrying 100 msg/s): {ratio:.2}x (goal <= 0.25x with nothing dropped: {})",
                        if agent.hwm * 4 <= sdk.hwm && carried {
                            "met"
                        } else {
                            "MISSED"
                        }
                    );
                }
            }
            Err(reason) => println!("official EnOS Python SDK: not measured: {reason}"),
        }
    }
    drop(sandbox);
}

/// The backlog the drain phase empties: `$ENOS_BENCH_BACKLOG`, default
/// 360,000 (one hour at 100 msg/s); 0 skips the phase.
fn backlog_size() -> u64 {
    std::env::var("ENOS_BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(360_000)
}

/// The agent's config: bridging `local` to the sandbox, the spool at
/// `spool` when given (the agent's defaults otherwise, but `replay_rate =
/// 0`: a backlog drains as fast as it can, the most it can hold in flight).
fn agent_config(
    signer: &SignerFixture,
    sandbox: &Sandbox,
    dir: &Path,
    local: std::net::SocketAddr,
    spool: Option<&Path>,
) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    let spool = spool
        .map(|p| format!("\n[spool]\npath = \"{}\"\nreplay_rate = 0\n", p.display()))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            r#"
{head}
[enos]
broker = "tcp://{broker}"

[status]
file = "{status}"

[bridge]
local_broker = "tcp://{local}"

[[bridge.upstream]]
local = "gw/mp"
target = "measurepoint-post"
{spool}"#,
            head = signer.toml(),
            broker = sandbox.mqtt_addr(),
            status = dir.join("status.json").display(),
        ),
    )
    .expect("config");
    config
}

/// The agent (with the spool on) draining a backlog of `n` messages
/// written before its start: its VmHWM once the spool is empty, and how
/// long that took.
async fn agent_drain_rss(bin: &Path, sandbox: &Sandbox, dir: &Path, n: u64) -> (u64, Duration) {
    let local = Mosquitto::start();
    let signer = SignerFixture::start(dir, GW, SECRET, 3600).await;
    let spool = dir.join("upstream.spool");
    backlog::write_backlog(&spool, GW, n, enos_agent::now_ms());
    let config = agent_config(&signer, sandbox, dir, local.addr, Some(&spool));
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
    let status = dir.join("status.json");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let drained = std::fs::read_to_string(&status)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|s| s["spool"]["delivered"].as_u64() >= Some(n));
        if drained {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not drain its backlog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let (_, hwm) = memory_kib(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    (hwm, took)
}

/// Runs the agent bridging Mosquitto to the sandbox (with the spool on
/// when `spool`) and measures it.
async fn agent_rss(bin: &Path, sandbox: &Sandbox, dir: &Path, spool: bool) -> Footprint {
    let local = Mosquitto::start();
    let signer = SignerFixture::start(dir, GW, SECRET, 300).await;
    let spool_path = dir.join("upstream.spool");
    let config = agent_config(
        &signer,
        sandbox,
        dir,
        local.addr,
        spool.then_some(spool_path.as_path()),
    );

    // The executable wholly in the page cache, as after any earlier start:
    // the kernel then maps the pages around each one touched (fault-around),
    // the most RSS the binary can take and the same every run. (A partly
    // cached binary measured up to 0.3 MiB less, at random.)
    std::fs::read(bin).expect("read the agent binary");
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn agent");
    let pid = child.id();
    let status_dir = dir.to_owned();
    tokio::task::spawn_blocking(move || wait_connected(&status_dir))
        .await
        .expect("join");

    // Idle: connected, nothing to carry.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle, _) = memory_kib(pid);

    // Bridging 100 msg/s for 10 s.
    let mut cloud =
        TestClient::connect(sandbox.mqtt_addr(), "rss-agent-observer", Some(CONSOLE)).await;
    let topic = format!("/sys/{}/{}/thing/measurepoint/post", GW.0, GW.1);
    cloud.subscribe(&topic).await;
    let app = TestClient::connect(local.addr, "rss-app", None).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut peak = idle;
    let mut sent = 0u64;
    while sent < MESSAGES {
        tick.tick().await;
        let payload = format!(
            r#"{{"measurepoints":{{"temp":{}.5,"pressure":1013}},"time":{}}}"#,
            sent % 40,
            enos_agent::now_ms()
        );
        app.publish("gw/mp", payload).await;
        sent += 1;
        if sent % 100 == 0 {
            peak = peak.max(memory_kib(pid).0);
        }
    }
    let received = cloud.collect_on(&topic, Duration::from_secs(2)).await.len();
    let (end, hwm) = memory_kib(pid);
    let breakdown = breakdown(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Footprint {
        idle,
        peak: peak.max(end),
        hwm,
        breakdown,
        received,
    }
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

/// Runs the SDK publisher: RSS idle, then while it publishes
/// [`MESSAGES`] at 100 msg/s, and the messages EnOS saw.
async fn sdk_rss(python: &Path, sandbox: &Sandbox, dir: &Path) -> Footprint {
    use std::io::{BufRead, BufReader, Write};
    let secret = dir.join("sdk.secret");
    std::fs::write(&secret, SDK_SECRET).expect("secret file");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/enos_sdk_publisher.py");
    let log_path = dir.join("sdk.log");
    let log = std::fs::File::create(&log_path).expect("sdk log");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(format!("tcp://{}", sandbox.mqtt_addr()))
        .args([SDK_DEVICE.0, SDK_DEVICE.1])
        .arg(&secret)
        .args([MESSAGES.to_string().as_str(), "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn the SDK publisher");
    let pid = child.id();
    let sdk_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = move || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let line = tokio::task::block_in_place(&mut next_line);
    assert_eq!(line, "connected", "the SDK did not connect:\n{}", sdk_log());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle, _) = memory_kib(pid);
    let mut cloud =
        TestClient::connect(sandbox.mqtt_addr(), "rss-sdk-observer", Some(CONSOLE)).await;
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
    let breakdown = breakdown(pid);
    let done = tokio::task::block_in_place(&mut next_line);
    assert_eq!(
        done,
        format!("done {MESSAGES}"),
        "the SDK did not publish everything:\n{}",
        sdk_log()
    );
    let received = collect.await.expect("collect");
    let _ = writeln!(stdin, "stop");
    drop(stdin);
    let _ = child.wait();
    Footprint {
        idle,
        peak,
        hwm,
        breakdown,
        received,
    }
}
