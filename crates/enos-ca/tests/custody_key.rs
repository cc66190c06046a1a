//! The CA key behind custody's `CaSigner`, through `authority::CustodyKey`:
//! a root, a device certificate and a CRL signed with it, each verified
//! with x509-parser against the CA certificate. The signer here is a ring
//! key behind the trait (the software and HSM custodies run the same
//! checks in their own crates, with their own keys).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use enos_ca::{
    CaError, DeviceNames, RequestedKey, Validity, authority,
    crl::{RevokedEntry, revocation_list},
    issue::device_certificate,
};
use enos_custody::{CaSigner, CustodyError};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData};
use x509_parser::{prelude::FromDer, revocation_list::CertificateRevocationList, x509::X509Name};

const DAY: Duration = Duration::from_secs(86_400);

/// A ring key behind the custody trait.
struct RingSigner {
    key: KeyPair,
    spki: Vec<u8>,
}

impl RingSigner {
    fn new(alg: &'static rcgen::SignatureAlgorithm) -> Arc<Self> {
        let key = KeyPair::generate_for(alg).expect("key");
        let spki = key.subject_public_key_info();
        Arc::new(RingSigner { key, spki })
    }
}

impl CaSigner for RingSigner {
    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        rcgen::SigningKey::sign(&self.key, message)
            .map_err(|e| CustodyError::Unavailable(e.to_string()))
    }
}

/// A custody whose token is away: every sign fails, retryably.
struct AwaySigner(Vec<u8>);

impl CaSigner for AwaySigner {
    fn public_key_der(&self) -> &[u8] {
        &self.0
    }

    fn sign(&self, _: &[u8]) -> Result<Vec<u8>, CustodyError> {
        Err(CustodyError::Unavailable("token \"enos\" is away".into()))
    }
}

fn names() -> DeviceNames {
    DeviceNames {
        uri: "spiffe://enos/device/Pk1/gw-001".into(),
        common_name: "Pk1/gw-001".into(),
    }
}

fn device_key() -> RequestedKey {
    RequestedKey::from_csr(&enos_ca_csr(), 16 * 1024).expect("a valid CSR")
}

fn enos_ca_csr() -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec()
}

fn name_der<'a>(name: &'a X509Name<'a>) -> &'a [u8] {
    name.as_raw()
}

#[test]
fn a_custody_key_signs_a_root_a_device_certificate_and_a_crl_that_verify() {
    let signer = RingSigner::new(&PKCS_ECDSA_P256_SHA256);
    let key = authority::CustodyKey::new(signer.clone()).expect("a P-256 key");
    assert_eq!(
        key.der_bytes(),
        &signer.spki[26..],
        "rcgen gets the raw point"
    );
    let now = SystemTime::now();
    let root = authority::self_signed_root(
        "enos device CA",
        Validity::starting(now, 365 * DAY).expect("validity"),
        &key,
    )
    .expect("a root signed through custody");
    let issuer = authority::custody_issuer(root.der(), signer.clone()).expect("issuer");
    let issued = device_certificate(
        &device_key(),
        &names(),
        Validity::starting(now, 30 * DAY).expect("validity"),
        &issuer,
    )
    .expect("issued through custody");
    let revoked_at_ms = 1_765_000_000_123;
    let entries = [
        RevokedEntry {
            serial: issued.serial.to_hex(),
            revoked_at_ms,
            reason: "key compromise".into(),
        },
        RevokedEntry {
            serial: "0abc".into(),
            revoked_at_ms,
            reason: "the operator said so".into(),
        },
    ];
    let crl_der = revocation_list(&entries, &issuer, now, now + DAY, 42).expect("a CRL");

    let (_, ca) = x509_parser::parse_x509_certificate(root.der()).expect("the root parses");
    assert_eq!(ca.public_key().raw, &signer.spki[..]);
    ca.verify_signature(None)
        .expect("the root is self-signed by the custody key");
    let (_, leaf) = x509_parser::parse_x509_certificate(issued.der()).expect("leaf");
    leaf.verify_signature(Some(ca.public_key()))
        .expect("the device certificate verifies against the CA certificate");
    assert_eq!(name_der(leaf.issuer()), name_der(ca.subject()));

    let (rest, crl) = CertificateRevocationList::from_der(&crl_der).expect("the CRL parses");
    assert!(rest.is_empty());
    crl.verify_signature(ca.public_key())
        .expect("the CRL verifies against the CA certificate");
    assert_eq!(name_der(crl.issuer()), name_der(ca.subject()));
    assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("42".into()));
    let listed: Vec<(String, i64, Option<u8>)> = crl
        .iter_revoked_certificates()
        .map(|entry| {
            (
                entry.raw_serial_as_string().replace(':', ""),
                entry.revocation_date.timestamp(),
                entry.reason_code().map(|(_, code)| code.0),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (issued.serial.to_hex(), 1_765_000_000, Some(1)),
            ("0abc".into(), 1_765_000_000, None),
        ]
    );
    // Tampered: no longer verifies.
    let mut tampered = crl_der.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    if let Ok((_, bad)) = CertificateRevocationList::from_der(&tampered) {
        assert!(bad.verify_signature(ca.public_key()).is_err());
    }
}

#[test]
fn a_crl_with_nothing_revoked_is_signed_and_bad_input_is_refused() {
    let signer = RingSigner::new(&PKCS_ECDSA_P256_SHA256);
    let key = authority::CustodyKey::new(signer.clone()).expect("key");
    let now = SystemTime::now();
    let root = authority::self_signed_root(
        "enos device CA",
        Validity::starting(now, DAY).expect("validity"),
        &key,
    )
    .expect("root");
    let issuer = authority::custody_issuer(root.der(), signer).expect("issuer");
    let empty = revocation_list(&[], &issuer, now, now + DAY, 1).expect("an empty CRL");
    let (_, crl) = CertificateRevocationList::from_der(&empty).expect("parse");
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
    let (_, ca) = x509_parser::parse_x509_certificate(root.der()).expect("root");
    crl.verify_signature(ca.public_key()).expect("verifies");

    assert!(matches!(
        revocation_list(&[], &issuer, now, now, 2),
        Err(CaError::Validity(_))
    ));
    let bad = RevokedEntry {
        serial: "not hex".into(),
        revoked_at_ms: 0,
        reason: String::new(),
    };
    assert_eq!(
        revocation_list(&[bad], &issuer, now, now + DAY, 2),
        Err(CaError::Serial("not hex".into()))
    );
}

#[test]
fn a_custody_key_that_cannot_sign_is_a_retryable_error_with_the_custodys_reason() {
    let good = RingSigner::new(&PKCS_ECDSA_P256_SHA256);
    let key = authority::CustodyKey::new(good.clone()).expect("key");
    let root = authority::self_signed_root(
        "enos device CA",
        Validity::starting(SystemTime::now(), DAY).expect("validity"),
        &key,
    )
    .expect("root");
    let away = Arc::new(AwaySigner(good.spki.clone()));
    let issuer = authority::custody_issuer(root.der(), away).expect("issuer");
    let refused = device_certificate(
        &device_key(),
        &names(),
        Validity::starting(SystemTime::now(), DAY).expect("validity"),
        &issuer,
    )
    .expect_err("the token is away");
    assert_eq!(
        refused,
        CaError::KeyUnavailable("token \"enos\" is away".into())
    );
}

#[test]
fn a_ca_certificate_of_another_key_and_a_non_p256_key_are_refused() {
    let signer = RingSigner::new(&PKCS_ECDSA_P256_SHA256);
    let other = RingSigner::new(&PKCS_ECDSA_P256_SHA256);
    let root = authority::self_signed_root(
        "enos device CA",
        Validity::starting(SystemTime::now(), DAY).expect("validity"),
        &authority::CustodyKey::new(other).expect("key"),
    )
    .expect("root");
    assert_eq!(
        authority::custody_issuer(root.der(), signer).expect_err("another key's certificate"),
        CaError::Validity("the CA certificate is not for the CA key in custody")
    );
    let p384 = RingSigner::new(&PKCS_ECDSA_P384_SHA384);
    assert!(matches!(
        authority::CustodyKey::new(p384),
        Err(CaError::UnsupportedKey(_))
    ));
}

/// `ca init --intermediate` with the key in custody: the request is signed
/// through custody, the operator's root signs it, and the certificate it
/// returns is accepted as the custody key's (its public key is the same
/// DER), then issues certificates that chain.
#[test]
fn an_intermediate_request_signed_through_custody_comes_back_as_the_custody_keys() {
    let signer = RingSigner::new(&PKCS_ECDSA_P256_SHA256);
    let key = authority::CustodyKey::new(signer.clone()).expect("key");
    let request = authority::intermediate_request("enos device CA", &key).expect("request");
    let operator_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
    let mut operator_params = rcgen::CertificateParams::default();
    operator_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let operator_root = operator_params.self_signed(&operator_key).expect("root");
    let operator = rcgen::Issuer::new(operator_params, &operator_key);
    let mut view = rcgen::CertificateSigningRequestParams::from_der(request.der())
        .expect("the request verifies");
    view.params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    view.params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let intermediate = view.signed_by(&operator).expect("signed");
    let issuer = authority::custody_issuer(intermediate.der(), signer).expect("the custody key's");
    let issued = device_certificate(
        &device_key(),
        &names(),
        Validity::starting(SystemTime::now(), DAY).expect("validity"),
        &issuer,
    )
    .expect("issued");
    let (_, ca) = x509_parser::parse_x509_certificate(intermediate.der()).expect("ca");
    let (_, root) = x509_parser::parse_x509_certificate(operator_root.der()).expect("root");
    ca.verify_signature(Some(root.public_key()))
        .expect("the intermediate chains to the operator's root");
    let (_, leaf) = x509_parser::parse_x509_certificate(issued.der()).expect("leaf");
    leaf.verify_signature(Some(ca.public_key()))
        .expect("the leaf verifies against the intermediate");
}

/// The CRL is one rustls's webpki verifier (the signer's own TLS, and the
/// sandbox's) loads and enforces: the revoked certificate is refused, the
/// other one accepted.
#[test]
fn the_crl_is_enforced_by_the_verifier_the_signers_tls_uses() {
    use rustls::{
        RootCertStore,
        pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime},
        server::WebPkiClientVerifier,
    };
    let signer = RingSigner::new(&PKCS_ECDSA_P256_SHA256);
    let key = authority::CustodyKey::new(signer.clone()).expect("key");
    let now = SystemTime::now();
    let root = authority::self_signed_root(
        "enos device CA",
        Validity::starting(now, DAY).expect("validity"),
        &key,
    )
    .expect("root");
    let issuer = authority::custody_issuer(root.der(), signer).expect("issuer");
    let issue = || {
        device_certificate(
            &device_key(),
            &names(),
            Validity::starting(now, DAY).expect("validity"),
            &issuer,
        )
        .expect("issued")
    };
    let (revoked, kept) = (issue(), issue());
    let entry = RevokedEntry {
        serial: revoked.serial.to_hex(),
        revoked_at_ms: 1_765_000_000_000,
        reason: "device disabled".into(),
    };
    let crl = revocation_list(&[entry], &issuer, now, now + DAY, 9).expect("crl");

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.der().to_vec()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls([CertificateRevocationListDer::from(crl)])
        .build()
        .expect("a verifier with the CRL");
    let verify = |der: &[u8]| {
        verifier
            .verify_client_cert(&CertificateDer::from(der.to_vec()), &[], UnixTime::now())
            .map(drop)
    };
    verify(kept.der()).expect("not revoked: accepted");
    assert_eq!(
        verify(revoked.der()).expect_err("revoked: refused"),
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
    );
}
