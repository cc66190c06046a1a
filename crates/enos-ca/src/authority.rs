//! The CA's own certificate, made once by `enos-signer ca init`: either a
//! self-signed root ([`self_signed_root`]) or a request an operator's own
//! root signs ([`intermediate_request`]), after which the signer serves
//! the whole chain. [`issuer`] turns the installed certificate and the
//! custody's key into what [`crate::issue::device_certificate`] signs
//! with.

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequest, DistinguishedName, DnType,
    IsCa, Issuer, KeyUsagePurpose, SigningKey,
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
