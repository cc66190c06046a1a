//! Enrollment tokens: `enr1_` and 43 base64url characters (32 random
//! bytes). The signer hands a token out once and keeps only its SHA-256:
//! a copy of the registry enrolls nobody.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Result, SignerError};

/// What every token starts with: a version, and a prefix secret scanners
/// can match.
pub const PREFIX: &str = "enr1_";

/// Random bytes in a token: 256 bits, beyond guessing.
const RANDOM_BYTES: usize = 32;

/// The length of a well-formed token.
const TOKEN_LEN: usize = PREFIX.len() + 43;

/// A new token and its hash. The token is shown once and never stored.
pub fn new_token() -> Result<(Zeroizing<String>, [u8; 32])> {
    let mut random = Zeroizing::new([0u8; RANDOM_BYTES]);
    getrandom::fill(random.as_mut())
        .map_err(|_| SignerError::Config("the system random generator failed".into()))?;
    let token = Zeroizing::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(*random)));
    let hash = hash(&token);
    Ok((token, hash))
}

/// The stored form of `token`: SHA-256 of its text. The token has 256
/// bits of entropy, so a plain hash is enough (no salt, no stretching);
/// it lets two replicas find the same row.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` has the form of a token, so that garbage is refused
/// before any lookup (the message never quotes it).
pub fn check_form(token: &str) -> Result<()> {
    let well_formed = token.len() == TOKEN_LEN
        && token.starts_with(PREFIX)
        && token[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(SignerError::Unauthenticated(
            "the enrollment token is malformed (expected enr1_ and 43 base64url characters)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_well_formed_distinct_and_hashed() {
        let (a, hash_a) = new_token().expect("token");
        let (b, _) = new_token().expect("token");
        assert_ne!(*a, *b);
        check_form(&a).expect("a new token is well formed");
        assert_eq!(hash(&a), hash_a);
        for bad in [
            "",
            "enr1_",
            "enr2_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &a[..a.len() - 1],
            &format!("{}=", &a[..a.len() - 1]),
        ] {
            assert!(check_form(bad).is_err(), "{bad:?} accepted");
        }
    }
}
