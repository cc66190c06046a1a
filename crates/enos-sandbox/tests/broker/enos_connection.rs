//! The sandbox behaves as EnOS does at the connection: CONNACK refusal
//! codes, the TLS certificate bound to the device, topic isolation, and
//! downstream topics delivered without SUBSCRIBE (src/front).

use std::time::Duration;

use rumqttc::{ConnectReturnCode, Event, Packet, QoS, SubscribeReasonCode};

use crate::common::{
    Connected, Fixture, Login, WAIT, assert_refused, connect, credential, dev1_now, now_ms,
    tls_client,
};
use enos_sign_core::SignMethod;

const CONSOLE_USER: &str = "console";
const CONSOLE_PASSWORD: &str = "console-password-5d1e8a";

/// A fixture whose sandbox has the console login.
fn with_console(fixture: &Fixture) -> enos_testkit::sandbox::SandboxBuilder {
    let file = fixture.dir.path().join("console.secret");
    enos_testkit::write_private(&file, format!("{CONSOLE_PASSWORD}\n").as_bytes())
        .expect("write console password");
    fixture.sandbox().console(CONSOLE_USER, file)
}

fn console_login() -> Login {
    Login {
        client_id: "the-console".into(),
        username: CONSOLE_USER.into(),
        password: CONSOLE_PASSWORD.into(),
    }
}

fn device(pk: &str, dk: &str, secret: &str) -> enos_sign_core::MqttCredential {
    credential(pk, dk, secret, SignMethod::HmacSha1, now_ms())
}

/// Every PUBLISH `client` receives within `window`, as (topic, payload).
async fn received(client: &mut Connected, window: Duration) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(window, async {
        loop {
            match client.eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => got.push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                )),
                Ok(_) => {}
                Err(e) => panic!("connection lost: {e}"),
            }
        }
    })
    .await;
    got
}

/// Subscribes and returns the SUBACK's codes.
async fn subscribe(client: &mut Connected, filter: &str) -> Vec<SubscribeReasonCode> {
    client
        .client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) =
                client.eventloop.poll().await.expect("connection up")
            {
                return ack.return_codes;
            }
        }
    })
    .await
    .expect("a SUBACK")
}

/// Publishes at QoS 1 and waits for the PUBACK (the front acknowledges
/// dropped publishes too, so that the client does not resend them).
async fn publish(client: &mut Connected, topic: &str, payload: &str) {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_owned())
        .await
        .expect("publish");
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) =
                client.eventloop.poll().await.expect("connection up")
            {
                return;
            }
        }
    })
    .await
    .expect("a PUBACK");
}

#[tokio::test]
async fn refusals_answer_with_connack_codes() {
    let fixture = Fixture::new();
    let sandbox = with_console(&fixture).start().expect("starts");
    let addr = sandbox.mqtt_addr();
    assert_refused(
        &sandbox,
        addr,
        &device("pkA", "dev1", "not-the-secret"),
        None,
        ConnectReturnCode::BadUserNamePassword,
        "reason=password does not match for device pkA/dev1",
    )
    .await;
    assert_refused(
        &sandbox,
        addr,
        &device("pkA", "off1", "secret-off1-9b0d4"),
        None,
        ConnectReturnCode::NotAuthorized,
        "reason=device pkA/off1 is disabled",
    )
    .await;
    // A sub-device logs in through its gateway only (EnOS: 771).
    assert_refused(
        &sandbox,
        addr,
        &device("subpk", "sub1", "secret-sub1-c4e88"),
        None,
        ConnectReturnCode::NotAuthorized,
        "reason=device subpk/sub1 is a sub-device",
    )
    .await;
    let mut wrong_console = console_login();
    wrong_console.password = "guess".into();
    assert_refused(
        &sandbox,
        addr,
        wrong_console,
        None,
        ConnectReturnCode::BadUserNamePassword,
        "reason=wrong console password",
    )
    .await;
    // The console is the cloud's, from loopback on the plain listener.
    let tls_addr = sandbox.tls_addr().expect("tls");
    let identity = fixture.pki.device("pkA", "dev1").expect("cert");
    assert_refused(
        &sandbox,
        tls_addr,
        console_login(),
        Some(tls_client(&fixture.pki, Some(&identity))),
        ConnectReturnCode::NotAuthorized,
        "reason=the console logs in from loopback on the plain listener only",
    )
    .await;
    let logs = sandbox.logs();
    assert!(!logs.contains(CONSOLE_PASSWORD));
}

#[tokio::test]
async fn the_tls_certificate_must_be_the_devices() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let tls_addr = sandbox.tls_addr().expect("tls");
    let dev1_cert = fixture.pki.device("pkA", "dev1").expect("cert");
    // dev1's certificate with dev2's valid login.
    assert_refused(
        &sandbox,
        tls_addr,
        &device("pkA", "dev2", "secret-dev2-51c2e"),
        Some(tls_client(&fixture.pki, Some(&dev1_cert))),
        ConnectReturnCode::NotAuthorized,
        "reason=the client certificate does not belong to device pkA/dev2",
    )
    .await;
    // Its own login with it is accepted.
    connect(
        tls_addr,
        &dev1_now(),
        Some(tls_client(&fixture.pki, Some(&dev1_cert))),
    )
    .await
    .expect("dev1 with its own certificate");
}

#[tokio::test]
async fn the_certificate_rule_is_configurable() {
    let fixture = Fixture::new();
    let sandbox = fixture
        .sandbox()
        .tls_device_identity("cn:{productKey}.{deviceKey}")
        .start()
        .expect("starts");
    let tls_addr = sandbox.tls_addr().expect("tls");
    let by_cn = fixture.pki.client_with_uri("pkA.dev1", None).expect("cert");
    connect(
        tls_addr,
        &dev1_now(),
        Some(tls_client(&fixture.pki, Some(&by_cn))),
    )
    .await
    .expect("the common name names dev1");
    // The default rule's URI SAN does not count under the cn rule.
    let by_uri = fixture.pki.device("pkA", "dev1").expect("cert");
    assert_refused(
        &sandbox,
        tls_addr,
        &dev1_now(),
        Some(tls_client(&fixture.pki, Some(&by_uri))),
        ConnectReturnCode::NotAuthorized,
        "reason=the client certificate does not belong to device pkA/dev1",
    )
    .await;
}

#[tokio::test]
async fn a_device_publishes_and_subscribes_only_on_its_own_topics() {
    let fixture = Fixture::new();
    let sandbox = with_console(&fixture).start().expect("starts");
    let addr = sandbox.mqtt_addr();
    let mut console = connect(addr, console_login(), None).await.expect("console");
    assert_eq!(
        subscribe(&mut console, "/sys/pkA/#").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut dev1 = connect(addr, &dev1_now(), None).await.expect("dev1");
    assert_eq!(
        subscribe(&mut dev1, "/sys/pkA/dev2/thing/service/#").await,
        [SubscribeReasonCode::Failure],
        "another device's topics"
    );
    assert_eq!(
        subscribe(&mut dev1, "/sys/+/+/thing/service/#").await,
        [SubscribeReasonCode::Failure],
        "a wildcard over devices"
    );
    assert_eq!(
        subscribe(&mut dev1, "/sys/pkA/dev1/thing/measurepoint/post_reply").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    publish(
        &mut dev1,
        "/sys/pkA/dev2/thing/measurepoint/post",
        "{\"forged\":1}",
    )
    .await;
    publish(
        &mut dev1,
        "/sys/pkA/dev1/thing/event/alarm/post",
        "{\"own\":1}",
    )
    .await;
    let seen = received(&mut console, Duration::from_millis(500)).await;
    assert!(
        seen.iter()
            .any(|(t, _)| t == "/sys/pkA/dev1/thing/event/alarm/post"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(_, p)| p.contains("forged")),
        "a publish on another device's topic reached the cloud: {seen:?}"
    );
    sandbox
        .wait_for_log(
            "dropped a PUBLISH outside the device's topics listener=\"enos-mqtt\" device=pkA/dev1",
            WAIT,
        )
        .expect("the drop is logged");
    sandbox
        .wait_for_log("refused a SUBSCRIBE outside the device's topics", WAIT)
        .expect("the refusal is logged");
}

#[tokio::test]
async fn downstream_arrives_without_subscribe_and_only_to_its_device() {
    let fixture = Fixture::new();
    let sandbox = with_console(&fixture).start().expect("starts");
    let addr = sandbox.mqtt_addr();
    let mut console = connect(addr, console_login(), None).await.expect("console");
    // Neither device subscribes to anything, as the official SDKs do not.
    let mut dev1 = connect(addr, &dev1_now(), None).await.expect("dev1");
    let mut dev2 = connect(addr, &device("pkA", "dev2", "secret-dev2-51c2e"), None)
        .await
        .expect("dev2");
    publish(
        &mut console,
        "/sys/pkA/dev1/thing/service/restart",
        "{\"id\":\"call-1\"}",
    )
    .await;
    let at_dev1 = received(&mut dev1, Duration::from_millis(500)).await;
    assert_eq!(
        at_dev1,
        [(
            "/sys/pkA/dev1/thing/service/restart".to_owned(),
            "{\"id\":\"call-1\"}".to_owned()
        )]
    );
    let at_dev2 = received(&mut dev2, Duration::from_millis(300)).await;
    assert!(
        at_dev2.is_empty(),
        "another device's call arrived: {at_dev2:?}"
    );
    // The console may not publish what devices send.
    publish(&mut console, "/sys/pkA/dev1/thing/measurepoint/post", "{}").await;
    sandbox
        .wait_for_log("dropped a console PUBLISH", WAIT)
        .expect("logged");
}

#[tokio::test]
async fn a_subscribed_device_gets_one_copy() {
    let fixture = Fixture::new();
    let sandbox = with_console(&fixture).start().expect("starts");
    let addr = sandbox.mqtt_addr();
    let mut console = connect(addr, console_login(), None).await.expect("console");
    let mut dev1 = connect(addr, &dev1_now(), None).await.expect("dev1");
    // Our agent subscribes explicitly; the namespace delivery must not
    // double it.
    for filter in [
        "/sys/pkA/dev1/thing/service/#",
        "/sys/pkA/dev1/thing/service/restart",
    ] {
        assert_eq!(
            subscribe(&mut dev1, filter).await,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
    }
    publish(
        &mut console,
        "/sys/pkA/dev1/thing/service/restart",
        "{\"id\":\"once\"}",
    )
    .await;
    let got = received(&mut dev1, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "{got:?}");
}

#[tokio::test]
async fn a_gateway_gets_its_logged_in_sub_devices_downstream() {
    let fixture = Fixture::new();
    let sandbox = with_console(&fixture).start().expect("starts");
    let addr = sandbox.mqtt_addr();
    let mut console = connect(addr, console_login(), None).await.expect("console");
    let mut gw1 = connect(addr, &device("gwpk", "gw1", "secret-gw1-a83f1"), None)
        .await
        .expect("gw1");
    let call = "/sys/subpk/sub1/thing/service/reboot";
    // Before the login, sub1's topics are not gw1's.
    publish(&mut console, call, "{\"id\":\"early\"}").await;
    assert!(
        received(&mut gw1, Duration::from_millis(300))
            .await
            .is_empty()
    );

    let sub1 = credential(
        "subpk",
        "sub1",
        "secret-sub1-c4e88",
        SignMethod::HmacSha1,
        now_ms(),
    );
    let login = serde_json::json!({
        "id": "login-1",
        "version": "1.0",
        "method": "combine.login",
        "params": {
            "productKey": "subpk",
            "deviceKey": "sub1",
            "clientId": "sub1",
            "timestamp": sub1.mqtt_client_id.split("timestamp=").nth(1).and_then(|t| t.strip_suffix('|')).expect("timestamp"),
            "signMethod": "hmacsha1",
            "sign": enos_sign_core::ExposeSecret::expose_secret(&sub1.password),
        },
    });
    let reply = gw1
        .request("/ext/session/gwpk/gw1/combine/login", &login)
        .await;
    assert_eq!(reply["code"], 200, "{reply}");

    // Now the gateway gets sub1's service calls unasked, and may answer.
    publish(&mut console, call, "{\"id\":\"late\"}").await;
    let got = received(&mut gw1, Duration::from_millis(500)).await;
    assert_eq!(got, [(call.to_owned(), "{\"id\":\"late\"}".to_owned())]);
    // Another gateway's sub-device stays out of reach.
    publish(&mut console, "/sys/subpk/sub2/thing/service/reboot", "{}").await;
    assert!(
        received(&mut gw1, Duration::from_millis(300))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_second_login_of_a_device_takes_its_session_over() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let addr = sandbox.mqtt_addr();
    let mut first = connect(addr, &dev1_now(), None).await.expect("first");
    // The same credential with its parameters reordered: another MQTT
    // client id, the same device.
    let credential = dev1_now();
    let (client_id, params) = credential
        .mqtt_client_id
        .split_once('|')
        .expect("client id");
    let mut reordered: Vec<&str> = params.trim_end_matches('|').split(',').collect();
    reordered.reverse();
    let login = Login {
        client_id: format!("{client_id}|{}|", reordered.join(",")),
        username: credential.username.clone(),
        password: enos_sign_core::ExposeSecret::expose_secret(&credential.password).to_owned(),
    };
    let _second = connect(addr, login, None).await.expect("second");
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if first.eventloop.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the first connection was not taken over");
}
