//! The CA's rules with real keys and requests (rcgen for EC and Ed25519,
//! OpenSSL-made RSA and odd-curve requests in `fixtures/`: public requests
//! only, their private keys were never kept), and the chain
//! checked by the verifier the signer's own TLS uses (rustls webpki).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use enos_ca::{
    CaError, DeviceNames, KeyKind, RequestedKey, Validity, authority, issue::device_certificate,
};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime},
    server::WebPkiClientVerifier,
};
use x509_parser::{
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer,
};

const LIMIT: usize = 16 * 1024;
const DAY: Duration = Duration::from_secs(86_400);

fn names() -> DeviceNames {
    DeviceNames {
        uri: "spiffe://enos/device/Pk1/gw-001".into(),
        common_name: "Pk1/gw-001".into(),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A request for `key` that asks for what it should not get: other names,
/// server and code-signing usages (rcgen writes no CA bit into a request;
/// `fixtures/rsa2048-foreign.test-fixture.csr`, made by OpenSSL, asks for it too).
fn greedy_csr(key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::new(vec![
        "evil.example".to_owned(),
        "spiffe://enos/admin/root".to_owned(),
    ])
    .expect("params");
    params.subject_alt_names.push(SanType::URI(
        "spiffe://enos/admin/root".try_into().expect("uri"),
    ));
    params
        .distinguished_name
        .push(DnType::CommonName, "spiffe://enos/admin/root");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes()
}

/// A root CA in software and its issuer.
struct Root {
    key: KeyPair,
    der: Vec<u8>,
}

impl Root {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let validity = Validity::starting(SystemTime::now(), 365 * DAY).expect("validity");
        let der = authority::self_signed_root("enos device CA", validity, &key)
            .expect("root")
            .der()
            .to_vec();
        Root { key, der }
    }
}

/// What a client-certificate verifier trusting `root` says of `chain`.
fn verify(root: &[u8], chain: &[&[u8]]) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("verifier");
    let leaf = CertificateDer::from(chain[0].to_vec());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.to_vec()))
        .collect();
    verifier
        .verify_client_cert(&leaf, &intermediates, UnixTime::now())
        .map(drop)
}

#[test]
fn only_the_public_key_is_taken_from_a_request_and_the_names_are_the_signers() {
    let root = Root::new();
    let device_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let requested = RequestedKey::from_csr(&greedy_csr(&device_key), LIMIT).expect("accepted");
    assert_eq!(requested.kind(), KeyKind::EcP256);
    let validity = Validity::starting(SystemTime::now(), 30 * DAY).expect("validity");
    let issuer = authority::issuer(&root.der, &root.key).expect("issuer");
    let issued = device_certificate(&requested, &names(), validity, &issuer).expect("issued");

    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(issued.der())
        .expect("parse the issued certificate");
    // Exactly one name: the signer's URI.
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .expect("san ext")
        .expect("san present")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("uri:{u}"),
            other => format!("other:{other:?}"),
        })
        .collect();
    assert_eq!(sans, vec!["uri:spiffe://enos/device/Pk1/gw-001".to_owned()]);
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect();
    assert_eq!(cn, vec!["Pk1/gw-001"]);
    // A leaf for client authentication only.
    assert!(
        !cert.is_ca(),
        "the CA bit the request asked for is not given"
    );
    let eku = cert
        .extended_key_usage()
        .expect("eku ext")
        .expect("eku present")
        .value;
    assert!(eku.client_auth && !eku.server_auth && !eku.code_signing && !eku.any);
    for ext in cert.extensions() {
        if let ParsedExtension::BasicConstraints(bc) = ext.parsed_extension() {
            assert!(!bc.ca);
        }
    }
    // The request's key, the policy's lifetime, a 16-byte positive serial.
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&device_key).as_slice()
    );
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(
        lifetime as u64,
        (30 * DAY + enos_ca::issue::BACKDATE).as_secs()
    );
    assert_eq!(cert.raw_serial(), &issued.serial.as_bytes()[..]);
    assert_eq!(
        cert.raw_serial_as_string().replace(':', ""),
        issued.serial.to_hex()
    );
    // And the signer's TLS would accept it as a client certificate.
    verify(&root.der, &[issued.der()]).expect("chains to the root");
    assert!(issued.pem().starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn accepted_keys_are_p256_p384_and_rsa_of_2048_bits_or_more() {
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
    assert_eq!(
        RequestedKey::from_csr(&greedy_csr(&p384), LIMIT)
            .expect("p384")
            .kind(),
        KeyKind::EcP384
    );
    let rsa =
        RequestedKey::from_csr(&fixture("rsa2048.test-fixture.csr"), LIMIT).expect("rsa 2048");
    assert_eq!(rsa.kind(), KeyKind::Rsa(2048));
    // An RSA request asking for foreign names and the CA bit is accepted,
    // and what it asked for is ignored as for EC.
    let root = Root::new();
    let foreign = RequestedKey::from_csr(&fixture("rsa2048-foreign.test-fixture.csr"), LIMIT)
        .expect("accepted");
    let validity = Validity::starting(SystemTime::now(), DAY).expect("validity");
    let issuer = authority::issuer(&root.der, &root.key).expect("issuer");
    let issued = device_certificate(&foreign, &names(), validity, &issuer).expect("issued");
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(issued.der()).expect("parse");
    assert!(!cert.is_ca());
    verify(&root.der, &[issued.der()]).expect("chains");

    for (name, what) in [
        ("rsa1024.test-fixture.csr", "RSA of 1024 bits"),
        ("p521.test-fixture.csr", "EC on curve 1.3.132.0.35"),
        ("secp256k1.test-fixture.csr", "EC on curve 1.3.132.0.10"),
    ] {
        let refused = RequestedKey::from_csr(&fixture(name), LIMIT).expect_err(name);
        assert_eq!(refused, CaError::UnsupportedKey(what.to_owned()), "{name}");
        assert!(refused.to_string().contains("P-256 or P-384"), "{refused}");
    }
    let ed25519 = KeyPair::generate_for(&PKCS_ED25519).expect("key");
    let refused = RequestedKey::from_csr(&greedy_csr(&ed25519), LIMIT).expect_err("ed25519");
    assert_eq!(
        refused,
        CaError::UnsupportedKey("of algorithm 1.3.101.112".to_owned())
    );
}

#[test]
fn garbage_oversized_mislabelled_and_forged_requests_are_refused() {
    assert_eq!(
        RequestedKey::from_csr(b"not a request", LIMIT).expect_err("garbage"),
        CaError::Unreadable
    );
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let pem = greedy_csr(&key);
    assert_eq!(
        RequestedKey::from_csr(&pem, 100).expect_err("too large"),
        CaError::TooLarge {
            size: pem.len(),
            limit: 100
        }
    );
    // A certificate is not a request.
    let root = Root::new();
    let cert_pem = pem_of("CERTIFICATE", &root.der);
    assert_eq!(
        RequestedKey::from_csr(cert_pem.as_bytes(), LIMIT).expect_err("certificate"),
        CaError::Unreadable
    );
    // A request whose content was changed after signing: the name it
    // carries is altered, so the signature no longer matches.
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "AAAA");
    let mut der = params.serialize_request(&key).expect("csr").der().to_vec();
    let at = der
        .windows(4)
        .position(|w| w == b"AAAA")
        .expect("the CN is in the DER");
    der[at] = b'B';
    assert_eq!(
        RequestedKey::from_csr(&der, LIMIT).expect_err("forged"),
        CaError::BadSignature
    );
    // Trailing bytes after the request.
    let mut trailing = params.serialize_request(&key).expect("csr").der().to_vec();
    trailing.push(0);
    assert_eq!(
        RequestedKey::from_csr(&trailing, LIMIT).expect_err("trailing"),
        CaError::Unreadable
    );
}

#[test]
fn an_intermediate_signed_by_the_operators_root_issues_certificates_that_chain() {
    // The operator's own root, outside the signer.
    let operator_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
    let mut operator_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    operator_params
        .distinguished_name
        .push(DnType::CommonName, "operator root");
    operator_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let operator_root = operator_params.self_signed(&operator_key).expect("root");
    let operator_issuer = rcgen::Issuer::new(operator_params, &operator_key);

    // `ca init --intermediate`: the signer's key and its request.
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let request = authority::intermediate_request("enos device CA", &ca_key).expect("request");
    let request_pem = request.pem().expect("pem");
    // The operator signs it: its tool decides the CA constraints.
    let mut operator_view =
        rcgen::CertificateSigningRequestParams::from_pem(&request_pem).expect("parse");
    let as_leaf = operator_view.signed_by(&operator_issuer).expect("signed");
    assert_eq!(
        authority::is_usable_ca(as_leaf.der(), SystemTime::now()).expect_err("not a CA"),
        CaError::Validity("the certificate is not a CA"),
        "an intermediate signed without the CA bit is refused before use"
    );
    operator_view.params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    operator_view.params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let signed = operator_view.signed_by(&operator_issuer).expect("signed");
    authority::is_usable_ca(signed.der(), SystemTime::now()).expect("a usable CA");

    let issuer = authority::issuer(signed.der(), &ca_key).expect("issuer");
    let device_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let requested = RequestedKey::from_csr(&greedy_csr(&device_key), LIMIT).expect("accepted");
    let validity = Validity::starting(SystemTime::now(), DAY).expect("validity");
    let issued = device_certificate(&requested, &names(), validity, &issuer).expect("issued");
    verify(operator_root.der(), &[issued.der(), signed.der()]).expect("the full chain verifies");
    // Without the intermediate the leaf does not chain to the root.
    assert!(verify(operator_root.der(), &[issued.der()]).is_err());
}

#[test]
fn a_ca_certificate_must_be_a_ca_and_valid_now() {
    let root = Root::new();
    authority::is_usable_ca(&root.der, SystemTime::now()).expect("usable");
    assert!(authority::is_usable_ca(&root.der, SystemTime::now() + 400 * DAY).is_err());
    let issuer = authority::issuer(&root.der, &root.key).expect("issuer");
    let device_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let requested = RequestedKey::from_csr(&greedy_csr(&device_key), LIMIT).expect("accepted");
    let validity = Validity::starting(SystemTime::now(), DAY).expect("validity");
    let leaf = device_certificate(&requested, &names(), validity, &issuer).expect("issued");
    assert_eq!(
        authority::is_usable_ca(leaf.der(), SystemTime::now()).expect_err("a leaf"),
        CaError::Validity("the certificate is not a CA")
    );
    assert!(Validity::starting(SystemTime::now(), Duration::ZERO).is_err());
}

/// PEM of `der` under `label`, as an operator's file would hold it.
fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
