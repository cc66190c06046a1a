//! The encodings of an ECDSA P-256 CA key that every custody shares: its
//! SubjectPublicKeyInfo from the raw point a library or token gives, and
//! an `Ecdsa-Sig-Value` (DER) from the raw `r ‖ s` PKCS#11 returns.
//! Fixed layouts of one curve, written out instead of pulling an ASN.1
//! crate into every custody.

use crate::CustodyError;

/// `SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0
/// unused bits) … }`: everything of a P-256 SubjectPublicKeyInfo before
/// the 65-byte uncompressed point.
pub const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// An uncompressed P-256 point: `04 ‖ x (32) ‖ y (32)`.
pub const POINT_LEN: usize = 65;

/// The longest CA key label: it names a token object and goes into
/// associated data, both of which want it short.
pub const MAX_LABEL_LEN: usize = 64;

/// The SubjectPublicKeyInfo (DER) of the uncompressed P-256 `point`.
pub fn spki_from_point(point: &[u8]) -> Result<Vec<u8>, CustodyError> {
    if point.len() != POINT_LEN || point[0] != 0x04 {
        return Err(CustodyError::InvalidCaKey(format!(
            "a P-256 public key is a 65-byte uncompressed point, got {} bytes",
            point.len()
        )));
    }
    let mut spki = Vec::with_capacity(SPKI_PREFIX.len() + POINT_LEN);
    spki.extend_from_slice(&SPKI_PREFIX);
    spki.extend_from_slice(point);
    Ok(spki)
}

/// The uncompressed point of a P-256 SubjectPublicKeyInfo; refuses any
/// other key.
pub fn point_from_spki(spki: &[u8]) -> Result<&[u8], CustodyError> {
    match spki.strip_prefix(&SPKI_PREFIX[..]) {
        Some(point) if point.len() == POINT_LEN && point[0] == 0x04 => Ok(point),
        _ => Err(CustodyError::InvalidCaKey(
            "the public key is not an EC P-256 SubjectPublicKeyInfo".into(),
        )),
    }
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (DER) from the
/// raw `r ‖ s` of CKM_ECDSA on P-256 (32 bytes each, big-endian).
pub fn signature_to_der(raw: &[u8]) -> Result<Vec<u8>, CustodyError> {
    if raw.len() != 64 {
        return Err(CustodyError::InvalidCaKey(format!(
            "a P-256 signature is 64 bytes (r ‖ s), got {}",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(32);
    let (r, s) = (integer(r), integer(s));
    // At most 2 × (2 + 33) = 70 content bytes: a one-byte length.
    let mut der = Vec::with_capacity(2 + r.len() + s.len());
    der.push(0x30);
    der.push(u8::try_from(r.len() + s.len()).unwrap_or(u8::MAX));
    der.extend_from_slice(&r);
    der.extend_from_slice(&s);
    Ok(der)
}

/// A DER INTEGER of the unsigned big-endian `value`: leading zero bytes
/// dropped (keeping one for zero), and a zero byte put back when the top
/// bit is set, so that it stays positive.
fn integer(value: &[u8]) -> Vec<u8> {
    let start = value
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(value.len().saturating_sub(1));
    let value = &value[start..];
    let pad = value.first().is_some_and(|b| b & 0x80 != 0);
    let len = value.len() + usize::from(pad);
    let mut out = Vec::with_capacity(2 + len);
    out.push(0x02);
    out.push(u8::try_from(len).unwrap_or(u8::MAX));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(value);
    out
}

/// Checks a CA key's label: 1 to [`MAX_LABEL_LEN`] printable ASCII
/// characters (space included), none of them `|`, the separator of the
/// associated data it is bound into.
pub fn check_label(label: &str) -> Result<(), CustodyError> {
    let printable = label
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'|');
    if label.is_empty() || label.len() > MAX_LABEL_LEN || !printable {
        return Err(CustodyError::Config(format!(
            "a CA key label is 1 to {MAX_LABEL_LEN} printable ASCII characters without `|`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_become_minimal_positive_der_integers() {
        // Top bit set in r: a zero byte is put back; s with leading zeros:
        // they are dropped.
        let mut raw = [0u8; 64];
        raw[0] = 0x80;
        raw[31] = 1;
        raw[32 + 30] = 0x7f;
        raw[63] = 2;
        let der = signature_to_der(&raw).expect("64 bytes");
        let mut r = vec![0x02, 33, 0x00, 0x80];
        r.extend_from_slice(&[0; 30]);
        r.push(1);
        let s = [0x02, 2, 0x7f, 2];
        let mut expected = vec![0x30, (r.len() + s.len()) as u8];
        expected.extend_from_slice(&r);
        expected.extend_from_slice(&s);
        assert_eq!(der, expected);
        // All zero: one zero byte each (never a valid signature, but
        // well-formed DER).
        assert_eq!(
            signature_to_der(&[0; 64]).expect("64 bytes"),
            [0x30, 6, 2, 1, 0, 2, 1, 0]
        );
        assert!(signature_to_der(&[1; 63]).is_err());
    }

    #[test]
    fn p256_keys_round_trip_and_others_are_refused() {
        let mut point = [7u8; POINT_LEN];
        point[0] = 4;
        let spki = spki_from_point(&point).expect("a point");
        assert_eq!(spki.len(), 91);
        assert_eq!(point_from_spki(&spki).expect("P-256"), &point[..]);
        assert!(spki_from_point(&point[1..]).is_err());
        let mut p384 = spki.clone();
        p384[22] = 0x22;
        assert!(point_from_spki(&p384).is_err());
        assert!(point_from_spki(&spki[..90]).is_err());
    }

    #[test]
    fn labels_are_short_printable_and_without_separators() {
        check_label("enos device CA 2026-12").expect("fine");
        for bad in ["", "a|b", "tab\there", "é", &"x".repeat(MAX_LABEL_LEN + 1)] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
    }
}
