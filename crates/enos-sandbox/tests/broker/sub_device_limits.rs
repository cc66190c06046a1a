//! Sub-device sessions in bulk: `combine.login.batch`, the limit of 200
//! online sub-devices per gateway, and `combine.logout`.

use std::fmt::Write as _;

use enos_sign_core::SignMethod;
use serde_json::{Value, json};

use crate::common::{
    Connected, Fixture, combine_login, connect, credential, now_ms, sub_device_sign,
};

const GATEWAY_SECRET: &str = "secret-gw1-a83f1";

/// `gwpk/gw1` with `count` sub-devices `subpk/s000…`, plus `gwpk/gw2`
/// with the sub-device `subpk/other`.
fn devices(count: usize) -> String {
    let mut csv = String::from(
        "productKey,deviceKey,deviceSecret,gatewayProductKey,gatewayDeviceKey\n\
         gwpk,gw1,secret-gw1-a83f1,,\n\
         gwpk,gw2,secret-gw2-02bd7,,\n\
         subpk,other,secret-other-5e1d0,gwpk,gw2\n",
    );
    for i in 0..count {
        writeln!(csv, "subpk,{},{},gwpk,gw1", dk(i), secret(i)).expect("write");
    }
    csv
}

fn dk(i: usize) -> String {
    format!("s{i:03}")
}

fn secret(i: usize) -> String {
    format!("secret-{i:03}-b7c2")
}

/// A `combine.login.batch` as the Java SDK sends it, for `(dk, secret)`.
fn batch(id: &str, entries: &[(String, String)]) -> Value {
    let (client_id, ts) = ("gw1", now_ms());
    let sub_devices: Vec<Value> = entries
        .iter()
        .map(|(dk, secret)| {
            json!({"productKey": "subpk", "deviceKey": dk, "secureMode": "2",
                   "sign": sub_device_sign(client_id, ts, dk, secret)})
        })
        .collect();
    json!({"id": id, "version": "1.1", "method": "combine.login.batch", "params": {
        "clientId": client_id, "timestamp": ts.to_string(), "signMethod": "sha256",
        "subDevices": sub_devices}})
}

fn logout(id: &str, dk: &str) -> Value {
    json!({"id": id, "version": "1.0", "method": "combine.logout",
           "params": {"productKey": "subpk", "deviceKey": dk}})
}

const BATCH: &str = "/ext/session/gwpk/gw1/combine/login/batch";
const LOGIN: &str = "/ext/session/gwpk/gw1/combine/login";
const LOGOUT: &str = "/ext/session/gwpk/gw1/combine/logout";

async fn gateway(addr: std::net::SocketAddr) -> Connected {
    let gw1 = credential(
        "gwpk",
        "gw1",
        GATEWAY_SECRET,
        SignMethod::HmacSha1,
        now_ms(),
    );
    connect(addr, &gw1, None).await.expect("gateway connects")
}

/// A measurepoint post on the sub-device's own topic, through the gateway.
async fn post_as(gateway: &mut Connected, dk: &str) -> Value {
    let post = json!({"id": "p", "method": "thing.measurepoint.post",
                      "params": {"measurepoints": {"t": 1}}});
    gateway
        .request(&format!("/sys/subpk/{dk}/thing/measurepoint/post"), &post)
        .await
}

#[tokio::test]
async fn a_batch_logs_in_every_valid_entry_and_lists_the_failed_ones() {
    let fixture = Fixture::with_devices(&devices(148));
    let sandbox = fixture.start();
    let mut gw = gateway(sandbox.mqtt_addr()).await;

    let mut entries: Vec<(String, String)> = (0..148).map(|i| (dk(i), secret(i))).collect();
    // One sub-device of another gateway, one wrong sign: 150 in all.
    entries.insert(70, ("other".into(), "secret-other-5e1d0".into()));
    entries.insert(100, (dk(5), "not-the-secret".into()));
    let reply = gw.request(BATCH, &batch("b1", &entries)).await;
    assert_eq!(
        (reply["id"].clone(), reply["code"].clone()),
        (json!("b1"), json!(200)),
        "{reply}"
    );
    assert_eq!(
        reply["data"]["failedSubDevices"],
        json!([{"productKey": "subpk", "deviceKey": "other"},
               {"productKey": "subpk", "deviceKey": "s005"}]),
    );
    let logged_in = reply["data"]["loginedSubDevices"]
        .as_array()
        .expect("an array");
    // s005 is listed once as logged in (its valid entry) and once failed.
    assert_eq!(logged_in.len(), 148);
    for (entry, i) in logged_in.iter().zip(0..) {
        assert_eq!(
            entry,
            &json!({"productKey": "subpk", "deviceKey": dk(i), "assetId": format!("subpk/{}", dk(i))})
        );
    }
    let logs = sandbox.logs();
    assert!(logs.contains("sub_device=subpk/other code=740"), "{logs}");
    assert!(logs.contains("sub_device=subpk/s005 code=742"), "{logs}");

    // The logged-in sub-devices' topics are the gateway's now.
    for i in [0, 73, 147] {
        let reply = post_as(&mut gw, &dk(i)).await;
        assert_eq!(reply["code"], 200, "{reply}");
    }

    // A malformed batch logs nobody in.
    let mut malformed = batch("b2", &[("s000".into(), secret(0))]);
    malformed["params"]["subDevices"][0]
        .as_object_mut()
        .expect("entry")
        .remove("sign");
    let reply = gw.request(BATCH, &malformed).await;
    assert_eq!(reply["code"], 460, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("subDevices[0]")),
        "{reply}"
    );
}

#[tokio::test]
async fn a_gateway_holds_at_most_200_sub_devices_until_one_logs_out_or_it_disconnects() {
    let fixture = Fixture::with_devices(&devices(202));
    let sandbox = fixture.start();
    let mut gw = gateway(sandbox.mqtt_addr()).await;

    let first_200: Vec<(String, String)> = (0..200).map(|i| (dk(i), secret(i))).collect();
    let reply = gw.request(BATCH, &batch("b1", &first_200)).await;
    assert_eq!(reply["data"]["failedSubDevices"], json!([]), "{reply}");

    let refused = gw
        .request(LOGIN, &combine_login("l1", &dk(200), &secret(200)))
        .await;
    assert_eq!(refused["code"], 429, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit")),
        "{refused}"
    );
    let reply = gw
        .request(BATCH, &batch("b2", &[(dk(201), secret(201))]))
        .await;
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(
        reply["data"]["failedSubDevices"],
        json!([{"productKey": "subpk", "deviceKey": "s201"}])
    );
    assert!(sandbox.logs().contains("sub_device=subpk/s201 code=429"));
    // Logging in one already online takes no new slot.
    let again = gw
        .request(LOGIN, &combine_login("l2", &dk(7), &secret(7)))
        .await;
    assert_eq!(again["code"], 200, "{again}");

    // A logout frees a slot; the sub-device's topics are no longer the
    // gateway's.
    let out = gw.request(LOGOUT, &logout("o1", &dk(7))).await;
    assert_eq!(
        (out["id"].clone(), out["code"].clone()),
        (json!("o1"), json!(200)),
        "{out}"
    );
    let mark = sandbox.log_mark();
    gw.client
        .publish(
            "/sys/subpk/s007/thing/measurepoint/post",
            rumqttc::QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .expect("publish");
    let ok = gw
        .request(LOGIN, &combine_login("l3", &dk(200), &secret(200)))
        .await;
    assert_eq!(ok["code"], 200, "{ok}");
    sandbox
        .wait_for_log_since(
            mark,
            "dropped a PUBLISH outside the device's topics",
            crate::common::WAIT,
        )
        .expect("the logged-out sub-device's topic is refused");

    // The gateway's disconnect takes its sub-devices offline: after
    // reconnecting it has 200 free slots.
    drop(gw);
    sandbox
        .wait_for_log(
            "the gateway's session ended: its sub-devices are offline",
            crate::common::WAIT,
        )
        .expect("the sub-devices went offline");
    let mut gw = gateway(sandbox.mqtt_addr()).await;
    let reply = gw
        .request(LOGIN, &combine_login("l4", &dk(201), &secret(201)))
        .await;
    assert_eq!(reply["code"], 200, "{reply}");
    let gone = gw.request(LOGOUT, &logout("o2", &dk(0))).await;
    assert_eq!(
        gone["code"], 404,
        "s000 went offline with the old session: {gone}"
    );
}

#[tokio::test]
async fn logging_out_a_sub_device_that_is_not_online() {
    let fixture = Fixture::with_devices(&devices(2));
    let sandbox = fixture.start();
    let mut gw = gateway(sandbox.mqtt_addr()).await;
    let reply = gw.request(LOGOUT, &logout("o1", &dk(0))).await;
    assert_eq!(
        (reply["id"].clone(), reply["code"].clone()),
        (json!("o1"), json!(404)),
        "{reply}"
    );
    assert_eq!(
        reply["message"],
        "sub-device subpk/s000 is not online through gateway gwpk/gw1"
    );
    let reply = gw
        .request(LOGIN, &combine_login("l1", &dk(0), &secret(0)))
        .await;
    assert_eq!(reply["code"], 200, "{reply}");
    let reply = gw.request(LOGOUT, &logout("o2", &dk(0))).await;
    assert_eq!(reply["code"], 200, "{reply}");
    let reply = gw.request(LOGOUT, &logout("o3", &dk(0))).await;
    assert_eq!(reply["code"], 404, "logged out already: {reply}");
}
