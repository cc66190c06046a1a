//! HSM custody through the service: issuance end to end, import wrapping
//! at import time, the token going away and coming back, and
//! `custody migrate` software ↔ HSM, interrupted and resumed.
//!
//! Each test runs in its own process against its own SoftHSM2 token
//! (`enos_custody_pkcs11::softhsm::isolated`): SoftHSM2 reads its
//! configuration once per process.

mod common;

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use common::verify;
use enos_custody::Custody;
use enos_custody_pkcs11::{
    ExportPolicy, Pkcs11Custody, SCHEME as HSM_SCHEME, generate_kek,
    softhsm::{SoftHsm, isolated},
};
use enos_registry::{DeviceId, DeviceRecord, RedbRegistry, Registry, Write};
use enos_sign_core::{
    DeviceKey, DeviceSecret, ExposeSecret, HexCase, ProductKey, SignMethod, SignedFields,
    TimestampMs, sign_with_case,
};
use enos_signer_proto::v1::{
    CompleteActivationRequest, DeviceRef, ImportDevicesRequest, ImportRow,
    IssueMqttCredentialRequest, ProductRef, PutDeviceRequest, PutProductSecretRequest,
};
use enos_signer_svc::{
    config::CustodyConfig,
    custody::{SOFTWARE_SCHEME, SoftwareCustody},
    ops::custody_migrate::{Outcome, migrate},
};
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn hsm_signer(hsm: &SoftHsm) -> common::Fixture {
    generate_kek(&hsm.config()).expect("create the token's keys");
    let config = hsm.config();
    common::fixture_with(move |c| c.custody = CustodyConfig::Pkcs11(config)).await
}

/// Reads the sealed records straight from the registry file.
async fn sealed_schemes(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let registry = RedbRegistry::open(path).expect("open the registry");
    registry
        .list(None, None, 1000)
        .await
        .expect("list")
        .into_iter()
        .filter_map(|r| r.sealed)
        .map(|s| (s.scheme, s.bytes))
        .collect()
}

#[test]
fn issuance_end_to_end_with_hsm_custody() {
    isolated("issuance_end_to_end_with_hsm_custody", "e2e", "", |hsm| {
        runtime().block_on(async {
            let mut f = hsm_signer(hsm).await;
            f.signer
                .put_device("Pk1", "dev-1", "aaabbbcc123")
                .await
                .expect("put (sealed in the token)");
            // Bulk import wraps every row at import time.
            let imported = f
                .signer
                .admin()
                .await
                .import_devices(futures::stream::iter([ImportDevicesRequest {
                    rows: (0..5)
                        .map(|i| ImportRow {
                            line: i + 2,
                            product_key: "Pk1".into(),
                            device_key: format!("bulk-{i}"),
                            device_secret: format!("bulk-secret-{i}-xyz"),
                            gateway: None,
                            awaiting_activation: false,
                            ..Default::default()
                        })
                        .collect(),
                    dry_run: false,
                    ..Default::default()
                }]))
                .await
                .expect("import")
                .into_inner();
            assert!(imported.committed, "{imported:?}");
            assert_eq!(imported.imported, 5);

            let credential = f
                .device("Pk1", "dev-1")
                .await
                .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                .await
                .expect("issued")
                .into_inner();
            assert_eq!(credential.password.len(), 40, "SHA-1");
            assert!(verify(&credential, "aaabbbcc123"));
            assert!(!verify(&credential, "another-secret"));
            for i in 0..5 {
                let dk = format!("bulk-{i}");
                let credential = f
                    .device("Pk1", &dk)
                    .await
                    .issue_mqtt_credential(IssueMqttCredentialRequest {
                        sign_method: enos_signer_proto::v1::SignMethod::Hmacsha256.into(),
                        ..IssueMqttCredentialRequest::default()
                    })
                    .await
                    .expect("issued")
                    .into_inner();
                assert_eq!(credential.password.len(), 64);
                assert!(verify(&credential, &format!("bulk-secret-{i}-xyz")));
            }

            f.signer.stop().await;
            let records = sealed_schemes(
                &f.dir
                    .path()
                    .canonicalize()
                    .expect("dir")
                    .join("registry.redb"),
            )
            .await;
            assert_eq!(records.len(), 6);
            for (scheme, bytes) in records {
                assert_eq!(scheme, HSM_SCHEME);
                assert!(!bytes.windows(11).any(|w| w == b"aaabbbcc123"));
                assert!(!bytes.windows(11).any(|w| w == b"bulk-secret"));
            }
        });
    });
}

#[test]
fn activation_with_hsm_custody_seals_the_product_and_the_pushed_secret_in_the_token() {
    isolated(
        "activation_with_hsm_custody_seals_the_product_and_the_pushed_secret_in_the_token",
        "activation",
        "",
        |hsm| {
            runtime().block_on(async {
                generate_kek(&hsm.config()).expect("create the token's keys");
                let config = hsm.config();
                let mut f = common::fixture_with(move |c| {
                    c.custody = CustodyConfig::Pkcs11(config);
                    c.policy.products.insert(
                        "PkAct".into(),
                        enos_signer_svc::config::ProductPolicyConfig {
                            dynamic_activation: true,
                            ..Default::default()
                        },
                    );
                })
                .await;
                let mut admin = f.signer.admin().await;
                admin
                    .put_product_secret(PutProductSecretRequest {
                        product: Some(ProductRef {
                            product_key: "PkAct".into(),
                        }),
                        product_secret: "HsmProductSecret1".into(),
                    })
                    .await
                    .expect("product secret sealed in the token");
                admin
                    .put_device(PutDeviceRequest {
                        device: Some(DeviceRef::new("PkAct", "gw")),
                        device_secret: String::new(),
                        enabled: true,
                        awaiting_activation: true,
                    })
                    .await
                    .expect("awaiting activation");
                let mut device = f.device("PkAct", "gw").await;
                let credential = device
                    .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                    .await
                    .expect("activation credential")
                    .into_inner();
                assert_eq!(credential.secure_mode, 3);
                let presented = enos_sign_core::PresentedLogin::parse(
                    &credential.mqtt_client_id,
                    &credential.username,
                    enos_sign_core::Md5Policy::Refuse,
                )
                .expect("shape");
                presented
                    .verify(
                        &credential.password,
                        &enos_sign_core::ProductSecret::new("HsmProductSecret1".into()).expect("s"),
                        enos_sign_core::Freshness::Any,
                    )
                    .expect("signed in the token with the product secret");
                device
                    .complete_activation(CompleteActivationRequest {
                        device_secret: "HsmPushedSecret22".into(),
                    })
                    .await
                    .expect("hand-over");
                let credential = device
                    .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                    .await
                    .expect("credential")
                    .into_inner();
                assert_eq!(credential.secure_mode, 2);
                assert!(verify(&credential, "HsmPushedSecret22"));

                f.signer.stop().await;
                let path = f
                    .dir
                    .path()
                    .canonicalize()
                    .expect("dir")
                    .join("registry.redb");
                let registry = RedbRegistry::open(&path).expect("open");
                let products = registry.list_products().await.expect("products");
                assert_eq!(products.len(), 1);
                assert_eq!(products[0].sealed.scheme, HSM_SCHEME);
                assert!(
                    !products[0]
                        .sealed
                        .bytes
                        .windows(10)
                        .any(|w| w == b"HsmProduct")
                );
                drop(registry);
                let records = sealed_schemes(&path).await;
                assert_eq!(records.len(), 1);
                assert_eq!(records[0].0, HSM_SCHEME);
                assert!(!records[0].1.windows(9).any(|w| w == b"HsmPushed"));
            });
        },
    );
}

#[test]
fn the_service_answers_unavailable_while_the_token_is_away_and_recovers() {
    isolated(
        "the_service_answers_unavailable_while_the_token_is_away_and_recovers",
        "svc-away",
        "",
        |hsm| {
            runtime().block_on(async {
                let f = hsm_signer(hsm).await;
                f.signer
                    .put_device("Pk1", "dev-1", "s3cret-value")
                    .await
                    .expect("put");
                let mut device = f.device("Pk1", "dev-1").await;
                let issue = IssueMqttCredentialRequest::default();
                let credential = device
                    .issue_mqtt_credential(issue.clone())
                    .await
                    .expect("issued")
                    .into_inner();
                assert!(verify(&credential, "s3cret-value"));

                hsm.park_token();
                let status = device
                    .issue_mqtt_credential(issue.clone())
                    .await
                    .expect_err("token away");
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                // No internals reach the client.
                assert!(!status.message().contains("C_"), "{status:?}");
                // Admin writes that need the token fail the same way, and
                // write nothing.
                let put = f.signer.put_device("Pk1", "dev-2", "other-secret").await;
                assert!(put.is_err());

                hsm.restore_token();
                tokio::time::sleep(Duration::from_millis(120)).await;
                let credential = device
                    .issue_mqtt_credential(issue)
                    .await
                    .expect("issued after the token came back")
                    .into_inner();
                assert!(verify(&credential, "s3cret-value"));
                f.signer
                    .put_device("Pk1", "dev-2", "other-secret")
                    .await
                    .expect("put");
            });
        },
    );
}

struct Device {
    id: DeviceId,
    secret: String,
}

fn devices(n: usize) -> Vec<Device> {
    (0..n)
        .map(|i| Device {
            id: DeviceId::new(
                ProductKey::new("PkM").expect("pk"),
                DeviceKey::new(format!("dev-{i:02}")).expect("dk"),
            ),
            // Lengths 9..=20: most not a multiple of 8.
            secret: format!("secret-{}", "x".repeat(2 + i)),
        })
        .collect()
}

/// Every record signs exactly as the plaintext does, with whichever
/// custody its scheme names. Returns how many are in the HSM scheme.
async fn check_all(
    registry: &RedbRegistry,
    devices: &[Device],
    software: &SoftwareCustody,
    hsm: &dyn Custody,
) -> usize {
    let records = registry.list(None, None, 1000).await.expect("list");
    assert_eq!(records.len(), devices.len(), "no record lost");
    let mut in_hsm = 0;
    for (record, device) in records.iter().zip(devices) {
        assert_eq!(record.id, device.id);
        let sealed = record.sealed.as_ref().expect("every device has a secret");
        let custody: &dyn Custody = if sealed.scheme == HSM_SCHEME {
            in_hsm += 1;
            hsm
        } else {
            assert_eq!(sealed.scheme, SOFTWARE_SCHEME);
            software
        };
        let fields = SignedFields::with_device_key_as_client_id(
            device.id.product_key.clone(),
            device.id.device_key.clone(),
            TimestampMs::from_millis(1_764_000_000_000),
        )
        .expect("fields");
        let secret = DeviceSecret::new(device.secret.clone()).expect("secret");
        let password = custody
            .sign(
                enos_custody::SecretRef::of(&device.id, record.secret_version),
                sealed,
                &fields,
                SignMethod::HmacSha1,
                HexCase::Upper,
            )
            .expect("sign");
        let expected = sign_with_case(&fields, SignMethod::HmacSha1, &secret, HexCase::Upper);
        assert_eq!(
            password.expose_secret(),
            expected.expose_secret(),
            "{}",
            device.id
        );
    }
    in_hsm
}

#[test]
fn migration_both_ways_interrupted_and_resumed_loses_nothing() {
    isolated(
        "migration_both_ways_interrupted_and_resumed_loses_nothing",
        "migrate",
        "",
        |hsm| {
            runtime().block_on(async {
                let dir = hsm.tokens().join("../registry");
                std::fs::create_dir_all(&dir).expect("dir");
                let path = dir.join("registry.redb");
                RedbRegistry::create(&path).expect("create");
                let registry = RedbRegistry::open(&path).expect("open");
                let software = Arc::new(SoftwareCustody::new(&[7u8; 32]));
                let devices = devices(10);
                for device in &devices {
                    let sealed = software
                        .seal(
                            enos_custody::SecretRef::of(&device.id, 1),
                            &DeviceSecret::new(device.secret.clone()).expect("secret"),
                        )
                        .expect("seal");
                    let record = DeviceRecord {
                        id: device.id.clone(),
                        enabled: true,
                        secret_version: 1,
                        sealed: Some(sealed),
                        gateway: None,
                        created_at_ms: 1,
                        updated_at_ms: 1,
                    };
                    registry
                        .modify(vec![], Box::new(move |_| Ok(vec![Write::Put(record)])))
                        .await
                        .expect("put");
                }
                generate_kek(&hsm.config()).expect("create the token's keys");

                // Software → HSM, stopped after 4 records (as by Ctrl-C).
                let to_hsm: Arc<dyn Custody> =
                    Arc::new(Pkcs11Custody::connect(&hsm.config()).expect("connect"));
                let mut seen = 0;
                let report = migrate(&registry, software.clone(), to_hsm.clone(), |_, outcome| {
                    assert_eq!(*outcome, Outcome::Migrated);
                    seen += 1;
                    if seen == 4 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .await
                .expect("migrate");
                assert!(report.interrupted);
                assert_eq!(report.migrated, 4);
                assert_eq!(check_all(&registry, &devices, &software, &*to_hsm).await, 4);
                // Resumed: the rest, and the first four are skipped.
                let report = migrate(&registry, software.clone(), to_hsm.clone(), |_, _| {
                    ControlFlow::Continue(())
                })
                .await
                .expect("migrate");
                assert_eq!((report.migrated, report.already_migrated), (6, 4));
                assert!(report.failed.is_empty() && !report.interrupted);
                assert_eq!(
                    check_all(&registry, &devices, &software, &*to_hsm).await,
                    10
                );

                // HSM → software needs the export policy: refused, nothing lost.
                let report = migrate(&registry, to_hsm.clone(), software.clone(), |_, _| {
                    ControlFlow::Continue(())
                })
                .await
                .expect("migrate");
                assert_eq!(report.failed.len(), 10);
                assert!(
                    report.failed[0]
                        .1
                        .contains("only `custody migrate` may export"),
                    "{:?}",
                    report.failed[0]
                );
                assert_eq!(
                    check_all(&registry, &devices, &software, &*to_hsm).await,
                    10
                );
                drop(to_hsm);

                // With export allowed, the token goes away after 3 records.
                let from_hsm: Arc<dyn Custody> = Arc::new(
                    Pkcs11Custody::connect_with(&hsm.config(), ExportPolicy::AllowForMigration)
                        .expect("connect for migration"),
                );
                let mut done = 0;
                let report = migrate(
                    &registry,
                    from_hsm.clone(),
                    software.clone(),
                    |_, outcome| {
                        if *outcome == Outcome::Migrated {
                            done += 1;
                            if done == 3 {
                                hsm.park_token();
                            }
                        }
                        ControlFlow::Continue(())
                    },
                )
                .await
                .expect("migrate");
                assert_eq!(report.migrated, 3);
                assert_eq!(report.failed.len(), 7);
                assert!(
                    report
                        .failed
                        .iter()
                        .all(|(_, why)| why.contains("unavailable")),
                    "{:?}",
                    report.failed
                );
                hsm.restore_token();
                tokio::time::sleep(Duration::from_millis(120)).await;
                assert_eq!(
                    check_all(&registry, &devices, &software, &*from_hsm).await,
                    7
                );
                let report = migrate(&registry, from_hsm.clone(), software.clone(), |_, _| {
                    ControlFlow::Continue(())
                })
                .await
                .expect("migrate");
                assert_eq!((report.migrated, report.already_migrated), (7, 3));
                assert_eq!(
                    check_all(&registry, &devices, &software, &*from_hsm).await,
                    0
                );
            });
        },
    );
}

#[test]
fn operator_flow_a_software_signer_moves_to_hsm_custody() {
    isolated(
        "operator_flow_a_software_signer_moves_to_hsm_custody",
        "operator",
        "",
        |hsm| {
            runtime().block_on(async {
                let dir = tempfile::tempdir().expect("tempdir");
                let pki = enos_testkit::Pki::new("operator").expect("pki");
                let secrets: Vec<(String, String)> = (0..4)
                    .map(|i| (format!("dev-{i}"), format!("secret-of-device-{i}")))
                    .collect();
                // A signer in production with software custody.
                let mut software = enos_testkit::signer::TestSigner::start(dir.path(), &pki)
                    .await
                    .expect("software signer");
                for (dk, secret) in &secrets {
                    software.put_device("Pk1", dk, secret).await.expect("put");
                }
                software.stop().await;
                let source = software.config().clone();
                drop(software);

                // The operator points the config at the HSM, creates the
                // token's keys and migrates, with the service stopped.
                let target = enos_signer_svc::SignerConfig {
                    custody: CustodyConfig::Pkcs11(hsm.config()),
                    ..source.clone()
                };
                enos_signer_svc::ops::custody_migrate::init_hsm(&target).expect("init-hsm");
                let again = enos_signer_svc::ops::custody_migrate::init_hsm(&target)
                    .expect_err("keys exist");
                assert!(again.to_string().contains("already exists"), "{again}");
                let report = enos_signer_svc::ops::custody_migrate::migrate_configs(
                    &target,
                    &source,
                    |_, _| ControlFlow::Continue(()),
                )
                .await
                .expect("migrate");
                assert_eq!(report.migrated, 4);
                assert!(report.failed.is_empty());

                // The same registry served with HSM custody.
                let config = hsm.config();
                let f = enos_testkit::signer::TestSigner::start_with(dir.path(), &pki, move |c| {
                    c.custody = CustodyConfig::Pkcs11(config);
                })
                .await
                .expect("HSM signer");
                for (dk, secret) in &secrets {
                    let identity = pki.device("Pk1", dk).expect("device cert");
                    let channel = enos_signer_svc::client::connect_mtls(
                        &f.uri(),
                        f.ca_pem(),
                        Some(enos_testkit::signer::client_identity(&identity)),
                    )
                    .await
                    .expect("mTLS");
                    let credential =
                        enos_signer_proto::v1::credentials_client::CredentialsClient::new(channel)
                            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                            .await
                            .expect("issued")
                            .into_inner();
                    assert!(verify(&credential, secret), "{dk}");
                }
            });
        },
    );
}

#[test]
fn cli_init_hsm_and_migrate() {
    isolated("cli_init_hsm_and_migrate", "cli", "", |hsm| {
        runtime().block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = enos_testkit::Pki::new("cli").expect("pki");
            let mut software = enos_testkit::signer::TestSigner::start(dir.path(), &pki)
                .await
                .expect("software signer");
            for i in 0..3 {
                software
                    .put_device("Pk1", &format!("dev-{i}"), &format!("cli-secret-{i}"))
                    .await
                    .expect("put");
            }
            software.stop().await;
            let source_path = software.config_path().to_owned();
            let target = enos_signer_svc::SignerConfig {
                custody: CustodyConfig::Pkcs11(hsm.config()),
                ..software.config().clone()
            };
            let registry_path = dir
                .path()
                .canonicalize()
                .expect("dir")
                .join("registry.redb");
            drop(software);
            let target_path = dir.path().join("hsm-signer.toml");
            std::fs::write(&target_path, target.to_toml().expect("toml")).expect("write");

            let run = |args: &[&std::ffi::OsStr]| {
                let output = std::process::Command::new(env!("CARGO_BIN_EXE_enos-signer"))
                    .args(args)
                    .output()
                    .expect("run enos-signer");
                (
                    output.status.success(),
                    String::from_utf8_lossy(&output.stdout).into_owned(),
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                )
            };
            let init = [
                "custody".as_ref(),
                "init-hsm".as_ref(),
                "--config".as_ref(),
                target_path.as_os_str(),
            ];
            let (ok, stdout, stderr) = run(&init);
            assert!(ok, "{stdout}{stderr}");
            let (ok, _, stderr) = run(&init);
            assert!(!ok && stderr.contains("already exists"), "{stderr}");

            let migrate = [
                "custody".as_ref(),
                "migrate".as_ref(),
                "--config".as_ref(),
                target_path.as_os_str(),
                "--from-config".as_ref(),
                source_path.as_os_str(),
            ];
            let (ok, stdout, stderr) = run(&migrate);
            assert!(ok, "{stdout}{stderr}");
            assert!(
                stdout.contains("migrated 3, already migrated 0, left unchanged 0"),
                "{stdout}"
            );
            let (ok, stdout, stderr) = run(&migrate);
            assert!(ok, "{stdout}{stderr}");
            assert!(
                stdout.contains("migrated 0, already migrated 3"),
                "{stdout}"
            );

            let registry = RedbRegistry::open(&registry_path).expect("open");
            let custody = Pkcs11Custody::connect(&hsm.config()).expect("connect");
            for record in registry.list(None, None, 10).await.expect("list") {
                let sealed = record.sealed.as_ref().expect("sealed");
                assert_eq!(sealed.scheme, HSM_SCHEME);
                let i = record
                    .id
                    .device_key
                    .as_str()
                    .trim_start_matches("dev-")
                    .to_owned();
                let fields = SignedFields::with_device_key_as_client_id(
                    record.id.product_key.clone(),
                    record.id.device_key.clone(),
                    TimestampMs::from_millis(1_764_000_000_000),
                )
                .expect("fields");
                let password = custody
                    .sign(
                        enos_custody::SecretRef::of(&record.id, record.secret_version),
                        sealed,
                        &fields,
                        SignMethod::HmacSha256,
                        HexCase::Lower,
                    )
                    .expect("sign");
                let secret = DeviceSecret::new(format!("cli-secret-{i}")).expect("secret");
                let expected =
                    sign_with_case(&fields, SignMethod::HmacSha256, &secret, HexCase::Lower);
                assert_eq!(password.expose_secret(), expected.expose_secret());
            }
        });
    });
}

/// Waits (up to 10 s) until the mTLS listener's health says `want` for
/// `service`.
async fn wait_health(
    channel: &tonic::transport::Channel,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status();
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service:?} still {status:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn readiness_follows_the_token_and_liveness_does_not() {
    use tonic_health::pb::health_check_response::ServingStatus;
    isolated(
        "readiness_follows_the_token_and_liveness_does_not",
        "ready",
        "",
        |hsm| {
            runtime().block_on(async {
                generate_kek(&hsm.config()).expect("create the token's keys");
                let config = hsm.config();
                let f = common::fixture_with(move |c| {
                    c.custody = CustodyConfig::Pkcs11(config);
                    c.health = Some(enos_signer_svc::config::HealthConfig {
                        listen: "127.0.0.1:0".parse().expect("addr"),
                        check_interval: Duration::from_secs(1),
                    });
                })
                .await;
                // Health over mTLS needs a client certificate (#23); any
                // will do.
                let probe = f.pki.device("PkHsm", "probe").expect("cert");
                let channel = f.channel(Some(&probe)).await;
                let liveness = enos_signer_svc::listener::readiness::LIVENESS_SERVICE;
                wait_health(&channel, "", ServingStatus::Serving).await;

                hsm.park_token();
                wait_health(&channel, "", ServingStatus::NotServing).await;
                wait_health(
                    &channel,
                    "enos.signer.v1.Credentials",
                    ServingStatus::NotServing,
                )
                .await;
                wait_health(&channel, liveness, ServingStatus::Serving).await;

                // Back without any issuance: the check reconnects itself.
                hsm.restore_token();
                wait_health(&channel, "", ServingStatus::Serving).await;
                wait_health(&channel, "enos.signer.v1.Admin", ServingStatus::Serving).await;
            });
        },
    );
}

#[test]
fn the_ca_key_lives_in_the_token_and_certificates_are_signed_there() {
    // #25: with HSM custody, `ca init` (run by the fixture) makes the CA
    // key in the token; enrollment and renewal sign there, the chain is
    // served, and the stored form of the key holds no key material.
    isolated(
        "the_ca_key_lives_in_the_token_and_certificates_are_signed_there",
        "ca",
        "",
        |hsm| {
            runtime().block_on(async {
                generate_kek(&hsm.config()).expect("create the token's keys");
                let config = hsm.config();
                let f = common::fixture_with(move |c| {
                    c.custody = CustodyConfig::Pkcs11(config);
                    c.ca = Some(enos_signer_svc::config::CaConfig {
                        enroll_listen: Some(([127, 0, 0, 1], 0).into()),
                        ..Default::default()
                    });
                })
                .await;
                f.signer
                    .put_device("Pk1", "gw-1", "aaabbbcc123")
                    .await
                    .expect("put");
                let token = f
                    .signer
                    .admin()
                    .await
                    .create_enroll_token(enos_signer_proto::v1::CreateEnrollTokenRequest {
                        device: Some(DeviceRef::new("Pk1", "gw-1")),
                        ttl_secs: 0,
                    })
                    .await
                    .expect("token")
                    .into_inner()
                    .token;
                let key =
                    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
                let csr = rcgen::CertificateParams::default()
                    .serialize_request(&key)
                    .expect("csr");
                let channel = enos_signer_svc::client::connect_mtls(
                    &f.signer.enroll_uri().expect("enrollment listener"),
                    f.signer.ca_pem(),
                    None,
                )
                .await
                .expect("TLS");
                let issued =
                    enos_signer_proto::v1::enrollment_client::EnrollmentClient::new(channel)
                        .enroll(enos_signer_proto::v1::EnrollRequest {
                            device: Some(DeviceRef::new("Pk1", "gw-1")),
                            token,
                            csr_der: csr.der().to_vec(),
                        })
                        .await
                        .expect("enrolled with the CA key in the token")
                        .into_inner();
                let (_, cert) = x509_parser::parse_x509_certificate(&issued.certificate_der)
                    .expect("certificate");
                let (_, ca) =
                    x509_parser::parse_x509_certificate(&issued.chain_der[0]).expect("ca");
                cert.verify_signature(Some(ca.public_key()))
                    .expect("signed by the token's key");
                // The new certificate gets a credential from the same signer.
                let identity = enos_testkit::Identity::from_issued(
                    std::iter::once(issued.certificate_der.as_slice())
                        .chain(issued.chain_der.iter().map(Vec::as_slice)),
                    key.serialize_pem(),
                );
                let channel = enos_signer_svc::client::connect_mtls(
                    &f.signer.uri(),
                    f.signer.ca_pem(),
                    Some(enos_testkit::signer::client_identity(&identity)),
                )
                .await
                .expect("mTLS");
                let credential =
                    enos_signer_proto::v1::credentials_client::CredentialsClient::new(channel)
                        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                        .await
                        .expect("issued")
                        .into_inner();
                assert!(verify(&credential, "aaabbbcc123"));
                // The registry keeps the token's reference and the public key only.
                let mut f = f;
                f.signer.stop().await;
                let registry = RedbRegistry::open(
                    &f.dir
                        .path()
                        .canonicalize()
                        .expect("dir")
                        .join("registry.redb"),
                )
                .expect("registry");
                let stored = registry.get_ca().await.expect("read").expect("a CA");
                assert_eq!(stored.key.scheme, enos_custody_pkcs11::CA_SCHEME);
                assert!(
                    stored.key.bytes.len() <= 64,
                    "a reference, not a key: {} bytes",
                    stored.key.bytes.len()
                );
            });
        },
    );
}
