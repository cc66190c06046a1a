//! Revocation and a CA of the admins' own over real mTLS (#13 finding 9):
//! a revoked device certificate is refused in the handshake, also when it
//! is revoked by a CRL that changes while the signer runs (reloaded with
//! the certificates); with `server.admin_ca` an admin certificate of the
//! device CA is refused, and `server.admin_names` narrows the admins. A
//! device revoked while its connection is open is refused on it; a device
//! certificate of the admin CA names nobody.

mod common;

use std::{path::Path, time::Duration};

use common::Fixture;
use enos_signer_proto::v1::{
    IssueMqttCredentialRequest, ListDevicesRequest, admin_client::AdminClient,
    credentials_client::CredentialsClient,
};
use enos_signer_svc::client;
use enos_testkit::{Identity, Pki, signer::TestSigner};
use tonic::{Code, transport::Channel};

async fn start(
    pki: Pki,
    adjust: impl FnOnce(&Path, &mut enos_signer_svc::SignerConfig),
) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let signer = TestSigner::start_with(dir.path(), &pki, |c| adjust(&path, c))
        .await
        .expect("signer starts");
    Fixture { pki, signer, dir }
}

/// Writes `contents` to `path` in one rename (as a Secret volume swaps).
fn publish(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// A new mTLS channel to the signer presenting `identity` (HTTP/2: one
/// connection, one handshake, as an agent keeps it).
async fn connect(f: &Fixture, identity: &Identity) -> Result<Channel, String> {
    client::connect_mtls(
        &f.signer.uri(),
        f.signer.ca_pem(),
        Some(enos_testkit::signer::client_identity(identity)),
    )
    .await
    .map_err(|e| format!("connect: {e}"))
}

async fn issue(client: &mut CredentialsClient<Channel>) -> Result<(), tonic::Status> {
    client
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .map(drop)
}

/// Whether a fresh connection presenting `identity` gets a credential
/// (TLS 1.3: a refused client certificate may only show on the first call).
async fn device_served(f: &Fixture, identity: &Identity) -> Result<(), String> {
    let mut client = CredentialsClient::new(connect(f, identity).await?);
    issue(&mut client)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// As [`device_served`], for Admin.
async fn admin_served(f: &Fixture, identity: &Identity) -> Result<(), tonic::Status> {
    let channel = connect(f, identity)
        .await
        .map_err(tonic::Status::unavailable)?;
    AdminClient::new(channel)
        .list_devices(ListDevicesRequest::default())
        .await
        .map(drop)
}

/// A signer whose `clients.crl` starts as `crl` and is re-read every second.
async fn start_with_crl(pki: Pki, crl: String) -> Fixture {
    start(pki, |dir, c| {
        let path = dir.join("clients.crl");
        std::fs::write(&path, &crl).expect("crl file");
        c.server.crls = vec![path];
        c.server.tls_reload_interval = std::time::Duration::from_secs(1);
    })
    .await
}

#[tokio::test]
async fn a_revoked_device_is_refused_in_the_handshake_also_after_a_reload() {
    let pki = Pki::new("crl-test").expect("pki");
    let revoked = pki.device("PkCrl", "revoked").expect("cert");
    let later = pki.device("PkCrl", "later").expect("cert");
    let good = pki.device("PkCrl", "good").expect("cert");
    let first_crl = pki.crl_pem(1, &[&revoked]).expect("crl");
    let f = start_with_crl(pki, first_crl).await;
    for dk in ["revoked", "later", "good"] {
        f.signer
            .put_device("PkCrl", dk, "s3cret")
            .await
            .expect("put");
    }
    device_served(&f, &good)
        .await
        .expect("a good device is served");
    device_served(&f, &later).await.expect("not revoked yet");
    let refused = device_served(&f, &revoked).await.expect_err("revoked");
    assert!(
        !refused.contains("PermissionDenied"),
        "refused in TLS, not by the service: {refused}"
    );

    // A new list revokes `later` too: new connections of it are refused
    // once the signer has re-read the file.
    let crl_path = f.dir.path().join("clients.crl");
    publish(
        &crl_path,
        &f.pki.crl_pem(2, &[&revoked, &later]).expect("crl"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while device_served(&f, &later).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still served 10 s after its revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    device_served(&f, &good).await.expect("others still served");
    device_served(&f, &revoked)
        .await
        .expect_err("still revoked");

    // A broken list is refused and changes nothing.
    publish(&crl_path, "not a CRL");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    device_served(&f, &later)
        .await
        .expect_err("the previous list still holds");
    device_served(&f, &good)
        .await
        .expect("and the good device is served");
}

#[tokio::test]
async fn a_device_revoked_while_its_connection_is_open_is_refused_on_it() {
    let pki = Pki::new("crl-open").expect("pki");
    let revoked = pki.device("PkCrl", "revoked").expect("cert");
    let good = pki.device("PkCrl", "good").expect("cert");
    let first_crl = pki.crl_pem(1, &[]).expect("crl");
    let f = start_with_crl(pki, first_crl).await;
    for dk in ["revoked", "good"] {
        f.signer
            .put_device("PkCrl", dk, "s3cret")
            .await
            .expect("put");
    }
    let mut open_revoked = CredentialsClient::new(connect(&f, &revoked).await.expect("connect"));
    let mut open_good = CredentialsClient::new(connect(&f, &good).await.expect("connect"));
    issue(&mut open_revoked).await.expect("served before");
    issue(&mut open_good).await.expect("served before");

    publish(
        &f.dir.path().join("clients.crl"),
        &f.pki.crl_pem(2, &[&revoked]).expect("crl"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match issue(&mut open_revoked).await {
            Ok(()) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still served on its open connection 10 s after its revocation"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    issue(&mut open_good)
        .await
        .expect("the others' open connections are served");
    issue(&mut open_revoked)
        .await
        .expect_err("and it stays refused");
}

#[tokio::test]
async fn admins_come_from_the_admin_ca_and_the_allow_list() {
    let pki = Pki::new("device-ca").expect("pki");
    let admin_pki = Pki::new("admin-ca").expect("admin pki");
    let ops = admin_pki.admin("ops").expect("cert");
    let intruder = admin_pki.admin("intruder").expect("cert");
    let revoked_ops = admin_pki.admin("ops").expect("cert");
    let device_ca_ops = pki.admin("ops").expect("cert");
    let admin_crl = admin_pki.crl_pem(1, &[&revoked_ops]).expect("crl");
    let admin_ca = admin_pki.ca_pem().to_owned();
    let f = start(pki, |dir, c| {
        let ca = dir.join("admins-ca.pem");
        std::fs::write(&ca, &admin_ca).expect("admin ca");
        let crl = dir.join("admins.crl");
        std::fs::write(&crl, &admin_crl).expect("crl");
        c.server.admin_ca = Some(ca);
        c.server.admin_names = vec!["ops".into()];
        c.server.crls = vec![crl];
    })
    .await;

    admin_served(&f, &ops)
        .await
        .expect("an admin of the admin CA");
    // The device CA's admin certificates (the fixture's own admin among
    // them) are refused by Admin, whatever the name.
    for identity in [&device_ca_ops, f.signer.admin_identity()] {
        let refused = admin_served(&f, identity)
            .await
            .expect_err("device-CA admin");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("server.admin_ca"), "{refused:?}");
    }
    let refused = admin_served(&f, &intruder)
        .await
        .expect_err("not on the list");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("admin_names"), "{refused:?}");
    let refused = admin_served(&f, &revoked_ops)
        .await
        .expect_err("revoked admin");
    assert_ne!(
        refused.code(),
        Code::PermissionDenied,
        "refused in TLS: {refused:?}"
    );
    // Devices come from the client CA only: a device name on an admin-CA
    // certificate names nobody.
    let impostor = admin_pki.device("PkAdm", "dev").expect("cert");
    let refused = device_served(&f, &impostor)
        .await
        .expect_err("a device certificate of the admin CA");
    assert!(refused.starts_with("Unauthenticated"), "{refused}");
    let device = f.pki.device("PkAdm", "dev").expect("cert");
    let refused = device_served(&f, &device)
        .await
        .expect_err("unknown device");
    assert!(
        refused.starts_with("PermissionDenied") || refused.starts_with("NotFound"),
        "{refused}"
    );
}
