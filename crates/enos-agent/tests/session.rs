//! The agent end to end on 127.0.0.1: the real signer over mTLS, the EnOS
//! sandbox (rumqttd) as EnOS, and Mosquitto as the gateway's local broker.
//! Backoffs and credential lifetimes are short so that each test takes
//! seconds.

mod support;

use std::{path::PathBuf, time::Duration};

use enos_agent::{Agent, AgentStatus, ConnectionState, GrpcSigner, SubDeviceState};
use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use support::{
    CONSOLE, DeviceRow, Mosquitto, SOON, TestClient, config, console_password_file, init,
    signer::SignerFixture, wait_status, write_devices,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const GW: (&str, &str) = ("pkGw", "gw1");
const GW_SECRET: &str = "gatewaySecret01";

struct World {
    dir: tempfile::TempDir,
    devices: PathBuf,
    sandbox: Sandbox,
}

impl World {
    fn start(rows: &[DeviceRow]) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = dir.path().join("devices.csv");
        write_devices(&devices, rows);
        let binary = SandboxBinary::locate().expect("enos-sandbox binary");
        let sandbox = Sandbox::builder(binary, &devices)
            .console(CONSOLE.0, console_password_file(dir.path()))
            .start()
            .expect("sandbox starts");
        World {
            dir,
            devices,
            sandbox,
        }
    }

    fn broker(&self) -> String {
        format!("tcp://{}", self.sandbox.mqtt_addr())
    }
}

struct RunningAgent {
    status: watch::Receiver<AgentStatus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), enos_agent::AgentError>>,
}

impl RunningAgent {
    fn start(toml: &str) -> RunningAgent {
        let config = config(toml);
        let signer = GrpcSigner::new(&config.signer, &config.device).expect("signer client");
        let agent = Agent::new(config, signer);
        let status = agent.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        RunningAgent {
            status,
            shutdown,
            task,
        }
    }

    async fn stop(self) -> AgentStatus {
        self.shutdown.cancel();
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("agent stops in time")
            .expect("agent task")
            .expect("agent run");
        self.status.borrow().clone()
    }
}

async fn signer(world: &World, ttl_secs: u64) -> SignerFixture {
    SignerFixture::start(world.dir.path(), GW, GW_SECRET, ttl_secs).await
}

const DOWNSTREAM: &str = r#"
[bridge]
local_broker = "tcp://LOCAL"

[[bridge.upstream]]
local = "gw/mp"
target = "measurepoint-post"
reply_to = "gw/mp/reply"
qos = 1

[[bridge.upstream]]
local = "gw/ev"
target = "event-post"
event_id = "overheat"

[bridge.downstream]
local_prefix = "gw/svc"
local_reply_prefix = "gw/svc-reply"
"#;

fn bridge_toml(local: &Mosquitto) -> String {
    DOWNSTREAM.replace("LOCAL", &local.addr.to_string())
}

/// Publishes a service call until it arrives locally: the agent's
/// SUBSCRIBE goes out right after CONNACK, so the first call may race it.
async fn call_until_delivered(
    cloud: &TestClient,
    app: &mut TestClient,
    service: &str,
    id: &str,
) -> Vec<u8> {
    let payload = format!(r#"{{"id":"{id}","method":"thing.service.reboot","params":{{}}}}"#);
    for _ in 0..30 {
        cloud.publish(service, payload.clone()).await;
        let got = app
            .collect_on("gw/svc/reboot", Duration::from_millis(500))
            .await;
        let wanted = format!(r#""id":"{id}""#);
        if let Some(p) = got
            .into_iter()
            .find(|p| String::from_utf8_lossy(p).contains(&wanted))
        {
            return p;
        }
    }
    panic!("service call {id} never reached the local broker");
}

/// All three sub-devices have a final login state on connection `n`.
fn subs_settled(n: u64) -> impl Fn(&AgentStatus) -> bool {
    move |s| {
        s.sub_devices.len() == 3
            && s.sub_devices
                .iter()
                .all(|d| d.connection == n && d.state != SubDeviceState::Pending)
    }
}

fn connected(n: u64) -> impl Fn(&AgentStatus) -> bool {
    move |s| s.state == ConnectionState::Connected && s.connects >= n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_reconnects_with_a_fresh_credential_and_restores_subscriptions() {
    init();
    let mut world = World::start(&[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let local = Mosquitto::start();
    let signer = signer(&world, 600).await;
    let mut agent = RunningAgent::start(&signer.agent_toml(&world.broker(), &bridge_toml(&local)));
    wait_status(&mut agent.status, "first connect", connected(1)).await;

    let mut app = TestClient::connect(local.addr, "app", None).await;
    app.subscribe("gw/svc/#").await;
    let service = format!("/sys/{}/{}/thing/service/reboot", GW.0, GW.1);
    {
        let cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
        let got = call_until_delivered(&cloud, &mut app, &service, "1").await;
        assert!(String::from_utf8_lossy(&got).contains(r#""id":"1""#));
    }

    world.sandbox.restart().expect("sandbox restarts");
    let after = wait_status(&mut agent.status, "reconnect", connected(2)).await;
    assert!(
        after.credentials_issued >= 2,
        "a fresh credential per connect: {after:#?}"
    );
    assert!(after.network_failures >= 1, "{after:#?}");
    assert_eq!(after.refusals, 0, "a restart is not a refusal: {after:#?}");

    // The subscription was restored on the new session.
    let cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
    let got = call_until_delivered(&cloud, &mut app, &service, "2").await;
    assert!(String::from_utf8_lossy(&got).contains(r#""id":"2""#));

    let last = agent.stop().await;
    assert_eq!(last.state, ConnectionState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_down_keeps_the_session_and_a_later_reconnect_waits_for_the_signer() {
    init();
    let mut world = World::start(&[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    // Short-lived credentials: the cached one is expired by the restart.
    let mut signer = signer(&world, 1).await;
    let mut agent = RunningAgent::start(&signer.agent_toml(&world.broker(), ""));
    wait_status(&mut agent.status, "connect", connected(1)).await;

    signer.signer.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let s = agent.status.borrow();
        assert_eq!(
            s.state,
            ConnectionState::Connected,
            "the session stays up: {s:#?}"
        );
        assert_eq!(s.connects, 1);
    }

    world.sandbox.restart().expect("sandbox restarts");
    let waiting = wait_status(&mut agent.status, "failed attempts without a signer", |s| {
        s.network_failures >= 3
    })
    .await;
    assert_eq!(
        waiting.connects, 1,
        "no connect without a valid credential: {waiting:#?}"
    );
    assert_ne!(waiting.state, ConnectionState::Connected);
    assert!(
        waiting
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("signer"),
        "{waiting:#?}"
    );

    signer.signer.restart().await.expect("signer restarts");
    let back = wait_status(
        &mut agent.status,
        "reconnect once the signer is back",
        connected(2),
    )
    .await;
    assert_eq!(back.credentials_reused, 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_valid_credential_is_reused_while_the_signer_is_down() {
    init();
    let mut world = World::start(&[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let mut signer = signer(&world, 600).await;
    let mut agent = RunningAgent::start(&signer.agent_toml(&world.broker(), ""));
    wait_status(&mut agent.status, "connect", connected(1)).await;
    signer.signer.stop().await;
    world.sandbox.restart().expect("sandbox restarts");
    let s = wait_status(
        &mut agent.status,
        "reconnect with the cached credential",
        connected(2),
    )
    .await;
    // One reuse per attempt: more than one if the first attempt raced the
    // sandbox's restart.
    assert!(s.credentials_reused >= 1, "{s:#?}");
    assert_eq!(s.credentials_issued, 1, "{s:#?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_back_off_further_each_time_and_are_not_network_failures() {
    init();
    // The broker knows another secret than the signer: every login is refused.
    let world = World::start(&[DeviceRow::new(GW.0, GW.1, "theBrokerKnowsThis")]);
    let signer = signer(&world, 600).await;
    let mut agent = RunningAgent::start(&signer.agent_toml(&world.broker(), ""));
    let mut ceilings = Vec::new();
    let mut seen = 0;
    while ceilings.len() < 3 {
        let s = wait_status(&mut agent.status, "another refusal", |s| s.refusals > seen).await;
        seen = s.refusals;
        ceilings.push(s.last_backoff_ceiling_ms.expect("backoff recorded"));
        assert!(s.last_backoff_ms <= s.last_backoff_ceiling_ms);
    }
    assert!(
        ceilings.windows(2).all(|w| w[1] > w[0]),
        "the backoff ceiling grows with every refusal: {ceilings:?}"
    );
    // Refusals start higher than network failures (min × refusal_factor).
    assert!(ceilings[0] >= 200, "{ceilings:?}");
    let s = agent.stop().await;
    assert_eq!(s.connects, 0);
    assert_eq!(s.network_failures, 0, "CONNACK 4 is a refusal: {s:#?}");
    // A refused credential is never reused: one fresh credential per attempt.
    assert!(s.credentials_issued >= s.refusals, "{s:#?}");
    assert_eq!(s.credentials_reused, 0, "{s:#?}");
    // The sandbox answers as EnOS: CONNACK 4, and the agent names it.
    assert_eq!(
        s.last_error.as_deref(),
        Some("broker refused the login: BadUserNamePassword"),
        "{s:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_network_failure() {
    init();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    let mut agent = RunningAgent::start(&signer.agent_toml(&format!("tcp://127.0.0.1:{port}"), ""));
    let s = wait_status(&mut agent.status, "network failures", |s| {
        s.network_failures >= 3
    })
    .await;
    assert_eq!(s.refusals, 0, "{s:#?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_carries_messages_both_ways() {
    init();
    let world = World::start(&[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let local = Mosquitto::start();
    let signer = signer(&world, 600).await;
    let mut agent = RunningAgent::start(&signer.agent_toml(&world.broker(), &bridge_toml(&local)));
    wait_status(&mut agent.status, "connect", connected(1)).await;
    wait_status(&mut agent.status, "local broker", |s| {
        s.local_broker_connected == Some(true)
    })
    .await;

    let mut cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
    let sys = format!("/sys/{}/{}/thing", GW.0, GW.1);
    cloud.subscribe(&format!("{sys}/#")).await;
    let mut app = TestClient::connect(local.addr, "app", None).await;
    app.subscribe("gw/#").await;

    // Up: wrapped in the EnOS envelope; the sandbox's reply comes back down.
    app.publish(
        "gw/mp",
        r#"{"measurepoints":{"temp":21.5},"time":1700000000000}"#,
    )
    .await;
    let post: serde_json::Value =
        serde_json::from_slice(&cloud.recv_on(&format!("{sys}/measurepoint/post")).await)
            .expect("json");
    assert_eq!(post["method"], "thing.measurepoint.post");
    assert_eq!(post["version"], "1.0");
    assert_eq!(post["params"]["measurepoints"]["temp"], 21.5);
    let id = post["id"].as_str().expect("string id").to_owned();
    let reply: serde_json::Value =
        serde_json::from_slice(&app.recv_on("gw/mp/reply").await).expect("reply json");
    assert_eq!(reply["id"], id.as_str());
    assert_eq!(reply["code"], 200);

    app.publish("gw/ev", r#"{"events":{"level":3}}"#).await;
    let event: serde_json::Value =
        serde_json::from_slice(&cloud.recv_on(&format!("{sys}/event/overheat/post")).await)
            .expect("json");
    assert_eq!(event["method"], "thing.event.overheat.post");
    assert_eq!(event["params"]["events"]["level"], 3);

    // Down: a service call and a measurepoint-set, and the replies back up.
    cloud
        .publish(
            &format!("{sys}/service/reboot"),
            r#"{"id":"s1","params":{}}"#,
        )
        .await;
    let call = app.recv_on("gw/svc/reboot").await;
    assert!(String::from_utf8_lossy(&call).contains("s1"));
    app.publish("gw/svc-reply/reboot", r#"{"id":"s1","code":200,"data":{}}"#)
        .await;
    let back = cloud.recv_on(&format!("{sys}/service/reboot_reply")).await;
    assert!(String::from_utf8_lossy(&back).contains("s1"));

    cloud
        .publish(
            &format!("{sys}/service/measurepoint/set"),
            r#"{"id":"m1","params":{"temp":20}}"#,
        )
        .await;
    let set = app.recv_on("gw/svc/measurepoint/set").await;
    assert!(String::from_utf8_lossy(&set).contains("m1"));
    app.publish(
        "gw/svc-reply/measurepoint/set",
        r#"{"id":"m1","code":200,"data":{}}"#,
    )
    .await;
    let back = cloud
        .recv_on(&format!("{sys}/service/measurepoint/set_reply"))
        .await;
    assert!(String::from_utf8_lossy(&back).contains("m1"));

    // A non-JSON payload cannot be wrapped: dropped, not forwarded garbled.
    app.publish("gw/mp", "not json").await;
    app.publish("gw/mp", r#"{"after":true}"#).await;
    let next: serde_json::Value =
        serde_json::from_slice(&cloud.recv_on(&format!("{sys}/measurepoint/post")).await)
            .expect("json");
    assert_eq!(next["params"]["after"], true);

    let s = agent.stop().await;
    assert!(s.upstream_sent >= 5, "{s:#?}");
    assert!(s.downstream_delivered >= 3, "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_wait_in_a_bounded_queue_dropping_the_oldest() {
    init();
    let mut world = World::start(&[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let local = Mosquitto::start();
    let mut signer = signer(&world, 1).await;
    let toml = signer.agent_toml(
        &world.broker(),
        &format!("{}\n[queue]\nupstream_capacity = 5\n", bridge_toml(&local)),
    );
    let mut agent = RunningAgent::start(&toml);
    wait_status(&mut agent.status, "connect", connected(1)).await;
    wait_status(&mut agent.status, "local broker", |s| {
        s.local_broker_connected == Some(true)
    })
    .await;
    let app = TestClient::connect(local.addr, "app", None).await;

    // Offline: the broker is gone and the signer too (so the agent stays
    // offline until the test is ready to watch).
    signer.signer.stop().await;
    world.sandbox.stop().expect("stop sandbox");
    // Let the last credential (1 s) expire, so that nothing connects
    // before the signer is back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    wait_status(&mut agent.status, "offline", |s| {
        s.state != ConnectionState::Connected
    })
    .await;
    for seq in 0..12 {
        app.publish("gw/mp", format!(r#"{{"seq":{seq}}}"#)).await;
    }
    let s = wait_status(&mut agent.status, "queue full", |s| s.upstream_dropped >= 7).await;
    assert_eq!(s.upstream_queued, 5, "{s:#?}");
    assert_eq!(s.upstream_dropped, 7, "{s:#?}");

    world.sandbox.start_again().expect("sandbox starts again");
    let mut cloud = TestClient::observer(world.sandbox.mqtt_addr()).await;
    let topic = format!("/sys/{}/{}/thing/measurepoint/post", GW.0, GW.1);
    cloud.subscribe(&topic).await;
    signer.signer.restart().await.expect("signer restarts");
    wait_status(&mut agent.status, "reconnect", connected(2)).await;
    let got = cloud.collect_on(&topic, Duration::from_secs(2)).await;
    let seqs: Vec<i64> = got
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).expect("json");
            v["params"]["seq"].as_i64().expect("seq")
        })
        .collect();
    assert_eq!(seqs, [7, 8, 9, 10, 11], "the newest five, in order");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_device_logins_after_every_connect_and_refusals_are_reported() {
    init();
    let other_gw = ("pkGw", "gw2");
    let mut world = World::start(&[
        DeviceRow::new(GW.0, GW.1, GW_SECRET),
        DeviceRow::new(other_gw.0, other_gw.1, "gateway2Secret"),
        DeviceRow::new("pkSub", "meter1", "meterSecret01").sub_of(GW),
        DeviceRow::new("pkSub", "meter2", "meterSecret02").sub_of(other_gw),
        // The signer believes meter3 is ours; EnOS says otherwise (740).
        DeviceRow::new("pkSub", "meter3", "meterSecret03").sub_of(other_gw),
    ]);
    let signer = signer(&world, 600).await;
    let admin = &signer.signer;
    admin
        .put_device(other_gw.0, other_gw.1, "gateway2Secret")
        .await
        .expect("put");
    for (dk, secret, gw) in [
        ("meter1", "meterSecret01", GW),
        ("meter2", "meterSecret02", other_gw),
        ("meter3", "meterSecret03", GW),
    ] {
        admin
            .put_device("pkSub", dk, secret)
            .await
            .expect("put sub-device");
        admin
            .bind_sub_device(gw, ("pkSub", dk))
            .await
            .expect("bind");
    }
    let subs = r#"
[[sub_devices]]
product_key = "pkSub"
device_key = "meter1"

[[sub_devices]]
product_key = "pkSub"
device_key = "meter2"

[[sub_devices]]
product_key = "pkSub"
device_key = "meter3"
"#;
    let mut agent = RunningAgent::start(&signer.agent_toml(&world.broker(), subs));
    let s = wait_status(&mut agent.status, "sub-device logins", subs_settled(1)).await;
    assert_eq!(s.sub_devices[0].state, SubDeviceState::Online, "{s:#?}");
    match &s.sub_devices[1].state {
        SubDeviceState::Refused { reason } => assert!(reason.starts_with("signer"), "{reason}"),
        other => panic!("meter2 must be refused by the signer: {other:?}"),
    }
    match &s.sub_devices[2].state {
        SubDeviceState::Refused { reason } => assert!(reason.starts_with("740"), "{reason}"),
        other => panic!("meter3 must be refused by EnOS with 740: {other:?}"),
    }

    // After a reconnect the logins run again.
    world.sandbox.restart().expect("restart");
    wait_status(&mut agent.status, "reconnect", connected(2)).await;
    let s = wait_status(&mut agent.status, "logins again", subs_settled(2)).await;
    assert_eq!(s.sub_devices[0].state, SubDeviceState::Online, "{s:#?}");
    assert!(matches!(
        s.sub_devices[1].state,
        SubDeviceState::Refused { .. }
    ));
    agent.stop().await;
    let _ = &world.dir;
    let _ = &world.devices;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_mqtts_with_a_device_certificate() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    // The broker's certificate and the device's two-way TLS certificate
    // come from the same test CA as the signer's.
    let server = signer
        .pki
        .server(&[])
        .expect("server cert")
        .write(dir.path(), "broker")
        .expect("write");
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox binary"), &devices)
        .tls(&signer.ca, &server.cert, &server.key)
        .console(CONSOLE.0, console_password_file(dir.path()))
        .start()
        .expect("sandbox with TLS starts");
    let tls_addr = sandbox.tls_addr().expect("TLS listener");
    let tls = format!(
        "[enos.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        signer.ca.display(),
        signer.cert.display(),
        signer.key.display()
    );
    let toml = signer.agent_toml(&format!("ssl://{tls_addr}"), "").replace(
        "connect_timeout = \"2s\"\n",
        &format!("connect_timeout = \"2s\"\n\n{tls}"),
    );
    let mut agent = RunningAgent::start(&toml);
    let s = wait_status(&mut agent.status, "connect over TLS", connected(1)).await;
    assert!(s.broker.starts_with("ssl://"), "{s:#?}");
    assert_eq!(s.refusals, 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_signer_endpoint_fails_over_to_the_next() {
    init();
    let world = World::start(&[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let signer = signer(&world, 600).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let toml = signer.agent_toml(&world.broker(), "").replace(
        &format!("endpoints = [\"{}\"]", signer.signer.uri()),
        &format!(
            "endpoints = [\"https://127.0.0.1:{dead}\", \"{}\"]",
            signer.signer.uri()
        ),
    );
    assert!(toml.contains(&format!("127.0.0.1:{dead}")));
    let mut agent = RunningAgent::start(&toml);
    let s = wait_status(
        &mut agent.status,
        "connect via the second endpoint",
        connected(1),
    )
    .await;
    assert_eq!(s.credentials_issued, 1, "{s:#?}");
    agent.stop().await;
}
