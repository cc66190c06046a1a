//! The CA's own certificate, made once by `enos-signer ca init`: either a
//! self-signed root ([`self_signed_root`]) or a request an operator's own
//! root signs ([`intermediate_request`]), after which the signer serves
//! the whole chain. [`issuer`] turns the installed certificate and the
//! custody's key into what [`crate::issue::device_certificate`] signs
//! with; [`CustodyKey`] is that key when custody holds it
//! ([`custody_issuer`]).

use std::{cell::RefCell, sync::Arc, time::SystemTime};

use enos_custody::{CaSigner, CustodyError};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequest, DistinguishedName, DnType,
    IsCa, Issuer, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm,
    SigningKey,
};

use crate::{error::CaError, issue::Validity, serial::Serial};

/// The CA certificate's parameters: a CA that issues leaves only
/// (path length 0), signs certificates and CRLs, named `common_name`.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A distinguished name of one CN.
fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A self-signed root named `common_name`, valid for `validity`, whose
/// key is `key` (in software or in a token).
pub fn self_signed_root(
    common_name: &str,
    validity: Validity,
    key: &impl SigningKey,
) -> Result<rcgen::Certificate, CaError> {
    let mut params = ca_params(common_name);
    params.serial_number = Some(Serial::random()?.into());
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    Ok(params.self_signed(key)?)
}

/// A request for an intermediate CA named `common_name`, for the
/// operator's root to sign: the name and the key only, as PKCS#10 asks;
/// the operator's CA decides the CA constraints and the validity, and
/// [`is_usable_ca`] checks what it decided before the signer uses it.
pub fn intermediate_request(
    common_name: &str,
    key: &impl SigningKey,
) -> Result<CertificateSigningRequest, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    Ok(params.serialize_request(key)?)
}

/// The issuer of device certificates: the CA certificate installed
/// (`der`, root or intermediate) and its key.
pub fn issuer<S: SigningKey>(der: &[u8], key: S) -> Result<Issuer<'static, S>, CaError> {
    Ok(Issuer::from_ca_cert_der(&der.into(), key)?)
}

/// Whether `der` is a CA certificate valid at `now` (an installed
/// intermediate is checked before it is used).
pub fn is_usable_ca(der: &[u8], now: SystemTime) -> Result<(), CaError> {
    let (_, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CaError::Unreadable)?;
    if !certificate.is_ca() {
        return Err(CaError::Validity("the certificate is not a CA"));
    }
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| CaError::Validity("the clock is before 1970"))?;
    let now = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64)
        .map_err(|_| CaError::Validity("the clock is out of range"))?;
    if !certificate.validity().is_valid_at(now) {
        return Err(CaError::Validity(
            "the CA certificate is not valid now (expired, or not yet valid)",
        ));
    }
    Ok(())
}

/// A CA key held by custody, as rcgen signs with it: every signature is
/// [`CaSigner::sign`] (in software, or C_Sign in a token). ECDSA P-256
/// with SHA-256 only, as custody makes CA keys.
#[derive(Clone)]
pub struct CustodyKey {
    /// Signs; shared with whoever else holds the custody's signer.
    signer: Arc<dyn CaSigner>,
    /// The signer's public key, parsed once: rcgen asks for the raw point
    /// ([`PublicKeyData::der_bytes`]) and the algorithm on every
    /// certificate.
    public_key: rcgen::SubjectPublicKeyInfo,
}

impl std::fmt::Debug for CustodyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustodyKey")
            .field("algorithm", &"ECDSA P-256 SHA-256")
            .finish_non_exhaustive()
    }
}

impl CustodyKey {
    /// Wraps `signer`; refuses a public key that is not EC P-256.
    pub fn new(signer: Arc<dyn CaSigner>) -> Result<Self, CaError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(signer.public_key_der())
            .map_err(|_| CaError::UnsupportedKey("of the CA: unreadable".into()))?;
        if public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::UnsupportedKey(
                "of the CA: custody CA keys are EC P-256".into(),
            ));
        }
        Ok(CustodyKey { signer, public_key })
    }

    /// The custody's signer.
    pub fn signer(&self) -> &Arc<dyn CaSigner> {
        &self.signer
    }
}

thread_local! {
    /// Why the last [`CustodyKey::sign`] on this thread failed, until the
    /// `rcgen::Error` it became is turned into a [`CaError`].
    static KEY_ERROR: RefCell<Option<CustodyError>> = const { RefCell::new(None) };
}

/// The reason kept by the last failed [`CustodyKey::sign`] on this thread.
pub(crate) fn take_key_error() -> Option<CustodyError> {
    KEY_ERROR.with(|cell| cell.borrow_mut().take())
}

impl PublicKeyData for CustodyKey {
    fn der_bytes(&self) -> &[u8] {
        // For EC keys the raw point, not the SubjectPublicKeyInfo: rcgen
        // wraps it itself.
        self.public_key.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for CustodyKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer.sign(msg).map_err(|error| {
            KEY_ERROR.with(|cell| *cell.borrow_mut() = Some(error));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The issuer of device certificates (and CRLs) when custody holds the
/// key: the installed CA certificate `der` and the custody's `signer`.
/// Refuses a certificate that is not for the signer's key, so that a
/// wrong `ca import-cert` or a mixed-up registry is found before anything
/// is signed.
pub fn custody_issuer(
    der: &[u8],
    signer: Arc<dyn CaSigner>,
) -> Result<Issuer<'static, CustodyKey>, CaError> {
    let (_, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CaError::Unreadable)?;
    if certificate.public_key().raw != signer.public_key_der() {
        return Err(CaError::Validity(
            "the CA certificate is not for the CA key in custody",
        ));
    }
    issuer(der, CustodyKey::new(signer)?)
}
