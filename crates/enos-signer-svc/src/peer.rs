//! Who is calling: the identity in the mTLS client certificate.
//!
//! The rule is [`enos_signer_proto::identity`]: the leaf certificate
//! carries exactly one URI SAN under `spiffe://enos/`, naming a device
//! (`device/{productKey}/{deviceKey}`) or an admin (`admin/{name}`).
//! The chain was already verified against the client CA in the TLS
//! handshake; a certificate from another CA never gets this far.

use enos_signer_proto::identity::{PeerIdentity, URI_PREFIX};
use tonic::Request;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::error::{Result, SignerError};

/// The caller's identity, or Unauthenticated.
pub fn identity<T>(request: &Request<T>) -> Result<PeerIdentity> {
    let certs = request.peer_certs().ok_or(SignerError::Unauthenticated(
        "a client certificate is required",
    ))?;
    let leaf = certs.first().ok_or(SignerError::Unauthenticated(
        "a client certificate is required",
    ))?;
    identity_of_certificate(leaf.as_ref())
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
}
