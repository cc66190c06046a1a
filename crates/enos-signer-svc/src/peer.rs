//! Who is calling: the identity in the mTLS client certificate.
//!
//! The rule is [`enos_signer_proto::identity`]: the leaf certificate
//! carries exactly one URI SAN under `spiffe://enos/`, naming a device
//! (`device/{productKey}/{deviceKey}`) or an admin (`admin/{name}`).
//! The chain was already verified against the client CA in the TLS
//! handshake; a certificate from another CA never gets this far.

use std::{collections::HashMap, sync::RwLock};

use enos_signer_proto::identity::{PeerIdentity, URI_PREFIX};
use tonic::Request;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::error::{Result, SignerError};

/// The caller's identity, or Unauthenticated.
pub fn identity<T>(request: &Request<T>) -> Result<PeerIdentity> {
    identity_cached(request, None)
}

/// As [`identity`], remembering the identities of certificates already
/// seen in `cache`.
pub fn identity_cached<T>(
    request: &Request<T>,
    cache: Option<&IdentityCache>,
) -> Result<PeerIdentity> {
    let certs = request.peer_certs().ok_or(SignerError::Unauthenticated(
        "a client certificate is required",
    ))?;
    let leaf = certs.first().ok_or(SignerError::Unauthenticated(
        "a client certificate is required",
    ))?;
    match cache {
        Some(cache) => cache.identity(leaf.as_ref()),
        None => identity_of_certificate(leaf.as_ref()),
    }
}

/// Identities of certificates already parsed, keyed by the whole DER
/// certificate: equal bytes are the same certificate, so a hit is exactly
/// what parsing would give. Every connection presents its certificate on
/// every call; this spares parsing it each time. Bounded: emptied when
/// full.
pub struct IdentityCache {
    /// DER → identity. Refusals are not cached.
    map: RwLock<HashMap<Box<[u8]>, PeerIdentity>>,
    /// At most this many certificates are remembered.
    capacity: usize,
}

impl IdentityCache {
    /// A cache of up to `capacity` certificates.
    pub fn new(capacity: usize) -> Self {
        IdentityCache {
            map: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// The identity `der` names (see [`identity_of_certificate`]).
    pub fn identity(&self, der: &[u8]) -> Result<PeerIdentity> {
        if let Some(identity) = self.map.read().ok().and_then(|m| m.get(der).cloned()) {
            return Ok(identity);
        }
        let identity = identity_of_certificate(der)?;
        if let Ok(mut map) = self.map.write() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(der.into(), identity.clone());
        }
        Ok(identity)
    }
}

/// The identity a DER certificate names, by the URI SAN rule.
pub fn identity_of_certificate(der: &[u8]) -> Result<PeerIdentity> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| SignerError::Unauthenticated("the client certificate cannot be parsed"))?;
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

    #[test]
    fn the_cache_answers_as_parsing_does() {
        let pki = enos_testkit::Pki::new("t").expect("pki");
        let cache = IdentityCache::new(2);
        let certs: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .map(|dk| der(&pki.device("Pk", dk).expect("cert").cert_pem))
            .collect();
        for _ in 0..2 {
            for cert in &certs {
                assert_eq!(
                    cache.identity(cert).expect("cached"),
                    identity_of_certificate(cert).expect("parsed")
                );
            }
        }
        assert!(cache.map.read().expect("lock").len() <= 2, "bounded");
        let nobody = der(&pki.client_with_uri("x", None).expect("cert").cert_pem);
        assert!(cache.identity(&nobody).is_err());
        assert!(cache.identity(&nobody).is_err(), "refusals are not cached");
        assert!(cache.map.read().expect("lock").len() <= 2);
    }
}
