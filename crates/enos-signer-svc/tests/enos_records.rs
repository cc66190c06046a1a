//! Issue 26, "records and audit": the registry records which EnOS
//! certificate serials each gateway holds, with real parts only — the
//! signer over mTLS (TestSigner), the real sandbox binary playing EnOS's
//! certificate API, the real `enos-signer` binary for `enos-cert`, and a
//! real PostgreSQL (enos-postgres-fixture) beside redb.
//!
//! Apply records the serial; renew supersedes the old one and makes the
//! new one current; a renewal naming a serial not recorded as the
//! caller's own valid certificate is refused before EnOS is called (the
//! sandbox's log of answered calls shows it never was); `enos-cert
//! revoke` and the device's deletion mark revocations.

mod common;

use std::{path::Path, time::Duration};

use enos_postgres_fixture::PgCluster;
use enos_registry::{DeviceId, EnosCertificateRecord, RegistryConfig, postgres::PostgresConfig};
use enos_sign_core::{DeviceKey, ProductKey};
use enos_signer_proto::v1::{
    ApplyEnosCertificateRequest, DeviceRef, PutDeviceRequest, RenewEnosCertificateRequest,
    admin_client::AdminClient, enos_certificates_client::EnosCertificatesClient,
};
use enos_signer_svc::{config::EnosEnvironmentConfig, enos_api::seal_credential};
use enos_testkit::{
    Pki,
    sandbox::{Sandbox, SandboxBinary},
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

const ORG: &str = "o15724268424841";
const APP_KEY: &str = "app-key-records-test";
const APP_SECRET: &str = "app-secret-7c1e0d93-never-logged";
const DEVICES: &str =
    "productKey,deviceKey,deviceSecret\ngwpk,gw1,secret-gw1-a83f1\ngwpk,gw2,secret-gw2-02bd7\n";

/// The sandbox with `[enos_api]` over HTTPS, and the CA its gateway
/// certificate chains to.
struct Enos {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    ca: std::path::PathBuf,
}

fn start_enos() -> Enos {
    start_enos_with("")
}

/// [`start_enos`] with `extra` appended to the sandbox's `[enos_api]`.
fn start_enos_with(extra: &str) -> Enos {
    let dir = tempfile::tempdir().expect("dir");
    let devices = dir.path().join("devices.csv");
    std::fs::write(&devices, DEVICES).expect("devices");
    let pki = Pki::new("EnOS API gateway records CA").expect("pki");
    let ca = pki.write_ca(dir.path()).expect("ca");
    let server = pki
        .server(&[])
        .expect("server")
        .write(dir.path(), "apigw")
        .expect("files");
    enos_testkit::pki::write_private(&dir.path().join("enos-app.secret"), APP_SECRET.as_bytes())
        .expect("secret");
    let config = dir.path().join("sandbox.toml");
    std::fs::write(
        &config,
        format!(
            "[enos_api]\nlisten = \"127.0.0.1:0\"\norg_id = \"{ORG}\"\napp_key = \"{APP_KEY}\"\n\
             app_secret_file = \"enos-app.secret\"\nstate_dir = \"enos-ca\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            server.cert.display(),
            server.key.display()
        ),
    )
    .expect("config");
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox binary"), &devices)
        .config(&config)
        .enos_api()
        .start()
        .expect("sandbox starts");
    Enos { dir, sandbox, ca }
}

impl Enos {
    /// How many calls of `action` the sandbox answered so far.
    fn answered(&self, action: &str) -> usize {
        self.sandbox
            .logs()
            .lines()
            .filter(|l| {
                l.contains("EnOS API: answered") && l.contains(&format!("action=\"{action}\""))
            })
            .count()
    }

    /// Waits until the sandbox has logged `lists` answered lists: every
    /// call before the last of them is in the log too (one stderr, in
    /// order).
    async fn logged_through(&self, lists: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.answered("list") < lists {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{lists} lists not logged: {}",
                self.sandbox.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn csr(cn: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in [
        (DnType::CountryName, "CN"),
        (DnType::StateOrProvinceName, "Shanghai"),
        (DnType::LocalityName, "Shanghai"),
        (DnType::OrganizationName, "EnOS"),
        (DnType::OrganizationalUnitName, "gateways"),
        (DnType::CommonName, cn),
    ] {
        params.distinguished_name.push(ty, value);
    }
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn id(pk: &str, dk: &str) -> DeviceId {
    DeviceId::new(
        ProductKey::new(pk).expect("pk"),
        DeviceKey::new(dk).expect("dk"),
    )
}

/// Runs the signer's `enos-cert` with its config; never shows the secret.
fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enos-signer"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("enos-signer runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(APP_SECRET), "{text}");
    (out.status.success(), text)
}

/// The record of `sn` among `records`.
fn of<'a>(records: &'a [EnosCertificateRecord], sn: &str) -> &'a EnosCertificateRecord {
    records
        .iter()
        .find(|r| r.cert_sn == sn)
        .unwrap_or_else(|| panic!("{sn} recorded: {records:?}"))
}

/// The whole flow on one registry backend (`pg`: PostgreSQL, read by a
/// second registry as another replica would; else redb, read once the
/// signer stopped: redb has one process at a time).
async fn records_follow_apply_renew_revoke_and_deletion(pg: Option<&PgCluster>) {
    let enos = start_enos();
    let addr = enos.sandbox.enos_api_addr().expect("api");
    let env = EnosEnvironmentConfig {
        gateway_url: format!("https://{addr}"),
        org_id: ORG.into(),
        credential_file: enos.dir.path().join("signer-enos-api.sealed"),
        ca_file: Some(enos.ca.clone()),
        products: vec!["*".into()],
    };
    let registry_config = pg.map(|cluster| {
        cluster.create_database("records").expect("createdb");
        RegistryConfig::Postgres(PostgresConfig {
            url: cluster.url("records"),
            password_file: Some(cluster.password_file()),
            pool_size: 4,
            ca_file: None,
            cache: true,
            allow_plaintext_password: false,
        })
    });
    let configured = env.clone();
    let registry_for_signer = registry_config.clone();
    let mut f = common::fixture_with(move |c| {
        if let Some(registry) = registry_for_signer {
            c.registry = registry;
        }
        c.enos_api = Some(common::enos_api_config(configured));
    })
    .await;
    let custody = enos_signer_svc::custody::build(&f.signer.config().custody)
        .expect("custody")
        .into_custody();
    seal_credential(
        custody.as_ref(),
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    // A second replica's view (PostgreSQL): reads what the signer wrote.
    let replica = registry_config
        .as_ref()
        .map(|c| enos_registry::open(c).expect("second replica"));
    let admin = f.pki.admin("ops").expect("admin cert");
    let mut admin = AdminClient::new(f.channel(Some(&admin)).await);
    admin
        .put_device(PutDeviceRequest {
            device: Some(DeviceRef {
                product_key: "gwpk".into(),
                device_key: "gw1".into(),
            }),
            device_secret: "secret-gw1-a83f1".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect("put");
    let gw1 = f.pki.device("gwpk", "gw1").expect("device cert");
    let mut client = EnosCertificatesClient::new(f.channel(Some(&gw1)).await);
    let dev = id("gwpk", "gw1");
    let mut lists = 0;

    // Apply: recorded, current.
    let a = client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
        })
        .await
        .expect("applied")
        .into_inner();
    if let Some(replica) = &replica {
        let current = replica
            .current_enos_certificate(&dev, enos_domain::now_ms())
            .await
            .expect("current")
            .expect("recorded");
        assert_eq!(current.cert_sn, a.cert_sn);
        assert_eq!(current.issue_authority, "ECC");
        assert!(current.not_after_ms > current.not_before_ms + 29 * 86_400_000);
    }

    // A serial never recorded for the caller: refused, EnOS not called.
    let unknown = client
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
            current_cert_sn: "999999".into(),
        })
        .await
        .expect_err("not recorded");
    assert_eq!(unknown.code(), tonic::Code::PermissionDenied, "{unknown:?}");
    assert!(
        unknown.message().contains("not recorded as gwpk/gw1's"),
        "{unknown:?}"
    );
    // Another gateway naming gw1's serial: refused the same way.
    let gw2 = f.pki.device("gwpk", "gw2").expect("device cert");
    let mut other = EnosCertificatesClient::new(f.channel(Some(&gw2)).await);
    let theft = other
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr("gwpk.gw2"),
            current_cert_sn: a.cert_sn.clone(),
        })
        .await
        .expect_err("not gw2's");
    assert_eq!(theft.code(), tonic::Code::PermissionDenied, "{theft:?}");

    // Renew: the old one superseded, the new one current.
    let b = client
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
            current_cert_sn: a.cert_sn.clone(),
        })
        .await
        .expect("renewed")
        .into_inner();
    if let Some(replica) = &replica {
        let records = replica.enos_certificates_of(&dev).await.expect("records");
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(
            of(&records, &a.cert_sn).superseded_by,
            Some(b.cert_sn.clone())
        );
        assert_eq!(
            replica
                .current_enos_certificate(&dev, enos_domain::now_ms())
                .await
                .expect("current")
                .map(|c| c.cert_sn),
            Some(b.cert_sn.clone())
        );
    }

    // The listing shows the registry's view beside EnOS's (PostgreSQL:
    // the CLI reads it; redb: the serving signer holds the file).
    let (ok, listed) = cli(
        f.signer.config_path(),
        &["enos-cert", "list", "gwpk", "gw1"],
    );
    lists += 1;
    assert!(ok, "{listed}");
    if pg.is_some() {
        assert!(
            listed.lines().any(
                |l| l.contains(&format!("certSN={} status=valid", a.cert_sn))
                    && l.ends_with(&format!("registry=superseded (by {})", b.cert_sn))
            ),
            "{listed}"
        );
        assert!(
            listed.contains(&format!("holds certSN={}", b.cert_sn)),
            "{listed}"
        );
    } else {
        assert!(listed.contains("cannot be read from here"), "{listed}");
        assert!(
            listed.contains(&format!("certSN={} status=valid", a.cert_sn)),
            "{listed}"
        );
    }

    // The gateway retires the superseded one by the operator's CLI here
    // (the agent's own call is another part): recorded revoked.
    let (ok, revoked) = cli(
        f.signer.config_path(),
        &[
            "enos-cert",
            "revoke",
            "gwpk",
            "gw1",
            "--cert-sn",
            &a.cert_sn,
            "--reason",
            "superseded",
        ],
    );
    assert!(ok, "{revoked}");
    if let Some(replica) = &replica {
        let records = replica.enos_certificates_of(&dev).await.expect("records");
        let old = of(&records, &a.cert_sn);
        assert_eq!(
            old.revoked.as_ref().map(|r| r.reason.as_str()),
            Some("superseded"),
            "{records:?}"
        );
        assert_eq!(old.status_at(enos_domain::now_ms()), "revoked");
        // Renewing a revoked one: refused before EnOS.
        let stale = client
            .renew_enos_certificate(RenewEnosCertificateRequest {
                csr_pem: csr("gwpk.gw1"),
                current_cert_sn: a.cert_sn.clone(),
            })
            .await
            .expect_err("revoked");
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
        assert!(stale.message().contains("is revoked"), "{stale:?}");
    }

    // Deleting the device revokes at EnOS and marks the registry.
    admin
        .delete_device(DeviceRef {
            product_key: "gwpk".into(),
            device_key: "gw1".into(),
        })
        .await
        .expect("deleted");
    lists += 1;

    // EnOS was asked to renew exactly once (the refusals never reached it).
    enos.logged_through(lists).await;
    assert_eq!(enos.answered("renew"), 1, "{}", enos.sandbox.logs());
    assert_eq!(enos.answered("apply"), 1);

    // The records, read after the serving signer let the file go (redb)
    // or by the other replica (PostgreSQL).
    f.signer.stop().await;
    let registry = match replica {
        Some(replica) => replica,
        None => enos_registry::open(&f.signer.config().registry).expect("open the redb file"),
    };
    let records = registry.enos_certificates_of(&dev).await.expect("records");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].cert_sn, b.cert_sn, "newest first");
    let new = of(&records, &b.cert_sn);
    assert_eq!(
        new.revoked.as_ref().map(|r| r.reason.as_str()),
        Some("cessation-of-operation"),
        "{records:?}"
    );
    let old = of(&records, &a.cert_sn);
    assert_eq!(old.superseded_by, Some(b.cert_sn.clone()));
    // PostgreSQL: marked by the CLI. redb: the CLI could not reach the
    // file while the signer served it; the deletion's listing showed EnOS
    // had revoked it, and the signer recorded that (superseded).
    assert_eq!(
        old.revoked.as_ref().map(|r| r.reason.as_str()),
        Some("superseded"),
        "{records:?}"
    );
    assert_eq!(
        registry
            .current_enos_certificate(&dev, enos_domain::now_ms())
            .await
            .expect("current"),
        None
    );
    // Audited: the intents before EnOS was called, serials, no secret.
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).expect("audit");
    assert!(audit.contains("apply_enos_certificate_intent"), "{audit}");
    assert!(audit.contains("renew_enos_certificate_intent"), "{audit}");
    assert!(!audit.contains(APP_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enos_records_on_redb_follow_apply_renew_revoke_and_deletion() {
    records_follow_apply_renew_revoke_and_deletion(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enos_records_on_postgres_follow_apply_renew_revoke_and_deletion() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    records_follow_apply_renew_revoke_and_deletion(Some(&cluster)).await;
}

/// A certificate EnOS issued that the registry cannot record (here a
/// trigger refuses every insert): the signer revokes it at EnOS again,
/// audits that, and the gateway gets an error, not an unrecorded
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enos_certificate_the_registry_cannot_record_is_revoked_again() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("unrecorded").expect("createdb");
    let registry = RegistryConfig::Postgres(PostgresConfig {
        url: cluster.url("unrecorded"),
        password_file: Some(cluster.password_file()),
        pool_size: 4,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    });
    let enos = start_enos();
    let addr = enos.sandbox.enos_api_addr().expect("api");
    let env = EnosEnvironmentConfig {
        gateway_url: format!("https://{addr}"),
        org_id: ORG.into(),
        credential_file: enos.dir.path().join("signer-enos-api.sealed"),
        ca_file: Some(enos.ca.clone()),
        products: vec!["*".into()],
    };
    let configured = env.clone();
    let f = common::fixture_with(move |c| {
        c.registry = registry;
        c.enos_api = Some(common::enos_api_config(configured));
    })
    .await;
    let custody = enos_signer_svc::custody::build(&f.signer.config().custody)
        .expect("custody")
        .into_custody();
    seal_credential(
        custody.as_ref(),
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    cluster
        .psql(
            "unrecorded",
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON enos_certificates \
             FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .expect("trigger");
    let gw1 = f.pki.device("gwpk", "gw1").expect("device cert");
    let mut client = EnosCertificatesClient::new(f.channel(Some(&gw1)).await);
    let failed = client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
        })
        .await
        .expect_err("not recorded: no certificate handed out");
    // A store's refusal is INTERNAL (its text stays in the log); a
    // database out of reach would be UNAVAILABLE.
    assert_eq!(failed.code(), tonic::Code::Internal, "{failed:?}");
    let listed = {
        let direct = enos_signer_svc::enos_api::EnosApiClient::new(
            &env,
            enos_signer_svc::enos_api::open_credential(
                custody.clone(),
                "test",
                &env.credential_file,
            )
            .expect("opened"),
            std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            Duration::from_secs(5),
        )
        .expect("client");
        direct.list("gwpk", "gw1").await.expect("list")
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].status, 1, "revoked again at EnOS: {listed:?}");
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).expect("audit");
    let line = audit
        .lines()
        .find(|l| l.contains("revoke_enos_certificate"))
        .unwrap_or_else(|| panic!("the revocation is audited: {audit}"));
    assert!(
        line.contains(&listed[0].cert_sn) && line.contains("not recorded in the registry"),
        "{line}"
    );
    // Without the fault, the retry applies (no duplicate subject left).
    cluster
        .psql("unrecorded", "DROP TRIGGER refuse ON enos_certificates")
        .expect("drop trigger");
    client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
        })
        .await
        .expect("the retry applies");
}

/// An EnOS that revokes the old certificate on renew (the sandbox's
/// `renew_revokes_old`; the reference leaves it open): the renewal
/// records the old one superseded, and the next listing through the
/// signer (here the device's deletion) records it revoked `superseded`,
/// audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_certificate_enos_revoked_on_renew_is_recorded_revoked_superseded() {
    let enos = start_enos_with("renew_revokes_old = true\n");
    let addr = enos.sandbox.enos_api_addr().expect("api");
    let env = EnosEnvironmentConfig {
        gateway_url: format!("https://{addr}"),
        org_id: ORG.into(),
        credential_file: enos.dir.path().join("signer-enos-api.sealed"),
        ca_file: Some(enos.ca.clone()),
        products: vec!["*".into()],
    };
    let configured = env.clone();
    let mut f = common::fixture_with(move |c| {
        c.enos_api = Some(common::enos_api_config(configured));
    })
    .await;
    let custody = enos_signer_svc::custody::build(&f.signer.config().custody)
        .expect("custody")
        .into_custody();
    seal_credential(
        custody.as_ref(),
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    let device = DeviceRef {
        product_key: "gwpk".into(),
        device_key: "gw1".into(),
    };
    let admin = f.pki.admin("ops").expect("admin cert");
    let mut admin = AdminClient::new(f.channel(Some(&admin)).await);
    admin
        .put_device(PutDeviceRequest {
            device: Some(device.clone()),
            device_secret: "secret-gw1-a83f1".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect("put");
    let gw1 = f.pki.device("gwpk", "gw1").expect("device cert");
    let mut client = EnosCertificatesClient::new(f.channel(Some(&gw1)).await);
    let a = client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
        })
        .await
        .expect("applied")
        .into_inner();
    let b = client
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
            current_cert_sn: a.cert_sn.clone(),
        })
        .await
        .expect("renewed")
        .into_inner();
    admin.delete_device(device).await.expect("deleted");
    f.signer.stop().await;
    let registry = enos_registry::open(&f.signer.config().registry).expect("open");
    let records = registry
        .enos_certificates_of(&id("gwpk", "gw1"))
        .await
        .expect("records");
    let reasons: Vec<(String, Option<String>)> = records
        .iter()
        .map(|r| {
            (
                r.cert_sn.clone(),
                r.revoked.as_ref().map(|x| x.reason.clone()),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (b.cert_sn.clone(), Some("cessation-of-operation".to_owned())),
            (a.cert_sn.clone(), Some("superseded".to_owned())),
        ]
    );
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit.lines().any(|l| l.contains("revoke_enos_certificate")
            && l.contains(&a.cert_sn)
            && l.contains("EnOS lists it revoked")),
        "{audit}"
    );
}
