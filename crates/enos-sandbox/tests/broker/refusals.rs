//! Every CONNECT the sandbox must refuse: the connection closes without a
//! CONNACK and the reason is logged at info level, without the password.

use enos_sign_core::{ExposeSecret, SignMethod};
use rumqttc::ConnectReturnCode;

use crate::common::{
    Fixture, Login, assert_bad_login, assert_no_secrets_logged, assert_refused, connect,
    credential, dev1_now, dev1_signed, now_ms, tls_client,
};

#[tokio::test]
async fn wrong_password() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let wrong = credential(
        "pkA",
        "dev1",
        "not-the-secret",
        SignMethod::HmacSha1,
        now_ms(),
    );
    assert_bad_login(
        &sandbox,
        &wrong,
        "reason=password does not match for device pkA/dev1",
    )
    .await;
    assert_no_secrets_logged(&sandbox, &[wrong.password.expose_secret()]);
}

#[tokio::test]
async fn unknown_device() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let ghost = credential(
        "pkA",
        "ghost",
        "secret-dev1-7f3a9",
        SignMethod::HmacSha1,
        now_ms(),
    );
    assert_bad_login(&sandbox, &ghost, "reason=unknown device pkA/ghost").await;
}

#[tokio::test]
async fn disabled_device() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let off = credential(
        "pkA",
        "off1",
        "secret-off1-9b0d4",
        SignMethod::HmacSha1,
        now_ms(),
    );
    assert_refused(
        &sandbox,
        sandbox.mqtt_addr(),
        &off,
        None,
        ConnectReturnCode::NotAuthorized,
        "reason=device pkA/off1 is disabled",
    )
    .await;
}

#[tokio::test]
async fn client_id_and_username_of_different_devices() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    // dev1's valid credential, presented with dev2's username: the sign
    // covers the username's keys, so it cannot pass as dev2.
    let dev1 = dev1_now();
    let mut login = Login::from(&dev1);
    login.username = "dev2&pkA".into();
    assert_bad_login(
        &sandbox,
        login,
        "reason=password does not match for device pkA/dev2",
    )
    .await;
    // And a username without the deviceKey&productKey shape.
    let mut login = Login::from(&dev1);
    login.username = "dev1".into();
    assert_bad_login(&sandbox, login, "expected deviceKey&productKey").await;
}

#[tokio::test]
async fn stale_timestamp_when_a_freshness_window_is_set() {
    let fixture = Fixture::new();
    // EnOS checks no freshness; the window is for testing short-lived
    // credentials.
    let sandbox = fixture
        .sandbox()
        .freshness_window(std::time::Duration::from_secs(600))
        .start()
        .expect("starts");
    let eleven_minutes = 11 * 60 * 1000;
    let old = dev1_signed(SignMethod::HmacSha1, now_ms() - eleven_minutes);
    assert_bad_login(&sandbox, &old, "reason=stale timestamp for device pkA/dev1").await;
    let future = dev1_signed(SignMethod::HmacSha1, now_ms() + eleven_minutes);
    let outcome = connect(sandbox.mqtt_addr(), &future, None).await;
    assert!(
        outcome.is_err(),
        "a timestamp 11 minutes ahead is refused too"
    );
}

#[tokio::test]
async fn malformed_client_id() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let dev1 = dev1_now();
    let mut login = Login::from(&dev1);
    login.client_id = "dev1".into(); // no |securemode=…,timestamp=…| section
    assert_bad_login(&sandbox, login, "reason=malformed login").await;
    let mut login = Login::from(&dev1);
    login.client_id = login.client_id.replace("timestamp=", "ts=");
    assert_bad_login(&sandbox, login, "unknown parameter").await;
}

#[tokio::test]
async fn md5_unless_enabled() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let md5 = dev1_signed(SignMethod::HmacMd5, now_ms());
    assert_bad_login(&sandbox, &md5, "hmacmd5 is refused").await;

    let lax = fixture.sandbox().allow_md5().start().expect("starts");
    connect(lax.mqtt_addr(), &md5, None)
        .await
        .expect("md5 accepted when enabled");
}

#[tokio::test]
async fn tls_without_client_certificate() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let tls_addr = sandbox.tls_addr().expect("tls listener");
    let dev1 = dev1_now();
    let outcome = connect(tls_addr, &dev1, Some(tls_client(&fixture.pki, None))).await;
    let error = outcome.err().expect("no client certificate: refused");
    assert!(error.contains("CertificateRequired"), "{error}");
    sandbox
        .wait_for_log("TLS handshake refused", crate::common::WAIT)
        .expect("the front logs the handshake failure");
    assert!(!sandbox.logs().contains("accepted MQTT CONNECT"));
}

#[tokio::test]
async fn tls_with_certificate_of_another_ca() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let tls_addr = sandbox.tls_addr().expect("tls listener");
    let stranger = enos_testkit::Pki::new("another CA").expect("pki");
    let identity = stranger.device("pkA", "dev1").expect("cert");
    let dev1 = dev1_now();
    let outcome = connect(
        tls_addr,
        &dev1,
        Some(tls_client(&fixture.pki, Some(&identity))),
    )
    .await;
    assert!(outcome.is_err(), "a certificate from another CA is refused");
}

#[tokio::test]
async fn tls_with_certificate_but_wrong_password() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let tls_addr = sandbox.tls_addr().expect("tls listener");
    let identity = fixture.pki.device("pkA", "dev1").expect("cert");
    let wrong = credential(
        "pkA",
        "dev1",
        "not-the-secret",
        SignMethod::HmacSha256,
        now_ms(),
    );
    assert_refused(
        &sandbox,
        tls_addr,
        &wrong,
        Some(tls_client(&fixture.pki, Some(&identity))),
        ConnectReturnCode::BadUserNamePassword,
        "listener=\"enos-mqtts\"",
    )
    .await;
    sandbox
        .wait_for_log(
            "reason=password does not match for device pkA/dev1",
            crate::common::WAIT,
        )
        .expect("reason logged");
}
