//! The signer as its devices' CA (#25), over real TLS: enrollment with a
//! one-time token on the enrollment listener, the certificate's names
//! (the signer's, never the CSR's), its use over mTLS at once, renewal
//! with a new key, revocation on open and new connections, the CRL, and
//! every refusal with its status and audit record.

mod common;

use std::time::Duration;

use common::Fixture;
use enos_signer_proto::v1::{
    self, admin_client::AdminClient, certificates_client::CertificatesClient,
    credentials_client::CredentialsClient, enrollment_client::EnrollmentClient,
};
use enos_signer_svc::client;
use enos_testkit::{Identity, signer::client_identity};
use rcgen::PublicKeyData;
use tonic::{Code, transport::Channel};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// A signer with `[ca]` and an enrollment listener; `adjust` changes the
/// rest.
async fn ca_signer(adjust: impl FnOnce(&mut enos_signer_svc::SignerConfig)) -> Fixture {
    common::fixture_with(|config| {
        config.ca = Some(enos_signer_svc::config::CaConfig {
            enroll_listen: Some(([127, 0, 0, 1], 0).into()),
            ..Default::default()
        });
        adjust(config);
    })
    .await
}

async fn admin(f: &Fixture) -> AdminClient<Channel> {
    f.signer.admin().await
}

/// A one-time token for `pk/dk`.
async fn token(f: &Fixture, pk: &str, dk: &str, ttl_secs: u64) -> String {
    admin(f)
        .await
        .create_enroll_token(v1::CreateEnrollTokenRequest {
            device: Some(v1::DeviceRef::new(pk, dk)),
            ttl_secs,
        })
        .await
        .expect("token")
        .into_inner()
        .token
}

/// The enrollment listener, server-authenticated TLS only.
async fn enrollment(f: &Fixture) -> EnrollmentClient<Channel> {
    let uri = f.signer.enroll_uri().expect("enrollment listener");
    EnrollmentClient::new(
        client::connect_mtls(&uri, f.signer.ca_pem(), None)
            .await
            .expect("TLS to the enrollment listener"),
    )
}

/// A new P-256 key and a CSR for it that asks for names the signer must
/// ignore (an admin's URI SAN, a DNS name, an admin CN). A CSR asking for
/// a CA bit is `enos-ca`'s test fixture `rsa2048-foreign`.
fn key_and_csr() -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "spiffe://enos/admin/root");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://enos/admin/root".try_into().expect("uri"),
    ));
    let csr = params.serialize_request(&key).expect("csr");
    (key, csr.der().to_vec())
}

async fn enroll(
    f: &Fixture,
    pk: &str,
    dk: &str,
    token: &str,
    csr: Vec<u8>,
) -> Result<v1::IssuedCertificate, tonic::Status> {
    enrollment(f)
        .await
        .enroll(v1::EnrollRequest {
            device: Some(v1::DeviceRef::new(pk, dk)),
            token: token.to_owned(),
            csr_der: csr,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `pk/dk` enrolled with a fresh token and a new key: the key and what the
/// signer issued.
async fn enrolled(f: &Fixture, pk: &str, dk: &str) -> (rcgen::KeyPair, v1::IssuedCertificate) {
    let token = token(f, pk, dk, 0).await;
    let (key, csr) = key_and_csr();
    let issued = enroll(f, pk, dk, &token, csr).await.expect("enrolled");
    (key, issued)
}

/// The identity an issued certificate and its key make (leaf + chain).
fn identity(issued: &v1::IssuedCertificate, key: &rcgen::KeyPair) -> Identity {
    Identity::from_issued(
        std::iter::once(issued.certificate_der.as_slice())
            .chain(issued.chain_der.iter().map(Vec::as_slice)),
        key.serialize_pem(),
    )
}

async fn mtls(f: &Fixture, identity: &Identity) -> Result<Channel, String> {
    client::connect_mtls(
        &f.signer.uri(),
        f.signer.ca_pem(),
        Some(client_identity(identity)),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn issue(channel: Channel) -> Result<v1::MqttCredential, tonic::Status> {
    CredentialsClient::new(channel)
        .issue_mqtt_credential(v1::IssueMqttCredentialRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_device_enrolls_with_a_token_and_gets_only_the_signers_names() {
    let f = ca_signer(|_| {}).await;
    f.signer
        .put_device("Pk1", "gw-1", "secret-1")
        .await
        .expect("device");
    let token = token(&f, "Pk1", "gw-1", 0).await;
    assert!(token.starts_with("enr1_"), "token form");
    let (key, csr) = key_and_csr();
    let issued = enroll(&f, "Pk1", "gw-1", &token, csr)
        .await
        .expect("enrolled");

    // Only the public key came from the CSR: one URI SAN, the signer's;
    // clientAuth; not a CA; the CA's chain sent along.
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.certificate_der)
        .expect("certificate");
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .expect("san")
        .expect("has san")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("uri {u}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans, ["uri spiffe://enos/device/Pk1/gw-1"]);
    assert!(!cert.is_ca(), "a device certificate is no CA");
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("has eku")
        .value;
    assert!(eku.client_auth && !eku.server_auth, "clientAuth only");
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    assert!(
        !cert.subject().to_string().contains("admin"),
        "{}",
        cert.subject()
    );
    assert_eq!(issued.chain_der.len(), 1, "a root CA: its certificate");
    let (_, ca) =
        x509_parser::certificate::X509Certificate::from_der(&issued.chain_der[0]).expect("ca");
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA in the chain");
    let lifetime = issued.not_after_ms - issued.not_before_ms;
    assert!(
        (29 * 86_400_000..=30 * 86_400_000 + 120_000).contains(&lifetime),
        "the default lifetime is 30 days: {lifetime} ms"
    );

    // The new certificate works over mTLS at once: the signer trusts its CA.
    let identity = identity(&issued, &key);
    let channel = mtls(&f, &identity)
        .await
        .expect("mTLS with the new certificate");
    let credential = issue(channel).await.expect("a credential");
    assert!(common::verify(&credential, "secret-1"));

    // Audited: the intent, then the outcome; the token never.
    let enrolled = f.audited("enroll");
    assert_eq!(enrolled.len(), 1, "{enrolled:?}");
    assert_eq!(enrolled[0]["outcome"], "ok");
    assert_eq!(enrolled[0]["serial"], issued.serial.as_str());
    assert_eq!(f.audited("enroll_intent").len(), 1);
    let trail =
        std::fs::read_to_string(f.signer.config().audit_file().expect("file")).expect("trail");
    assert!(!trail.contains(&token), "the token is never audited");

    // Listed, active.
    let listed = admin(&f)
        .await
        .list_certificates(v1::DeviceRef::new("Pk1", "gw-1"))
        .await
        .expect("list")
        .into_inner()
        .certificates;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].serial, issued.serial);
    assert_eq!(listed[0].status(), v1::CertificateStatus::Active);
}

#[tokio::test]
async fn every_bad_enrollment_is_refused_with_its_own_status_and_nothing_is_spent() {
    let f = ca_signer(|_| {}).await;
    f.signer
        .put_device("Pk1", "gw-1", "secret-1")
        .await
        .expect("device");
    f.signer
        .put_device("Pk1", "gw-2", "secret-2")
        .await
        .expect("device");
    let token = token(&f, "Pk1", "gw-1", 0).await;

    let refused = |r: Result<v1::IssuedCertificate, tonic::Status>| {
        let s = r.expect_err("refused");
        (s.code(), s.message().to_owned())
    };
    // A token that is not one: refused before any lookup, never audited.
    let (code, message) = refused(enroll(&f, "Pk1", "gw-1", "enr1_nope", key_and_csr().1).await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("malformed"), "{message}");
    // Well formed, unknown.
    let unknown = format!("enr1_{}", "A".repeat(43));
    let (code, message) = refused(enroll(&f, "Pk1", "gw-1", &unknown, key_and_csr().1).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("not valid"), "{message}");
    assert!(
        f.audited("enroll").is_empty(),
        "a caller that proved nothing is not audited"
    );

    // The real token for another device.
    let (code, message) = refused(enroll(&f, "Pk1", "gw-2", &token, key_and_csr().1).await);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("another device"), "{message}");
    // Garbage, oversized, tampered and weak CSRs.
    let (code, message) = refused(enroll(&f, "Pk1", "gw-1", &token, b"garbage".to_vec()).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("csr_der"), "{message}");
    let (code, message) = refused(enroll(&f, "Pk1", "gw-1", &token, vec![0x30; 20_000]).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let mut tampered = key_and_csr().1;
    let last = tampered.len() - 5;
    tampered[last] ^= 0x01;
    let (code, message) = refused(enroll(&f, "Pk1", "gw-1", &token, tampered).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let weak = include_bytes!("../../enos-ca/tests/fixtures/rsa1024.test-fixture.csr").to_vec();
    let (code, message) = refused(enroll(&f, "Pk1", "gw-1", &token, weak).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("1024"), "{message}");
    // Each of those five, made with a real token, is audited as refused.
    let refusals = f.audited("enroll");
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    assert!(refusals.iter().all(|r| r["outcome"] != "ok"));

    // None of them spent the token: it still enrolls, once.
    let (key, csr) = key_and_csr();
    enroll(&f, "Pk1", "gw-1", &token, csr)
        .await
        .expect("the token still works");
    drop(key);
    let (code, message) = refused(enroll(&f, "Pk1", "gw-1", &token, key_and_csr().1).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("used"), "{message}");

    // Expired, and revoked.
    let short = self::token(&f, "Pk1", "gw-2", 1).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (code, message) = refused(enroll(&f, "Pk1", "gw-2", &short, key_and_csr().1).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("expired"), "{message}");
    let revoked = self::token(&f, "Pk1", "gw-2", 0).await;
    let count = admin(&f)
        .await
        .revoke_enroll_tokens(v1::DeviceRef::new("Pk1", "gw-2"))
        .await
        .expect("revoke tokens")
        .into_inner()
        .revoked;
    assert_eq!(count, 2, "both unused tokens, the expired one too");
    let (code, message) = refused(enroll(&f, "Pk1", "gw-2", &revoked, key_and_csr().1).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("revoked"), "{message}");
}

#[tokio::test]
async fn renewal_revocation_and_the_crl() {
    let f = ca_signer(|config| {
        let ca = config.ca.as_mut().expect("[ca]");
        ca.crl_file = Some(config.server.cert.with_file_name("devices.crl"));
    })
    .await;
    f.signer
        .put_device("Pk1", "gw-1", "secret-1")
        .await
        .expect("device");
    let (key, first) = enrolled(&f, "Pk1", "gw-1").await;
    let first_identity = identity(&first, &key);

    // Renewal over mTLS with the current certificate, for a new key.
    let channel = mtls(&f, &first_identity).await.expect("mTLS");
    let (new_key, csr) = key_and_csr();
    let second = CertificatesClient::new(channel.clone())
        .renew_certificate(v1::RenewCertificateRequest { csr_der: csr })
        .await
        .expect("renewed")
        .into_inner();
    assert_ne!(second.serial, first.serial);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&second.certificate_der)
        .expect("certificate");
    assert_eq!(
        cert.public_key().raw,
        new_key.subject_public_key_info().as_slice()
    );
    let second_identity = identity(&second, &new_key);
    let second_channel = mtls(&f, &second_identity)
        .await
        .expect("mTLS with the renewed pair");
    issue(second_channel.clone())
        .await
        .expect("the renewed certificate is served");
    let listed = admin(&f)
        .await
        .list_certificates(v1::DeviceRef::new("Pk1", "gw-1"))
        .await
        .expect("list")
        .into_inner()
        .certificates;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[1].renewed_by, second.serial,
        "the old one names its successor"
    );
    assert_eq!(f.audited("renew_certificate").len(), 1);

    // Revoking the renewed certificate: refused on its open connection at
    // the next call, on a new handshake, and for a renewal.
    let revoked = admin(&f)
        .await
        .revoke_certificate(v1::RevokeCertificateRequest {
            target: Some(v1::revoke_certificate_request::Target::Serial(
                second.serial.to_uppercase(),
            )),
            reason: "key compromise".into(),
        })
        .await
        .expect("revoke")
        .into_inner()
        .serials;
    assert_eq!(revoked, std::slice::from_ref(&second.serial));
    let status = issue(second_channel.clone())
        .await
        .expect_err("refused on the open connection");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let renewal = CertificatesClient::new(second_channel)
        .renew_certificate(v1::RenewCertificateRequest {
            csr_der: key_and_csr().1,
        })
        .await
        .expect_err("a revoked certificate cannot renew");
    assert_eq!(renewal.code(), Code::Unauthenticated);
    match mtls(&f, &second_identity).await {
        Err(_) => {}
        Ok(channel) => {
            let code = issue(channel).await.expect_err("refused").code();
            assert!(
                common::refused_by_handshake(code),
                "a new handshake is refused: {code:?}"
            );
        }
    }
    // The first (renewed, not revoked) certificate still works.
    issue(channel)
        .await
        .expect("the older certificate is still valid");

    // The CRL (file and /crl) lists the revoked serial, signed by the CA.
    let crl_file = f
        .signer
        .config()
        .ca
        .as_ref()
        .and_then(|ca| ca.crl_file.clone())
        .expect("crl file");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let crl = loop {
        let listed = std::fs::read(&crl_file).ok().filter(|der| {
            x509_parser::revocation_list::CertificateRevocationList::from_der(der).is_ok_and(
                |(_, crl)| {
                    crl.iter_revoked_certificates().any(|r| {
                        enos_signer_svc::listener::tls_reload::serial_hex(r.raw_serial())
                            == second.serial
                    })
                },
            )
        });
        if let Some(der) = listed {
            break der;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CRL file lists the revocation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).expect("crl");
    let (_, ca) =
        x509_parser::certificate::X509Certificate::from_der(&first.chain_der[0]).expect("ca");
    parsed
        .verify_signature(ca.public_key())
        .expect("the CRL is signed by the CA");
    assert_eq!(parsed.iter_revoked_certificates().count(), 1);

    // Revoking the device revokes what is left; the audit trail says so.
    let rest = admin(&f)
        .await
        .revoke_certificate(v1::RevokeCertificateRequest {
            target: Some(v1::revoke_certificate_request::Target::Device(
                v1::DeviceRef::new("Pk1", "gw-1"),
            )),
            reason: String::new(),
        })
        .await
        .expect("revoke device")
        .into_inner()
        .serials;
    assert_eq!(rest, std::slice::from_ref(&first.serial));
    assert_eq!(
        f.audited("revoke_certificate").len(),
        4,
        "intent and outcome, twice"
    );
}

#[tokio::test]
async fn deleting_or_disabling_a_device_revokes_its_certificates() {
    let f = ca_signer(|_| {}).await;
    for dk in ["gw-1", "gw-2"] {
        f.signer
            .put_device("Pk1", dk, "secret")
            .await
            .expect("device");
    }
    let mut identities = Vec::new();
    for dk in ["gw-1", "gw-2"] {
        let (key, issued) = enrolled(&f, "Pk1", dk).await;
        identities.push(identity(&issued, &key));
    }
    f.signer
        .set_enabled("Pk1", "gw-1", false)
        .await
        .expect("disable");
    f.signer
        .set_enabled("Pk1", "gw-1", true)
        .await
        .expect("enable again");
    admin(&f)
        .await
        .delete_device(v1::DeviceRef::new("Pk1", "gw-2"))
        .await
        .expect("delete");
    for identity in &identities {
        match mtls(&f, identity).await {
            Err(_) => {}
            Ok(channel) => {
                let status = issue(channel).await.expect_err("revoked");
                assert!(
                    status.code() == Code::Unauthenticated
                        || common::refused_by_handshake(status.code()),
                    "{status:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_signer_without_ca_says_it_is_not_a_ca() {
    let f = common::fixture().await;
    let device = f.pki.device("Pk1", "gw-1").expect("cert");
    let channel = mtls(&f, &device).await.expect("mTLS");
    let status = CertificatesClient::new(channel.clone())
        .renew_certificate(v1::RenewCertificateRequest {
            csr_der: key_and_csr().1,
        })
        .await
        .expect_err("not a CA");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("this signer is not a CA"),
        "{status:?}"
    );
    let status = EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest {
            device: Some(v1::DeviceRef::new("Pk1", "gw-1")),
            token: format!("enr1_{}", "A".repeat(43)),
            csr_der: key_and_csr().1,
        })
        .await
        .expect_err("not a CA");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("this signer is not a CA"),
        "{status:?}"
    );
    let status = admin(&f)
        .await
        .create_enroll_token(v1::CreateEnrollTokenRequest {
            device: Some(v1::DeviceRef::new("Pk1", "gw-1")),
            ttl_secs: 0,
        })
        .await
        .expect_err("not a CA");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn certificates_near_expiry_are_counted_and_the_crl_is_served_over_http() {
    let f = ca_signer(|config| {
        config.ca.as_mut().expect("[ca]").lifetime = Duration::from_secs(2 * 86_400);
    })
    .await;
    f.signer
        .put_device("Pk1", "gw-1", "secret-1")
        .await
        .expect("device");
    let (key, issued) = enrolled(&f, "Pk1", "gw-1").await;
    let admin = f.signer.admin_identity().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::metrics_get(&f, Some(&admin), "/metrics")
            .await
            .expect("scrape");
        let metrics = String::from_utf8_lossy(&metrics);
        if metrics.contains("enos_signer_certificates_expiring{within=\"7d\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a 2-day certificate is counted as expiring within 7 days: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Renewed, it is no longer counted (its successor is, until renewed).
    let channel = mtls(&f, &identity(&issued, &key)).await.expect("mTLS");
    CertificatesClient::new(channel)
        .renew_certificate(v1::RenewCertificateRequest {
            csr_der: key_and_csr().1,
        })
        .await
        .expect("renewed");
    // The CRL over HTTP: DER, signed by the CA, empty so far.
    let response = common::metrics_get(&f, Some(&admin), "/crl")
        .await
        .expect("GET /crl");
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&response[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/pkix-crl"), "{head}");
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(
        &response[head_end + 4..],
    )
    .expect("a DER CRL");
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
}

#[tokio::test]
async fn tokens_for_a_provisioning_line_come_in_one_call_all_or_none() {
    // A rate limit of one call a second would make a thousand single
    // calls take a quarter of an hour: the batch costs one.
    let f = ca_signer(|config| {
        config.rate_limit = Some(enos_signer_svc::config::RateLimitConfig {
            per_second: 1,
            // Three puts and the refused batch; then one a second.
            burst: 4,
        });
    })
    .await;
    for dk in ["gw-1", "gw-2", "gw-3"] {
        f.signer
            .put_device("Pk1", dk, "secret")
            .await
            .expect("device");
    }
    let mut admin = admin(&f).await;
    let refused = admin
        .create_enroll_tokens(v1::CreateEnrollTokensRequest {
            devices: vec![
                v1::DeviceRef::new("Pk1", "gw-1"),
                v1::DeviceRef::new("Pk1", "ghost"),
            ],
            ttl_secs: 0,
        })
        .await
        .expect_err("an unknown device refuses the batch");
    assert_eq!(refused.code(), Code::NotFound);
    assert!(refused.message().contains("Pk1/ghost"), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let tokens = admin
        .create_enroll_tokens(v1::CreateEnrollTokensRequest {
            devices: ["gw-1", "gw-2", "gw-3"]
                .iter()
                .map(|dk| v1::DeviceRef::new("Pk1", *dk))
                .collect(),
            ttl_secs: 0,
        })
        .await
        .expect("one call for three")
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 3);
    for (token, dk) in tokens.iter().zip(["gw-1", "gw-2", "gw-3"]) {
        let device = token.device.clone().expect("device");
        assert_eq!(device.device_key, dk, "in the request's order");
        enroll(&f, "Pk1", dk, &token.token, key_and_csr().1)
            .await
            .expect("each token enrolls its device");
    }
}

#[tokio::test]
async fn an_intermediate_signed_by_the_operators_root_serves_the_whole_chain() {
    // `ca init --intermediate`, the operator's root signs the request,
    // `ca import-cert` installs it: the chain is served in full and a
    // device certificate of the intermediate works over mTLS.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = enos_testkit::Pki::new("intermediate-test").expect("pki");
    let signer = enos_testkit::signer::TestSigner::start_with(dir.path(), &pki, |c| {
        c.ca = Some(enos_signer_svc::config::CaConfig {
            enroll_listen: Some(([127, 0, 0, 1], 0).into()),
            ..Default::default()
        });
    })
    .await
    .expect("signer");
    // The fixture made a root; an operator replaces it with an
    // intermediate of their own root (the signer stopped: redb is one
    // process's file).
    let mut f = common::Fixture { pki, signer, dir };
    f.signer.stop().await;
    let config = f.signer.config().clone();
    let request = match enos_signer_svc::ops::ca::init(
        &config,
        enos_signer_svc::ops::ca::CaKind::Intermediate {
            common_name: "signer intermediate".into(),
        },
        true,
    )
    .await
    .expect("ca init --intermediate")
    {
        enos_signer_svc::ops::ca::CaInitOutcome::Intermediate { request_pem } => request_pem,
        other => panic!("expected a request, got {other:?}"),
    };
    // The operator's root, and the intermediate it signs.
    let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut root_params = rcgen::CertificateParams::default();
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator root");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = rcgen::Issuer::from_params(&root_params, &root_key);
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&request).expect("the request");
    let mut intermediate_params = csr.params;
    intermediate_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    intermediate_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let intermediate = intermediate_params
        .signed_by(&csr.public_key, &root_issuer)
        .expect("signed by the root");
    // A chain out of order is refused; in order it is installed.
    let wrong = format!("{}{}", root.pem(), intermediate.pem());
    let refused = enos_signer_svc::ops::ca::import_cert(&config, wrong.as_bytes())
        .await
        .expect_err("the root first is not the CA's certificate");
    assert!(refused.to_string().contains("another key"), "{refused}");
    let chain = format!("{}{}", intermediate.pem(), root.pem());
    let count = enos_signer_svc::ops::ca::import_cert(&config, chain.as_bytes())
        .await
        .expect("import-cert");
    assert_eq!(count, 2);
    f.signer.restart().await.expect("restart");

    f.signer
        .put_device("Pk1", "gw-1", "secret-1")
        .await
        .expect("device");
    let (key, issued) = enrolled(&f, "Pk1", "gw-1").await;
    assert_eq!(issued.chain_der.len(), 2, "the intermediate and the root");
    assert_eq!(issued.chain_der[1], root.der().to_vec());
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.certificate_der)
        .expect("certificate");
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&issued.chain_der[0])
        .expect("intermediate");
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the intermediate");
    let channel = mtls(&f, &identity(&issued, &key)).await.expect("mTLS");
    issue(channel).await.expect("served");
}
