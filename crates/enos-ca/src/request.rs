//! [`RequestedKey`]: a certificate signing request (PKCS#10), read,
//! its signature checked, and reduced to the one thing taken from it, its
//! public key.

use x509_parser::{
    certification_request::X509CertificationRequest,
    der_parser::oid::Oid,
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    },
    prelude::FromDer,
    public_key::PublicKey,
};

use crate::error::CaError;

/// The smallest RSA modulus certified, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The kinds of key this CA certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// RSA, with its modulus size in bits (2048 or more).
    Rsa(usize),
}

/// The public key of a request whose signature verified, of an accepted
/// kind. Nothing else of the request survives.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestedKey {
    /// The key, as the certificate will carry it.
    public_key: rcgen::SubjectPublicKeyInfo,
    /// What kind it is (for the audit record and the policy).
    kind: KeyKind,
}

impl std::fmt::Debug for RequestedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestedKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl RequestedKey {
    /// Reads a request in PEM (`CERTIFICATE REQUEST`) or DER of at most
    /// `limit` bytes, checks the key's kind and the request's signature
    /// with that key.
    pub fn from_csr(csr: &[u8], limit: usize) -> Result<Self, CaError> {
        if csr.len() > limit {
            return Err(CaError::TooLarge {
                size: csr.len(),
                limit,
            });
        }
        let pem;
        let der = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
            pem = x509_parser::pem::parse_x509_pem(csr)
                .map_err(|_| CaError::Unreadable)?
                .1;
            if !pem.label.ends_with("CERTIFICATE REQUEST") {
                return Err(CaError::Unreadable);
            }
            &pem.contents[..]
        } else {
            csr
        };
        let (rest, request) =
            X509CertificationRequest::from_der(der).map_err(|_| CaError::Unreadable)?;
        if !rest.is_empty() {
            return Err(CaError::Unreadable);
        }
        // The kind first: a key this CA refuses is named as such, not as
        // a signature that does not verify (ring verifies no RSA under
        // 2048 bits, nor curves other than P-256 and P-384).
        let spki = &request.certification_request_info.subject_pki;
        let kind = key_kind(spki)?;
        request
            .verify_signature()
            .map_err(|_| CaError::BadSignature)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|_| CaError::UnsupportedKey(describe(spki)))?;
        Ok(RequestedKey { public_key, kind })
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key as rcgen signs it into a certificate.
    pub fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.public_key
    }
}

/// The kind of `spki`, if this CA certifies it.
fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CaError> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        return match curve(spki) {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::EcP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::EcP384),
            _ => Err(CaError::UnsupportedKey(describe(spki))),
        };
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CaError::UnsupportedKey(describe(spki))),
        };
        return if bits >= MIN_RSA_BITS {
            Ok(KeyKind::Rsa(bits))
        } else {
            Err(CaError::UnsupportedKey(describe(spki)))
        };
    }
    Err(CaError::UnsupportedKey(describe(spki)))
}

/// The named curve of an EC key.
fn curve<'a>(spki: &'a x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<Oid<'a>> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
}

/// A key's algorithm in words, for a refusal: its OID, its curve, its
/// size; never key material.
fn describe(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    let oid = |o: &Oid<'_>| o.to_id_string();
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = curve(spki).map_or_else(|| "?".to_owned(), |c| oid(&c));
        return format!("EC on curve {curve}");
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = spki.parsed().map_or(0, |k| k.key_size());
        return format!("RSA of {bits} bits");
    }
    format!("of algorithm {}", oid(algorithm))
}
