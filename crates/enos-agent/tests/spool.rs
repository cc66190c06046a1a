//! The disk spool with real processes: the `enos-agent` binary, the EnOS
//! sandbox (its binary), the real signer over mTLS and Mosquitto as the
//! gateway's local broker. The agent is SIGKILLed while data waits in its
//! spool; after the restart the data reaches EnOS, in order.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use support::{
    CONSOLE, DeviceRow, Mosquitto, TestClient, console_password_file, init, signer::SignerFixture,
    write_devices,
};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const GW: (&str, &str) = ("pkGw", "gwSpool");
const GW_SECRET: &str = "spoolSecret01";

struct World {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    local: Mosquitto,
    signer: SignerFixture,
}

impl World {
    async fn start() -> World {
        init();
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = dir.path().join("devices.csv");
        write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
        let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
            .console(CONSOLE.0, console_password_file(dir.path()))
            .start()
            .expect("sandbox");
        let local = Mosquitto::start();
        let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
        World {
            dir,
            sandbox,
            local,
            signer,
        }
    }

    fn config(&self, spool: &str) -> PathBuf {
        let extra = format!(
            r#"
[status]
file = "{status}"

[bridge]
local_broker = "tcp://{local}"
client_id = "spool-bridge"

[[bridge.upstream]]
local = "gw/mp"
target = "measurepoint-post"
qos = 1

[spool]
path = "{spool_file}"
{spool}
"#,
            status = self.dir.path().join("status.json").display(),
            local = self.local.addr,
            spool_file = self.dir.path().join("spool/upstream.spool").display(),
        );
        let path = self.dir.path().join("agent.toml");
        std::fs::write(
            &path,
            self.signer
                .agent_toml(&format!("tcp://{}", self.sandbox.mqtt_addr()), &extra),
        )
        .expect("write config");
        path
    }

    fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until the status file satisfies `pred`.
    fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
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
}

fn start_agent(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("agent log");
    Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("ENOS_AGENT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn agent")
}

fn seqs(payloads: &[Vec<u8>]) -> Vec<i64> {
    payloads
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).expect("json");
            let p = &v["params"];
            p["seq"]
                .as_i64()
                .or_else(|| p["measurepoints"]["seq"].as_i64())
                .expect("seq")
        })
        .collect()
}

/// #28 items 1 and 2: data in the spool survives a SIGKILL of the agent and reaches EnOS after the restart, in order, late measurepoints through `resume` with their original time, the sandbox's replies checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_data_survives_a_sigkill_and_is_delivered_after_the_restart() {
    let mut world = World::start().await;
    let config = world.config(
        "fsync = \"batched\"\nfsync_interval = \"50ms\"\nresume_after = \"1s\"\nreplay_rate = 40\n",
    );
    let mut agent = start_agent(&config, &world.dir.path().join("agent-1.log"));
    world.wait_status("connected with the local broker", |s| {
        s["state"] == "connected" && s["local_broker_connected"] == true
    });
    let app = TestClient::connect(world.local.addr, "app", None).await;

    // EnOS goes away; the application goes on publishing.
    world.sandbox.stop().expect("stop sandbox");
    world.wait_status("offline", |s| s["state"] != "connected");
    const N: i64 = 60;
    for seq in 0..N {
        let time = if seq % 2 == 0 {
            format!(r#","time":{}"#, 1_700_000_000_000 + seq)
        } else {
            String::new()
        };
        app.publish(
            "gw/mp",
            format!(r#"{{"measurepoints":{{"seq":{seq}}}{time}}}"#),
        )
        .await;
    }
    let s = world.wait_status("all spooled", |s| s["spool"]["messages"] == N);
    let spooled_by = enos_agent::now_ms();
    assert_eq!(s["spool"]["evicted"], 0, "{s:#}");
    // The batched policy's interval, and a margin: on disk.
    std::thread::sleep(Duration::from_millis(300));

    // SIGKILL: no shutdown path runs.
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaped");

    // EnOS back, watched from the cloud's side, then the agent again.
    world.sandbox.start_again().expect("sandbox starts again");
    let mut cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
    let sys = format!("/sys/{}/{}/thing/measurepoint", GW.0, GW.1);
    let topic = format!("{sys}/post");
    let resume = format!("{sys}/resume");
    let batch = format!("{sys}/resume/batch");
    cloud.subscribe(&resume).await;
    cloud.subscribe(&batch).await;
    cloud.subscribe(&topic).await;
    // Held longer than `resume_after` (1 s): late data.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let mut agent = start_agent(&config, &world.dir.path().join("agent-2.log"));
    // Through `resume` one by one, or several in a `resume.batch`: each
    // batch entry as the single message it stands for.
    let mut got = Vec::new();
    let mut batches = 0;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < N as usize {
            let (t, p) = cloud.rx.recv().await.expect("client task alive");
            if t == resume {
                got.push(p);
            } else if t == batch {
                batches += 1;
                let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
                assert_eq!(v["method"], "thing.measurepoint.resume.batch", "{v}");
                assert_eq!(v["allowOfflineSubDevice"], true, "{v}");
                for e in v["params"].as_array().expect("entries") {
                    assert_eq!(e["productKey"], GW.0, "{e}");
                    assert_eq!(e["deviceKey"], GW.1, "{e}");
                    got.push(
                        serde_json::to_vec(&serde_json::json!({
                            "id": v["id"],
                            "method": "thing.measurepoint.resume",
                            "params": {"measurepoints": e["measurepoints"], "time": e["time"]},
                        }))
                        .expect("json"),
                    );
                }
            }
        }
    })
    .await;
    let drained_in = started.elapsed();
    assert!(batches > 0, "a backlog goes up in resume.batch");
    if got.len() != N as usize {
        eprintln!(
            "agent log:\n{}\nstatus: {:#?}\nsandbox: {}",
            std::fs::read_to_string(world.dir.path().join("agent-2.log")).unwrap_or_default(),
            world.status(),
            world
                .sandbox
                .logs()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(
        seqs(&got),
        (0..N).collect::<Vec<_>>(),
        "every spooled message, once, in order, through resume (or resume.batch)"
    );
    for p in &got {
        let v: serde_json::Value = serde_json::from_slice(p).expect("json");
        assert_eq!(v["method"], "thing.measurepoint.resume", "{v}");
        let seq = v["params"]["measurepoints"]["seq"].as_u64().expect("seq");
        let time = v["params"]["time"].as_u64().expect("the original time");
        if seq % 2 == 0 {
            assert_eq!(
                time,
                1_700_000_000_000 + seq,
                "the message's own time is kept"
            );
        } else {
            assert!(time <= spooled_by, "the time it was spooled: {time}");
        }
    }
    // The replay rate (40/s) paced the backlog: 60 messages take > 1 s.
    assert!(drained_in >= Duration::from_secs(1), "{drained_in:?}");
    let s = world.wait_status("drained", |s| s["spool"]["messages"] == 0);
    assert_eq!(s["spool"]["delivered"], N, "{s:#}");
    assert_eq!(s["spool"]["resumed"], N, "{s:#}");
    let s = world.wait_status("replies checked", |s| s["spool"]["resume_refused"] == 0);
    assert_eq!(s["spool"]["resume_refused"], 0, "{s:#}");
    // Envelope ids made after the restart do not repeat the spooled ones.
    let ids: std::collections::HashSet<String> = got
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).expect("json");
            v["id"].as_str().expect("id").to_owned()
        })
        .collect();
    world.wait_status("the local broker", |s| s["local_broker_connected"] == true);
    app.publish("gw/mp", r#"{"seq":1000}"#).await;
    let after: serde_json::Value =
        serde_json::from_slice(&cloud.recv_on(&topic).await).expect("json");
    assert!(
        !ids.contains(after["id"].as_str().expect("id")),
        "id {} repeats a spooled one",
        after["id"]
    );
    agent.kill().expect("kill");
    agent.wait().expect("reaped");
}

/// #28 item 4: the local session is persistent and a local publish is acknowledged once spooled: a SIGKILL mid-stream loses nothing the local broker accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_stream_loses_nothing_the_local_broker_accepted() {
    let world = World::start().await;
    let config = world.config("fsync = \"batched\"\nfsync_interval = \"100ms\"\n");
    let mut agent = start_agent(&config, &world.dir.path().join("agent-1.log"));
    world.wait_status("connected with the local broker", |s| {
        s["state"] == "connected" && s["local_broker_connected"] == true
    });
    let mut cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
    let topic = format!("/sys/{}/{}/thing/measurepoint/post", GW.0, GW.1);
    cloud.subscribe(&topic).await;
    let app = TestClient::connect(world.local.addr, "app", None).await;

    // 100 msg/s for 3 s; the agent is SIGKILLed after 1 s and restarted
    // 0.5 s later, while the stream goes on.
    const N: i64 = 300;
    let publisher = tokio::spawn(async move {
        for seq in 0..N {
            app.publish("gw/mp", format!(r#"{{"seq":{seq}}}"#)).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaped");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut agent = start_agent(&config, &world.dir.path().join("agent-2.log"));
    let _app = publisher.await.expect("publisher");

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        got.extend(seqs(
            &cloud.collect_on(&topic, Duration::from_millis(500)).await,
        ));
        let distinct: std::collections::BTreeSet<i64> = got.iter().copied().collect();
        if distinct.len() == N as usize {
            break;
        }
    }
    let distinct: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    let missing: Vec<i64> = (0..N).filter(|s| !distinct.contains(s)).collect();
    assert!(missing.is_empty(), "lost {missing:?}");
    // Order: each message first arrives after every earlier one.
    let mut firsts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in &got {
        if seen.insert(*s) {
            firsts.push(*s);
        }
    }
    assert_eq!(firsts, (0..N).collect::<Vec<_>>(), "in order");
    let duplicates = got.len() - distinct.len();
    eprintln!(
        "a SIGKILL mid-stream at 100 msg/s: {N} sent, {} received, {duplicates} duplicates",
        got.len()
    );
    agent.kill().expect("kill");
    agent.wait().expect("reaped");
}

/// #28 item 3: EnOS's traffic/control notice pauses upstream as told (answered 200), and upstream resumes, in order, once it lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traffic_control_notice_pauses_upstream_until_it_lapses() {
    let world = World::start().await;
    let config = world.config("");
    let mut agent = start_agent(&config, &world.dir.path().join("agent.log"));
    world.wait_status("connected with the local broker", |s| {
        s["state"] == "connected" && s["local_broker_connected"] == true
    });
    let mut cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
    let sys = format!("/sys/{}/{}", GW.0, GW.1);
    let topic = format!("{sys}/thing/measurepoint/post");
    cloud.subscribe(&topic).await;
    cloud
        .subscribe(&format!("{sys}/traffic/control_reply"))
        .await;
    let app = TestClient::connect(world.local.addr, "app", None).await;

    // Pause (rate 0) for 2 s.
    cloud
        .publish(
            &format!("{sys}/traffic/control"),
            r#"{"id":"t1","version":"1.0","params":{"rate":0,"duration":2}}"#,
        )
        .await;
    let reply: serde_json::Value =
        serde_json::from_slice(&cloud.recv_on(&format!("{sys}/traffic/control_reply")).await)
            .expect("json");
    assert_eq!(reply["id"], "t1");
    assert_eq!(reply["code"], 200);
    world.wait_status("paced", |s| s["traffic_limited"] == true);

    for seq in 0..10 {
        app.publish("gw/mp", format!(r#"{{"measurepoints":{{"seq":{seq}}}}}"#))
            .await;
    }
    let during = cloud.collect_on(&topic, Duration::from_millis(800)).await;
    assert!(
        during.is_empty(),
        "sent while EnOS said pause: {}",
        during.len()
    );
    let s = world.wait_status("spooled meanwhile", |s| s["spool"]["messages"] == 10);
    assert_eq!(s["traffic_notices"], 1, "{s:#}");

    // Lapsed: everything goes, in order.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 10 && Instant::now() < deadline {
        got.extend(seqs(
            &cloud.collect_on(&topic, Duration::from_millis(300)).await,
        ));
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    world.wait_status("no longer paced", |s| s["traffic_limited"] == false);
    agent.kill().expect("kill");
    agent.wait().expect("reaped");
}

/// #28 item 2 (live data first): while a backlog is replayed at `replay_rate`, a message accepted meanwhile goes out at once on its own topic, ahead of the backlog (which goes on through resume, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_data_goes_out_before_a_backlog_being_replayed() {
    let mut world = World::start().await;
    let config = world.config("resume_after = \"200ms\"\nreplay_rate = 20\n");
    let mut agent = start_agent(&config, &world.dir.path().join("agent.log"));
    world.wait_status("connected with the local broker", |s| {
        s["state"] == "connected" && s["local_broker_connected"] == true
    });
    let app = TestClient::connect(world.local.addr, "app", None).await;
    world.sandbox.stop().expect("stop sandbox");
    world.wait_status("offline", |s| s["state"] != "connected");
    // A backlog of 40: two seconds at 20/s.
    const N: i64 = 40;
    for seq in 0..N {
        app.publish("gw/mp", format!(r#"{{"measurepoints":{{"seq":{seq}}}}}"#))
            .await;
    }
    world.wait_status("all spooled", |s| s["spool"]["messages"] == N);
    // Held longer than `resume_after`: late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.sandbox.start_again().expect("sandbox starts again");
    let mut cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
    let sys = format!("/sys/{}/{}/thing/measurepoint", GW.0, GW.1);
    for t in ["post", "resume", "resume/batch"] {
        cloud.subscribe(&format!("{sys}/{t}")).await;
    }
    world.wait_status("reconnected", |s| s["state"] == "connected");
    app.publish("gw/mp", r#"{"measurepoints":{"seq":1000}}"#)
        .await;
    // In arrival order: the live one, and how many late ones came before
    // it and after it.
    let mut late = Vec::new();
    let mut live_at = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while (live_at.is_none() || late.last() != Some(&(N - 1))) && Instant::now() < deadline {
        let Ok(Some((t, p))) =
            tokio::time::timeout(Duration::from_millis(500), cloud.rx.recv()).await
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
        if t.ends_with("/post") {
            assert_eq!(v["params"]["measurepoints"]["seq"], 1000, "{v}");
            live_at = Some(late.len());
        } else if t.ends_with("/resume/batch") {
            for e in v["params"].as_array().expect("entries") {
                late.push(e["measurepoints"]["seq"].as_i64().expect("seq"));
            }
        } else {
            late.push(v["params"]["measurepoints"]["seq"].as_i64().expect("seq"));
        }
    }
    // Those sent before we subscribed are not seen: the tail, in order.
    let first = late.first().copied().unwrap_or(N);
    assert_eq!(
        late,
        (first..N).collect::<Vec<_>>(),
        "the backlog, in order"
    );
    let live_at = live_at.expect("the live message arrived");
    assert!(
        live_at < late.len(),
        "the live message waited behind the whole backlog ({} late ones before it)",
        live_at
    );
    agent.kill().expect("kill");
    agent.wait().expect("reaped");
}
