//! Dynamic activation: a device awaiting activation logs in with its
//! product's secret (securemode 3), receives its new secret unasked on
//! `thing/activate/info`, confirms it, and logs in with securemode 2.

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, MqttCredential, ProductKey, ProductSecret, SecureMode,
    SignMethod, SignedFields, TimestampMs,
};
use rumqttc::{ConnectReturnCode, Event, Packet, QoS};
use serde_json::{Value, json};

use crate::common::{
    Connected, Fixture, WAIT, assert_no_secrets_logged, assert_refused, connect, now_ms,
};

const PRODUCT_SECRET: &str = "product-secret-dyn-4c1e7";

/// `dynpk` allows dynamic activation; `fixedpk` has no product secret.
const DEVICES: &str = "\
productKey,deviceKey,deviceSecret,productSecret
dynpk,new1,,product-secret-dyn-4c1e7
dynpk,new2,,product-secret-dyn-4c1e7
dynpk,old1,secret-old1-93b2a,product-secret-dyn-4c1e7
fixedpk,new3,,
";

/// A login of `dynpk/{dk}` signed with the product secret (securemode 3).
fn activation_login(dk: &str, product_secret: &str) -> MqttCredential {
    let secret = ProductSecret::new(product_secret.to_owned()).expect("secret");
    MqttCredential::sign(
        fields("dynpk", dk),
        SecureMode::ProductSecret,
        SignMethod::HmacSha256,
        &secret,
    )
    .expect("signs")
}

/// A login of `{pk}/{dk}` signed with a device secret (securemode 2).
fn device_login(pk: &str, dk: &str, device_secret: &str) -> MqttCredential {
    let secret = DeviceSecret::new(device_secret.to_owned()).expect("secret");
    MqttCredential::sign(
        fields(pk, dk),
        SecureMode::DeviceSecret,
        SignMethod::HmacSha256,
        &secret,
    )
    .expect("signs")
}

fn fields(pk: &str, dk: &str) -> SignedFields {
    SignedFields {
        client_id: ClientId::new(dk).expect("client id"),
        device_key: DeviceKey::new(dk).expect("device key"),
        product_key: ProductKey::new(pk).expect("product key"),
        timestamp: TimestampMs::from_millis(now_ms()),
    }
}

/// Waits for the activation push, which arrives without a SUBSCRIBE.
async fn activation_push(session: &mut Connected, dk: &str) -> Value {
    let topic = format!("/ext/session/dynpk/{dk}/thing/activate/info");
    let wait = async {
        loop {
            match session.eventloop.poll().await.expect("connection stays up") {
                Event::Incoming(Packet::Publish(p)) if p.topic == topic => {
                    return serde_json::from_slice::<Value>(&p.payload).expect("push JSON");
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the push within the wait")
}

/// The pushed secret, checked for shape.
fn pushed_secret(push: &Value, dk: &str) -> String {
    assert_eq!(push["method"], "thing.activate.info", "{push}");
    assert_eq!(push["version"], "1.0", "{push}");
    assert_eq!(push["params"]["productKey"], "dynpk", "{push}");
    assert_eq!(push["params"]["deviceKey"], dk, "{push}");
    assert!(
        push["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{push}"
    );
    let secret = push["params"]["deviceSecret"]
        .as_str()
        .expect("a secret")
        .to_owned();
    assert_eq!(secret.len(), 32);
    assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
    secret
}

/// Publishes the device's reply to the push.
async fn reply(session: &mut Connected, dk: &str, id: &Value, code: u16) {
    session
        .client
        .publish(
            format!("/ext/session/dynpk/{dk}/thing/activate/info_reply"),
            QoS::AtLeastOnce,
            false,
            json!({"id": id, "code": code, "data": {}, "message": ""}).to_string(),
        )
        .await
        .expect("publish");
    // Drive the event loop until the PUBACK: the publish reached the sandbox.
    let wait = async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) =
                session.eventloop.poll().await.expect("connection stays up")
            {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("PUBACK within the wait");
}

#[tokio::test]
async fn a_device_is_activated_and_then_logs_in_with_its_new_secret() {
    let fixture = Fixture::with_devices(DEVICES);
    let sandbox = fixture.start();
    let addr = sandbox.mqtt_addr();

    let mut session = connect(addr, &activation_login("new1", PRODUCT_SECRET), None)
        .await
        .expect("securemode 3 is accepted for a device awaiting activation");
    let push = activation_push(&mut session, "new1").await;
    let secret = pushed_secret(&push, "new1");
    sandbox
        .wait_for_log("activation pushed", WAIT)
        .expect("the push is logged");
    reply(&mut session, "new1", &push["id"], 200).await;
    sandbox
        .wait_for_log("activation completed device=dynpk/new1", WAIT)
        .expect("the reply completes the activation");
    drop(session);

    connect(addr, &device_login("dynpk", "new1", &secret), None)
        .await
        .expect("securemode 2 with the pushed secret");
    assert_refused(
        &sandbox,
        addr,
        &activation_login("new1", PRODUCT_SECRET),
        None,
        ConnectReturnCode::NotAuthorized,
        "reason=device dynpk/new1 is already activated: log in with securemode 2",
    )
    .await;
    // The activation lives apart from the device file: a reload keeps it.
    sandbox.reload_devices().expect("reloads");
    connect(addr, &device_login("dynpk", "new1", &secret), None)
        .await
        .expect("still activated after a reload");

    assert_no_secrets_logged(&sandbox, &[&secret, PRODUCT_SECRET]);
}

#[tokio::test]
async fn a_second_activation_login_gets_the_same_secret_and_a_securemode_2_login_completes() {
    let fixture = Fixture::with_devices(DEVICES);
    let sandbox = fixture.start();
    let addr = sandbox.mqtt_addr();

    let mut first = connect(addr, &activation_login("new2", PRODUCT_SECRET), None)
        .await
        .expect("accepted");
    let first_push = activation_push(&mut first, "new2").await;
    drop(first);
    // The device died before its hand-over: it logs in again.
    let mut second = connect(addr, &activation_login("new2", PRODUCT_SECRET), None)
        .await
        .expect("accepted again before completion");
    let second_push = activation_push(&mut second, "new2").await;
    assert_eq!(first_push, second_push, "the same id and secret");
    let secret = pushed_secret(&second_push, "new2");
    // A reply with another id or code leaves it pending.
    reply(&mut second, "new2", &json!("not-the-id"), 200).await;
    reply(&mut second, "new2", &second_push["id"], 500).await;
    sandbox
        .wait_for_log("the reply's code is not 200", WAIT)
        .expect("a wrong reply is logged");
    let mut third = connect(addr, &activation_login("new2", PRODUCT_SECRET), None)
        .await
        .expect("still pending");
    assert_eq!(activation_push(&mut third, "new2").await, first_push);
    drop((second, third));

    // The reply was lost, but the device stored its secret: logging in
    // with it completes the activation.
    connect(addr, &device_login("dynpk", "new2", &secret), None)
        .await
        .expect("the pending secret is accepted");
    sandbox
        .wait_for_log("activation completed device=dynpk/new2", WAIT)
        .expect("completed by the login");
    assert_refused(
        &sandbox,
        addr,
        &activation_login("new2", PRODUCT_SECRET),
        None,
        ConnectReturnCode::NotAuthorized,
        "reason=device dynpk/new2 is already activated",
    )
    .await;
    assert_no_secrets_logged(&sandbox, &[&secret, PRODUCT_SECRET]);
}

#[tokio::test]
async fn activation_refusals() {
    let fixture = Fixture::with_devices(DEVICES);
    let sandbox = fixture.start();
    let addr = sandbox.mqtt_addr();

    // A product without a product secret allows no dynamic activation.
    let secret = ProductSecret::new(PRODUCT_SECRET.to_owned()).expect("secret");
    let fixed = MqttCredential::sign(
        fields("fixedpk", "new3"),
        SecureMode::ProductSecret,
        SignMethod::HmacSha256,
        &secret,
    )
    .expect("signs");
    assert_refused(
        &sandbox,
        addr,
        &fixed,
        None,
        ConnectReturnCode::NotAuthorized,
        "(EnOS code 770)",
    )
    .await;
    assert_refused(
        &sandbox,
        addr,
        &activation_login("new1", "not-the-product-secret"),
        None,
        ConnectReturnCode::BadUserNamePassword,
        "reason=password does not match the product secret of device dynpk/new1",
    )
    .await;
    // A device with a secret in the file is activated already.
    assert_refused(
        &sandbox,
        addr,
        &activation_login("old1", PRODUCT_SECRET),
        None,
        ConnectReturnCode::NotAuthorized,
        "reason=device dynpk/old1 is already activated",
    )
    .await;
    // securemode 2 before any activation: there is no secret to check.
    assert_refused(
        &sandbox,
        addr,
        &device_login("dynpk", "new1", "a-guessed-secret"),
        None,
        ConnectReturnCode::BadUserNamePassword,
        "reason=device dynpk/new1 has no device secret yet",
    )
    .await;
    connect(
        addr,
        &device_login("dynpk", "old1", "secret-old1-93b2a"),
        None,
    )
    .await
    .expect("a device of the product with its own secret logs in as usual");
    assert_no_secrets_logged(&sandbox, &[PRODUCT_SECRET]);
}
