//! Valid credentials connect on both listeners; restarts come back on the
//! same ports.

use enos_sign_core::{ExposeSecret, SignMethod};

use crate::common::{
    Fixture, Login, WAIT, assert_no_secrets_logged, connect, credential, dev1_now, dev1_signed,
    now_ms, tls_client,
};

#[tokio::test]
async fn connects_on_the_plain_listener() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let sha1 = dev1_now();
    connect(sandbox.mqtt_addr(), &sha1, None)
        .await
        .expect("sha1 accepted");

    // SHA-256 in upper-case hex (as the Node and C SDKs send it).
    let sha256 = credential(
        "pkA",
        "dev2",
        "secret-dev2-51c2e",
        SignMethod::HmacSha256,
        now_ms(),
    );
    let mut login = Login::from(&sha256);
    login.password = login.password.to_ascii_uppercase();
    connect(sandbox.mqtt_addr(), login, None)
        .await
        .expect("sha256 accepted in upper case");

    sandbox
        .wait_for_log(
            "accepted MQTT CONNECT listener=\"enos-mqtt\" device=pkA/dev2",
            WAIT,
        )
        .expect("accepted connections are logged");
    assert_no_secrets_logged(
        &sandbox,
        &[
            sha1.password.expose_secret(),
            sha256.password.expose_secret(),
        ],
    );
}

#[tokio::test]
async fn connects_on_the_tls_listener_with_a_client_certificate() {
    let fixture = Fixture::new();
    let sandbox = fixture.start();
    let identity = fixture.pki.device("pkA", "dev1").expect("device cert");
    let credential = dev1_signed(SignMethod::HmacSha256, now_ms());
    let tls_addr = sandbox.tls_addr().expect("tls listener");
    assert_ne!(tls_addr, sandbox.mqtt_addr());
    connect(
        tls_addr,
        &credential,
        Some(tls_client(&fixture.pki, Some(&identity))),
    )
    .await
    .expect("accepted over TLS");
    sandbox
        .wait_for_log(
            "accepted MQTT CONNECT listener=\"enos-mqtts\" device=pkA/dev1",
            WAIT,
        )
        .expect("logged");
}

#[tokio::test]
async fn any_timestamp_accepts_what_the_sdks_send() {
    let fixture = Fixture::new();
    let sandbox = fixture.sandbox().any_timestamp().start().expect("starts");
    // The Java SDK's timestamp, years old.
    let old = dev1_signed(SignMethod::HmacSha1, 1_524_448_722_000);
    connect(sandbox.mqtt_addr(), &old, None)
        .await
        .expect("any timestamp");
}

#[tokio::test]
async fn a_narrow_freshness_window_is_honoured() {
    let fixture = Fixture::new();
    let sandbox = fixture
        .sandbox()
        .freshness_window(std::time::Duration::from_secs(60))
        .start()
        .expect("starts");
    let two_minutes_old = dev1_signed(SignMethod::HmacSha1, now_ms() - 120_000);
    assert!(
        connect(sandbox.mqtt_addr(), &two_minutes_old, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn restart_comes_back_on_the_same_ports() {
    let fixture = Fixture::new();
    let mut sandbox = fixture.start();
    let (mqtt, tls) = (sandbox.mqtt_addr(), sandbox.tls_addr());
    let first_pid = sandbox.pid().expect("running");
    let dev1 = dev1_now();
    let mut session = connect(mqtt, &dev1, None).await.expect("connected");

    sandbox.restart().expect("restarts");
    assert_eq!((sandbox.mqtt_addr(), sandbox.tls_addr()), (mqtt, tls));
    assert_ne!(sandbox.pid(), Some(first_pid));

    // The open session noticed: its connection is gone.
    let dropped = tokio::time::timeout(WAIT, async {
        loop {
            if session.eventloop.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(dropped.is_ok(), "the old session must see the broker go");
    connect(mqtt, &dev1, None)
        .await
        .expect("reconnects on the same port");

    sandbox.stop().expect("stops");
    assert!(!sandbox.is_running());
    assert!(
        connect(mqtt, &dev1, None).await.is_err(),
        "nothing listens while stopped"
    );
    sandbox.start_again().expect("starts again");
    connect(mqtt, &dev1, None).await.expect("back again");
    assert_eq!(sandbox.logs().matches("enos-sandbox: listening").count(), 3);
}

#[test]
fn other_crates_find_the_binary_next_to_their_test_executable() {
    if std::env::var_os(enos_testkit::sandbox::SandboxBinary::ENV_VAR).is_some() {
        return; // the variable takes precedence; nothing to compare
    }
    let found = enos_testkit::sandbox::SandboxBinary::locate().expect("found");
    assert_eq!(
        found.path().canonicalize().expect("exists"),
        std::path::Path::new(env!("CARGO_BIN_EXE_enos-sandbox"))
            .canonicalize()
            .expect("exists")
    );
}

#[tokio::test]
async fn a_certificate_revoked_in_a_followed_crl_fails_the_tls_handshake() {
    // #25: the sandbox's MQTTS listener loads the client CA's CRL (the
    // signer writes one on each revocation) and follows the file.
    let fixture = Fixture::new();
    let identity = fixture.pki.device("pkA", "dev1").expect("device cert");
    let crl = fixture.dir.path().join("devices.crl");
    std::fs::write(&crl, fixture.pki.crl_pem(1, &[]).expect("crl")).expect("write crl");
    let sandbox = fixture
        .sandbox()
        .tls_crl(&crl)
        .start()
        .expect("sandbox starts");
    let tls_addr = sandbox.tls_addr().expect("tls listener");
    let login = || dev1_signed(SignMethod::HmacSha256, now_ms());
    connect(
        tls_addr,
        &login(),
        Some(tls_client(&fixture.pki, Some(&identity))),
    )
    .await
    .expect("not revoked yet");
    // The file is replaced (as the signer does, by rename), with a later
    // modification time than the first.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let next = fixture.dir.path().join("devices.crl.next");
    std::fs::write(&next, fixture.pki.crl_pem(2, &[&identity]).expect("crl")).expect("write crl");
    std::fs::rename(&next, &crl).expect("rename");
    let refused = connect(
        tls_addr,
        &login(),
        Some(tls_client(&fixture.pki, Some(&identity))),
    )
    .await;
    assert!(refused.is_err(), "a revoked certificate is refused");
    sandbox
        .wait_for_log("TLS handshake refused", WAIT)
        .expect("the refusal is logged");
    let other = fixture.pki.device("pkA", "dev2").expect("device cert");
    let dev2 = credential(
        "pkA",
        "dev2",
        "secret-dev2-51c2e",
        SignMethod::HmacSha256,
        now_ms(),
    );
    connect(
        tls_addr,
        &dev2,
        Some(tls_client(&fixture.pki, Some(&other))),
    )
    .await
    .expect("another device is still served");
}
