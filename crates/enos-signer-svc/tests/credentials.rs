//! The Credentials service over real mTLS: issued credentials verify with
//! the EnOS rules, and every refusal has its status code.

mod common;

use common::{code, fixture, fixture_with, status, verify};
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ProductKey, SignMethod as CoreMethod, SignedFields,
    TimestampMs, verify_sign,
};
use enos_signer_proto::v1::{
    IssueMqttCredentialRequest, SignMethod, SignSubDeviceLoginRequest,
    credentials_client::CredentialsClient,
};
use enos_signer_svc::{
    client,
    config::{AuditSinkConfig, ProductPolicyConfig, RateLimitConfig},
};
use tonic::Code;

#[tokio::test]
async fn a_device_gets_a_credential_that_verifies() {
    let f = fixture().await;
    f.signer
        .put_device("Pk1", "dev-1", "aaabbbcc123")
        .await
        .expect("put");
    let mut device = f.device("Pk1", "dev-1").await;
    let before = enos_domain::now_ms();
    let credential = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued")
        .into_inner();
    assert_eq!(credential.username, "dev-1&Pk1");
    assert_eq!(credential.client_id, "dev-1");
    assert_eq!(credential.secure_mode, 2);
    assert_eq!(credential.sign_method, SignMethod::Hmacsha1 as i32);
    assert!(credential.timestamp_ms >= before);
    assert_eq!(credential.expires_at_ms, credential.timestamp_ms + 300_000);
    assert!(credential.broker_urls.is_empty());
    assert!(verify(&credential, "aaabbbcc123"));
    assert!(!verify(&credential, "another-secret"));

    // Explicit fields: own keys, a client id, SHA-256.
    let credential = device
        .issue_mqtt_credential(IssueMqttCredentialRequest {
            product_key: "Pk1".into(),
            device_key: "dev-1".into(),
            client_id: "AA:BB:CC:DD:EE:FF".into(),
            sign_method: SignMethod::Hmacsha256.into(),
        })
        .await
        .expect("issued")
        .into_inner();
    assert!(
        credential
            .mqtt_client_id
            .starts_with("AA:BB:CC:DD:EE:FF|securemode=2,signmethod=hmacsha256,")
    );
    assert_eq!(credential.password.len(), 64);
    assert!(verify(&credential, "aaabbbcc123"));
}

#[tokio::test]
async fn product_policy_sets_ttl_method_and_brokers() {
    let f = fixture_with(|c| {
        c.policy.products.insert(
            "PkFast".into(),
            ProductPolicyConfig {
                ttl: Some(std::time::Duration::from_secs(30)),
                sign_method: Some("hmacsha256".into()),
                broker_urls: vec!["tcp://127.0.0.1:11883".into()],
                dynamic_activation: false,
            },
        );
    })
    .await;
    f.signer
        .put_device("PkFast", "d", "s3cret")
        .await
        .expect("put");
    let credential = f
        .device("PkFast", "d")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued")
        .into_inner();
    assert_eq!(credential.expires_at_ms - credential.timestamp_ms, 30_000);
    assert_eq!(credential.sign_method, SignMethod::Hmacsha256 as i32);
    assert_eq!(credential.broker_urls, ["tcp://127.0.0.1:11883"]);
    assert!(verify(&credential, "s3cret"));
}

#[tokio::test]
async fn authentication_failures() {
    let f = fixture().await;
    f.signer
        .put_device("Pk1", "dev-1", "s3cret")
        .await
        .expect("put");

    // No client certificate: the TLS handshake refuses it (#23); the call
    // never reaches the service.
    if let Some(channel) = f.anonymous_channel().await {
        let s = status(
            CredentialsClient::new(channel)
                .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                .await,
        );
        assert!(common::refused_by_handshake(s.code()), "{s:?}");
    }

    // A certificate of the right CA that names no identity.
    for uri in [
        None,
        Some("spiffe://enos/root/x"),
        Some("https://example.com/"),
    ] {
        let cert = f.pki.client_with_uri("nobody", uri).expect("cert");
        let mut client = CredentialsClient::new(f.channel(Some(&cert)).await);
        assert_eq!(
            code(
                client
                    .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                    .await
            ),
            Code::Unauthenticated,
            "{uri:?}"
        );
    }

    // A device certificate from another CA never completes the handshake.
    let other = enos_testkit::Pki::new("other").expect("pki");
    let forged = other.device("Pk1", "dev-1").expect("cert");
    let refused = match client::connect_mtls(
        &f.signer.uri(),
        f.signer.ca_pem(),
        Some(enos_testkit::signer::client_identity(&forged)),
    )
    .await
    {
        Err(_) => true,
        Ok(channel) => CredentialsClient::new(channel)
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a foreign CA's certificate got a credential");
}

#[tokio::test]
async fn authorisation_and_registry_refusals() {
    let f = fixture().await;
    f.signer
        .put_device("Pk1", "dev-a", "secret-a")
        .await
        .expect("put");
    f.signer
        .put_device("Pk1", "dev-b", "secret-b")
        .await
        .expect("put");
    let mut a = f.device("Pk1", "dev-a").await;

    // Device A asking for device B, by device key or by product key.
    for (pk, dk) in [("Pk1", "dev-b"), ("Pk2", "dev-a"), ("", "dev-b")] {
        let s = status(
            a.issue_mqtt_credential(IssueMqttCredentialRequest {
                product_key: pk.into(),
                device_key: dk.into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(s.code(), Code::PermissionDenied, "{pk}/{dk}");
    }

    // An admin certificate on the Credentials service.
    let admin = f.pki.admin("ops").expect("admin");
    let mut as_admin = CredentialsClient::new(f.channel(Some(&admin)).await);
    assert_eq!(
        code(
            as_admin
                .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                .await
        ),
        Code::PermissionDenied
    );

    // A valid certificate for a device the registry does not know.
    let mut unknown = f.device("Pk1", "dev-unknown").await;
    let s = status(
        unknown
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await,
    );
    assert_eq!(s.code(), Code::NotFound);

    // Disabled, then enabled again.
    f.signer
        .set_enabled("Pk1", "dev-a", false)
        .await
        .expect("disable");
    assert_eq!(
        code(
            a.issue_mqtt_credential(IssueMqttCredentialRequest::default())
                .await
        ),
        Code::FailedPrecondition
    );
    f.signer
        .set_enabled("Pk1", "dev-a", true)
        .await
        .expect("enable");
    a.issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("enabled again");

    // Bad fields are named.
    let cases = [
        (
            IssueMqttCredentialRequest {
                client_id: "a|securemode=3".into(),
                ..Default::default()
            },
            "client_id",
        ),
        (
            IssueMqttCredentialRequest {
                client_id: "x".repeat(65),
                ..Default::default()
            },
            "client_id",
        ),
        (
            IssueMqttCredentialRequest {
                device_key: "dev&a".into(),
                ..Default::default()
            },
            "device_key",
        ),
        (
            IssueMqttCredentialRequest {
                sign_method: SignMethod::Hmacmd5.into(),
                ..Default::default()
            },
            "sign_method",
        ),
        (
            IssueMqttCredentialRequest {
                sign_method: 42,
                ..Default::default()
            },
            "sign_method",
        ),
    ];
    for (request, field) in cases {
        let s = status(a.issue_mqtt_credential(request).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with(field), "{field}: {}", s.message());
    }
}

#[tokio::test]
async fn sub_device_logins_only_for_bound_sub_devices() {
    let f = fixture().await;
    for (dk, secret) in [
        ("gw-1", "gw-secret"),
        ("gw-2", "gw2-secret"),
        ("sub-1", "sub-secret"),
        ("sub-2", "sub2-secret"),
    ] {
        f.signer.put_device("PkGw", dk, secret).await.expect("put");
    }
    f.signer
        .put_device("PkSub", "s", "sub3-secret")
        .await
        .expect("put");
    f.signer
        .bind_sub_device(("PkGw", "gw-1"), ("PkGw", "sub-1"))
        .await
        .expect("bind");
    f.signer
        .bind_sub_device(("PkGw", "gw-1"), ("PkSub", "s"))
        .await
        .expect("bind");
    f.signer
        .bind_sub_device(("PkGw", "gw-2"), ("PkGw", "sub-2"))
        .await
        .expect("bind");
    let mut gw = f.device("PkGw", "gw-1").await;

    let login = gw
        .sign_sub_device_login(SignSubDeviceLoginRequest {
            product_key: "PkGw".into(),
            device_key: "sub-1".into(),
            clean_session: true,
            ..Default::default()
        })
        .await
        .expect("signed")
        .into_inner();
    assert_eq!(login.client_id, "sub-1");
    assert_eq!(login.sign_method, "hmacsha1");
    assert_eq!(login.secure_mode, 2);
    assert!(login.clean_session);
    assert_eq!(login.expires_at_ms, login.timestamp_ms + 300_000);
    let fields = SignedFields {
        client_id: ClientId::new(&login.client_id).expect("cid"),
        device_key: DeviceKey::new(&login.device_key).expect("dk"),
        product_key: ProductKey::new(&login.product_key).expect("pk"),
        timestamp: TimestampMs::from_millis(login.timestamp_ms),
    };
    let sub_secret = DeviceSecret::new("sub-secret".into()).expect("secret");
    verify_sign(&fields, CoreMethod::HmacSha1, &login.sign, &sub_secret)
        .expect("signed with the sub-device's own secret");
    let gw_secret = DeviceSecret::new("gw-secret".into()).expect("secret");
    assert!(verify_sign(&fields, CoreMethod::HmacSha1, &login.sign, &gw_secret).is_err());

    let ask = |pk: &str, dk: &str| SignSubDeviceLoginRequest {
        product_key: pk.into(),
        device_key: dk.into(),
        ..Default::default()
    };
    // Another product's sub-device, bound to this gateway: fine.
    gw.sign_sub_device_login(ask("PkSub", "s"))
        .await
        .expect("signed");
    // Bound to another gateway, not bound at all, itself: refused.
    for (pk, dk) in [("PkGw", "sub-2"), ("PkGw", "gw-2"), ("PkGw", "gw-1")] {
        assert_eq!(
            code(gw.sign_sub_device_login(ask(pk, dk)).await),
            Code::PermissionDenied,
            "{pk}/{dk}"
        );
    }
    // The sub-device itself may not sign for itself as a sub-device.
    let mut sub = f.device("PkGw", "sub-1").await;
    assert_eq!(
        code(sub.sign_sub_device_login(ask("PkGw", "sub-1")).await),
        Code::PermissionDenied
    );
    // Unknown sub-device: refused exactly as one bound elsewhere, so that
    // a device cannot learn which devices exist (#13 finding 5).
    let unknown = status(gw.sign_sub_device_login(ask("PkGw", "nope")).await);
    assert_eq!(unknown.code(), Code::PermissionDenied);
    assert_eq!(
        unknown.message(),
        "PkGw/nope is not a sub-device of the calling gateway"
    );
    // Bad field; disabled sub-device; disabled gateway.
    let s = status(gw.sign_sub_device_login(ask("PkGw", "")).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("device_key"), "{}", s.message());
    f.signer
        .set_enabled("PkGw", "sub-1", false)
        .await
        .expect("disable");
    assert_eq!(
        code(gw.sign_sub_device_login(ask("PkGw", "sub-1")).await),
        Code::FailedPrecondition
    );
    f.signer
        .set_enabled("PkGw", "gw-1", false)
        .await
        .expect("disable");
    assert_eq!(
        code(gw.sign_sub_device_login(ask("PkSub", "s")).await),
        Code::FailedPrecondition
    );
    // An admin certificate cannot sign sub-device logins either.
    let admin = f.pki.admin("ops").expect("admin");
    let mut as_admin = CredentialsClient::new(f.channel(Some(&admin)).await);
    assert_eq!(
        code(as_admin.sign_sub_device_login(ask("PkGw", "sub-1")).await),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn over_the_rate_limit_is_resource_exhausted_per_identity() {
    let f = fixture_with(|c| {
        c.rate_limit = Some(RateLimitConfig {
            per_second: 1,
            burst: 3,
        });
    })
    .await;
    f.signer
        .put_device("Pk1", "a", "secret-a")
        .await
        .expect("put");
    f.signer
        .put_device("Pk1", "b", "secret-b")
        .await
        .expect("put");
    let mut a = f.device("Pk1", "a").await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(
            a.issue_mqtt_credential(IssueMqttCredentialRequest::default())
                .await
                .err()
                .map(|s| s.code()),
        );
    }
    assert!(codes.contains(&Some(Code::ResourceExhausted)), "{codes:?}");
    assert_eq!(codes[0], None);
    // b has its own budget.
    f.device("Pk1", "b")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("b is not limited by a");
}

#[tokio::test]
async fn rotation_takes_effect_on_the_next_issuance() {
    let f = fixture().await;
    let created = f
        .signer
        .put_device("Pk1", "d", "old-secret")
        .await
        .expect("put");
    assert_eq!(created.secret_version, 1);
    let mut device = f.device("Pk1", "d").await;
    let before = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued")
        .into_inner();
    assert!(verify(&before, "old-secret"));
    let rotated = f
        .signer
        .rotate_secret("Pk1", "d", "new-secret")
        .await
        .expect("rotate");
    assert_eq!(rotated.secret_version, 2);
    let after = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued")
        .into_inner();
    assert!(verify(&after, "new-secret"));
    assert!(!verify(&after, "old-secret"));
    // Rotating an unknown device, or to an invalid secret.
    let mut admin = f.signer.admin().await;
    let s = status(
        admin
            .rotate_secret(enos_signer_proto::v1::RotateSecretRequest {
                device: Some(enos_signer_proto::v1::DeviceRef {
                    product_key: "Pk1".into(),
                    device_key: "ghost".into(),
                }),
                new_device_secret: "x".into(),
            })
            .await,
    );
    assert_eq!(s.code(), Code::NotFound);
    let s = status(
        admin
            .rotate_secret(enos_signer_proto::v1::RotateSecretRequest {
                device: Some(enos_signer_proto::v1::DeviceRef {
                    product_key: "Pk1".into(),
                    device_key: "d".into(),
                }),
                new_device_secret: "has space".into(),
            })
            .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().starts_with("new_device_secret"),
        "{}",
        s.message()
    );
    assert!(!s.message().contains("has space"));
}

#[tokio::test]
async fn restart_and_kill_keep_every_device() {
    let mut f = fixture().await;
    for i in 0..5 {
        f.signer
            .put_device("Pk1", &format!("d{i}"), &format!("secret-{i}"))
            .await
            .expect("put");
    }
    let addr = f.signer.addr();
    f.signer.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped: connections are refused"
    );
    f.signer.restart().await.expect("restart");
    assert_eq!(f.signer.addr(), addr);
    for i in 0..5 {
        let credential = f
            .device("Pk1", &format!("d{i}"))
            .await
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await
            .expect("issued after restart")
            .into_inner();
        assert!(verify(&credential, &format!("secret-{i}")));
    }
    // An abrupt kill, with a connection open.
    let mut open = f.device("Pk1", "d0").await;
    f.signer.kill();
    assert!(
        open.issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await
            .is_err()
    );
    f.signer.restart().await.expect("restart after kill");
    let credential = f
        .device("Pk1", "d4")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued after kill and restart")
        .into_inner();
    assert!(verify(&credential, "secret-4"));
}

#[tokio::test]
async fn every_issuance_is_audited_with_a_password_hmac() {
    let f = fixture().await;
    f.signer
        .put_device("Pk1", "d", "s3cret-value")
        .await
        .expect("put");
    let credential = f
        .device("Pk1", "d")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued")
        .into_inner();
    let _ = f
        .device("Pk1", "other")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await;
    let trail = std::fs::read_to_string(f.signer.config().audit_file().expect("file sink"))
        .expect("audit trail");
    assert!(!trail.contains(&credential.password));
    assert!(!trail.contains("s3cret-value"));
    let records: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let issued = records
        .iter()
        .find(|r| r["event"] == "issue_mqtt_credential" && r["outcome"] == "ok")
        .expect("issuance record");
    assert_eq!(issued["identity"], "device Pk1/d");
    assert_eq!(issued["device"], "Pk1/d");
    assert_eq!(issued["client_id"], credential.client_id.as_str());
    assert_eq!(issued["sign_method"], "hmacsha1");
    assert_eq!(issued["timestamp_ms"], credential.timestamp_ms);
    assert_eq!(issued["expires_at_ms"], credential.expires_at_ms);
    let key = enos_signer_svc::key_file::load(&f.signer.config().audit.key_file).expect("key");
    assert_eq!(
        issued["password_hmac"],
        enos_signer_svc::audit::password_hmac(&key, &credential.password)
    );
    assert!(records.iter().any(|r| r["event"] == "issue_mqtt_credential"
        && r["outcome"] == "not_found"
        && r["identity"] == "device Pk1/other"));
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "put_device" && r["identity"] == "admin test-admin")
    );
}

/// A signer whose audit trail fails every write (/dev/full: a full disk),
/// over a registry that already holds `Pk1/d`. The device is put while
/// the trail still works: an admin change itself fails closed.
async fn over_a_full_disk(fail_closed: bool) -> common::Fixture {
    let mut f = fixture().await;
    f.signer
        .put_device("Pk1", "d", "s3cret")
        .await
        .expect("put");
    f.signer.stop().await;
    f.signer = enos_testkit::signer::TestSigner::start_with(f.dir.path(), &f.pki, |c| {
        c.audit.sink = AuditSinkConfig::File {
            path: "/dev/full".into(),
        };
        c.audit.fail_closed = fail_closed;
    })
    .await
    .expect("the signer restarts on the same state");
    f
}

#[tokio::test]
async fn a_failing_audit_sink_fails_issuance_closed_or_open_as_configured() {
    let closed = over_a_full_disk(true).await;
    let s = status(
        closed
            .device("Pk1", "d")
            .await
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await,
    );
    assert_eq!(s.code(), Code::Unavailable);
    // And an admin change is refused before it happens.
    let refused = closed.signer.put_device("Pk1", "e", "s3cret").await;
    assert!(refused.is_err(), "a change committed without its record");

    let open = over_a_full_disk(false).await;
    open.device("Pk1", "d")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("fail-open issues anyway");
}

#[tokio::test]
async fn callers_that_prove_nothing_write_no_audit_records() {
    let f = fixture().await;
    f.signer
        .put_device("Pk1", "dev-1", "s3cret")
        .await
        .expect("put");
    let trail = || {
        std::fs::read_to_string(f.signer.config().audit_file().expect("file sink"))
            .expect("audit trail")
            .lines()
            .count()
    };
    let before = trail();
    // 100 calls without a client certificate (refused by the handshake,
    // #23), and 100 with one naming nobody.
    if let Some(channel) = f.anonymous_channel().await {
        let mut anonymous = CredentialsClient::new(channel);
        for _ in 0..100 {
            let refused = code(
                anonymous
                    .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                    .await,
            );
            assert!(common::refused_by_handshake(refused), "{refused:?}");
        }
    }
    let nobody = f.pki.client_with_uri("nobody", None).expect("cert");
    let mut nameless = CredentialsClient::new(f.channel(Some(&nobody)).await);
    for _ in 0..100 {
        assert_eq!(
            code(
                nameless
                    .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                    .await
            ),
            Code::Unauthenticated
        );
    }
    assert_eq!(
        trail(),
        before,
        "an unauthenticated refusal wrote audit records"
    );
    // An authenticated refusal is still audited.
    let _ = f
        .device("Pk1", "not-registered")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await;
    assert_eq!(trail(), before + 1);
}
