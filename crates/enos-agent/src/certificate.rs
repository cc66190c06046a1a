//! [`CertificateInfo`]: what the renewal schedule needs of the device
//! certificate, its validity, read from the PEM file.
//!
//! The validity sits at a fixed place in every X.509 certificate
//! (`Certificate → tbsCertificate → [version] serial signature issuer
//! validity`), so a few lines of DER reading find it. A full X.509 parser
//! (x509-parser and its ASN.1 stack) would grow the agent's binary, and
//! its RSS follows its size (see the crate docs); rustls already checks
//! everything else about the certificate when it is presented.

use std::path::Path;

use crate::error::AgentError;

/// The device certificate, as far as renewal is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// `notBefore`, ms since the epoch: the start of the lifetime the
    /// renewal point is a fraction of.
    pub not_before_ms: u64,
    /// `notAfter`, ms since the epoch: after this the certificate cannot
    /// renew, only a new enrollment helps.
    pub not_after_ms: u64,
    /// A digest of the leaf's DER (FNV-1a): seeds the certificate's
    /// jitter, so that its renewal time is the same after a restart and
    /// differs between the gateways of a fleet.
    pub fingerprint: u64,
}

impl CertificateInfo {
    /// Reads the leaf (first) certificate of the PEM file at `path`.
    pub fn read(path: &Path) -> Result<CertificateInfo, AgentError> {
        let pem = std::fs::read(path).map_err(|source| AgentError::ReadFile {
            path: path.to_owned(),
            cause: source,
        })?;
        CertificateInfo::from_pem(&pem).map_err(|reason| AgentError::Tls {
            path: path.to_owned(),
            reason,
        })
    }

    /// The leaf (first) certificate of a PEM chain.
    pub fn from_pem(pem: &[u8]) -> Result<CertificateInfo, String> {
        let leaf = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .ok_or("no CERTIFICATE block found")?
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        CertificateInfo::from_der(&leaf)
    }

    /// A DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertificateInfo, String> {
        let (not_before_ms, not_after_ms) =
            validity(der).ok_or("not an X.509 certificate (no readable validity)")?;
        if not_after_ms <= not_before_ms {
            return Err("its notAfter is not after its notBefore".into());
        }
        Ok(CertificateInfo {
            not_before_ms,
            not_after_ms,
            fingerprint: fnv1a(der),
        })
    }

    /// The lifetime, ms.
    pub fn lifetime_ms(&self) -> u64 {
        self.not_after_ms - self.not_before_ms
    }
}

/// The leaf's serial number in decimal: EnOS's `certSN` (EnOS makes the
/// X.509 serial its certificate number). `None` when unreadable or
/// longer than 16 bytes.
pub fn serial_decimal(der: &[u8]) -> Option<String> {
    let (tag, certificate, _) = element(der)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, tbs, _) = element(certificate)?;
    (tag == SEQUENCE).then_some(())?;
    let (mut tag, mut serial, mut rest) = element(tbs)?;
    if tag == VERSION {
        (tag, serial, rest) = element(rest)?;
    }
    let _ = rest;
    (tag == INTEGER).then_some(())?;
    let digits: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
    if digits.len() > 16 || serial.first().is_some_and(|b| *b >= 0x80) {
        return None;
    }
    let n = digits.iter().fold(0u128, |n, b| (n << 8) | u128::from(*b));
    Some(n.to_string())
}

/// [`serial_decimal`] of the leaf of the PEM file at `path`.
pub fn read_serial(path: &Path) -> Result<String, AgentError> {
    let pem = std::fs::read(path).map_err(|source| AgentError::ReadFile {
        path: path.to_owned(),
        cause: source,
    })?;
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .and_then(Result::ok)
        .and_then(|der| serial_decimal(&der))
        .ok_or_else(|| AgentError::Tls {
            path: path.to_owned(),
            reason: "no readable certificate serial".into(),
        })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The `validity` contents of a DER certificate, and what follows it
/// in the `tbsCertificate` (`subject subjectPublicKeyInfo …`).
fn validity_and_rest(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (tag, certificate, _) = element(der)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, tbs, _) = element(certificate)?;
    (tag == SEQUENCE).then_some(())?;
    let (mut tag, _, mut rest) = element(tbs)?;
    if tag == VERSION {
        (tag, _, rest) = element(rest)?;
    }
    (tag == INTEGER).then_some(())?; // serialNumber
    let (tag, _, rest) = element(rest)?; // signature
    (tag == SEQUENCE).then_some(())?;
    let (tag, _, rest) = element(rest)?; // issuer
    (tag == SEQUENCE).then_some(())?;
    let (tag, validity, rest) = element(rest)?;
    (tag == SEQUENCE).then_some(())?;
    Some((validity, rest))
}

/// The `subjectPublicKeyInfo` of a DER certificate, whole (tag and
/// length included): what a token key is found by.
pub fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    let (_, rest) = validity_and_rest(der)?;
    let (tag, _, rest) = element(rest)?; // subject
    (tag == SEQUENCE).then_some(())?;
    let (tag, _, after) = element(rest)?;
    (tag == SEQUENCE).then_some(())?;
    Some(&rest[..rest.len() - after.len()])
}

/// `(notBefore, notAfter)` in ms since the epoch.
fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (validity, _) = validity_and_rest(der)?;
    let (tag, not_before, rest) = element(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    let not_after = time(tag, not_after)?;
    Some((not_before, not_after))
}

/// A DER `UTCTime` (`YYMMDDHHMMSSZ`) or `GeneralizedTime`
/// (`YYYYMMDDHHMMSSZ`), as RFC 5280 requires them, in ms since the epoch.
fn time(tag: u8, text: &[u8]) -> Option<u64> {
    let digits = |s: &[u8]| -> Option<u64> {
        s.iter().try_fold(0u64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`), for years from 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    fn certificate(not_before: SystemTime, not_after: SystemTime) -> rcgen::Certificate {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["device".into()]).expect("params");
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.self_signed(&key).expect("certificate")
    }

    fn ms(t: SystemTime) -> u64 {
        u64::try_from(
            t.duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("fits")
    }

    #[test]
    fn the_subject_public_key_info_is_the_keys() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).expect("key");
            let cert = CertificateParams::new(vec!["device".into()])
                .expect("params")
                .self_signed(&key)
                .expect("certificate");
            assert_eq!(
                subject_public_key_info(cert.der()),
                Some(rcgen::PublicKeyData::subject_public_key_info(&key).as_slice())
            );
        }
        assert_eq!(subject_public_key_info(b"\x30\x03\x02\x01\x01"), None);
    }

    #[test]
    fn the_validity_is_read_from_utc_and_generalized_times() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050.
        let not_before = UNIX_EPOCH + Duration::from_secs(1_796_000_123); // 2026-11-29
        let not_after = UNIX_EPOCH + Duration::from_secs(2_556_057_600 + 86_399); // 2050-12-31T23:59:59
        let cert = certificate(not_before, not_after);
        let info = CertificateInfo::from_pem(cert.pem().as_bytes()).expect("reads");
        assert_eq!(info.not_before_ms, ms(not_before));
        assert_eq!(info.not_after_ms, ms(not_after));
        assert_eq!(info.lifetime_ms(), ms(not_after) - ms(not_before));

        // Leap days, end of a leap year, and the epoch itself.
        for secs in [
            951_782_400u64,
            1_709_164_800,
            1_735_603_199,
            0,
            4_107_542_399,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let cert = certificate(t, t + Duration::from_secs(3600));
            let info = CertificateInfo::from_der(cert.der()).expect("reads");
            assert_eq!(info.not_before_ms, secs * 1000, "{secs}");
        }
    }

    #[test]
    fn garbage_is_refused_and_not_a_panic() {
        let cert = certificate(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            UNIX_EPOCH + Duration::from_secs(1_800_086_400),
        );
        let der = cert.der().to_vec();
        for cut in [0, 1, 2, 10, 40, der.len() / 2, der.len() - 1] {
            let _ = CertificateInfo::from_der(&der[..cut]);
        }
        assert!(CertificateInfo::from_der(b"\x30\x03\x02\x01\x00").is_err());
        assert!(CertificateInfo::from_pem(b"no pem here").is_err());
        assert_ne!(
            CertificateInfo::from_der(&der).expect("whole").fingerprint,
            fnv1a(b"another certificate")
        );
    }
}
