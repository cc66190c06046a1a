//! `enos-signer registry copy`: redb → PostgreSQL → redb with the real
//! binary; secrets stay sealed (the copy serves the same credentials),
//! idempotent, resumable, and refused across custodies.

mod common;

use std::{path::Path, process::Command, sync::Arc};

use enos_postgres_fixture::PgCluster;
use enos_registry::{self as registry, DeviceRecord, Registry, postgres::PostgresConfig};
use enos_signer_proto::v1::IssueMqttCredentialRequest;
use enos_signer_svc::{
    SignerConfig,
    config::{CustodyConfig, RegistryConfig},
};
use enos_testkit::signer::TestSigner;

const BIN: &str = env!("CARGO_BIN_EXE_enos-signer");

fn copy(from: &Path, to: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["registry", "copy", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .expect("run registry copy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(config: &SignerConfig, path: &Path) {
    std::fs::write(path, config.to_toml().expect("toml")).expect("write config");
}

async fn all(registry: &Arc<dyn Registry>) -> Vec<DeviceRecord> {
    registry.list(None, None, 10_000).await.expect("list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_moves_every_sealed_record_both_ways_idempotently() {
    let f = common::fixture().await;
    for (dk, secret) in [
        ("dev-1", "SecretOne1"),
        ("dev-2", "SecretTwo2"),
        ("gw", "SecretGw1"),
    ] {
        f.signer.put_device("Pk1", dk, secret).await.expect("put");
    }
    f.signer
        .bind_sub_device(("Pk1", "gw"), ("Pk1", "dev-2"))
        .await
        .expect("bind");
    f.signer
        .set_enabled("Pk1", "dev-1", false)
        .await
        .expect("disable");
    let mut signer = f.signer;
    signer.stop().await;
    let old_config = signer.config().clone();
    let old_path = signer.config_path().to_owned();
    let dir = f.dir.path();

    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("copy").expect("createdb");
    let mut new_config = old_config.clone();
    new_config.registry = RegistryConfig::Postgres(PostgresConfig {
        url: cluster.url("copy"),
        password_file: Some(cluster.password_file()),
        pool_size: 2,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    });
    let new_path = dir.join("signer-postgres.toml");
    write_config(&new_config, &new_path);

    let (ok, stdout, stderr) = copy(&old_path, &new_path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("read 3, created 3, updated 0, unchanged 0"),
        "{stdout}"
    );
    let source = registry::open(&old_config.registry).expect("open redb");
    let copied = registry::open(&new_config.registry).expect("open postgres");
    assert_eq!(
        all(&copied).await,
        all(&source).await,
        "every field, sealed bytes as they were"
    );
    // redb has one user at a time: the copies below open it again.
    drop(source);
    drop(copied);

    // Again: nothing to do.
    let (ok, stdout, stderr) = copy(&old_path, &new_path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("created 0, updated 0, unchanged 3"),
        "{stdout}"
    );

    // The copy serves: same custody, the secrets open as before.
    let served_dir = dir.join("served");
    let registry_config = new_config.registry.clone();
    let custody = new_config.custody.clone();
    let audit_key = new_config.audit.key_file.clone();
    let on_postgres = TestSigner::start_with(&served_dir, &f.pki, move |c| {
        c.registry = registry_config;
        c.custody = custody;
        c.audit.key_file = audit_key;
    })
    .await
    .expect("signer on the copy");
    let identity = f.pki.device("Pk1", "gw").expect("cert");
    let channel = enos_signer_svc::client::connect_mtls(
        &on_postgres.uri(),
        on_postgres.ca_pem(),
        Some(tonic::transport::Identity::from_pem(
            &identity.cert_pem,
            &identity.key_pem,
        )),
    )
    .await
    .expect("channel");
    let credential = enos_signer_proto::v1::credentials_client::CredentialsClient::new(channel)
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issue from the copy")
        .into_inner();
    assert!(common::verify(&credential, "SecretGw1"));

    // Interrupted, then changed in the destination: the rerun fills what
    // is missing and keeps what is newer there.
    on_postgres
        .rotate_secret("Pk1", "gw", "SecretGwNew2")
        .await
        .expect("rotate on the copy");
    cluster
        .psql("copy", "DELETE FROM devices WHERE device_key = 'dev-1'")
        .expect("psql");
    let (ok, stdout, stderr) = copy(&old_path, &new_path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("created 1, updated 0, unchanged 1, kept (newer in the destination) 1"),
        "{stdout}"
    );

    // And back, into a new redb file.
    let mut back_config = old_config.clone();
    back_config.registry = RegistryConfig::Redb {
        path: dir.join("back.redb"),
    };
    let back_path = dir.join("signer-back.toml");
    write_config(&back_config, &back_path);
    let (ok, stdout, stderr) = copy(&new_path, &back_path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("read 3, created 3"), "{stdout}");
    let back = registry::open(&back_config.registry).expect("open back");
    let records = all(&back).await;
    drop(back);
    let gw = records
        .iter()
        .find(|r| r.id.device_key.as_str() == "gw")
        .expect("gateway copied back");
    assert_eq!(gw.secret_version, 2, "the rotation made on PostgreSQL");

    // Another custody: refused, nothing written.
    let other_key = dir.join("other-master.key");
    enos_signer_svc::key_file::create(&other_key).expect("key");
    let mut other = back_config.clone();
    other.custody = CustodyConfig::Software {
        master_key_file: other_key,
    };
    other.registry = RegistryConfig::Redb {
        path: dir.join("other.redb"),
    };
    let other_path = dir.join("signer-other.toml");
    write_config(&other, &other_path);
    let (ok, _, stderr) = copy(&old_path, &other_path);
    assert!(!ok);
    assert!(stderr.contains("same custody"), "{stderr}");
    assert!(!dir.join("other.redb").exists());
}
