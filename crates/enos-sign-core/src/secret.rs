//! Secret types: [`DeviceSecret`], [`ProductSecret`] and [`Password`].
//!
//! None of them can be printed: `Debug` shows `[REDACTED]` and there is no
//! `Display`. Their memory is zeroed on drop. The value is reachable only
//! through [`ExposeSecret::expose_secret`], which makes every use visible in
//! review.

use core::fmt;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{
    error::{Field, SignError},
    method::HexCase,
};

/// The longest accepted secret, in bytes. EnOS issues 16 to 32 characters.
pub const MAX_SECRET_LEN: usize = 256;

/// Checks a secret without ever putting its value into the error: printable
/// ASCII, no whitespace, 1 to [`MAX_SECRET_LEN`] bytes.
fn validate_secret(field: Field, value: &str) -> Result<(), SignError> {
    if value.is_empty() {
        return Err(SignError::Empty { field });
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(SignError::TooLong {
            field,
            len: value.chars().count(),
            max: MAX_SECRET_LEN,
        });
    }
    if let Some((position, _)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic())
    {
        // Not even the offending character is echoed: only where it is.
        return Err(SignError::InvalidSecret {
            field,
            position,
            reason: "a secret is printable ASCII without whitespace",
        });
    }
    Ok(())
}

macro_rules! signing_secret {
    ($(#[$doc:meta])* $name:ident, $field:expr) => {
        $(#[$doc])*
        pub struct $name(
            /// Heap-held so that moves do not leave copies; zeroed on drop.
            SecretString,
        );

        impl $name {
            /// Takes ownership of `value` and validates it. On error the
            /// value is zeroed before it is dropped, and the error does not
            /// contain it.
            pub fn new(value: String) -> Result<Self, SignError> {
                let secret = SecretString::from(value);
                validate_secret($field, secret.expose_secret())?;
                Ok(Self(secret))
            }
        }

        impl ExposeSecret<str> for $name {
            fn expose_secret(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl Clone for $name {
            fn clone(&self) -> Self {
                Self(SecretString::from(self.0.expose_secret()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }

        impl crate::sealed::Sealed for $name {}

        impl SigningSecret for $name {
            const KIND: Field = $field;
            fn secret_bytes(&self) -> &[u8] {
                self.0.expose_secret().as_bytes()
            }
        }
    };
}

signing_secret!(
    /// A device's own secret (`deviceSecret`), signing securemode 2 and
    /// sub-device logins.
    DeviceSecret,
    Field::DeviceSecret
);
signing_secret!(
    /// A product's secret (`productSecret`), signing securemodes 3 and 4.
    ProductSecret,
    Field::ProductSecret
);

/// A secret that passwords can be signed with. Sealed: only
/// [`DeviceSecret`] and [`ProductSecret`], so that a [`Password`] or any
/// other string cannot be passed by mistake.
pub trait SigningSecret: crate::sealed::Sealed {
    /// [`Field::DeviceSecret`] or [`Field::ProductSecret`].
    const KIND: Field;
    /// The bytes appended to the content.
    #[doc(hidden)]
    fn secret_bytes(&self) -> &[u8];
}

/// The longest password: SHA-256 in hex.
const MAX_PASSWORD_LEN: usize = 64;

/// A signed password (or a sub-device `sign`): the digest in hex.
///
/// Held inline, not on the heap, so that signing allocates nothing; zeroed
/// on drop.
#[derive(Clone)]
pub struct Password {
    /// The hex digits; only `..len` is meaningful.
    buf: [u8; MAX_PASSWORD_LEN],
    /// Number of hex digits: 32, 40 or 64.
    len: u8,
}

impl Password {
    /// Hex-encodes a digest straight into the password's own buffer, so
    /// that no other copy needs wiping. base16ct runs in constant time.
    pub(crate) fn encode(digest: &[u8], case: HexCase) -> Self {
        let mut password = Password {
            buf: [0u8; MAX_PASSWORD_LEN],
            len: 0,
        };
        let out = &mut password.buf[..(digest.len() * 2).min(MAX_PASSWORD_LEN)];
        let written = match case {
            HexCase::Upper => base16ct::upper::encode(digest, out),
            HexCase::Lower => base16ct::lower::encode(digest, out),
        }
        .map_or(0, <[u8]>::len);
        password.len = written as u8;
        password
    }

    /// Wraps a password received from elsewhere (say, from the signer
    /// service). It must be 32, 40 or 64 hex digits; the error never
    /// contains the value.
    pub fn from_hex(hex: &str) -> Result<Self, SignError> {
        let bytes = hex.as_bytes();
        if !matches!(bytes.len(), 32 | 40 | 64) || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(SignError::Malformed {
                field: Field::Password,
                reason: "expected 32, 40 or 64 hex digits",
            });
        }
        let mut password = Password {
            buf: [0u8; MAX_PASSWORD_LEN],
            len: bytes.len() as u8,
        };
        password.buf[..bytes.len()].copy_from_slice(bytes);
        Ok(password)
    }

    /// Compares with a presented password in constant time, ignoring the
    /// case of the hex digits (SHA-256 is sent in either case).
    pub fn matches_ignore_case(&self, presented: &str) -> bool {
        let presented = presented.as_bytes();
        let len = usize::from(self.len);
        // The length is public (it follows from the sign method), so an
        // early exit here leaks nothing.
        if presented.len() != len {
            return false;
        }
        let mut theirs = [0u8; MAX_PASSWORD_LEN];
        let mut ours = [0u8; MAX_PASSWORD_LEN];
        for i in 0..len {
            theirs[i] = presented[i].to_ascii_lowercase();
            ours[i] = self.buf[i].to_ascii_lowercase();
        }
        let equal: bool = theirs[..len].ct_eq(&ours[..len]).into();
        theirs.zeroize();
        ours.zeroize();
        equal
    }
}

impl Zeroize for Password {
    fn zeroize(&mut self) {
        // Only `..len` was ever written.
        self.buf[..usize::from(self.len)].zeroize();
        self.len = 0;
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Password {}

impl ExposeSecret<str> for Password {
    fn expose_secret(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}
