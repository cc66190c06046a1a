//! Who is calling: the identity in the mTLS client certificate.
//!
//! The rule is [`enos_signer_proto::identity`]: the leaf certificate
//! carries exactly one URI SAN under `spiffe://enos/`, naming a device
//! (`device/{productKey}/{deviceKey}`) or an admin (`admin/{name}`).
//! The handshake verified the chain against the material current then; a
//! certificate from another CA never gets this far. A connection outlives
//! that material, so [`IdentityCache`] checks each certificate again
//! whenever the material changed (new CRLs, a new CA) and when it expires:
//! a device revoked while its connection is open is refused on it.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use enos_signer_proto::identity::{PeerIdentity, URI_PREFIX};
use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::Request;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::{
    error::{Result, SignerError},
    listener::tls_reload::TlsGeneration,
};

/// Why a certificate the handshake took is refused now.
const NOT_VALID_NOW: &str =
    "the client certificate is revoked, expired, or not issued by the client CA";

/// What certificates were found to be, keyed by the whole DER leaf: equal
/// bytes are the same certificate. Every connection presents its
/// certificate on every call; this spares parsing and verifying it each
/// time, so a call costs a map lookup until the TLS material changes or the
/// certificate expires. Bounded: emptied when full.
pub struct IdentityCache {
    /// DER leaf → what it was found to be. Unparsable certificates are
    /// not remembered (they cost no verification).
    map: RwLock<HashMap<Box<[u8]>, Checked>>,
    /// At most this many certificates are remembered.
    capacity: usize,
}

/// What one certificate was found to be, and against what.
#[derive(Clone)]
struct Checked {
    /// Its identity, or why it is refused: a refused certificate is
    /// remembered too, so a revoked device retrying costs a lookup.
    verdict: std::result::Result<PeerIdentity, &'static str>,
    /// The [`TlsGeneration::number`] it was checked against: newer
    /// material checks it again.
    generation: u64,
    /// Its notAfter, seconds since the epoch: an accepted certificate is
    /// checked again (and refused) once it expires.
    not_after: u64,
    /// Its serial (lower-case hex, as the registry keys it): a device's
    /// revocation is looked up by it on each call, and a renewal names
    /// the certificate it renews by it.
    serial: Arc<str>,
}

impl Checked {
    /// Whether the verdict still holds under `generation` at `now`.
    fn holds(&self, generation: u64, now: UnixTime) -> bool {
        self.generation == generation && (self.verdict.is_err() || now.as_secs() < self.not_after)
    }
}

impl IdentityCache {
    /// A cache of up to `capacity` certificates.
    pub fn new(capacity: usize) -> Self {
        IdentityCache {
            map: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// The caller's identity (Unauthenticated if none, or if its
    /// certificate is not valid under `tls` now).
    pub fn identity<T>(&self, request: &Request<T>, tls: &TlsGeneration) -> Result<PeerIdentity> {
        Ok(self.identify(request, tls)?.0)
    }

    /// The caller's identity and its certificate's serial (lower-case
    /// hex), checked like [`IdentityCache::identity`].
    pub fn identify<T>(
        &self,
        request: &Request<T>,
        tls: &TlsGeneration,
    ) -> Result<(PeerIdentity, Arc<str>)> {
        let certs = request.peer_certs().ok_or(SignerError::Unauthenticated(
            "a client certificate is required",
        ))?;
        self.identify_chain(&certs, tls)
    }

    /// The identity `chain` (leaf first) names, checked against `tls`.
    pub fn identity_of_chain(
        &self,
        chain: &[CertificateDer<'_>],
        tls: &TlsGeneration,
    ) -> Result<PeerIdentity> {
        Ok(self.identify_chain(chain, tls)?.0)
    }

    /// The identity `chain` (leaf first) names and the leaf's serial.
    fn identify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        tls: &TlsGeneration,
    ) -> Result<(PeerIdentity, Arc<str>)> {
        let (leaf, intermediates) = chain.split_first().ok_or(SignerError::Unauthenticated(
            "a client certificate is required",
        ))?;
        let now = UnixTime::now();
        let known = self
            .map
            .read()
            .ok()
            .and_then(|m| m.get(leaf.as_ref()).cloned());
        if let Some(checked) = known.filter(|c| c.holds(tls.number, now)) {
            return checked
                .verdict
                .map(|identity| (identity, checked.serial))
                .map_err(SignerError::Unauthenticated);
        }
        let (identity, not_after, serial) = parse(leaf.as_ref())?;
        let verdict = verify(identity, leaf, intermediates, tls, now);
        if let Ok(mut map) = self.map.write() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(
                leaf.as_ref().into(),
                Checked {
                    verdict: verdict.clone(),
                    generation: tls.number,
                    not_after,
                    serial: Arc::clone(&serial),
                },
            );
        }
        verdict
            .map(|identity| (identity, serial))
            .map_err(SignerError::Unauthenticated)
    }
}

/// Whether the chain naming `identity` is valid under `tls` at `now`: a
/// device's chains to the client CA with the CRLs; so does an admin's,
/// unless admins have a CA of their own, which Admin checks on each of its
/// calls ([`crate::services::admin_gate`]).
fn verify(
    identity: PeerIdentity,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    tls: &TlsGeneration,
    now: UnixTime,
) -> std::result::Result<PeerIdentity, &'static str> {
    if matches!(identity, PeerIdentity::Admin { .. }) && tls.admin.is_some() {
        return Ok(identity);
    }
    tls.clients
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| identity)
        .map_err(|_| NOT_VALID_NOW)
}

/// A leaf's identity, notAfter (seconds since the epoch; 0 if before) and
/// serial (lower-case hex without leading zero bytes, as the registry keys
/// it).
fn parse(der: &[u8]) -> Result<(PeerIdentity, u64, Arc<str>)> {
    let cert = parsed(der)?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let serial = crate::listener::tls_reload::serial_hex(cert.tbs_certificate.raw_serial());
    Ok((identity_in(&cert)?, not_after, serial.into()))
}

fn parsed(der: &[u8]) -> Result<X509Certificate<'_>> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|_| SignerError::Unauthenticated("the client certificate cannot be parsed"))
}

/// The identity a DER certificate names, by the URI SAN rule.
pub fn identity_of_certificate(der: &[u8]) -> Result<PeerIdentity> {
    identity_in(&parsed(der)?)
}

/// The identity a parsed certificate names.
fn identity_in(cert: &X509Certificate<'_>) -> Result<PeerIdentity> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SignerError::Unauthenticated("the client certificate's SAN is malformed"))?
        .ok_or(SignerError::Unauthenticated(
            "the client certificate has no URI SAN naming an enos identity",
        ))?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => PeerIdentity::from_uri(uri).map_err(|_| {
            SignerError::Unauthenticated("the client certificate's URI SAN is not an enos identity")
        }),
        (None, _) => Err(SignerError::Unauthenticated(
            "the client certificate has no URI SAN naming an enos identity",
        )),
        (Some(_), Some(_)) => Err(SignerError::Unauthenticated(
            "the client certificate names more than one enos identity",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn reads_devices_and_admins_and_refuses_the_rest() {
        let pki = enos_testkit::Pki::new("t").expect("pki");
        let device = pki.device("Pk1", "dev-1").expect("device");
        match identity_of_certificate(&der(&device.cert_pem)).expect("device identity") {
            PeerIdentity::Device {
                product_key,
                device_key,
            } => assert_eq!(
                (product_key.as_str(), device_key.as_str()),
                ("Pk1", "dev-1")
            ),
            other => panic!("unexpected {other}"),
        }
        let admin = pki.admin("ops").expect("admin");
        assert_eq!(
            identity_of_certificate(&der(&admin.cert_pem)).expect("admin identity"),
            PeerIdentity::Admin { name: "ops".into() }
        );
        for uri in [
            None,
            Some("spiffe://other/device/a/b"),
            Some("spiffe://enos/device/a"),
        ] {
            let cert = pki.client_with_uri("x", uri).expect("cert");
            let err = identity_of_certificate(&der(&cert.cert_pem)).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
    }

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(der(pem))]
    }

    #[test]
    fn the_cache_answers_as_parsing_does_and_checks_again_when_the_material_changes() {
        use crate::listener::tls_reload::{ReloadOutcome, ReloadingTls};
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = enos_testkit::Pki::new("t").expect("pki");
        let crl = dir.path().join("clients.crl");
        std::fs::write(&crl, pki.crl_pem(1, &[]).expect("crl")).expect("crl file");
        let mut config = crate::listener::tls_reload::tests::server_config(dir.path(), &pki);
        config.crls = vec![crl.clone()];
        let tls = ReloadingTls::load(&config, crate::listener::metrics::Metrics::new(), None)
            .expect("tls");
        let cache = IdentityCache::new(2);
        let devices: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|dk| pki.device("Pk", dk).expect("cert"))
            .collect();
        for _ in 0..2 {
            for device in &devices {
                assert_eq!(
                    cache
                        .identity_of_chain(&chain(&device.cert_pem), &tls.current())
                        .expect("cached"),
                    identity_of_certificate(&der(&device.cert_pem)).expect("parsed")
                );
            }
        }
        assert!(cache.map.read().expect("lock").len() <= 2, "bounded");
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
        assert!(cache.identity_of_chain(&garbage, &tls.current()).is_err());
        assert!(cache.map.read().expect("lock").len() <= 2);

        // A certificate of another CA (the handshake took it under older
        // material, say before a CA rotation) names nobody now.
        let stranger = enos_testkit::Pki::new("other").expect("pki");
        let foreign = stranger.device("Pk", "a").expect("cert");
        let refused = cache
            .identity_of_chain(&chain(&foreign.cert_pem), &tls.current())
            .expect_err("another CA");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.to_string(), NOT_VALID_NOW);

        // Revoked while remembered as good: the next generation refuses it.
        let revoked = &devices[2];
        cache
            .identity_of_chain(&chain(&revoked.cert_pem), &tls.current())
            .expect("good before");
        std::fs::write(&crl, pki.crl_pem(2, &[revoked]).expect("crl")).expect("crl file");
        assert!(matches!(tls.reload(), ReloadOutcome::Reloaded { .. }));
        for _ in 0..2 {
            let refused = cache
                .identity_of_chain(&chain(&revoked.cert_pem), &tls.current())
                .expect_err("revoked");
            assert_eq!(refused.to_string(), NOT_VALID_NOW);
        }
        cache
            .identity_of_chain(&chain(&devices[0].cert_pem), &tls.current())
            .expect("the others stay good");
    }
}
