//! The sandbox as an MQTT 3.1.1 broker under the EnOS rules (issue 27):
//! wills, persistent sessions, QoS 1 redelivery, CONNACK first,
//! keepalive 0; and the filter cap per session (issue 23, finding 13).
//! Raw rumqttc clients, not the agent.

use std::time::Duration;

use enos_sign_core::SignMethod;
use rumqttc::{Event, LastWill, Packet, QoS, SubscribeReasonCode};

use crate::common::{
    Connected, Fixture, Login, WAIT, connect, connect_with, credential, dev1_now, now_ms,
};

const CONSOLE_USER: &str = "console";
const CONSOLE_PASSWORD: &str = "console-password-27c0de";

/// A non-downstream topic of dev1 the console may publish on (a `_reply`),
/// so it reaches dev1 only through a subscription.
const REPLY_TOPIC: &str = "/sys/pkA/dev1/thing/event/alarm/post_reply";
/// dev1's will topic.
const WILL_TOPIC: &str = "/sys/pkA/dev1/thing/event/offline/post";

fn start(fixture: &Fixture) -> enos_testkit::sandbox::Sandbox {
    let file = fixture.dir.path().join("console.secret");
    enos_testkit::write_private(&file, format!("{CONSOLE_PASSWORD}\n").as_bytes())
        .expect("write console password");
    fixture
        .sandbox()
        .console(CONSOLE_USER, file)
        .start()
        .expect("sandbox starts")
}

fn console_login() -> Login {
    Login {
        client_id: "the-console".into(),
        username: CONSOLE_USER.into(),
        password: CONSOLE_PASSWORD.into(),
    }
}

/// The next packet the client receives, or `None` when nothing arrives
/// within `window`.
async fn next_packet(client: &mut Connected, window: Duration) -> Option<Packet> {
    tokio::time::timeout(window, async {
        loop {
            match client.eventloop.poll().await {
                Ok(Event::Incoming(packet)) => return packet,
                Ok(Event::Outgoing(_)) => {}
                Err(e) => panic!("connection lost: {e}"),
            }
        }
    })
    .await
    .ok()
}

/// Sends DISCONNECT and lets the client send it before the socket closes.
async fn disconnect(mut client: Connected) {
    client.client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while client.eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// The next PUBLISH within `window`, skipping other packets.
async fn next_publish(client: &mut Connected, window: Duration) -> Option<rumqttc::Publish> {
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_packet(client, left).await? {
            Packet::Publish(p) => return Some(p),
            _ => continue,
        }
    }
}

/// Subscribes and returns the SUBACK's codes.
async fn subscribe(client: &mut Connected, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
    client
        .client
        .subscribe(filter, qos)
        .await
        .expect("subscribe");
    loop {
        match next_packet(client, WAIT).await.expect("a SUBACK") {
            Packet::SubAck(ack) => return ack.return_codes,
            _ => continue,
        }
    }
}

/// The console, subscribed to all of pkA's topics.
async fn console(sandbox: &enos_testkit::sandbox::Sandbox) -> Connected {
    let mut console = connect(sandbox.mqtt_addr(), console_login(), None)
        .await
        .expect("console connects");
    assert_eq!(
        subscribe(&mut console, "/sys/pkA/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    console
}

/// The console publishes at QoS 1 and waits for its PUBACK.
async fn console_publish(console: &mut Connected, topic: &str, payload: &str) {
    console
        .client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_owned())
        .await
        .expect("publish");
    loop {
        match next_packet(console, WAIT).await.expect("a PUBACK") {
            Packet::PubAck(_) => return,
            _ => continue,
        }
    }
}

/// dev1, persistent (clean session off).
async fn persistent_dev1(
    sandbox: &enos_testkit::sandbox::Sandbox,
    manual_acks: bool,
) -> Result<Connected, String> {
    connect_with(sandbox.mqtt_addr(), &dev1_now(), None, |o| {
        o.set_clean_session(false);
        o.set_manual_acks(manual_acks);
    })
    .await
}

/// Issue 27 defect 1: a will is published when the device's connection
/// closes without DISCONNECT (socket closed, a second login taking the
/// session over, keepalive expired), and not after a DISCONNECT.
#[tokio::test]
async fn issue27_defect1_will_published_on_every_close_but_disconnect() {
    let fixture = Fixture::new();
    let sandbox = start(&fixture);
    let mut console = console(&sandbox).await;
    let with_will = |payload: &'static str| {
        move |o: &mut rumqttc::MqttOptions| {
            o.set_last_will(LastWill::new(WILL_TOPIC, payload, QoS::AtLeastOnce, false));
        }
    };

    // The socket closes (FIN, no DISCONNECT).
    let device = connect_with(sandbox.mqtt_addr(), &dev1_now(), None, with_will("closed"))
        .await
        .expect("dev1 connects");
    drop(device);
    let will = next_publish(&mut console, WAIT)
        .await
        .expect("the will after the socket closed");
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        (WILL_TOPIC, &b"closed"[..])
    );

    // A second login of the device takes the session over.
    let _old = connect_with(
        sandbox.mqtt_addr(),
        &dev1_now(),
        None,
        with_will("taken over"),
    )
    .await
    .expect("dev1 connects");
    let _new = connect(sandbox.mqtt_addr(), &dev1_now(), None)
        .await
        .expect("dev1 connects again");
    let will = next_publish(&mut console, WAIT)
        .await
        .expect("the will after a take-over");
    assert_eq!(&will.payload[..], b"taken over");
    drop(_new);

    // The keepalive expires: the client, never polled again, sends no
    // PINGREQ within one and a half keepalives (1 s).
    let silent = connect_with(sandbox.mqtt_addr(), &dev1_now(), None, |o| {
        with_will("silent")(o);
        o.set_keep_alive(Duration::from_secs(1));
    })
    .await
    .expect("dev1 connects");
    let will = next_publish(&mut console, WAIT)
        .await
        .expect("the will after the keepalive expired");
    assert_eq!(&will.payload[..], b"silent");
    drop(silent);

    // DISCONNECT: no will.
    let device = connect_with(
        sandbox.mqtt_addr(),
        &dev1_now(),
        None,
        with_will("disconnected"),
    )
    .await
    .expect("dev1 connects");
    disconnect(device).await;
    let nothing = next_publish(&mut console, Duration::from_secs(2)).await;
    assert!(nothing.is_none(), "a will after DISCONNECT: {nothing:?}");
}

/// Issue 27 defect 2: a clean-session-0 device's subscriptions survive a
/// reconnect, and a message queued for them while it was offline arrives.
#[tokio::test]
async fn issue27_defect2_persistent_session_keeps_its_filters() {
    let fixture = Fixture::new();
    let sandbox = start(&fixture);
    let mut console = console(&sandbox).await;
    let mut device = persistent_dev1(&sandbox, false).await.expect("dev1");
    assert_eq!(
        subscribe(&mut device, REPLY_TOPIC, QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    disconnect(device).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    console_publish(&mut console, REPLY_TOPIC, "queued while offline").await;

    // Reconnect without subscribing: the session's filter still holds.
    let mut device = persistent_dev1(&sandbox, false).await.expect("dev1 again");
    let got = next_publish(&mut device, WAIT)
        .await
        .expect("the queued message after the reconnect");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (REPLY_TOPIC, &b"queued while offline"[..])
    );

    // A clean-session-1 login drops the session and its filters.
    drop(device);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _clean = connect(sandbox.mqtt_addr(), &dev1_now(), None)
        .await
        .expect("clean dev1");
    drop(_clean);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut device = persistent_dev1(&sandbox, false).await.expect("dev1");
    console_publish(&mut console, REPLY_TOPIC, "not subscribed any more").await;
    let nothing = next_publish(&mut device, Duration::from_secs(1)).await;
    assert!(nothing.is_none(), "{nothing:?}");
}

/// Issue 27 defect 3: an unacknowledged QoS 1 delivery reaches the
/// reconnected client again, flagged DUP.
#[tokio::test]
async fn issue27_defect3_unacknowledged_qos1_is_redelivered_dup() {
    let fixture = Fixture::new();
    let sandbox = start(&fixture);
    let mut console = console(&sandbox).await;
    let mut device = persistent_dev1(&sandbox, true).await.expect("dev1");
    assert_eq!(
        subscribe(&mut device, REPLY_TOPIC, QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    console_publish(&mut console, REPLY_TOPIC, "ack me").await;
    let first = next_publish(&mut device, WAIT).await.expect("delivered");
    assert!(!first.dup);
    // No PUBACK: the connection drops.
    drop(device);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut device = persistent_dev1(&sandbox, true).await.expect("dev1 again");
    let again = next_publish(&mut device, WAIT)
        .await
        .expect("redelivered after the reconnect");
    assert_eq!(
        (again.topic.as_str(), &again.payload[..], again.qos),
        (REPLY_TOPIC, &b"ack me"[..], QoS::AtLeastOnce)
    );
    assert!(again.dup, "a redelivery is flagged DUP");
}

/// Issue 27 defect 4: on a session resume with messages waiting, CONNACK
/// is still the first packet (rumqttc fails the connect otherwise).
#[tokio::test]
async fn issue27_defect4_connack_comes_first_on_resume() {
    let fixture = Fixture::new();
    let sandbox = start(&fixture);
    let mut console = console(&sandbox).await;
    for round in 0..5 {
        let device = persistent_dev1(&sandbox, false).await.expect("dev1");
        disconnect(device).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..3 {
            console_publish(
                &mut console,
                "/sys/pkA/dev1/thing/service/restart",
                &format!("{round}.{i}"),
            )
            .await;
        }
        let mut device = persistent_dev1(&sandbox, false)
            .await
            .expect("CONNACK before any PUBLISH");
        let got = next_publish(&mut device, WAIT)
            .await
            .expect("the service call");
        assert_eq!(got.topic, "/sys/pkA/dev1/thing/service/restart");
        drop(device);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 27 defect 5: keepalive 0 (no keepalive, allowed by MQTT 3.1.1
/// and not limited by EnOS's docs) is accepted, for a device and for the
/// console, and the session works.
#[tokio::test]
async fn issue27_defect5_keepalive_zero_is_accepted() {
    let fixture = Fixture::new();
    let sandbox = start(&fixture);
    let mut console = connect_with(sandbox.mqtt_addr(), console_login(), None, |o| {
        o.set_keep_alive(Duration::ZERO);
    })
    .await
    .expect("the console with keepalive 0");
    let mut device = connect_with(sandbox.mqtt_addr(), &dev1_now(), None, |o| {
        o.set_keep_alive(Duration::ZERO);
    })
    .await
    .expect("a device with keepalive 0");
    console_publish(&mut console, "/sys/pkA/dev1/thing/service/restart", "go").await;
    let got = next_publish(&mut device, WAIT).await.expect("downstream");
    assert_eq!(&got.payload[..], b"go");
    let other = credential(
        "pkA",
        "dev2",
        "secret-dev2-51c2e",
        SignMethod::HmacSha1,
        now_ms(),
    );
    connect_with(sandbox.mqtt_addr(), &other, None, |o| {
        o.set_keep_alive(Duration::ZERO);
        o.set_clean_session(false);
    })
    .await
    .expect("a persistent device with keepalive 0");
}

/// Issue 23 finding 13: a session holds at most `max_filters_per_session`
/// filters (1,000 by default); one more is refused with 0x80, a filter
/// already held may be subscribed again, and an unsubscribed one frees
/// its place.
#[tokio::test]
async fn issue23_finding13_filters_per_session_are_capped() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let mut device = connect(sandbox.mqtt_addr(), &dev1_now(), None)
        .await
        .expect("dev1");
    let filter = |i: usize| format!("/sys/pkA/dev1/thing/event/e{i}/post_reply");
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    // 1,001 filters in one SUBSCRIBE: the last is refused.
    device
        .client
        .subscribe_many(
            (0..=1000).map(|i| rumqttc::SubscribeFilter::new(filter(i), QoS::AtLeastOnce)),
        )
        .await
        .expect("subscribe");
    let codes = loop {
        match next_packet(&mut device, WAIT).await.expect("a SUBACK") {
            Packet::SubAck(ack) => break ack.return_codes,
            _ => continue,
        }
    };
    assert_eq!(codes.len(), 1001);
    assert!(
        codes[..1000].iter().all(|c| *c == ok),
        "the first 1,000 are granted"
    );
    assert_eq!(codes[1000], SubscribeReasonCode::Failure);
    // Subscribing a held filter again is fine; a new wildcard is not.
    assert_eq!(
        subscribe(&mut device, &filter(0), QoS::AtLeastOnce).await,
        vec![ok]
    );
    let wildcard = "/sys/pkA/dev1/thing/event/+/post_reply";
    assert_eq!(
        subscribe(&mut device, wildcard, QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    device
        .client
        .unsubscribe(filter(1))
        .await
        .expect("unsubscribe");
    loop {
        match next_packet(&mut device, WAIT).await.expect("an UNSUBACK") {
            Packet::UnsubAck(_) => break,
            _ => continue,
        }
    }
    assert_eq!(
        subscribe(&mut device, wildcard, QoS::AtLeastOnce).await,
        vec![ok]
    );
    sandbox
        .wait_for_log("refused a SUBSCRIBE: the session holds", WAIT)
        .expect("the refusal is logged");
}

/// Issue 23 finding 12: under `cn:{productKey}.{deviceKey}`, whose `.` may
/// be in either key, a common name `Pk.dev.x` reads as two devices
/// (`Pk.dev/x` and `Pk/dev.x`): it is accepted for neither, while an
/// unambiguous common name still works.
#[tokio::test]
async fn issue23_finding12_an_ambiguous_common_name_names_no_device() {
    let fixture = Fixture::with_devices(
        "productKey,deviceKey,deviceSecret\n\
         Pk.dev,x,secret-pkdev-x-1\n\
         Pk,dev.x,secret-pk-devx-2\n\
         pkA,dev1,secret-dev1-7f3a9\n",
    );
    let sandbox = fixture
        .sandbox()
        .tls_device_identity("cn:{productKey}.{deviceKey}")
        .start()
        .expect("starts");
    let tls_addr = sandbox.tls_addr().expect("tls");
    let ambiguous = fixture.pki.client_with_uri("Pk.dev.x", None).expect("cert");
    for (pk, dk, secret) in [
        ("Pk.dev", "x", "secret-pkdev-x-1"),
        ("Pk", "dev.x", "secret-pk-devx-2"),
    ] {
        let login = credential(pk, dk, secret, SignMethod::HmacSha1, now_ms());
        crate::common::assert_refused(
            &sandbox,
            tls_addr,
            &login,
            Some(crate::common::tls_client(&fixture.pki, Some(&ambiguous))),
            rumqttc::ConnectReturnCode::NotAuthorized,
            "reads as more than one device",
        )
        .await;
    }
    let clear = fixture.pki.client_with_uri("pkA.dev1", None).expect("cert");
    connect(
        tls_addr,
        &dev1_now(),
        Some(crate::common::tls_client(&fixture.pki, Some(&clear))),
    )
    .await
    .expect("an unambiguous common name");
}

/// Issue 27 items 6 and 7, as decided in docs/sandbox.md: a SUBSCRIBE at
/// QoS 2 is granted QoS 1; a retained downstream message reaches the
/// device at login, a retained `_reply` is not replayed on SUBSCRIBE.
#[tokio::test]
async fn issue27_items6_7_qos2_granted_as_qos1_and_retained_as_documented() {
    let fixture = Fixture::new();
    let sandbox = start(&fixture);
    let mut console = console(&sandbox).await;
    for (topic, payload) in [
        ("/sys/pkA/dev1/thing/service/restart", "retained call"),
        (REPLY_TOPIC, "retained reply"),
    ] {
        console
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }
    // The console's own subscription sees both; wait for their PUBACKs.
    let mut acks = 0;
    while acks < 2 {
        if let Packet::PubAck(_) = next_packet(&mut console, WAIT).await.expect("PUBACK") {
            acks += 1;
        }
    }
    let mut device = connect(sandbox.mqtt_addr(), &dev1_now(), None)
        .await
        .expect("dev1");
    let call = next_publish(&mut device, WAIT)
        .await
        .expect("the retained downstream message at login");
    assert_eq!(
        (call.topic.as_str(), &call.payload[..]),
        ("/sys/pkA/dev1/thing/service/restart", &b"retained call"[..])
    );
    // rumqttd sent the retained `_reply` too (the namespace subscription
    // matches it); the front drops it and acknowledges it to rumqttd only
    // after the client's PUBACK of the earlier call: rumqttd closes a
    // session that acknowledges out of order.
    assert_eq!(
        subscribe(&mut device, REPLY_TOPIC, QoS::ExactlyOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "QoS 2 is granted as QoS 1"
    );
    let nothing = next_publish(&mut device, Duration::from_secs(1)).await;
    assert!(nothing.is_none(), "no replay on SUBSCRIBE: {nothing:?}");
}
