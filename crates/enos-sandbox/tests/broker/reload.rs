//! Reloading the device file: new secrets and disabled devices take
//! effect for new connections and close the sessions they revoke; an
//! invalid file changes nothing.

use enos_sign_core::SignMethod;
use enos_testkit::HarnessError;
use rumqttc::ConnectReturnCode;
use serde_json::json;

use crate::common::{
    Connected, DEVICES, Fixture, WAIT, assert_bad_login, assert_refused, connect, credential,
    dev1_now, dev1_signed, now_ms,
};

/// Whether the connection closes within the wait.
async fn closes(session: &mut Connected) -> bool {
    tokio::time::timeout(WAIT, async {
        while session.eventloop.poll().await.is_ok() {}
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn reload_picks_up_a_changed_secret_and_a_disabled_device() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let old = dev1_now();
    let mut dev1 = connect(sandbox.mqtt_addr(), &old, None)
        .await
        .expect("old secret works");
    let dev2_credential = credential(
        "pkA",
        "dev2",
        "secret-dev2-51c2e",
        SignMethod::HmacSha1,
        now_ms(),
    );
    let mut dev2 = connect(sandbox.mqtt_addr(), &dev2_credential, None)
        .await
        .expect("dev2 connects");
    let gw1_credential = credential(
        "gwpk",
        "gw1",
        "secret-gw1-a83f1",
        SignMethod::HmacSha1,
        now_ms(),
    );
    let mut gw1 = connect(sandbox.mqtt_addr(), &gw1_credential, None)
        .await
        .expect("gw1 connects");

    let rotated = DEVICES
        .replace("secret-dev1-7f3a9", "rotated-dev1-e21c0")
        .replace(
            "pkA,dev2,secret-dev2-51c2e,,",
            "pkA,dev2,secret-dev2-51c2e,false,",
        );
    std::fs::write(&fixture.devices, rotated).expect("rewrite devices");
    let mark = sandbox.log_mark();
    let outcome = sandbox.reload_devices().expect("reloads");
    assert_eq!((outcome.devices, outcome.dropped_sessions), (8, 2));
    sandbox
        .wait_for_log_since(mark, "dropped the session", WAIT)
        .expect("logged after the reload");
    // Both drops are logged, possibly a moment apart: wait for the second
    // before taking the next mark, or it would see the second as new.
    let deadline = std::time::Instant::now() + WAIT;
    while sandbox.logs().matches("dropped the session").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "both drops logged");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        sandbox
            .wait_for_log_since(
                sandbox.log_mark(),
                "dropped the session",
                std::time::Duration::from_millis(50)
            )
            .is_err(),
        "a mark at the end sees nothing old"
    );

    // The revoked sessions are closed; the untouched one carries on.
    assert!(
        closes(&mut dev1).await,
        "dev1's secret changed: its session closes"
    );
    assert!(
        closes(&mut dev2).await,
        "dev2 was disabled: its session closes"
    );
    let post =
        json!({"id": "1", "method": "thing.measurepoint.post", "params": {"measurepoints": {}}});
    let reply = gw1
        .request("/sys/gwpk/gw1/thing/measurepoint/post", &post)
        .await;
    assert_eq!(reply["code"], 200, "gw1 is untouched");

    assert_bad_login(&sandbox, &old, "reason=password does not match").await;
    let new = credential(
        "pkA",
        "dev1",
        "rotated-dev1-e21c0",
        SignMethod::HmacSha1,
        now_ms(),
    );
    connect(sandbox.mqtt_addr(), &new, None)
        .await
        .expect("new secret works");
    assert_refused(
        &sandbox,
        sandbox.mqtt_addr(),
        &dev2_credential,
        None,
        ConnectReturnCode::NotAuthorized,
        "device pkA/dev2 is disabled",
    )
    .await;
    let logs = sandbox.logs();
    assert!(!logs.contains("rotated-dev1-e21c0"));
    assert!(logs.contains("dropped the session"), "{logs}");
}

#[tokio::test]
async fn an_invalid_file_keeps_the_devices_in_force() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let dev1 = dev1_now();
    let mut session = connect(sandbox.mqtt_addr(), &dev1, None)
        .await
        .expect("connects");
    std::fs::write(&fixture.devices, "productKey,deviceKey\npkA,dev1\n").expect("rewrite");
    let error = sandbox.reload_devices().expect_err("invalid file");
    assert!(
        matches!(&error, HarnessError::Reload(reason) if reason.contains("deviceSecret")),
        "{error}"
    );
    let post =
        json!({"id": "2", "method": "thing.measurepoint.post", "params": {"measurepoints": {}}});
    let reply = session
        .request("/sys/pkA/dev1/thing/measurepoint/post", &post)
        .await;
    assert_eq!(reply["code"], 200, "the session survived the failed reload");
    // A new login is checked against the devices in force. (It takes the
    // first session over: one session per device, as on EnOS.)
    let again = dev1_signed(SignMethod::HmacSha1, now_ms() - 1000);
    let mut session = connect(sandbox.mqtt_addr(), &again, None)
        .await
        .expect("old devices still in force");
    assert!(sandbox.reload_devices().is_err(), "still invalid");
    std::fs::write(&fixture.devices, DEVICES).expect("restore");
    let outcome = sandbox.reload_devices().expect("valid again");
    assert_eq!((outcome.devices, outcome.dropped_sessions), (8, 0));
    let reply = session
        .request("/sys/pkA/dev1/thing/measurepoint/post", &post)
        .await;
    assert_eq!(reply["code"], 200, "the session survived every reload");
}
