//! [`device_certificate`]: the certificate a device gets for a
//! [`RequestedKey`]. Its names are the signer's, never the request's.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType, SigningKey,
};

use crate::{error::CaError, request::RequestedKey, serial::Serial};

/// Backdating of `notBefore`: a device whose clock is a little behind
/// accepts its new certificate at once.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// The names a device's certificate carries, as the signer decides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNames {
    /// The one URI SAN: `spiffe://enos/device/{productKey}/{deviceKey}`,
    /// the identity the signer reads back from the certificate.
    pub uri: String,
    /// The subject's CN, for people reading the certificate (the signer
    /// never reads it back).
    pub common_name: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`: issue time less [`BACKDATE`].
    pub not_before: SystemTime,
    /// `notAfter`.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from `now` (backdated by [`BACKDATE`]) for `lifetime`.
    pub fn starting(now: SystemTime, lifetime: Duration) -> Result<Self, CaError> {
        if lifetime.is_zero() {
            return Err(CaError::Validity("the lifetime must not be zero"));
        }
        let not_before = now
            .checked_sub(BACKDATE)
            .ok_or(CaError::Validity("the clock is before 1970"))?;
        let not_after = now
            .checked_add(lifetime)
            .ok_or(CaError::Validity("the lifetime is too long"))?;
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// A certificate just signed.
#[derive(Debug)]
pub struct IssuedCertificate {
    /// Its serial (the registry's key for it, and the CRL's).
    pub serial: Serial,
    /// When it is valid.
    pub validity: Validity,
    /// The certificate (DER, and PEM for files).
    pub certificate: rcgen::Certificate,
}

impl IssuedCertificate {
    /// The certificate, DER.
    pub fn der(&self) -> &[u8] {
        self.certificate.der()
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> String {
        self.certificate.pem()
    }
}

/// Signs `key` into a device certificate named `names`, valid for
/// `validity`, issued by `issuer` (the CA's name and key; the key may be
/// in software or in a token).
///
/// The certificate is a leaf (`CA:FALSE`) for TLS client authentication
/// (clientAuth, digitalSignature), with a fresh random [`Serial`].
pub fn device_certificate(
    key: &RequestedKey,
    names: &DeviceNames,
    validity: Validity,
    issuer: &Issuer<'_, impl SigningKey>,
) -> Result<IssuedCertificate, CaError> {
    let serial = Serial::random()?;
    let mut params = CertificateParams::default();
    params.serial_number = Some(serial.into());
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, names.common_name.as_str());
    params.distinguished_name = subject;
    params.subject_alt_names =
        vec![SanType::URI(names.uri.as_str().try_into().map_err(
            |_| CaError::Signing("the device URI is not an IA5 string".into()),
        )?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(IssuedCertificate {
        serial,
        validity,
        certificate: params.signed_by(key.public_key(), issuer)?,
    })
}
