//! #23 finding 15: what an import changes. A stale file must not undo a
//! rotation, an identical file changes nothing, the `enabled` column is
//! honoured, and the response and the audit trail count what changed.
//! Against a real signer over mTLS.

mod common;

use common::{Fixture, fixture, verify};
use enos_signer_proto::v1::{
    DeviceRef, ImportDevicesRequest, ImportDevicesResponse, ImportRow, IssueMqttCredentialRequest,
    admin_client::AdminClient,
};

fn row(line: u32, dk: &str, secret: &str) -> ImportRow {
    ImportRow {
        line,
        product_key: "MeterPk".into(),
        device_key: dk.into(),
        device_secret: secret.into(),
        ..Default::default()
    }
}

async fn import(
    admin: &mut AdminClient<tonic::transport::Channel>,
    rows: Vec<ImportRow>,
    dry_run: bool,
    replace_secrets: bool,
) -> ImportDevicesResponse {
    admin
        .import_devices(futures::stream::iter([ImportDevicesRequest {
            rows,
            dry_run,
            replace_secrets,
        }]))
        .await
        .expect("import answers")
        .into_inner()
}

async fn device(
    admin: &mut AdminClient<tonic::transport::Channel>,
    dk: &str,
) -> enos_signer_proto::v1::Device {
    admin
        .get_device(DeviceRef {
            product_key: "MeterPk".into(),
            device_key: dk.into(),
        })
        .await
        .expect("get")
        .into_inner()
}

/// Whether the device's credential is signed with `secret` (what EnOS
/// checks).
async fn signs_with(f: &Fixture, dk: &str, secret: &str) -> bool {
    let credential = f
        .device("MeterPk", dk)
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued")
        .into_inner();
    verify(&credential, secret)
}

/// `(new, unchanged, secrets, bindings, enabled)` of a response.
fn counts(r: &ImportDevicesResponse) -> (u32, u32, u32, u32, u32) {
    (
        r.new_devices,
        r.unchanged_devices,
        r.changed_secrets,
        r.changed_bindings,
        r.changed_enabled,
    )
}

/// #23 finding 15: a re-import of an old export does not undo a rotation.
#[tokio::test]
async fn a_stale_import_does_not_undo_a_rotation() {
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    // The console export, as the operator saved it.
    let export = || {
        vec![
            row(2, "meter-001", "OldSecret001"),
            row(3, "meter-002", "Secret002"),
        ]
    };
    let first = import(&mut admin, export(), false, false).await;
    assert!(first.committed && first.errors.is_empty(), "{first:?}");
    assert_eq!(counts(&first), (2, 0, 0, 0, 0));

    // The revocation.
    f.signer
        .rotate_secret("MeterPk", "meter-001", "NewSecret001")
        .await
        .expect("rotate");
    assert_eq!(device(&mut admin, "meter-001").await.secret_version, 2);

    // The stale file again: refused, naming the line, never a secret.
    let stale = import(&mut admin, export(), false, false).await;
    assert!(!stale.committed, "{stale:?}");
    assert_eq!(stale.imported, 0);
    assert_eq!(stale.errors.len(), 1, "{:?}", stale.errors);
    let error = &stale.errors[0];
    assert_eq!(error.line, 2);
    assert!(
        error.message.contains("MeterPk/meter-001") && error.message.contains("--replace-secrets"),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains("OldSecret001") && !error.message.contains("NewSecret001"),
        "{}",
        error.message
    );
    assert_eq!(device(&mut admin, "meter-001").await.secret_version, 2);
    assert!(signs_with(&f, "meter-001", "NewSecret001").await);

    // A dry run says what the flag would do, and writes nothing.
    let dry = import(&mut admin, export(), true, true).await;
    assert!(dry.errors.is_empty() && !dry.committed, "{dry:?}");
    assert_eq!(counts(&dry), (0, 1, 1, 0, 0));
    assert_eq!(device(&mut admin, "meter-001").await.secret_version, 2);

    // The operator means it: the file's secret becomes a new version.
    let replaced = import(&mut admin, export(), false, true).await;
    assert!(
        replaced.committed && replaced.errors.is_empty(),
        "{replaced:?}"
    );
    assert_eq!(replaced.imported, 1);
    assert_eq!(counts(&replaced), (0, 1, 1, 0, 0));
    assert_eq!(device(&mut admin, "meter-001").await.secret_version, 3);
    assert_eq!(device(&mut admin, "meter-002").await.secret_version, 1);
    assert!(signs_with(&f, "meter-001", "OldSecret001").await);

    // The trail holds what each committed import changed.
    let summaries = f.audited("import_summary");
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    assert_eq!(summaries[0]["import"]["new_devices"], 2);
    assert_eq!(summaries[1]["import"]["changed_secrets"], 1);
    assert_eq!(summaries[1]["import"]["unchanged_devices"], 1);
    let trail = std::fs::read_to_string(f.signer.config().audit_file().expect("file sink"))
        .expect("audit trail");
    assert!(!trail.contains("OldSecret001") && !trail.contains("NewSecret001"));
}

/// #23 finding 15: identical secrets leave records and versions as they are.
#[tokio::test]
async fn an_identical_import_changes_nothing() {
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    let export = || {
        vec![
            row(2, "meter-001", "Secret001"),
            row(3, "meter-002", "Secret002"),
        ]
    };
    import(&mut admin, export(), false, false).await;
    let before = device(&mut admin, "meter-001").await;
    let again = import(&mut admin, export(), false, false).await;
    assert!(again.committed && again.errors.is_empty(), "{again:?}");
    assert_eq!(again.imported, 0, "nothing is written");
    assert_eq!(counts(&again), (0, 2, 0, 0, 0));
    let after = device(&mut admin, "meter-001").await;
    assert_eq!(after.secret_version, 1);
    assert_eq!(after.updated_at_ms, before.updated_at_ms);
    assert_eq!(device(&mut admin, "meter-002").await.secret_version, 1);
    assert!(signs_with(&f, "meter-001", "Secret001").await);
}

/// #23 finding 15: `enabled` is honoured with the sandbox's rule; changes are counted.
#[tokio::test]
async fn the_enabled_column_is_honoured_and_bindings_are_counted() {
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    let with = |mut r: ImportRow, enabled: Option<bool>| {
        r.enabled = enabled;
        r
    };
    let first = import(
        &mut admin,
        vec![
            with(row(2, "gw", "SecretGw"), None),
            with(row(3, "off", "SecretOff"), Some(false)),
            with(row(4, "sub", "SecretSub"), Some(true)),
        ],
        false,
        false,
    )
    .await;
    assert!(first.committed, "{first:?}");
    assert!(device(&mut admin, "gw").await.enabled);
    assert!(
        !device(&mut admin, "off").await.enabled,
        "enabled=false came in enabled"
    );
    assert!(device(&mut admin, "sub").await.enabled);

    // No enabled column: flags stay. A flag the file states changes; a
    // gateway given to an unbound device binds it.
    let mut sub = with(row(4, "sub", "SecretSub"), None);
    sub.gateway = Some(DeviceRef {
        product_key: "MeterPk".into(),
        device_key: "gw".into(),
    });
    let rows = vec![
        with(row(2, "gw", "SecretGw"), Some(false)),
        with(row(3, "off", "SecretOff"), None),
        sub,
    ];
    let dry = import(&mut admin, rows.clone(), true, false).await;
    assert_eq!(counts(&dry), (0, 1, 0, 1, 1));
    assert!(device(&mut admin, "gw").await.enabled, "a dry run writes");
    let done = import(&mut admin, rows, false, false).await;
    assert!(done.committed, "{done:?}");
    assert_eq!(counts(&done), (0, 1, 0, 1, 1));
    assert_eq!(done.imported, 2);
    let gw = device(&mut admin, "gw").await;
    assert!(!gw.enabled);
    assert_eq!(gw.secret_version, 1, "a flag is not a rotation");
    assert!(!device(&mut admin, "off").await.enabled);
    let sub = device(&mut admin, "sub").await;
    assert_eq!(sub.gateway.map(|g| g.device_key).as_deref(), Some("gw"));
    assert_eq!(sub.secret_version, 1);
}

/// #23 finding 15: a file does not undo `await-activation` unless asked to.
#[tokio::test]
async fn a_device_awaiting_activation_gets_a_secret_from_a_file_only_when_asked() {
    let f = fixture().await;
    let mut admin = f.signer.admin().await;
    let mut awaiting = row(2, "meter-001", "");
    awaiting.awaiting_activation = true;
    assert!(
        import(&mut admin, vec![awaiting.clone()], false, false)
            .await
            .committed
    );
    // The same row again changes nothing.
    let again = import(&mut admin, vec![awaiting], false, false).await;
    assert_eq!(counts(&again), (0, 1, 0, 0, 0));
    assert_eq!(again.imported, 0);
    // A secret for it: as a replaced secret (`await-activation` is how a
    // device is made to activate again, a file must not undo it).
    let refused = import(
        &mut admin,
        vec![row(2, "meter-001", "Secret1")],
        false,
        false,
    )
    .await;
    assert_eq!(refused.errors.len(), 1, "{refused:?}");
    assert!(
        refused.errors[0].message.contains("awaits activation"),
        "{:?}",
        refused.errors
    );
    assert!(device(&mut admin, "meter-001").await.awaiting_activation);
    let given = import(
        &mut admin,
        vec![row(2, "meter-001", "Secret1")],
        false,
        true,
    )
    .await;
    assert_eq!(counts(&given), (0, 0, 1, 0, 0));
    assert!(!device(&mut admin, "meter-001").await.awaiting_activation);
}

/// #23 finding 15: the secret comparison works with HSM custody, opening nothing.
#[test]
fn with_hsm_custody_an_import_compares_secrets_without_opening_them() {
    // The comparison signs a challenge in custody: an HSM, which never
    // opens a sealed secret, answers it too.
    use enos_custody_pkcs11::{generate_kek, softhsm::isolated};
    isolated(
        "with_hsm_custody_an_import_compares_secrets_without_opening_them",
        "import",
        "",
        |hsm| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                generate_kek(&hsm.config()).expect("create the token's keys");
                let config = hsm.config();
                let f = common::fixture_with(move |c| {
                    c.custody = enos_signer_svc::config::CustodyConfig::Pkcs11(config);
                })
                .await;
                let mut admin = f.signer.admin().await;
                let export = || vec![row(2, "meter-001", "OldSecret001")];
                assert!(import(&mut admin, export(), false, false).await.committed);
                let same = import(&mut admin, export(), false, false).await;
                assert_eq!(counts(&same), (0, 1, 0, 0, 0), "{same:?}");
                f.signer
                    .rotate_secret("MeterPk", "meter-001", "NewSecret001")
                    .await
                    .expect("rotate");
                let stale = import(&mut admin, export(), false, false).await;
                assert_eq!(stale.errors.len(), 1, "{stale:?}");
                assert_eq!(device(&mut admin, "meter-001").await.secret_version, 2);
                assert!(signs_with(&f, "meter-001", "NewSecret001").await);
            });
        },
    );
}
