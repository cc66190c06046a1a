//! Dynamic activation and batch sub-device logins against a real signer
//! over real mTLS: product secrets (Admin), the `securemode=3` credential
//! of a device awaiting activation, `CompleteActivation` (only the device,
//! once, audited), and `SignSubDeviceLoginBatch`.

mod common;

use common::{code, fixture_with, status};
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, Freshness, Md5Policy, PresentedLogin, ProductKey,
    ProductSecret, SignMethod, SignedFields, TimestampMs, verify_sign,
};
use enos_signer_proto::v1::{
    BindSubDeviceRequest, CompleteActivationRequest, DeviceRef, IssueMqttCredentialRequest,
    ProductRef, PutDeviceRequest, PutProductSecretRequest, SignSubDeviceLoginBatchRequest,
    SignSubDeviceLoginRequest,
};
use enos_signer_svc::config::{ProductPolicyConfig, RateLimitConfig};
use tonic::Code;

const ACT: &str = "PkAct";
const NO_ACT: &str = "PkNoAct";
const PRODUCT_SECRET: &str = "ProductSecretValue42";
const PUSHED_SECRET: &str = "PushedDeviceSecretValue77";

async fn activation_fixture() -> common::Fixture {
    fixture_with(|c| {
        c.policy.products.insert(
            ACT.into(),
            ProductPolicyConfig {
                dynamic_activation: true,
                ..Default::default()
            },
        );
    })
    .await
}

fn put_awaiting(pk: &str, dk: &str) -> PutDeviceRequest {
    PutDeviceRequest {
        device: Some(DeviceRef::new(pk, dk)),
        device_secret: String::new(),
        enabled: true,
        awaiting_activation: true,
    }
}

fn product_secret(pk: &str, secret: &str) -> PutProductSecretRequest {
    PutProductSecretRequest {
        product: Some(ProductRef {
            product_key: pk.into(),
        }),
        product_secret: secret.into(),
    }
}

#[tokio::test]
async fn product_secrets_are_admin_only_versioned_and_never_shown() {
    let f = activation_fixture().await;
    let mut admin = f.signer.admin().await;
    let created = admin
        .put_product_secret(product_secret(ACT, PRODUCT_SECRET))
        .await
        .expect("put")
        .into_inner();
    assert_eq!(created.secret_version, 1);
    assert!(created.dynamic_activation, "the policy opts PkAct in");
    assert!(!format!("{created:?}").contains(PRODUCT_SECRET));
    // Put again is refused (rotate is the explicit replacement).
    assert_eq!(
        code(admin.put_product_secret(product_secret(ACT, "Other")).await),
        Code::FailedPrecondition
    );
    let rotated = admin
        .rotate_product_secret(product_secret(ACT, "RotatedProductSecret"))
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.secret_version, 2);
    assert_eq!(
        code(
            admin
                .rotate_product_secret(product_secret(NO_ACT, "x1"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(admin.put_product_secret(product_secret(ACT, "")).await),
        Code::InvalidArgument
    );
    let shown = admin
        .get_product(ProductRef {
            product_key: ACT.into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(shown.secret_version, 2);
    // A device certificate may not touch product secrets.
    let mut as_device = f.admin_as_device(ACT, "dev").await;
    assert_eq!(
        code(
            as_device
                .put_product_secret(product_secret(ACT, "Mine"))
                .await
        ),
        Code::PermissionDenied
    );
    admin
        .delete_product_secret(ProductRef {
            product_key: ACT.into(),
        })
        .await
        .expect("delete");
    assert_eq!(
        code(
            admin
                .get_product(ProductRef {
                    product_key: ACT.into()
                })
                .await
        ),
        Code::NotFound
    );
    let trail = std::fs::read_to_string(f.signer.config().audit_file().expect("file sink"))
        .expect("audit trail");
    for event in [
        "put_product_secret",
        "rotate_product_secret",
        "delete_product_secret",
    ] {
        assert!(trail.contains(event), "{event} audited: {trail}");
    }
    assert!(!trail.contains(PRODUCT_SECRET) && !trail.contains("RotatedProductSecret"));
}

#[tokio::test]
async fn a_device_awaiting_activation_activates_itself_once_through_custody() {
    let f = activation_fixture().await;
    let mut admin = f.signer.admin().await;
    admin
        .put_device(put_awaiting(ACT, "gw-new"))
        .await
        .expect("register without a secret");
    admin
        .put_device(put_awaiting(NO_ACT, "gw-other"))
        .await
        .expect("register without a secret");
    let shown = admin
        .get_device(DeviceRef::new(ACT, "gw-new"))
        .await
        .expect("get")
        .into_inner();
    assert!(shown.awaiting_activation);
    assert_eq!(shown.secret_version, 0);

    let mut device = f.device(ACT, "gw-new").await;
    // No product secret yet: refused, and it says why.
    let refused = status(
        device
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("no product secret"),
        "{refused:?}"
    );
    admin
        .put_product_secret(product_secret(ACT, PRODUCT_SECRET))
        .await
        .expect("put");
    admin
        .put_product_secret(product_secret(NO_ACT, PRODUCT_SECRET))
        .await
        .expect("put");

    // The activation credential: securemode=3, signed with the product's secret.
    let credential = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("activation credential")
        .into_inner();
    assert_eq!(credential.secure_mode, 3);
    assert!(
        credential.mqtt_client_id.contains("securemode=3"),
        "{}",
        credential.mqtt_client_id
    );
    let presented = PresentedLogin::parse(
        &credential.mqtt_client_id,
        &credential.username,
        Md5Policy::Refuse,
    )
    .expect("EnOS shape");
    let product = ProductSecret::new(PRODUCT_SECRET.into()).expect("secret");
    presented
        .verify(&credential.password, &product, Freshness::Any)
        .expect("signed with the product secret");

    // A product that does not opt in: EnOS's 770.
    let mut other = f.device(NO_ACT, "gw-other").await;
    let refused = status(
        other
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("770"), "{refused:?}");
    // And no device may complete another's activation: its own only.
    assert_eq!(
        code(admin_complete(&f).await),
        Code::PermissionDenied,
        "an admin certificate cannot complete an activation"
    );
    assert_eq!(
        code(
            device
                .complete_activation(CompleteActivationRequest {
                    device_secret: String::new(),
                })
                .await
        ),
        Code::InvalidArgument
    );

    // The hand-over.
    let activated = device
        .complete_activation(CompleteActivationRequest {
            device_secret: PUSHED_SECRET.into(),
        })
        .await
        .expect("complete")
        .into_inner()
        .device
        .expect("device");
    assert!(!activated.awaiting_activation);
    assert_eq!(activated.secret_version, 1);
    // From now on securemode=2 with the pushed secret.
    let credential = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("credential")
        .into_inner();
    assert_eq!(credential.secure_mode, 2);
    assert!(common::verify(&credential, PUSHED_SECRET));
    // Once: a second hand-over is refused, the secret unchanged.
    let again = status(
        device
            .complete_activation(CompleteActivationRequest {
                device_secret: "AnotherSecretValue".into(),
            })
            .await,
    );
    assert_eq!(again.code(), Code::FailedPrecondition);
    let credential = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("credential")
        .into_inner();
    assert!(common::verify(&credential, PUSHED_SECRET));

    // Audited: intent and outcome of both attempts, with no secret.
    let trail = std::fs::read_to_string(f.signer.config().audit_file().expect("file sink"))
        .expect("audit trail");
    let activation_lines: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("\"event\":\"complete_activation\"") && l.contains("gw-new"))
        .collect();
    let outcomes: Vec<&str> = activation_lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["outcome"].as_str().unwrap_or_default().to_owned()
        })
        .map(|o| match o.as_str() {
            "started" => "started",
            "ok" => "ok",
            _ => "refused",
        })
        .collect();
    assert!(
        outcomes.windows(2).any(|w| w == ["started", "ok"]),
        "{activation_lines:?}"
    );
    assert!(
        outcomes.windows(2).any(|w| w == ["started", "refused"]),
        "{activation_lines:?}"
    );
    assert!(
        trail.contains("\"secure_mode\":3"),
        "the activation credential is audited as one"
    );
    for secret in [PRODUCT_SECRET, PUSHED_SECRET, "AnotherSecretValue"] {
        assert!(!trail.contains(secret), "a secret in the audit trail");
    }
}

async fn admin_complete(
    f: &common::Fixture,
) -> Result<tonic::Response<enos_signer_proto::v1::CompleteActivationResponse>, tonic::Status> {
    let channel = f.channel(Some(f.signer.admin_identity())).await;
    enos_signer_proto::v1::credentials_client::CredentialsClient::new(channel)
        .complete_activation(CompleteActivationRequest {
            device_secret: PUSHED_SECRET.into(),
        })
        .await
}

#[tokio::test]
async fn a_batch_signs_the_bound_sub_devices_and_lists_the_others() {
    let f = activation_fixture().await;
    let mut admin = f.signer.admin().await;
    let put = |pk: &str, dk: &str, secret: &str| PutDeviceRequest {
        device: Some(DeviceRef::new(pk, dk)),
        device_secret: secret.into(),
        enabled: true,
        awaiting_activation: false,
    };
    admin
        .put_device(put("PkGw", "gw", "GatewaySecret1"))
        .await
        .expect("gw");
    admin
        .put_device(put("PkGw", "gw2", "GatewaySecret2"))
        .await
        .expect("gw2");
    for i in 0..5 {
        admin
            .put_device(put("PkSub", &format!("s{i}"), &format!("SubSecret{i}")))
            .await
            .expect("sub");
        admin
            .bind_sub_device(enos_signer_proto::v1::BindSubDeviceRequest {
                gateway: Some(DeviceRef::new("PkGw", "gw")),
                sub_device: Some(DeviceRef::new("PkSub", format!("s{i}"))),
            })
            .await
            .expect("bind");
    }
    admin
        .put_device(put("PkSub", "elsewhere", "SubSecretX"))
        .await
        .expect("sub");
    admin
        .bind_sub_device(enos_signer_proto::v1::BindSubDeviceRequest {
            gateway: Some(DeviceRef::new("PkGw", "gw2")),
            sub_device: Some(DeviceRef::new("PkSub", "elsewhere")),
        })
        .await
        .expect("bind");

    let mut gateway = f.device("PkGw", "gw").await;
    let mut asked: Vec<DeviceRef> = (0..5)
        .map(|i| DeviceRef::new("PkSub", format!("s{i}")))
        .collect();
    asked.insert(2, DeviceRef::new("PkSub", "elsewhere"));
    asked.push(DeviceRef::new("PkSub", "nobody"));
    let batch = gateway
        .sign_sub_device_login_batch(SignSubDeviceLoginBatchRequest {
            sub_devices: asked,
            client_id: String::new(),
            sign_method: 0,
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.client_id, "login.batch", "the Java SDK's default");
    assert_eq!(batch.signed.len(), 5);
    let refused: Vec<(&str, &str)> = batch
        .refused
        .iter()
        .map(|r| (r.device_key.as_str(), r.code.as_str()))
        .collect();
    // Bound elsewhere and unknown answer alike.
    assert_eq!(
        refused,
        [
            ("elsewhere", "PermissionDenied"),
            ("nobody", "PermissionDenied")
        ]
    );
    assert_eq!(
        batch.refused[0].message.replace("elsewhere", "nobody"),
        batch.refused[1].message
    );
    let method = SignMethod::parse(&batch.sign_method, Md5Policy::Refuse).expect("method");
    for (i, entry) in batch.signed.iter().enumerate() {
        assert_eq!(entry.device_key, format!("s{i}"));
        assert_eq!(entry.secure_mode, 2);
        let fields = SignedFields {
            client_id: ClientId::new(&batch.client_id).expect("client id"),
            device_key: DeviceKey::new(&entry.device_key).expect("dk"),
            product_key: ProductKey::new(&entry.product_key).expect("pk"),
            timestamp: TimestampMs::from_millis(batch.timestamp_ms),
        };
        let secret = DeviceSecret::new(format!("SubSecret{i}")).expect("secret");
        verify_sign(&fields, method, &entry.sign, &secret)
            .unwrap_or_else(|e| panic!("entry {i} signed with its own secret: {e}"));
    }
    assert!(!format!("{batch:?}").contains(&batch.signed[0].sign));

    // Bounds: empty and over the gateway limit are bad requests.
    for n in [0usize, 201] {
        let too_many = (0..n)
            .map(|i| DeviceRef::new("PkSub", format!("s{i}")))
            .collect();
        assert_eq!(
            code(
                gateway
                    .sign_sub_device_login_batch(SignSubDeviceLoginBatchRequest {
                        sub_devices: too_many,
                        ..Default::default()
                    })
                    .await
            ),
            Code::InvalidArgument,
            "{n} entries"
        );
    }
    // Each signed entry has its own audit record.
    let trail = std::fs::read_to_string(f.signer.config().audit_file().expect("file sink"))
        .expect("audit trail");
    let signed_records = trail
        .lines()
        .filter(|l| {
            l.contains("\"event\":\"sign_sub_device_login_batch\"")
                && l.contains("\"outcome\":\"ok\"")
        })
        .count();
    assert_eq!(signed_records, 5, "{trail}");
}

#[tokio::test]
async fn an_import_registers_blank_secrets_as_awaiting_and_never_blanks_a_secret() {
    use enos_signer_proto::v1::{ImportDevicesRequest, ImportRow};
    let f = activation_fixture().await;
    let mut admin = f.signer.admin().await;
    let importer = admin.clone();
    let row = |line: u32, dk: &str, secret: &str, awaiting: bool| ImportRow {
        line,
        product_key: ACT.into(),
        device_key: dk.into(),
        device_secret: secret.into(),
        gateway: None,
        awaiting_activation: awaiting,
        ..Default::default()
    };
    let import = |rows: Vec<ImportRow>| {
        let mut admin = importer.clone();
        async move {
            admin
                .import_devices(futures::stream::iter([ImportDevicesRequest {
                    rows,
                    dry_run: false,
                    ..Default::default()
                }]))
                .await
                .expect("import answered")
                .into_inner()
        }
    };
    let done = import(vec![
        row(2, "blank", "", true),
        row(3, "kept", "KeptSecret1", false),
    ])
    .await;
    assert!(done.committed, "{done:?}");
    let blank = admin
        .get_device(DeviceRef::new(ACT, "blank"))
        .await
        .expect("get")
        .into_inner();
    assert!(blank.awaiting_activation && blank.secret_version == 0);

    // A blank cell over a device with a secret is an error, and so is a
    // secret on a row that says it awaits activation: nothing written.
    let refused = import(vec![
        row(2, "other", "Secret3", true),
        row(3, "fine", "FineSecret4", false),
    ])
    .await;
    assert!(!refused.committed);
    let lines: Vec<u32> = refused.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2], "{:?}", refused.errors);
    let refused = import(vec![
        row(2, "kept", "", true),
        row(3, "fine", "FineSecret4", false),
    ])
    .await;
    assert!(!refused.committed);
    let lines: Vec<u32> = refused.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2], "{:?}", refused.errors);
    assert!(
        refused.errors[0].message.contains("would discard it"),
        "{refused:?}"
    );
    assert_eq!(
        code(admin.get_device(DeviceRef::new(ACT, "fine")).await),
        Code::NotFound,
        "all or nothing"
    );
    let kept = admin
        .get_device(DeviceRef::new(ACT, "kept"))
        .await
        .expect("get")
        .into_inner();
    assert!(!kept.awaiting_activation && kept.secret_version == 1);
}

/// A device with a secret, enabled.
fn put_with_secret(pk: &str, dk: &str, secret: &str) -> PutDeviceRequest {
    PutDeviceRequest {
        device: Some(DeviceRef::new(pk, dk)),
        device_secret: secret.into(),
        enabled: true,
        awaiting_activation: false,
    }
}

fn bind(gateway: (&str, &str), sub: (&str, &str)) -> BindSubDeviceRequest {
    BindSubDeviceRequest {
        gateway: Some(DeviceRef::new(gateway.0, gateway.1)),
        sub_device: Some(DeviceRef::new(sub.0, sub.1)),
    }
}

/// Issue 23, finding 8: `CompleteActivation` is refused unless the device's
/// product opted in to dynamic activation and has a product secret (the
/// conditions of the securemode=3 login); the refusal is audited and the
/// record is unchanged.
#[tokio::test]
async fn finding_8_complete_activation_needs_the_opt_in_and_a_product_secret() {
    let f = activation_fixture().await;
    let mut admin = f.signer.admin().await;
    admin
        .put_device(put_awaiting(NO_ACT, "no-opt-in"))
        .await
        .expect("register without a secret");
    admin
        .put_device(put_awaiting(ACT, "no-product-secret"))
        .await
        .expect("register without a secret");
    // NO_ACT has a product secret, but no opt-in.
    admin
        .put_product_secret(product_secret(NO_ACT, PRODUCT_SECRET))
        .await
        .expect("put");

    let mut device = f.device(NO_ACT, "no-opt-in").await;
    let refused = status(
        device
            .complete_activation(CompleteActivationRequest {
                device_secret: PUSHED_SECRET.into(),
            })
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("does not allow dynamic activation"),
        "{refused:?}"
    );
    // ACT opts in, but has no product secret yet.
    let mut other = f.device(ACT, "no-product-secret").await;
    let refused = status(
        other
            .complete_activation(CompleteActivationRequest {
                device_secret: PUSHED_SECRET.into(),
            })
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("no product secret"),
        "{refused:?}"
    );

    // Both records unchanged: still awaiting, no secret.
    for (pk, dk) in [(NO_ACT, "no-opt-in"), (ACT, "no-product-secret")] {
        let shown = admin
            .get_device(DeviceRef::new(pk, dk))
            .await
            .expect("get")
            .into_inner();
        assert!(shown.awaiting_activation, "{pk}/{dk} still awaits");
        assert_eq!(shown.secret_version, 0, "{pk}/{dk} has no secret");
    }
    // No device of NO_ACT can log in with the secret it tried to set.
    assert_eq!(
        code(
            device
                .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                .await
        ),
        Code::FailedPrecondition
    );

    // Audited, with the device, and no intent (nothing was attempted).
    let records = f.audit_trail();
    for device in ["PkNoAct/no-opt-in", "PkAct/no-product-secret"] {
        let outcomes: Vec<&str> = records
            .iter()
            .filter(|r| r["event"] == "complete_activation" && r["device"] == device)
            .map(|r| r["outcome"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(outcomes, ["failed_precondition"], "{device}");
    }
    let text = format!("{records:?}");
    assert!(!text.contains(PUSHED_SECRET) && !text.contains(PRODUCT_SECRET));
}

/// Issue 23, finding 6: a batch of 200 unknown sub-devices costs one
/// rate-limit token and writes one audit record, listing every refused
/// entry (id and reason), not 200 records.
#[tokio::test]
async fn finding_6_a_batch_of_unknown_sub_devices_is_one_token_and_one_record() {
    const BURST: u32 = 2;
    let f = fixture_with(|c| {
        c.rate_limit = Some(RateLimitConfig {
            per_second: 1,
            burst: BURST,
        });
    })
    .await;
    let mut admin = f.signer.admin().await;
    admin
        .put_device(put_with_secret("PkGw", "gw", "GatewaySecret1"))
        .await
        .expect("gw");
    let mut gateway = f.device("PkGw", "gw").await;
    let ghosts = || -> Vec<DeviceRef> {
        (0..200)
            .map(|i| DeviceRef::new("PkSub", format!("ghost-{i}")))
            .collect()
    };
    let batch = gateway
        .sign_sub_device_login_batch(SignSubDeviceLoginBatchRequest {
            sub_devices: ghosts(),
            ..Default::default()
        })
        .await
        .expect("a batch of 200 entries costs one token of a burst of 2")
        .into_inner();
    assert!(batch.signed.is_empty());
    assert_eq!(batch.refused.len(), 200);

    let batch_records = |records: &[serde_json::Value]| -> Vec<serde_json::Value> {
        records
            .iter()
            .filter(|r| r["event"] == "sign_sub_device_login_batch")
            .cloned()
            .collect()
    };
    let records = batch_records(&f.audit_trail());
    assert_eq!(
        records.len(),
        1,
        "one record for the call, not one an entry"
    );
    let record = &records[0];
    assert_eq!(record["outcome"], "refused_entries");
    assert_eq!(record["identity"], "device PkGw/gw");
    let listed = record["refused"].as_array().expect("refused entries");
    assert_eq!(listed.len(), 200);
    assert_eq!(listed[7]["device"], "PkSub/ghost-7");
    assert_eq!(listed[7]["outcome"], "permission_denied");
    assert!(
        listed[7]["reason"]
            .as_str()
            .expect("reason")
            .contains("not a sub-device of the calling gateway"),
        "{}",
        listed[7]
    );

    // The limit counts calls, whatever their size (docs/admin.md): the
    // burst's second token still serves a whole batch, and the limit
    // then refuses calls (within a few, at one token a second).
    let mut served = 1;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let answer = gateway
            .sign_sub_device_login_batch(SignSubDeviceLoginBatchRequest {
                sub_devices: ghosts(),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(_) => served += 1,
            Err(status) => codes.push(status.code()),
        }
    }
    assert!(served >= BURST, "the burst serves {BURST} calls: {served}");
    assert!(
        codes.contains(&Code::ResourceExhausted),
        "the limit refuses: {codes:?}"
    );
    // Still one record per served call, each listing its 200 entries;
    // the refusals by the limit are sampled (one a second at most).
    let records = batch_records(&f.audit_trail());
    let with_entries: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["outcome"] == "refused_entries")
        .collect();
    assert_eq!(with_entries.len(), served as usize, "one a served call");
    assert!(
        with_entries
            .iter()
            .all(|r| r["refused"].as_array().map(Vec::len) == Some(200))
    );
    assert!(
        records.len() <= served as usize + codes.len(),
        "no record per entry: {} records",
        records.len()
    );
}

/// Issue 23, finding 9: a batch signs each sub-device under its own
/// product's policy (method and TTL), as the single call does, not under
/// the gateway's product's.
#[tokio::test]
async fn finding_9_a_batch_signs_under_each_sub_devices_own_product_policy() {
    let f = fixture_with(|c| {
        let policy = |ttl: u64, method: &str| ProductPolicyConfig {
            ttl: Some(std::time::Duration::from_secs(ttl)),
            sign_method: Some(method.into()),
            ..Default::default()
        };
        c.policy
            .products
            .insert("PkGwPolicy".into(), policy(1000, "hmacsha256"));
        c.policy
            .products
            .insert("PkSubShort".into(), policy(30, "hmacsha1"));
        c.policy
            .products
            .insert("PkSubLong".into(), policy(60, "hmacsha256"));
    })
    .await;
    let mut admin = f.signer.admin().await;
    admin
        .put_device(put_with_secret("PkGwPolicy", "gw", "GatewaySecret1"))
        .await
        .expect("gw");
    for (pk, dk, secret) in [
        ("PkSubShort", "s1", "ShortSecret1"),
        ("PkSubLong", "l1", "LongSecret1"),
    ] {
        admin
            .put_device(put_with_secret(pk, dk, secret))
            .await
            .expect("sub");
        admin
            .bind_sub_device(bind(("PkGwPolicy", "gw"), (pk, dk)))
            .await
            .expect("bind");
    }
    let mut gateway = f.device("PkGwPolicy", "gw").await;
    let verify = |batch: &enos_signer_proto::v1::SubDeviceLoginBatch, i: usize, secret: &str| {
        let entry = &batch.signed[i];
        let method = SignMethod::parse(&batch.sign_method, Md5Policy::Refuse).expect("method");
        let fields = SignedFields {
            client_id: ClientId::new(&batch.client_id).expect("client id"),
            device_key: DeviceKey::new(&entry.device_key).expect("dk"),
            product_key: ProductKey::new(&entry.product_key).expect("pk"),
            timestamp: TimestampMs::from_millis(batch.timestamp_ms),
        };
        let secret = DeviceSecret::new(secret.into()).expect("secret");
        verify_sign(&fields, method, &entry.sign, &secret).expect("signed with its secret");
    };

    // The single call: the sub-device's product's method and TTL.
    let single = gateway
        .sign_sub_device_login(SignSubDeviceLoginRequest {
            product_key: "PkSubShort".into(),
            device_key: "s1".into(),
            ..Default::default()
        })
        .await
        .expect("single")
        .into_inner();
    assert_eq!(single.sign_method, "hmacsha1");
    assert_eq!(single.expires_at_ms - single.timestamp_ms, 30_000);

    // The batch for the same sub-device: the same, not the gateway's
    // product's hmacsha256 and 1000 s.
    let batch = gateway
        .sign_sub_device_login_batch(SignSubDeviceLoginBatchRequest {
            sub_devices: vec![DeviceRef::new("PkSubShort", "s1")],
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.signed.len(), 1, "{:?}", batch.refused);
    assert_eq!(batch.sign_method, single.sign_method);
    assert_eq!(batch.expires_at_ms - batch.timestamp_ms, 30_000);
    verify(&batch, 0, "ShortSecret1");

    // Two products with different default methods cannot share the
    // batch's one signMethod: the other product's entry is refused, never
    // signed with a method its policy does not name.
    let mixed = gateway
        .sign_sub_device_login_batch(SignSubDeviceLoginBatchRequest {
            sub_devices: vec![
                DeviceRef::new("PkSubShort", "s1"),
                DeviceRef::new("PkSubLong", "l1"),
            ],
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(mixed.sign_method, "hmacsha1");
    assert_eq!(mixed.signed.len(), 1);
    assert_eq!(mixed.refused.len(), 1);
    assert_eq!(mixed.refused[0].device_key, "l1");
    assert_eq!(mixed.refused[0].code, "FailedPrecondition");
    assert!(
        mixed.refused[0].message.contains("sign_method"),
        "{:?}",
        mixed.refused[0]
    );
    // A requested method is every product's (as for the single call);
    // each entry keeps its own TTL, the batch expires with the earliest.
    let asked = gateway
        .sign_sub_device_login_batch(SignSubDeviceLoginBatchRequest {
            sub_devices: vec![
                DeviceRef::new("PkSubLong", "l1"),
                DeviceRef::new("PkSubShort", "s1"),
            ],
            sign_method: enos_signer_proto::v1::SignMethod::Hmacsha256.into(),
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(asked.signed.len(), 2, "{:?}", asked.refused);
    assert_eq!(asked.sign_method, "hmacsha256");
    assert_eq!(asked.expires_at_ms - asked.timestamp_ms, 30_000);
    verify(&asked, 0, "LongSecret1");
    verify(&asked, 1, "ShortSecret1");
    let expiries: Vec<(String, u64)> = f
        .audit_trail()
        .iter()
        .filter(|r| {
            r["event"] == "sign_sub_device_login_batch"
                && r["outcome"] == "ok"
                && r["sign_method"] == "hmacsha256"
                && r["timestamp_ms"] == asked.timestamp_ms
        })
        .map(|r| {
            (
                r["device"].as_str().unwrap_or_default().to_owned(),
                r["expires_at_ms"].as_u64().unwrap_or_default() - asked.timestamp_ms,
            )
        })
        .collect();
    assert_eq!(
        expiries,
        [
            ("PkSubLong/l1".to_owned(), 60_000),
            ("PkSubShort/s1".to_owned(), 30_000)
        ],
        "each entry's record has its own product's TTL"
    );
}
