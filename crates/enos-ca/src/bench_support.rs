//! Raw loops for the benchmarks of #25 (feature `bench`; only dev
//! dependencies enable it, nothing that ships): the work of one
//! certificate issuance with a software key in memory, no custody, no
//! gRPC, no registry, so that the signer's gRPC benchmark can hold its
//! issuance rate against it in the same run.
//!
//! [`SoftwareIssuance::issue`] is "ECDSA P-256 sign + DER encoding of the
//! same certificate": [`crate::issue::device_certificate`] with a ring key
//! (rcgen's `KeyPair`) as the CA. [`SoftwareIssuance::issue_from_csr`]
//! adds what an enrollment or renewal also does per request before
//! signing, reading the CSR and checking its signature, to show where the
//! rest of the time goes. [`sign_and_verify`] is the check every custody's
//! tests run on a CA key it holds. Panics on any error (benchmark and test
//! support).

use std::{
    hint::black_box,
    time::{Duration, Instant, SystemTime},
};

use rcgen::{CertificateParams, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::{
    DeviceNames, IssuedCertificate, RequestedKey, Validity, authority, issue::device_certificate,
};

/// The largest CSR [`SoftwareIssuance::issue_from_csr`] reads.
const CSR_LIMIT: usize = 16 * 1024;

/// A CSR (PEM) for a fresh EC P-256 device key, as `enos-agent enroll`
/// sends: the subject is irrelevant, the signer sets its own names.
pub fn device_csr() -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
    CertificateParams::default()
        .serialize_request(&key)
        .expect("a CSR")
        .pem()
        .expect("PEM")
        .into_bytes()
}

/// A software CA (ring P-256 key, self-signed root) issuing the same
/// device certificate again and again.
pub struct SoftwareIssuance {
    /// The CA's certificate and key, in memory.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, to verify what was issued.
    ca_der: Vec<u8>,
    /// The request every issuance answers, as sent.
    csr: Vec<u8>,
    /// Its key, read and checked once (for [`SoftwareIssuance::issue`]).
    requested: RequestedKey,
    /// The device's names.
    names: DeviceNames,
    /// The certificates' lifetime.
    lifetime: Duration,
}

impl std::fmt::Debug for SoftwareIssuance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareIssuance")
            .field("names", &self.names)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl SoftwareIssuance {
    /// A new software CA answering `csr` (PEM or DER) with certificates
    /// named `names`, valid for `lifetime`: give it the request, names and
    /// lifetime the gRPC benchmark uses, so that both encode the same
    /// certificate.
    pub fn new(csr: &[u8], names: DeviceNames, lifetime: Duration) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a P-256 CA key");
        let validity = Validity::starting(SystemTime::now(), Duration::from_secs(365 * 86_400))
            .expect("validity");
        let ca_der = authority::self_signed_root("enos bench CA", validity, &key)
            .expect("a root")
            .der()
            .to_vec();
        let issuer = authority::issuer(&ca_der, key).expect("an issuer");
        let requested = RequestedKey::from_csr(csr, CSR_LIMIT).expect("a valid CSR");
        SoftwareIssuance {
            issuer,
            ca_der,
            csr: csr.to_vec(),
            requested,
            names,
            lifetime,
        }
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// One issuance: ECDSA P-256 sign + DER encoding of the certificate
    /// (a fresh serial and validity each time, as the signer does).
    pub fn issue(&self) -> IssuedCertificate {
        let validity = Validity::starting(SystemTime::now(), self.lifetime).expect("validity");
        device_certificate(&self.requested, &self.names, validity, &self.issuer).expect("issued")
    }

    /// [`SoftwareIssuance::issue`] after reading the CSR and checking its
    /// signature, as every enrollment and renewal must.
    pub fn issue_from_csr(&self) -> IssuedCertificate {
        let requested = RequestedKey::from_csr(&self.csr, CSR_LIMIT).expect("a valid CSR");
        let validity = Validity::starting(SystemTime::now(), self.lifetime).expect("validity");
        device_certificate(&requested, &self.names, validity, &self.issuer).expect("issued")
    }
}

/// Calls `f` for `duration` after a short warm-up; returns calls per
/// second. One thread: run it on several for a parallel figure.
pub fn rate(duration: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        for _ in 0..16 {
            f();
        }
        count += 16;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// [`rate`] of [`SoftwareIssuance::issue`] on `threads` threads at once,
/// summed: the raw figure to set against a gRPC run using as many
/// concurrent callers.
pub fn parallel_issue_rate(issuance: &SoftwareIssuance, threads: usize, duration: Duration) -> f64 {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    rate(duration, || {
                        black_box(issuance.issue());
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a worker"))
            .sum()
    })
}

/// Signs a root, a device certificate and a CRL revoking it (for `reason`)
/// with `signer`, and verifies all three with x509-parser against the
/// root: what a custody's CA key must do, in software or in a token.
/// Returns the root's SubjectPublicKeyInfo, to hold against the stored key.
pub fn sign_and_verify(
    signer: std::sync::Arc<dyn enos_custody::CaSigner>,
    reason: &str,
) -> Vec<u8> {
    use x509_parser::{prelude::FromDer, revocation_list::CertificateRevocationList};

    const DAY: Duration = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let key = authority::CustodyKey::new(std::sync::Arc::clone(&signer)).expect("a P-256 key");
    let root = authority::self_signed_root(
        "enos device CA",
        Validity::starting(now, 365 * DAY).expect("validity"),
        &key,
    )
    .expect("a root signed by the custody's key");
    let issuer = authority::custody_issuer(root.der(), signer).expect("issuer");
    let requested = RequestedKey::from_csr(&device_csr(), CSR_LIMIT).expect("csr");
    let names = DeviceNames {
        uri: "spiffe://enos/device/Pk1/gw-001".into(),
        common_name: "Pk1/gw-001".into(),
    };
    let issued = device_certificate(
        &requested,
        &names,
        Validity::starting(now, 30 * DAY).expect("validity"),
        &issuer,
    )
    .expect("a device certificate signed by the custody's key");
    let entry = crate::crl::RevokedEntry {
        serial: issued.serial.to_hex(),
        revoked_at_ms: 1_765_000_000_000,
        reason: reason.into(),
    };
    let crl_der = crate::crl::revocation_list(&[entry], &issuer, now, now + DAY, 3).expect("a CRL");

    let (_, ca) = x509_parser::parse_x509_certificate(root.der()).expect("root");
    ca.verify_signature(None).expect("the root verifies");
    let (_, leaf) = x509_parser::parse_x509_certificate(issued.der()).expect("leaf");
    leaf.verify_signature(Some(ca.public_key()))
        .expect("the device certificate verifies against the CA certificate");
    let (_, crl) = CertificateRevocationList::from_der(&crl_der).expect("crl");
    crl.verify_signature(ca.public_key())
        .expect("the CRL verifies against the CA certificate");
    let serials: Vec<String> = crl
        .iter_revoked_certificates()
        // The DER INTEGER keeps a 00 byte before a high first byte;
        // `to_hex` (the number) drops leading zero bytes.
        .map(|entry| {
            let raw = entry.raw_serial_as_string().replace(':', "");
            raw.trim_start_matches("00").to_owned()
        })
        .collect();
    assert_eq!(
        serials,
        vec![issued.serial.to_hex().trim_start_matches("00").to_owned()]
    );
    ca.public_key().raw.to_vec()
}
