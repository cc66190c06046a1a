//! #28 item 6, the outage test, with real processes: the EnOS sandbox
//! (its binary, recording what it receives), the real signer over mTLS,
//! the `enos-agent` binary and Mosquitto as the gateway's local broker.
//!
//! A local application publishes measurepoints at 100 msg/s (QoS 1) for
//! the gateway and two sub-devices. The sandbox is stopped for 60 s; 30 s
//! into the outage the agent is SIGKILLed and started again; then the
//! sandbox starts again on the same port with the same device file. What
//! the sandbox recorded is compared with what Mosquitto acknowledged to
//! the application. Each run takes about 75 s; the two run in parallel.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use support::{
    CONSOLE, DeviceRow, Mosquitto, console_password_file, init, signer::SignerFixture,
    write_devices,
};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const GW: (&str, &str) = ("pkGw", "gwOutage");
const GW_SECRET: &str = "outageSecret01";
const SUBS: [(&str, &str, &str); 2] = [
    ("pkSub", "meterA", "meterSecretA1"),
    ("pkSub", "meterB", "meterSecretB1"),
];
/// The application's rate, all three devices together.
const RATE: u64 = 100;
const OUTAGE: Duration = Duration::from_secs(60);
const KILL_AT: Duration = Duration::from_secs(30);
/// Live traffic before the outage and after it.
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(5);
/// `[spool] resume_after`: what waited longer goes through resume.
const RESUME_AFTER_MS: u64 = 5_000;

/// One device's measurepoint topic on the local broker and in EnOS.
fn device_topics(i: usize) -> (String, String) {
    match i {
        0 => (
            "app/gw".into(),
            format!("/sys/{}/{}/thing/measurepoint/post", GW.0, GW.1),
        ),
        _ => {
            let (pk, dk, _) = SUBS[i - 1];
            (
                format!("app/{dk}"),
                format!("/sys/{pk}/{dk}/thing/measurepoint/post"),
            )
        }
    }
}

/// `pk/dk` of device `i`.
fn device_name(i: usize) -> String {
    match i {
        0 => format!("{}/{}", GW.0, GW.1),
        _ => format!("{}/{}", SUBS[i - 1].0, SUBS[i - 1].1),
    }
}

struct World {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    local: Mosquitto,
    /// Kept running for the agent; dropped with the world.
    _signer: SignerFixture,
    config: PathBuf,
}

impl World {
    async fn start(spool: &str) -> World {
        init();
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = dir.path().join("devices.csv");
        let mut rows = vec![DeviceRow::new(GW.0, GW.1, GW_SECRET)];
        for (pk, dk, secret) in SUBS {
            rows.push(DeviceRow::new(pk, dk, secret).sub_of(GW));
        }
        write_devices(&devices, &rows);
        let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
            .console(CONSOLE.0, console_password_file(dir.path()))
            .record(dir.path().join("received.jsonl"))
            .start()
            .expect("sandbox");
        let local = Mosquitto::start();
        let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
        for (pk, dk, secret) in SUBS {
            signer
                .signer
                .put_device(pk, dk, secret)
                .await
                .expect("put sub-device");
            signer
                .signer
                .bind_sub_device(GW, (pk, dk))
                .await
                .expect("bind");
        }
        let mut extra = format!(
            r#"
[status]
file = "{status}"

[bridge]
local_broker = "tcp://{local}"
client_id = "outage-bridge"

[[bridge.upstream]]
local = "app/gw"
target = "measurepoint-post"
qos = 1
"#,
            status = dir.path().join("status.json").display(),
            local = local.addr,
        );
        for (pk, dk, _) in SUBS {
            extra.push_str(&format!(
                "\n[[bridge.upstream]]\nlocal = \"app/{dk}\"\ntarget = \"raw\"\nenos_topic = \"/sys/{pk}/{dk}/thing/measurepoint/post\"\nqos = 1\n"
            ));
        }
        extra.push_str(&format!(
            "\n[spool]\npath = \"{}\"\nresume_after = \"{RESUME_AFTER_MS}ms\"\n{spool}\n",
            dir.path().join("spool/upstream.spool").display()
        ));
        for (pk, dk, _) in SUBS {
            extra.push_str(&format!(
                "\n[[sub_devices]]\nproduct_key = \"{pk}\"\ndevice_key = \"{dk}\"\n"
            ));
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            signer.agent_toml(&format!("tcp://{}", sandbox.mqtt_addr()), &extra),
        )
        .expect("write config");
        World {
            dir,
            sandbox,
            local,
            _signer: signer,
            config,
        }
    }

    fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits (up to `within`) until the status file satisfies `pred`.
    fn wait_status(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "status file never showed {what}: {:#?}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_agent(&self, run: u32) -> Agent {
        let log = std::fs::File::create(self.log(run)).expect("agent log");
        Agent(
            Command::new(BIN)
                .arg("run")
                .arg("--config")
                .arg(&self.config)
                .env("ENOS_AGENT_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn agent"),
        )
    }

    fn log(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("agent-{run}.log"))
    }

    fn dump(&self) -> String {
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "agent 1:\n{}\nagent 2:\n{}\nstatus: {:#?}",
            tail(&self.log(1)),
            tail(&self.log(2)),
            self.status()
        )
    }
}

/// The agent's process; SIGKILLed when dropped, so a failing test leaves
/// none behind.
struct Agent(Child);

impl Agent {
    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A message the application published: its device, number, and time.
#[derive(Debug, Clone, Copy)]
struct Sent {
    device: usize,
    seq: u64,
    time: u64,
}

/// Publishes `{"measurepoints": {"seq": n}, "time": t}` at [`RATE`] per
/// second, round robin over the three devices, QoS 1, each publish waiting
/// for Mosquitto's PUBACK (so "acknowledged" is exact), until `stop`;
/// holds back while `pause.0` is set (saying so in `pause.1`) and catches
/// up after.
async fn application(
    local: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    pause: Arc<(AtomicBool, AtomicBool)>,
    acked: Arc<Mutex<Vec<Sent>>>,
) -> u64 {
    let mut options = MqttOptions::new("outage-app", local.ip().to_string(), local.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(started + Duration::from_millis(sent * 1000 / RATE)).await;
        if pause.0.load(Ordering::SeqCst) {
            pause.1.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        pause.1.store(false, Ordering::SeqCst);
        let device = usize::try_from(sent % 3).expect("small");
        let time = enos_agent::now_ms();
        let (local_topic, enos_topic) = device_topics(device);
        let params = serde_json::json!({"measurepoints": {"seq": sent}, "time": time});
        let payload = if device == 0 {
            params
        } else {
            // Raw routes: the application builds the envelope itself.
            serde_json::json!({
                "id": format!("app-{sent}"),
                "version": "1.0",
                "method": "thing.measurepoint.post",
                "params": params,
            })
        };
        let _ = enos_topic;
        client
            .publish(local_topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .expect("queue the publish");
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("the local broker failed the application: {e}"),
            }
        }
        acked.lock().expect("lock").push(Sent {
            device,
            seq: sent,
            time,
        });
        sent += 1;
    }
    sent
}

/// One message as the sandbox recorded it: a post, a resume, or one
/// entry of a resume batch.
#[derive(Debug, Clone)]
struct Arrived {
    device: String,
    seq: u64,
    time: u64,
    received_ms: u64,
    resumed: bool,
}

/// Flattens the sandbox's record into messages, in arrival order.
fn arrivals(lines: &[String]) -> Vec<Arrived> {
    let mut out = Vec::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("record line");
        let topic = v["topic"].as_str().expect("topic");
        let received_ms = v["received_ms"].as_u64().expect("received_ms");
        let p = &v["payload"];
        let device_of = |topic: &str| {
            let mut keys = topic.trim_start_matches("/sys/").split('/');
            format!("{}/{}", keys.next().expect("pk"), keys.next().expect("dk"))
        };
        let entry = |device: String, params: &serde_json::Value, resumed: bool| Arrived {
            device,
            seq: params["measurepoints"]["seq"].as_u64().expect("seq"),
            time: params["time"].as_u64().expect("time"),
            received_ms,
            resumed,
        };
        if topic.ends_with("/thing/measurepoint/post") {
            assert_eq!(p["method"], "thing.measurepoint.post", "{v}");
            out.push(entry(device_of(topic), &p["params"], false));
        } else if topic.ends_with("/thing/measurepoint/resume") {
            assert_eq!(p["method"], "thing.measurepoint.resume", "{v}");
            out.push(entry(device_of(topic), &p["params"], true));
        } else if topic.ends_with("/thing/measurepoint/resume/batch") {
            assert_eq!(p["method"], "thing.measurepoint.resume.batch", "{v}");
            assert_eq!(p["allowOfflineSubDevice"], true, "{v}");
            assert_eq!(p["skipInvalidMeasurepoints"], true, "{v}");
            for e in p["params"].as_array().expect("batch entries") {
                let device = format!(
                    "{}/{}",
                    e["productKey"].as_str().expect("productKey"),
                    e["deviceKey"].as_str().expect("deviceKey")
                );
                out.push(entry(device, e, true));
            }
        }
    }
    out
}

/// What one run saw.
struct Outcome {
    acked: Vec<Sent>,
    arrived: Vec<Arrived>,
    stopped_at: u64,
    killed_at: u64,
    back_at: u64,
    status: serde_json::Value,
}

/// Where the application holds back for a moment, until the agent has
/// everything it acknowledged spooled and (while EnOS is up) delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// Before EnOS goes away: nothing is in flight to it then. A message
    /// EnOS received but did not acknowledge would be sent again: a
    /// duplicate, or, once evicted, counted evicted though it arrived.
    AtTheStop,
    /// That, and before the SIGKILL too: no message is spooled and not
    /// yet acknowledged to Mosquitto, which would deliver it again.
    AtTheStopAndTheKill,
}

/// Holds the application back until the status file shows every message
/// Mosquitto acknowledged to it appended (and, when `delivered`, the spool
/// empty); returns with the application still paused.
fn quiesce(
    world: &World,
    pause: &(AtomicBool, AtomicBool),
    acked: &Mutex<Vec<Sent>>,
    delivered: bool,
) {
    pause.0.store(true, Ordering::SeqCst);
    // The publish in progress finishes first.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pause.1.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the application does not pause");
        std::thread::sleep(Duration::from_millis(2));
    }
    let n = acked.lock().expect("lock").len() as u64;
    world.wait_status("the agent caught up", Duration::from_secs(20), |s| {
        s["spool"]["appended"].as_u64() == Some(n) && (!delivered || s["spool"]["messages"] == 0)
    });
}

/// The scenario; returns once everything acknowledged arrived (or
/// `settled` says the rest will not), the agent stopped.
async fn outage(
    world: &mut World,
    quiet: Quiet,
    settled: impl Fn(&World, &[Sent], &[Arrived]) -> bool,
) -> Outcome {
    let mut agent = world.start_agent(1);
    world.wait_status(
        "connected, sub-devices online",
        Duration::from_secs(20),
        |s| {
            s["state"] == "connected"
                && s["local_broker_connected"] == true
                && s["sub_devices"]
                    .as_array()
                    .is_some_and(|d| d.len() == 2 && d.iter().all(|d| d["state"] == "online"))
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new((AtomicBool::new(false), AtomicBool::new(false)));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let app = tokio::spawn(application(
        world.local.addr,
        stop.clone(),
        pause.clone(),
        acked.clone(),
    ));

    tokio::time::sleep(BEFORE).await;
    quiesce(world, &pause, &acked, true);
    let stopped_at = enos_agent::now_ms();
    let outage_started = Instant::now();
    world.sandbox.stop().expect("stop the sandbox");
    pause.0.store(false, Ordering::SeqCst);
    tokio::time::sleep_until((outage_started + KILL_AT).into()).await;
    if quiet == Quiet::AtTheStopAndTheKill {
        quiesce(world, &pause, &acked, false);
    }
    let killed_at = enos_agent::now_ms();
    agent.kill();
    let mut agent = world.start_agent(2);
    pause.0.store(false, Ordering::SeqCst);
    tokio::time::sleep_until((outage_started + OUTAGE).into()).await;
    world
        .sandbox
        .start_again()
        .expect("the sandbox starts again");
    let back_at = enos_agent::now_ms();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let sent = app.await.expect("application");
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(sent, acked.len() as u64);

    let deadline = Instant::now() + Duration::from_secs(60);
    let arrived = loop {
        let arrived = arrivals(&world.sandbox.received());
        if settled(world, &acked, &arrived) {
            break arrived;
        }
        if Instant::now() > deadline {
            eprintln!("{}", world.dump());
            break arrived;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = world.wait_status("drained", Duration::from_secs(20), |s| {
        s["spool"]["messages"] == 0
    });
    agent.kill();
    Outcome {
        acked,
        arrived,
        stopped_at,
        killed_at,
        back_at,
        status,
    }
}

fn key(a: &Arrived) -> (String, u64) {
    (a.device.clone(), a.seq)
}

/// Each device's messages first arrive in the order sent, within each
/// path (posts, resumes).
fn assert_order_per_device(arrived: &[Arrived]) {
    let mut last: HashMap<(String, bool), u64> = HashMap::new();
    let mut seen = BTreeSet::new();
    for a in arrived {
        if !seen.insert(key(a)) {
            continue;
        }
        let prev = last.insert((a.device.clone(), a.resumed), a.seq);
        assert!(
            prev.is_none_or(|p| p < a.seq),
            "{} (resumed: {}): {} after {prev:?}",
            a.device,
            a.resumed,
            a.seq
        );
    }
}

/// #28 item 6: a 60 s outage of EnOS with a SIGKILL of the agent in the middle loses nothing Mosquitto acknowledged to the application; the delayed messages arrive through resume (resume.batch) with their original times, live data first, per-device order kept, duplicates within one fsync window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_a_sigkill_loses_nothing_the_local_broker_acknowledged() {
    const FSYNC_INTERVAL_MS: u64 = 100;
    let mut world = World::start(&format!(
        "fsync = \"batched\"\nfsync_interval = \"{FSYNC_INTERVAL_MS}ms\"\nreplay_rate = 1000\n"
    ))
    .await;
    let all_arrived = |_: &World, acked: &[Sent], arrived: &[Arrived]| {
        let got: BTreeSet<(String, u64)> = arrived.iter().map(key).collect();
        acked
            .iter()
            .all(|s| got.contains(&(device_name(s.device), s.seq)))
    };
    let out = outage(&mut world, Quiet::AtTheStop, all_arrived).await;

    let got: BTreeMap<(String, u64), &Arrived> = out.arrived.iter().map(|a| (key(a), a)).collect();
    let missing: Vec<u64> = out
        .acked
        .iter()
        .filter(|s| !got.contains_key(&(device_name(s.device), s.seq)))
        .map(|s| s.seq)
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} of {}: {missing:?}\n{}",
        missing.len(),
        out.acked.len(),
        world.dump()
    );
    assert_order_per_device(&out.arrived);
    // After EnOS came back, the sub-devices were logged in again before
    // any of their data went.
    let mut logged_in = false;
    for line in world.sandbox.received() {
        let v: serde_json::Value = serde_json::from_str(&line).expect("record line");
        if v["received_ms"].as_u64().expect("received_ms") < out.back_at {
            continue;
        }
        let topic = v["topic"].as_str().expect("topic");
        if topic.ends_with("/combine/login") || topic.ends_with("/combine/login/batch") {
            logged_in = true;
        }
        let for_sub = topic.starts_with("/sys/pkSub/")
            || v["payload"]["params"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["productKey"] == "pkSub"));
        assert!(
            !for_sub || logged_in,
            "sub-device data before its login: {v}"
        );
    }
    // The delayed ones: sent while EnOS was away, and older than
    // `resume_after` when it came back. Through resume, original time.
    let mut delayed = 0;
    for s in &out.acked {
        let a = got[&(device_name(s.device), s.seq)];
        assert_eq!(a.time, s.time, "{s:?}: the original time");
        if s.time > out.stopped_at + 1_000 && s.time + RESUME_AFTER_MS + 1_000 < out.back_at {
            assert!(a.resumed, "{s:?} was held > resume_after: through resume");
            delayed += 1;
        }
    }
    assert!(delayed > 4_000, "{delayed}");
    // Live data first: messages sent after EnOS came back arrived on
    // their own topic while the backlog was still being replayed.
    let last_resumed = out
        .arrived
        .iter()
        .filter(|a| a.resumed)
        .map(|a| a.received_ms)
        .max()
        .expect("resumed");
    let live_during_replay = out
        .arrived
        .iter()
        .filter(|a| !a.resumed && a.time >= out.back_at && a.received_ms < last_resumed)
        .count();
    assert!(
        live_during_replay > 0,
        "live data waited behind the backlog"
    );
    let duplicates = out.arrived.len() - got.len();
    // The duplicates: what the agent had spooled but not yet acknowledged
    // to Mosquitto (it does so after each sync) when it was killed, which
    // Mosquitto delivered again. So each was sent in the last fsync window
    // before the SIGKILL (two intervals: a sync takes time too).
    let window_ms = 2 * FSYNC_INTERVAL_MS;
    let mut count: HashMap<(String, u64), u32> = HashMap::new();
    for a in &out.arrived {
        *count.entry(key(a)).or_default() += 1;
    }
    let in_window = |s: &Sent| s.time + window_ms >= out.killed_at && s.time <= out.killed_at;
    let sent_in_window = out.acked.iter().filter(|s| in_window(s)).count();
    for s in &out.acked {
        let n = count[&(device_name(s.device), s.seq)];
        assert!(
            n == 1 || in_window(s),
            "{s:?} arrived {n} times, sent {} ms before the SIGKILL",
            out.killed_at.saturating_sub(s.time)
        );
    }
    let resumed = out.arrived.iter().filter(|a| a.resumed).count();
    eprintln!(
        "outage: {} sent and acknowledged by Mosquitto, {} received ({} distinct), {resumed} through resume, {live_during_replay} live during the replay, {duplicates} duplicates ({sent_in_window} sent in the last {window_ms} ms before the SIGKILL), evicted {}",
        out.acked.len(),
        out.arrived.len(),
        got.len(),
        out.status["spool"]["evicted"],
    );
    assert!(
        duplicates <= sent_in_window,
        "{duplicates} duplicates > {sent_in_window} sent in the last fsync window"
    );
    assert_eq!(out.status["spool"]["evicted"], 0);
    assert_eq!(out.status["spool"]["resume_refused"], 0, "{:#}", out.status);
}

/// #28 item 6, second run: a spool capped below the outage's volume evicts exactly the oldest messages, and the eviction count in the status file (kept across the SIGKILL) equals the number missing at EnOS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_capped_below_the_outage_evicts_exactly_the_oldest_and_counts_them() {
    // 64 KiB (the least allowed): a few seconds of this traffic. `always`:
    // a local publish is acknowledged right after its write, so the
    // SIGKILL leaves none spooled and unacknowledged (which Mosquitto
    // would deliver again, spooled twice, evicted twice).
    let mut world =
        World::start("fsync = \"always\"\nmax_bytes = 65536\nreplay_rate = 1000\n").await;
    // Settled: whatever is missing is older than all that arrived from
    // the outage, and the newest messages are in.
    let settled = |_: &World, acked: &[Sent], arrived: &[Arrived]| {
        let got: BTreeSet<(String, u64)> = arrived.iter().map(key).collect();
        acked
            .iter()
            .rev()
            .take(50)
            .all(|s| got.contains(&(device_name(s.device), s.seq)))
    };
    let out = outage(&mut world, Quiet::AtTheStopAndTheKill, settled).await;
    let got: BTreeSet<(String, u64)> = out.arrived.iter().map(key).collect();
    let missing: Vec<u64> = out
        .acked
        .iter()
        .filter(|s| !got.contains(&(device_name(s.device), s.seq)))
        .map(|s| s.seq)
        .collect();
    let evicted = out.status["spool"]["evicted"].as_u64().expect("evicted");
    eprintln!(
        "capped outage: {} sent and acknowledged, {} received ({} distinct), {} missing, {evicted} evicted (status file)",
        out.acked.len(),
        out.arrived.len(),
        got.len(),
        missing.len(),
    );
    assert!(
        missing.len() > 1_000,
        "the cap must bite: {}",
        missing.len()
    );
    // Exactly the oldest: the missing are one run of consecutive messages
    // (all before and all after it arrived), and for each device its
    // first messages sent during the outage.
    let gaps: Vec<(u64, u64)> = missing
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        gaps.is_empty(),
        "the missing ({} from {} to {:?}) are not one run of the oldest: gaps after {gaps:?}",
        missing.len(),
        missing[0],
        missing.last()
    );
    for device in 0..3 {
        let mine: Vec<&Sent> = out.acked.iter().filter(|s| s.device == device).collect();
        let lost: Vec<bool> = mine
            .iter()
            .map(|s| !got.contains(&(device_name(device), s.seq)))
            .collect();
        let first = lost
            .iter()
            .position(|l| *l)
            .expect("the cap bites every device");
        let end = first + lost[first..].iter().take_while(|l| **l).count();
        assert!(
            lost[end..].iter().all(|l| !l),
            "{}: missing after {} arrived: not one run",
            device_name(device),
            mine[end - 1].seq
        );
        assert!(
            mine[first].time >= out.stopped_at
                && (first == 0 || mine[first - 1].time <= out.stopped_at),
            "{}: the first missing ({:?}) is not its first message of the outage",
            device_name(device),
            mine[first]
        );
    }
    assert_eq!(
        evicted,
        missing.len() as u64,
        "evictions reported vs missing\n{}",
        world.dump()
    );
}
