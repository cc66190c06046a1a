//! The sealed record: its byte layout and the bytes its MAC covers.
//!
//! ```text
//! offset  size          field
//! 0       1             format = 1
//! 1       2             n: secret length, big endian (1..=256)
//! 3       16            iv for CKM_AES_CBC_ENCRYPT_DATA
//! 19      40            KWP(KEK, R): the record key R (AES-256) wrapped
//!                       with CKM_AES_KEY_WRAP_PAD under the token's KEK
//! 59      16·⌈n/16⌉     d: AES-CBC-DECRYPT(R, iv, secret ‖ zeros)
//! end-32  32            tag: HMAC-SHA256(MAC key, mac_input) computed
//!                       and verified inside the token
//! ```
//!
//! Why an envelope and not the secret wrapped directly: SoftHSM2 2.6's
//! CKM_AES_KEY_WRAP_PAD unwrap keeps the RFC 5649 padding (an 11-byte
//! secret comes back as 16 bytes, zero-filled), and an unwrap template may
//! not set CKA_VALUE_LEN, so `C_DigestKey` would digest the padding too.
//! A 32-byte key unwraps exactly, and `C_DeriveKey` with
//! CKM_AES_CBC_ENCRYPT_DATA honours CKA_VALUE_LEN, so at sign time
//! `CBC-ENCRYPT(R, iv, d)` truncated to `n` re-creates exactly the secret
//! as a sensitive, non-extractable session key. Each record has its own
//! random R and iv, so equal secrets give unrelated records.
//!
//! The tag binds the record to its [`SecretRef`](enos_custody::SecretRef):
//! `mac_input = "enos-custody/pkcs11-kwp-envelope-v1\0" ‖ u32be(len(ad)) ‖
//! ad ‖ record-without-tag`, with `ad` the reference's associated data
//! ([`SecretRef::associated_data`](enos_custody::SecretRef::associated_data)). A record copied to another device or
//! version fails `C_Verify` before anything is unwrapped.

use enos_sign_core::MAX_SECRET_LEN;

/// The scheme tag written into every [`enos_custody::SealedSecret`].
pub const SCHEME: &str = "pkcs11-kwp-envelope-v1";

/// Domain separation for the MAC: the MAC key signs nothing else, but a
/// future format must not be able to reuse a v1 tag.
const DOMAIN: &[u8] = b"enos-custody/pkcs11-kwp-envelope-v1\0";

const FORMAT: u8 = 1;
/// Length of the CBC iv.
pub(crate) const IV_LEN: usize = 16;
/// KWP of a 32-byte key: 32 + 8 bytes.
pub(crate) const WRAPPED_KEY_LEN: usize = 40;
/// HMAC-SHA256.
pub(crate) const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 1 + 2 + IV_LEN + WRAPPED_KEY_LEN;

/// The secret padded to whole AES blocks.
pub(crate) const fn padded_len(secret_len: usize) -> usize {
    secret_len.div_ceil(16) * 16
}

/// A parsed record; borrows the stored bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    /// The secret's length: what the derived key is truncated to.
    pub(crate) secret_len: usize,
    /// The CBC iv used when the secret was sealed.
    pub(crate) iv: [u8; IV_LEN],
    /// R under the KEK.
    pub(crate) wrapped_key: &'a [u8],
    /// The secret, CBC-decrypted under R.
    pub(crate) data: &'a [u8],
    /// Everything but the tag: what the tag covers (with the reference).
    pub(crate) body: &'a [u8],
    /// The in-token HMAC.
    pub(crate) tag: &'a [u8],
}

/// Why a record does not parse. Never shown in detail to clients: it
/// becomes [`enos_custody::CustodyError::Integrity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

impl<'a> Record<'a> {
    /// Parses strictly: every length must match exactly.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, Malformed> {
        if bytes.len() < HEADER_LEN + 16 + TAG_LEN || bytes[0] != FORMAT {
            return Err(Malformed);
        }
        let secret_len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        if secret_len == 0 || secret_len > MAX_SECRET_LEN {
            return Err(Malformed);
        }
        let data_len = padded_len(secret_len);
        if bytes.len() != HEADER_LEN + data_len + TAG_LEN {
            return Err(Malformed);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&bytes[3..3 + IV_LEN]);
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        Ok(Record {
            secret_len,
            iv,
            wrapped_key: &bytes[3 + IV_LEN..HEADER_LEN],
            data: &bytes[HEADER_LEN..HEADER_LEN + data_len],
            body,
            tag,
        })
    }
}

/// Lays out a record body (everything but the tag).
pub(crate) fn encode_body(
    secret_len: usize,
    iv: &[u8; IV_LEN],
    wrapped_key: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, Malformed> {
    let len = u16::try_from(secret_len).map_err(|_| Malformed)?;
    if wrapped_key.len() != WRAPPED_KEY_LEN || data.len() != padded_len(secret_len) {
        return Err(Malformed);
    }
    let mut body = Vec::with_capacity(HEADER_LEN + data.len() + TAG_LEN);
    body.push(FORMAT);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(iv);
    body.extend_from_slice(wrapped_key);
    body.extend_from_slice(data);
    Ok(body)
}

/// What the in-token HMAC covers: the domain, the reference's associated
/// data (length-prefixed, so no two (ad, body) pairs collide) and the body.
pub(crate) fn mac_input(associated_data: &[u8], body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(DOMAIN.len() + 4 + associated_data.len() + body.len());
    input.extend_from_slice(DOMAIN);
    // The associated data is a short string; saturating cannot be reached.
    let ad_len = u32::try_from(associated_data.len()).unwrap_or(u32::MAX);
    input.extend_from_slice(&ad_len.to_be_bytes());
    input.extend_from_slice(associated_data);
    input.extend_from_slice(body);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secret_len: usize) -> Vec<u8> {
        let mut bytes = encode_body(
            secret_len,
            &[7; IV_LEN],
            &[1; WRAPPED_KEY_LEN],
            &vec![2; padded_len(secret_len)],
        )
        .expect("valid parts");
        bytes.extend_from_slice(&[3; TAG_LEN]);
        bytes
    }

    #[test]
    fn round_trips_every_length_class() {
        for len in [1, 15, 16, 17, 32, 33, MAX_SECRET_LEN] {
            let bytes = sample(len);
            let record = Record::parse(&bytes).expect("parses");
            assert_eq!(record.secret_len, len);
            assert_eq!(record.iv, [7; IV_LEN]);
            assert_eq!(record.wrapped_key, &[1; WRAPPED_KEY_LEN][..]);
            assert_eq!(record.data.len(), padded_len(len));
            assert_eq!(record.tag, &[3; TAG_LEN][..]);
            assert_eq!(record.body.len() + TAG_LEN, bytes.len());
        }
    }

    #[test]
    fn refuses_wrong_lengths_and_formats() {
        let good = sample(11);
        assert_eq!(
            Record::parse(&good[..good.len() - 1]).err(),
            Some(Malformed)
        );
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(Record::parse(&longer).err(), Some(Malformed));
        let mut other_format = good.clone();
        other_format[0] = 2;
        assert_eq!(Record::parse(&other_format).err(), Some(Malformed));
        let mut zero_len = good.clone();
        zero_len[1] = 0;
        zero_len[2] = 0;
        assert_eq!(Record::parse(&zero_len).err(), Some(Malformed));
        // Claims 17 bytes (two blocks) but carries one block of data.
        let mut lying = good;
        lying[2] = 17;
        assert_eq!(Record::parse(&lying).err(), Some(Malformed));
        assert_eq!(Record::parse(&[]).err(), Some(Malformed));
    }

    #[test]
    fn mac_input_separates_reference_from_body() {
        // Moving a byte between the reference and the body changes the input.
        assert_ne!(mac_input(b"ab", b"c"), mac_input(b"a", b"bc"));
        assert!(mac_input(b"ref", b"body").starts_with(DOMAIN));
    }
}
