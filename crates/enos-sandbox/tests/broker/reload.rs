//! Reloading the device file: new secrets and disabled devices take
//! effect for new connections; an invalid file changes nothing.

use enos_sandbox::SandboxError;
use enos_sign_core::SignMethod;

use crate::common::{DEVICES, Fixture, assert_refused, connect, credential, now_ms};

#[tokio::test]
async fn reload_picks_up_a_changed_secret_and_a_disabled_device() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let old = credential(
        "pkA",
        "dev1",
        "secret-dev1-7f3a9",
        SignMethod::HmacSha1,
        now_ms(),
    );
    connect(sandbox.mqtt_addr(), &old, None)
        .await
        .expect("old secret works");

    let rotated = DEVICES
        .replace("secret-dev1-7f3a9", "rotated-dev1-e21c0")
        .replace(
            "pkA,dev2,secret-dev2-51c2e,,",
            "pkA,dev2,secret-dev2-51c2e,false,",
        );
    std::fs::write(&fixture.devices, rotated).expect("rewrite devices");
    assert_eq!(sandbox.reload_devices().expect("reloads"), 8);

    assert_refused(
        &sandbox,
        sandbox.mqtt_addr(),
        &old,
        None,
        "reason=password does not match",
    )
    .await;
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
    let dev2 = credential(
        "pkA",
        "dev2",
        "secret-dev2-51c2e",
        SignMethod::HmacSha1,
        now_ms(),
    );
    assert_refused(
        &sandbox,
        sandbox.mqtt_addr(),
        &dev2,
        None,
        "device pkA/dev2 is disabled",
    )
    .await;
    assert!(!sandbox.logs().contains("rotated-dev1-e21c0"));
}

#[tokio::test]
async fn an_invalid_file_keeps_the_devices_in_force() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    std::fs::write(&fixture.devices, "productKey,deviceKey\npkA,dev1\n").expect("rewrite");
    let error = sandbox.reload_devices().expect_err("invalid file");
    assert!(
        matches!(&error, SandboxError::Reload(reason) if reason.contains("deviceSecret")),
        "{error}"
    );
    let dev1 = credential(
        "pkA",
        "dev1",
        "secret-dev1-7f3a9",
        SignMethod::HmacSha1,
        now_ms(),
    );
    connect(sandbox.mqtt_addr(), &dev1, None)
        .await
        .expect("old devices still in force");
    assert_eq!(sandbox.reload_devices().ok(), None, "still invalid");
    std::fs::write(&fixture.devices, DEVICES).expect("restore");
    assert_eq!(sandbox.reload_devices().expect("valid again"), 8);
}
