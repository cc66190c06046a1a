//! The agent's signer client re-reads its certificate and key before each
//! call: a renewed certificate is used at the next connection, and broken
//! files are refused while the last good certificate stays in use.

use std::{path::Path, time::Duration};

use enos_agent::{
    GrpcSigner, SignerClient, SignerClientError,
    config::{DeviceConfig, SignerClientConfig},
};
use enos_sign_core::{DeviceKey, ProductKey};
use enos_testkit::signer::TestSigner;
use enos_testkit::{Identity, Pki};

const PK: &str = "pkReload";
const DK: &str = "gw1";

/// Writes a certificate and key the way a renewal does: each file
/// replaced whole (written aside, renamed over).
fn install(identity: &Identity, cert: &Path, key: &Path) {
    let aside = cert.with_extension("new");
    std::fs::write(&aside, &identity.cert_pem).expect("cert");
    std::fs::rename(&aside, cert).expect("rename cert");
    let aside = key.with_extension("new");
    enos_testkit::write_private(&aside, identity.key_pem.as_bytes()).expect("key");
    std::fs::rename(&aside, key).expect("rename key");
}

#[tokio::test]
async fn a_renewed_certificate_is_used_at_the_next_call_and_broken_files_are_refused() {
    enos_agent::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = Pki::new("agent-reload-old").expect("pki");
    let new_ca = Pki::new("agent-reload-new").expect("pki");
    let signer = TestSigner::start_with(&dir.path().join("signer"), &old_ca, |c| {
        c.server.tls_reload_interval = std::time::Duration::from_secs(1);
    })
    .await
    .expect("signer starts");
    signer
        .put_device(PK, DK, "gatewaySecret01")
        .await
        .expect("put device");

    let ca = old_ca.write_ca(dir.path()).expect("ca");
    let cert = dir.path().join("device.pem");
    let key = dir.path().join("device.key");
    install(&old_ca.device(PK, DK).expect("cert"), &cert, &key);
    let config = SignerClientConfig {
        endpoints: vec![signer.uri()],
        ca,
        cert: cert.clone(),
        key: enos_agent::device_key::KeyLocation::File(key.clone()),
        tls_server_name: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    };
    let device = DeviceConfig {
        product_key: ProductKey::new(PK).expect("pk"),
        device_key: DeviceKey::new(DK).expect("dk"),
        client_id: None,
        sign_method: None,
    };
    let client = GrpcSigner::new(&config, &device).expect("signer client");
    client
        .issue_mqtt_credential()
        .await
        .expect("issued with the first certificate");

    // Renewed by a CA the signer does not trust yet: the next call
    // presents it (and is refused in the handshake), proving it was read.
    install(&new_ca.device(PK, DK).expect("cert"), &cert, &key);
    let refused = client.issue_mqtt_credential().await;
    assert!(
        matches!(refused, Err(SignerClientError::Unavailable { .. })),
        "the new certificate was presented: {refused:?}"
    );

    // The signer's client CA bundle now names both CAs: accepted.
    let bundle = format!("{}{}", old_ca.ca_pem(), new_ca.ca_pem());
    let client_ca = &signer.config().server.client_ca;
    let aside = client_ca.with_extension("new");
    std::fs::write(&aside, bundle).expect("bundle");
    std::fs::rename(&aside, client_ca).expect("rename bundle");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match client.issue_mqtt_credential().await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the new certificate is still refused: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Broken files: refused, the new certificate stays in use.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    )
    .expect("corrupt");
    client
        .issue_mqtt_credential()
        .await
        .expect("the last good certificate stays in use");
    // A key that does not fit the certificate: refused too.
    install(&new_ca.device(PK, DK).expect("cert"), &cert, &key);
    let other = new_ca.device(PK, DK).expect("cert");
    enos_testkit::write_private(&key, other.key_pem.as_bytes()).expect("key");
    client
        .issue_mqtt_credential()
        .await
        .expect("a key that does not fit is refused; the last good pair stays");
}
