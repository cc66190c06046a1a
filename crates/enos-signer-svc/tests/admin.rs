//! The Admin service over real mTLS: the authorisation matrix, registry
//! operations, all-or-nothing import; plus health, reflection and metrics.

mod common;

use common::{code, fixture, fixture_with, status};
use enos_signer_proto::v1::{
    BindSubDeviceRequest, DeviceRef, ImportDevicesRequest, ImportRow, ListDevicesRequest,
    PutDeviceRequest, RotateSecretRequest, SetEnabledRequest, UnbindSubDeviceRequest,
    admin_client::AdminClient,
};
use tonic::Code;

fn dref(pk: &str, dk: &str) -> Option<DeviceRef> {
    Some(DeviceRef {
        product_key: pk.into(),
        device_key: dk.into(),
    })
}

/// Calls every Admin RPC and returns the codes.
async fn every_admin_rpc(
    client: &mut AdminClient<tonic::transport::Channel>,
) -> Vec<(&'static str, Code)> {
    let d = || DeviceRef {
        product_key: "Pk1".into(),
        device_key: "dev-1".into(),
    };
    vec![
        (
            "put_device",
            code(
                client
                    .put_device(PutDeviceRequest {
                        device: Some(d()),
                        device_secret: "s3cret".into(),
                        enabled: true,
                        awaiting_activation: false,
                    })
                    .await,
            ),
        ),
        (
            "rotate_secret",
            code(
                client
                    .rotate_secret(RotateSecretRequest {
                        device: Some(d()),
                        new_device_secret: "s3cret2".into(),
                    })
                    .await,
            ),
        ),
        (
            "set_enabled",
            code(
                client
                    .set_enabled(SetEnabledRequest {
                        device: Some(d()),
                        enabled: false,
                    })
                    .await,
            ),
        ),
        ("get_device", code(client.get_device(d()).await)),
        (
            "list_devices",
            code(client.list_devices(ListDevicesRequest::default()).await),
        ),
        (
            "bind_sub_device",
            code(
                client
                    .bind_sub_device(BindSubDeviceRequest {
                        gateway: Some(d()),
                        sub_device: dref("Pk1", "dev-2"),
                    })
                    .await,
            ),
        ),
        (
            "unbind_sub_device",
            code(
                client
                    .unbind_sub_device(UnbindSubDeviceRequest {
                        sub_device: Some(d()),
                    })
                    .await,
            ),
        ),
        (
            "import_devices",
            code(
                client
                    .import_devices(futures::stream::iter([ImportDevicesRequest {
                        rows: vec![ImportRow {
                            line: 2,
                            product_key: "Pk1".into(),
                            device_key: "dev-9".into(),
                            device_secret: "s3cret".into(),
                            gateway: None,
                            awaiting_activation: false,
                            ..Default::default()
                        }],
                        dry_run: false,
                        ..Default::default()
                    }]))
                    .await,
            ),
        ),
        ("delete_device", code(client.delete_device(d()).await)),
    ]
}

#[tokio::test]
async fn admin_needs_an_admin_certificate() {
    let f = fixture().await;
    f.signer
        .put_device("Pk1", "dev-1", "original")
        .await
        .expect("put");

    let mut as_device = f.admin_as_device("Pk1", "dev-1").await;
    for (rpc, c) in every_admin_rpc(&mut as_device).await {
        assert_eq!(c, Code::PermissionDenied, "{rpc} with a device certificate");
    }
    // Without a certificate the handshake refuses the connection (#23):
    // no call reaches Admin.
    if let Some(channel) = f.anonymous_channel().await {
        let mut anonymous = AdminClient::new(channel);
        for (rpc, c) in every_admin_rpc(&mut anonymous).await {
            assert!(
                common::refused_by_handshake(c),
                "{rpc} without a certificate: {c:?}"
            );
        }
    }
    let nobody = f.pki.client_with_uri("x", None).expect("cert");
    let mut nobody = AdminClient::new(f.channel(Some(&nobody)).await);
    for (rpc, c) in every_admin_rpc(&mut nobody).await {
        assert_eq!(c, Code::Unauthenticated, "{rpc} with no identity");
    }
    // Nothing changed: the device is still enabled, version 1, unbound.
    let mut admin = f.signer.admin().await;
    let device = admin
        .get_device(dref("Pk1", "dev-1").expect("ref"))
        .await
        .expect("get")
        .into_inner();
    assert!(device.enabled);
    assert_eq!(device.secret_version, 1);
    assert_eq!(
        code(admin.get_device(dref("Pk1", "dev-9").expect("ref")).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn registry_operations() {
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    for i in 0..7 {
        f.signer
            .put_device(
                if i < 4 { "PkA" } else { "PkB" },
                &format!("d{i}"),
                "s3cret",
            )
            .await
            .expect("put");
    }
    // Paging, in key order, never a secret.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_devices(ListDevicesRequest {
                product_key: String::new(),
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.devices.len() <= 3);
        seen.extend(
            page.devices
                .iter()
                .map(|d| format!("{}/{}", d.product_key, d.device_key)),
        );
        assert!(!format!("{page:?}").contains("s3cret"));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        [
            "PkA/d0", "PkA/d1", "PkA/d2", "PkA/d3", "PkB/d4", "PkB/d5", "PkB/d6"
        ]
    );
    let only_b = admin
        .list_devices(ListDevicesRequest {
            product_key: "PkB".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(only_b.devices.len(), 3);
    for (request, field) in [
        (
            ListDevicesRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListDevicesRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListDevicesRequest {
                product_key: "P k".into(),
                ..Default::default()
            },
            "product_key",
        ),
    ] {
        let s = status(admin.list_devices(request).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with(field), "{}", s.message());
    }

    // Put again replaces the secret (version 2) and keeps created_at.
    let first = admin
        .get_device(dref("PkA", "d0").expect("ref"))
        .await
        .expect("get")
        .into_inner();
    let again = f
        .signer
        .put_device("PkA", "d0", "other")
        .await
        .expect("put");
    assert_eq!(again.secret_version, 2);
    assert_eq!(again.created_at_ms, first.created_at_ms);

    // Bad fields are named.
    let s = status(
        admin
            .put_device(PutDeviceRequest {
                device: dref("PkA", "d|x"),
                device_secret: "s".into(),
                enabled: true,
                awaiting_activation: false,
            })
            .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().starts_with("device.device_key"),
        "{}",
        s.message()
    );
    let s = status(
        admin
            .put_device(PutDeviceRequest {
                device: None,
                device_secret: "s".into(),
                enabled: true,
                awaiting_activation: false,
            })
            .await,
    );
    assert!(s.message().starts_with("device"), "{}", s.message());
    let s = status(
        admin
            .put_device(PutDeviceRequest {
                device: dref("PkA", "d9"),
                device_secret: String::new(),
                enabled: true,
                awaiting_activation: false,
            })
            .await,
    );
    assert!(s.message().starts_with("device_secret"), "{}", s.message());

    // Binding rules.
    let bind = |gw: (&str, &str), sub: (&str, &str)| BindSubDeviceRequest {
        gateway: dref(gw.0, gw.1),
        sub_device: dref(sub.0, sub.1),
    };
    let bound = admin
        .bind_sub_device(bind(("PkA", "d0"), ("PkB", "d4")))
        .await
        .expect("bind")
        .into_inner();
    assert_eq!(bound.gateway, dref("PkA", "d0"));
    assert_eq!(
        code(
            admin
                .bind_sub_device(bind(("PkA", "d1"), ("PkB", "d4")))
                .await
        ),
        Code::FailedPrecondition,
        "already bound elsewhere"
    );
    assert_eq!(
        code(
            admin
                .bind_sub_device(bind(("PkB", "d4"), ("PkB", "d5")))
                .await
        ),
        Code::FailedPrecondition,
        "a sub-device cannot be a gateway"
    );
    assert_eq!(
        code(
            admin
                .bind_sub_device(bind(("PkA", "d0"), ("PkA", "d0")))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            admin
                .bind_sub_device(bind(("PkA", "ghost"), ("PkA", "d1")))
                .await
        ),
        Code::NotFound
    );
    let unbound = admin
        .unbind_sub_device(UnbindSubDeviceRequest {
            sub_device: dref("PkB", "d4"),
        })
        .await
        .expect("unbind")
        .into_inner();
    assert_eq!(unbound.gateway, None);

    // Delete.
    admin
        .delete_device(dref("PkB", "d6").expect("ref"))
        .await
        .expect("delete");
    assert_eq!(
        code(admin.get_device(dref("PkB", "d6").expect("ref")).await),
        Code::NotFound
    );
    assert_eq!(
        code(admin.delete_device(dref("PkB", "d6").expect("ref")).await),
        Code::NotFound
    );
}

fn row(line: u32, pk: &str, dk: &str, secret: &str, gw: Option<(&str, &str)>) -> ImportRow {
    ImportRow {
        line,
        product_key: pk.into(),
        device_key: dk.into(),
        device_secret: secret.into(),
        gateway: gw.and_then(|(p, d)| dref(p, d)),
        awaiting_activation: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn import_is_all_or_nothing_and_names_each_bad_row() {
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    let rows = [
        row(2, "Pk1", "gw", "s3cret-gw", None),
        row(3, "Pk1", "bad|key", "s3cret", None),
        row(4, "Pk1", "sub", "s3cret-sub", Some(("Pk1", "gw"))),
        row(5, "Pk1", "nosecret", "", None),
        row(6, "Pk1", "gw", "dup-secret", None),
        row(7, "Pk1", "orphan", "s3cret", Some(("Pk1", "missing-gw"))),
        row(8, "Pk1", "spacey", "has space", None),
    ];
    // Sent in two messages, as the CLI streams chunks.
    let response = admin
        .import_devices(futures::stream::iter([
            ImportDevicesRequest {
                rows: rows[..3].to_vec(),
                dry_run: false,
                ..Default::default()
            },
            ImportDevicesRequest {
                rows: rows[3..].to_vec(),
                dry_run: false,
                ..Default::default()
            },
        ]))
        .await
        .expect("import answers")
        .into_inner();
    assert!(!response.committed);
    assert_eq!(response.imported, 0);
    assert_eq!(response.checked, 7);
    let lines: Vec<u32> = response.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 5, 6, 7, 8]);
    let printed = format!("{:?}", response.errors);
    assert!(printed.contains("deviceKey"), "{printed}");
    assert!(printed.contains("also on line 2"), "{printed}");
    assert!(printed.contains("missing-gw"), "{printed}");
    assert!(
        !printed.contains("has space") && !printed.contains("dup-secret"),
        "{printed}"
    );
    let listed = f.signer.list_devices().await.expect("list");
    assert!(listed.is_empty(), "nothing half-written");

    // The good rows alone: a dry run writes nothing, then the real import.
    let good = vec![
        row(2, "Pk1", "gw", "s3cret-gw", None),
        row(4, "Pk1", "sub", "s3cret-sub", Some(("Pk1", "gw"))),
    ];
    let dry = admin
        .import_devices(futures::stream::iter([ImportDevicesRequest {
            rows: good.clone(),
            dry_run: true,
            ..Default::default()
        }]))
        .await
        .expect("dry run")
        .into_inner();
    assert!(
        dry.errors.is_empty() && !dry.committed && dry.imported == 0,
        "{dry:?}"
    );
    assert!(
        admin
            .list_devices(ListDevicesRequest::default())
            .await
            .expect("list")
            .into_inner()
            .devices
            .is_empty()
    );
    let done = admin
        .import_devices(futures::stream::iter([ImportDevicesRequest {
            rows: good,
            dry_run: false,
            ..Default::default()
        }]))
        .await
        .expect("import")
        .into_inner();
    assert!(done.committed && done.imported == 2, "{done:?}");
    let sub = admin
        .get_device(dref("Pk1", "sub").expect("ref"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(sub.gateway, dref("Pk1", "gw"));
    assert!(sub.enabled);
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let f = fixture().await;
    // Any client certificate will do (the handshake requires one, #23);
    // probes without one use the plain health port.
    let device = f.pki.device("Pk1", "probe").expect("cert");
    let mut health = HealthClient::new(f.channel(Some(&device)).await);
    for service in ["", "enos.signer.v1.Credentials", "enos.signer.v1.Admin"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(f.channel(Some(&device)).await);
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("stream")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "enos.signer.v1.Credentials",
        "enos.signer.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
}

/// GET /metrics over mTLS with `identity`.
async fn scrape(
    f: &common::Fixture,
    identity: Option<&enos_testkit::Identity>,
) -> std::io::Result<String> {
    common::metrics_get(f, identity, "/metrics")
        .await
        .map(|body| String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn metrics_count_issuances_without_device_labels() {
    let f = fixture().await;
    f.signer
        .put_device("PkMetrics", "device-with-a-name", "s3cret")
        .await
        .expect("put");
    let mut device = f.device("PkMetrics", "device-with-a-name").await;
    device
        .issue_mqtt_credential(enos_signer_proto::v1::IssueMqttCredentialRequest::default())
        .await
        .expect("issued");
    let _ = f
        .device("PkMetrics", "unknown")
        .await
        .issue_mqtt_credential(enos_signer_proto::v1::IssueMqttCredentialRequest::default())
        .await;
    let scraper = f.pki.device("Pk0", "prometheus").expect("cert");
    let text = scrape(&f, Some(&scraper)).await.expect("scrape");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(r#"enos_signer_issuances_total{rpc="issue_mqtt_credential",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"outcome="not_found"} 1"#), "{text}");
    assert!(
        text.contains("enos_signer_issue_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(r#"enos_signer_admin_calls_total{rpc="put_device",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains("device-with-a-name") && !text.contains("PkMetrics"),
        "{text}"
    );
    // The audit trail's losses (#23 finding 7), read from the sink on
    // each scrape: none here.
    for line in [
        r#"enos_signer_audit_records_lost_total{reason="dropped"} 0"#,
        r#"enos_signer_audit_records_lost_total{reason="failed"} 0"#,
        "enos_signer_audit_records_waiting 0",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    // No client certificate: no metrics.
    let refused = scrape(&f, None).await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |t| !t.contains("enos_signer")),
        "metrics served without a client certificate"
    );
}

#[tokio::test]
async fn a_loose_master_key_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = enos_testkit::Pki::new("t").expect("pki");
    let mut signer = enos_testkit::signer::TestSigner::start(dir.path(), &pki)
        .await
        .expect("start");
    signer.stop().await;
    let key = dir.path().join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = signer
        .restart()
        .await
        .expect_err("a 0644 master key is refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    let err = enos_testkit::signer::TestSigner::start(dir.path(), &pki)
        .await
        .err()
        .expect("refused at start too");
    assert!(err.to_string().contains("master.key"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    signer.restart().await.expect("0600 is accepted");
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_drains_open_calls() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut f = fixture().await;
    let device = f.pki.device("Pk1", "probe").expect("cert");
    let mut health = HealthClient::new(f.channel(Some(&device)).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "enos.signer.v1.Credentials".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let observer = async move {
        // The open call keeps being served during the drain and sees the
        // change; dropping it lets the drain finish.
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
            .await
            .expect("a status change during the drain")
            .expect("stream")
            .expect("status");
        next.status
    };
    let (status, ()) = tokio::join!(observer, f.signer.stop());
    assert_eq!(status, ServingStatus::NotServing as i32);
    assert!(
        tokio::net::TcpStream::connect(f.signer.addr())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_admin_change_whose_call_is_cancelled_is_still_audited() {
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    let rows: Vec<ImportRow> = (0..3000)
        .map(|i| {
            row(
                i + 2,
                "PkBig",
                &format!("dev-{i}"),
                &format!("secret-{i}"),
                None,
            )
        })
        .collect();
    // The client gives up as soon as the signer has started the change
    // (its intent record is written): the change goes on in the signer,
    // and its outcome is audited (before, dropping the call also dropped
    // the audit record, whether or not the rows were committed). Waiting
    // for the intent, not a fixed few milliseconds, keeps a loaded machine
    // from cancelling before the request even arrived.
    let call = tokio::spawn(async move {
        admin
            .import_devices(futures::stream::iter([ImportDevicesRequest {
                rows,
                dry_run: false,
                ..Default::default()
            }]))
            .await
    });
    let started_by = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f
        .audited("import_devices")
        .iter()
        .any(|r| r["outcome"] == "started")
    {
        assert!(
            std::time::Instant::now() < started_by,
            "the import never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    call.abort();
    let _ = call.await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let outcome = loop {
        let records = f.audited("import_devices");
        if let Some(done) = records.iter().find(|r| r["outcome"] != "started") {
            assert!(
                records.iter().any(|r| r["outcome"] == "started"),
                "the intent is recorded before the change: {records:?}"
            );
            break done.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no outcome audited: {records:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(outcome["identity"], "admin test-admin");
    // What was committed is what the trail says.
    let listed = f.signer.list_devices().await.expect("list");
    // All or nothing; and a refusal committed nothing. (An "ok" with no
    // rows is an import whose stream ended before the rows were sent.)
    assert!(
        listed.is_empty() || outcome["outcome"] == "ok",
        "refusal audited, rows committed"
    );
    let page = f
        .signer
        .admin()
        .await
        .list_devices(ListDevicesRequest {
            page_size: 1000,
            ..ListDevicesRequest::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(
        page.devices.is_empty() || !page.next_page_token.is_empty(),
        "half an import: {} rows",
        page.devices.len()
    );
}

#[tokio::test]
async fn admin_changes_fail_closed_when_their_record_cannot_be_written() {
    // Every write to /dev/full fails (ENOSPC): a full disk.
    let f = fixture_with(|config| {
        config.audit.sink = enos_signer_svc::config::AuditSinkConfig::File {
            path: "/dev/full".into(),
        };
        config.audit.fail_closed = true;
    })
    .await;
    let mut admin = f.signer.admin().await;
    let refused = admin
        .put_device(enos_signer_proto::v1::PutDeviceRequest {
            device: dref("Pk1", "dev-1"),
            device_secret: "s3cret".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect_err("no audit record, no change");
    assert_eq!(refused.code(), Code::Unavailable);
    let listed = f
        .signer
        .list_devices()
        .await
        .expect("reads need no audit record");
    assert!(listed.is_empty(), "the change happened unaudited");
}

#[tokio::test]
async fn import_refuses_two_devices_with_one_secret() {
    // #13 finding 12: one secret under two devices makes signed content
    // ambiguous (the field names are concatenated without separators).
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    let response = admin
        .import_devices(futures::stream::iter([
            ImportDevicesRequest {
                rows: vec![
                    row(2, "Pk1", "a", "SharedSecret1", None),
                    row(3, "Pk1", "b", "OwnSecret2", None),
                ],
                dry_run: false,
                ..Default::default()
            },
            // The second message repeats the first row's secret.
            ImportDevicesRequest {
                rows: vec![row(4, "Pk2", "c", "SharedSecret1", None)],
                dry_run: false,
                ..Default::default()
            },
        ]))
        .await
        .expect("import answers")
        .into_inner();
    assert!(!response.committed);
    assert_eq!(response.errors.len(), 1, "{:?}", response.errors);
    assert_eq!(response.errors[0].line, 4);
    assert!(
        response.errors[0].message.contains("same as on line 2"),
        "{:?}",
        response.errors
    );
    assert!(!response.errors[0].message.contains("SharedSecret1"));
    let listed = f.signer.list_devices().await.expect("list");
    assert!(listed.is_empty(), "all or nothing");
}
