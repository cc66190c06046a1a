//! #23 finding 11 against a running signer: every trusted CA is logged
//! with its SHA-256 fingerprint at start and at each reload, and a reload
//! that would make the admin CA bundle share a CA with the client CA
//! bundle is refused (logged), the previous material staying in use.

mod common;

use std::time::Duration;

use common::{capture::Capture, fixture_with};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use sha2::{Digest, Sha256};

fn fingerprint(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    let hex: Vec<String> = Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    hex.join(":")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_11_ca_fingerprints_are_logged_and_an_overlapping_reload_is_refused() {
    let capture = Capture::install(tracing::Level::INFO);
    let admins = enos_testkit::Pki::new("ca-log-admins").expect("pki");
    let admin_ca_pem = admins.ca_pem().to_owned();
    let f = fixture_with(move |c| {
        let path = c.server.client_ca.with_file_name("admins-ca.pem");
        std::fs::write(&path, &admin_ca_pem).expect("admin CA");
        c.server.admin_ca = Some(path);
        c.server.tls_reload_interval = std::time::Duration::from_secs(1);
    })
    .await;
    let logged = capture.text();
    for (bundle, pem) in [("client_ca", f.pki.ca_pem()), ("admin_ca", admins.ca_pem())] {
        let sha256 = fingerprint(pem);
        assert!(
            logged
                .lines()
                .any(|line| line.contains("trusted CA certificate")
                    && line.contains(bundle)
                    && line.contains(&sha256)),
            "{bundle} {sha256} not logged:\n{logged}"
        );
    }

    // The client CA copied over the admin CA: the reload is refused.
    let admin_ca = f.signer.config().server.admin_ca.clone().expect("admin CA");
    std::fs::write(&admin_ca, f.pki.ca_pem()).expect("overwrite");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !capture
        .text()
        .contains("shares a CA with the client CA bundle")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overlapping reload was not refused:\n{}",
            capture.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(capture.text().contains("TLS reload refused"));
    // The previous material stays: an admin of the admin CA is served.
    let admin = admins.admin("ops").expect("admin cert");
    enos_signer_proto::v1::admin_client::AdminClient::new(f.channel(Some(&admin)).await)
        .list_devices(enos_signer_proto::v1::ListDevicesRequest::default())
        .await
        .expect("the admin of the admin CA is still served");
}
