//! Request/reply through the broker: a gateway logs sub-devices in and
//! out, a device posts measurepoints.

use enos_sign_core::SignMethod;
use serde_json::json;

use crate::common::{Fixture, combine_login, connect, credential, dev1_now, now_ms};

#[tokio::test]
async fn sub_device_login_and_logout_replies() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let gw1 = credential(
        "gwpk",
        "gw1",
        "secret-gw1-a83f1",
        SignMethod::HmacSha1,
        now_ms(),
    );
    let mut gateway = connect(sandbox.mqtt_addr(), &gw1, None)
        .await
        .expect("gateway connects");
    let topic = "/ext/session/gwpk/gw1/combine/login";

    let ok = gateway
        .request(topic, &combine_login("1", "sub1", "secret-sub1-c4e88"))
        .await;
    assert_eq!(ok["id"], "1");
    assert_eq!(ok["code"], 200, "{ok}");
    assert_eq!(
        ok["data"],
        json!({"productKey": "subpk", "deviceKey": "sub1"})
    );

    let cases = [
        ("2", "sub1", "not-the-secret", 742),
        ("3", "ghost", "secret-sub1-c4e88", 705),
        ("4", "sub2", "secret-sub2-6d1f0", 740), // gw2's sub-device
        ("5", "suboff", "secret-suboff-3a7b2", 723),
    ];
    for (id, dk, secret, code) in cases {
        let reply = gateway.request(topic, &combine_login(id, dk, secret)).await;
        assert_eq!(
            (reply["id"].clone(), reply["code"].clone()),
            (json!(id), json!(code)),
            "{reply}"
        );
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
    }

    let logout = json!({
        "id": "6",
        "version": "1.0",
        "method": "combine.logout",
        "params": {"productKey": "subpk", "deviceKey": "sub1"}
    });
    let reply = gateway
        .request("/ext/session/gwpk/gw1/combine/logout", &logout)
        .await;
    assert_eq!(
        (reply["id"].clone(), reply["code"].clone()),
        (json!("6"), json!(200))
    );
    // Another gateway may not log gw1's sub-device out (on its own topic:
    // gw1 may not publish on gw2's, see topics.rs).
    let gw2 = credential(
        "gwpk",
        "gw2",
        "secret-gw2-02bd7",
        SignMethod::HmacSha1,
        now_ms(),
    );
    let mut other_gateway = connect(sandbox.mqtt_addr(), &gw2, None)
        .await
        .expect("gw2 connects");
    let reply = other_gateway
        .request("/ext/session/gwpk/gw2/combine/logout", &logout)
        .await;
    assert_eq!(reply["code"], 740);

    let logs = sandbox.logs();
    assert!(
        logs.contains("request=\"combine.login\" device=gwpk/gw1 code=742"),
        "{logs}"
    );
    assert!(!logs.contains("secret-sub1-c4e88"));
}

#[tokio::test]
async fn measurepoint_post_gets_its_reply() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let dev1 = dev1_now();
    let mut device = connect(sandbox.mqtt_addr(), &dev1, None)
        .await
        .expect("connects");
    let post = json!({
        "id": "123",
        "version": "1.0",
        "method": "thing.measurepoint.post",
        "params": {"measurepoints": {"temperature": 21.5}, "time": now_ms()}
    });
    let reply = device
        .request("/sys/pkA/dev1/thing/measurepoint/post", &post)
        .await;
    assert_eq!(
        reply,
        json!({"id": "123", "code": 200, "data": {}, "message": ""})
    );

    let bad = json!({"id": "124", "method": "thing.measurepoint.post"});
    let reply = device
        .request("/sys/pkA/dev1/thing/measurepoint/post", &bad)
        .await;
    assert_eq!(
        (reply["id"].clone(), reply["code"].clone()),
        (json!("124"), json!(460))
    );
}
