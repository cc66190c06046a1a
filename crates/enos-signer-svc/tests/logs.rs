//! The captured logs of a whole run, at TRACE level for every crate
//! (tonic, h2, hyper, rustls included), contain no device secret and no
//! issued password or sign.

mod common;

use common::{capture::Capture, fixture_with};
use enos_signer_proto::v1::{
    DeviceRef, ImportDevicesRequest, ImportRow, IssueMqttCredentialRequest, PutDeviceRequest,
    SignMethod, SignSubDeviceLoginRequest,
};

#[tokio::test]
async fn logs_of_a_whole_run_contain_no_secret_and_no_password() {
    let capture = Capture::install(tracing::Level::TRACE);

    // The audit trail is scanned too (the `log` sink writes the same
    // lines straight to stderr, outside the tracing capture).
    let f = fixture_with(|_| {}).await;
    let mut secrets: Vec<String> = vec![
        "GatewaySecret01".into(),
        "SubDeviceSecret02".into(),
        "RotatedSecret03".into(),
        "ImportedSecret04".into(),
        "BadRowSecret05".into(),
    ];
    let mut passwords: Vec<String> = Vec::new();

    f.signer
        .put_device("Pk1", "gw", &secrets[0])
        .await
        .expect("put");
    f.signer
        .put_device("Pk1", "sub", &secrets[1])
        .await
        .expect("put");
    f.signer
        .bind_sub_device(("Pk1", "gw"), ("Pk1", "sub"))
        .await
        .expect("bind");
    let mut gw = f.device("Pk1", "gw").await;
    for method in [SignMethod::Hmacsha1, SignMethod::Hmacsha256] {
        passwords.push(
            gw.issue_mqtt_credential(IssueMqttCredentialRequest {
                sign_method: method.into(),
                ..Default::default()
            })
            .await
            .expect("issued")
            .into_inner()
            .password,
        );
    }
    passwords.push(
        gw.sign_sub_device_login(SignSubDeviceLoginRequest {
            product_key: "Pk1".into(),
            device_key: "sub".into(),
            ..Default::default()
        })
        .await
        .expect("signed")
        .into_inner()
        .sign,
    );
    f.signer
        .rotate_secret("Pk1", "gw", &secrets[2])
        .await
        .expect("rotate");
    passwords.push(
        gw.issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await
            .expect("issued")
            .into_inner()
            .password,
    );
    let mut admin = f.signer.admin().await;
    let row = |line, dk: &str, secret: &str| ImportRow {
        line,
        product_key: "Pk2".into(),
        device_key: dk.into(),
        device_secret: secret.into(),
        gateway: None,
        awaiting_activation: false,
        ..Default::default()
    };
    // A refused import (bad row next to a good one), then a good one.
    let refused = admin
        .import_devices(futures::stream::iter([ImportDevicesRequest {
            rows: vec![row(2, "ok", &secrets[3]), row(3, "bad|key", &secrets[4])],
            dry_run: false,
            ..Default::default()
        }]))
        .await
        .expect("answered")
        .into_inner();
    assert!(!refused.committed);
    admin
        .import_devices(futures::stream::iter([ImportDevicesRequest {
            rows: vec![row(2, "ok", &secrets[3])],
            dry_run: false,
            ..Default::default()
        }]))
        .await
        .expect("imported");
    // Refusals whose requests carry secrets.
    let invalid = "Invalid Secret With Spaces";
    secrets.push(invalid.into());
    let _ = admin
        .put_device(PutDeviceRequest {
            device: Some(DeviceRef {
                product_key: "Pk1".into(),
                device_key: "x".into(),
            }),
            device_secret: invalid.into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect_err("refused");
    let mut as_device = f.admin_as_device("Pk1", "gw").await;
    let _ = as_device
        .put_device(PutDeviceRequest {
            device: Some(DeviceRef {
                product_key: "Pk1".into(),
                device_key: "gw".into(),
            }),
            device_secret: "DeviceTriedAdmin06".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect_err("refused");
    secrets.push("DeviceTriedAdmin06".into());
    let mut f = f;
    f.signer.stop().await;

    let trail = std::fs::read_to_string(f.signer.config().audit_file().expect("file sink"))
        .expect("audit trail");
    // The capture is real: the run is in it; so is the trail.
    let captured = capture.text();
    assert!(captured.contains("signer listening"), "capture is empty?");
    assert!(
        trail.contains("password_hmac"),
        "the trail records issuances"
    );
    let logs = format!("{captured}\n{trail}");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
    }
    for password in &passwords {
        assert!(
            !logs.contains(password.as_str()),
            "a password reached the logs"
        );
        assert!(
            !logs.to_lowercase().contains(&password.to_lowercase()),
            "a password reached the logs"
        );
    }
}
