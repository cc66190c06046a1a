//! [`revocation_list`]: the CA's certificate revocation list (RFC 5280
//! §5), signed by the same issuer as the certificates, so by the key in
//! custody.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevocationReason, RevokedCertParams,
    SerialNumber, SigningKey,
};

use crate::error::CaError;

/// One revoked certificate, as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Its serial: hex as [`crate::Serial::to_hex`] prints it (upper case
    /// and odd lengths are read too).
    pub serial: String,
    /// When it was revoked, unix milliseconds (the CRL keeps seconds).
    pub revoked_at_ms: u64,
    /// Why, in the registry's words: mapped to an RFC 5280 reason code by
    /// [`reason_code`], or left without one.
    pub reason: String,
}

/// The CRL of `issuer` listing `entries`, valid from `this_update` until
/// `next_update` (when the next one is due), numbered `crl_number` (which
/// must grow from one CRL to the next; unix milliseconds of `this_update`
/// are a fine choice across replicas). DER.
pub fn revocation_list(
    entries: &[RevokedEntry],
    issuer: &Issuer<'_, impl SigningKey>,
    this_update: SystemTime,
    next_update: SystemTime,
    crl_number: u64,
) -> Result<Vec<u8>, CaError> {
    if next_update <= this_update {
        return Err(CaError::Validity(
            "a CRL's next update must come after its this update",
        ));
    }
    let revoked_certs = entries
        .iter()
        .map(|entry| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(&entry.serial)?),
                revocation_time: (SystemTime::UNIX_EPOCH
                    + Duration::from_secs(entry.revoked_at_ms / 1000))
                .into(),
                reason_code: reason_code(&entry.reason),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    let params = CertificateRevocationListParams {
        this_update: this_update.into(),
        next_update: next_update.into(),
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer)?.der().to_vec())
}

/// The RFC 5280 reason code of a revocation reason in words: the code's
/// own name in any case and spacing (`keyCompromise`, `key compromise`,
/// `key-compromise`), and the registry's automatic reasons (`device
/// deleted`, `device disabled`: cessation of operation). Anything else
/// gets no code (RFC 5280 asks that `unspecified` be left out).
pub fn reason_code(reason: &str) -> Option<RevocationReason> {
    let word: String = reason
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Some(match word.as_str() {
        "keycompromise" => RevocationReason::KeyCompromise,
        "cacompromise" => RevocationReason::CaCompromise,
        "affiliationchanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationofoperation" | "devicedeleted" | "devicedisabled" => {
            RevocationReason::CessationOfOperation
        }
        "privilegewithdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// The bytes of a hex serial of 1 to 20 bytes.
fn serial_bytes(hex: &str) -> Result<Vec<u8>, CaError> {
    let invalid = || CaError::Serial(hex.chars().take(48).collect());
    if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    padded
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(invalid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_hex_of_one_to_twenty_bytes() {
        assert_eq!(serial_bytes("0a1B").expect("hex"), [0x0a, 0x1b]);
        assert_eq!(serial_bytes("abc").expect("odd"), [0x0a, 0xbc]);
        for bad in ["", "xyz", "0a:1b", &"a".repeat(41)] {
            assert!(
                matches!(serial_bytes(bad), Err(CaError::Serial(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn reasons_in_words_map_to_rfc5280_codes() {
        assert_eq!(
            reason_code("Key Compromise"),
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(
            reason_code("keyCompromise"),
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(
            reason_code("device deleted"),
            Some(RevocationReason::CessationOfOperation)
        );
        assert_eq!(reason_code("the operator said so"), None);
    }
}
