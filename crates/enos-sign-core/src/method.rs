//! [`SignMethod`], [`SecureMode`] and [`HexCase`]: the parameters of a login.

use core::{fmt, str::FromStr};

use crate::error::{Field, SignError};

/// The digest behind a password. Despite the names, none is an HMAC: EnOS
/// computes a plain digest of the content with the secret appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignMethod {
    /// SHA-1; what the EnOS guide documents and every SDK defaults to.
    HmacSha1,
    /// SHA-256.
    HmacSha256,
    /// MD5; legacy and weak, refused by [`SignMethod::parse`] unless allowed.
    HmacMd5,
}

/// Whether parsing accepts `hmacmd5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Md5Policy {
    /// `hmacmd5` / `md5` is an error ([`SignError::Md5NotAllowed`]).
    #[default]
    Refuse,
    /// `hmacmd5` / `md5` is accepted.
    Allow,
}

impl SignMethod {
    /// Every method, strongest first.
    pub const ALL: [SignMethod; 3] = [
        SignMethod::HmacSha256,
        SignMethod::HmacSha1,
        SignMethod::HmacMd5,
    ];

    /// The name sent in the MQTT client id (`signmethod=…`).
    pub const fn as_str(self) -> &'static str {
        match self {
            SignMethod::HmacSha1 => "hmacsha1",
            SignMethod::HmacSha256 => "hmacsha256",
            SignMethod::HmacMd5 => "hmacmd5",
        }
    }

    /// Parses a method name or its alias (`sha1`, `sha256`, `md5`), ignoring
    /// ASCII case. MD5 is refused unless `md5` is [`Md5Policy::Allow`].
    pub fn parse(name: &str, md5: Md5Policy) -> Result<Self, SignError> {
        let method = if name.eq_ignore_ascii_case("hmacsha1") || name.eq_ignore_ascii_case("sha1") {
            SignMethod::HmacSha1
        } else if name.eq_ignore_ascii_case("hmacsha256") || name.eq_ignore_ascii_case("sha256") {
            SignMethod::HmacSha256
        } else if name.eq_ignore_ascii_case("hmacmd5") || name.eq_ignore_ascii_case("md5") {
            SignMethod::HmacMd5
        } else {
            // Echo at most a short prefix: the input may be anything.
            return Err(SignError::UnknownSignMethod(
                name.chars().take(32).collect(),
            ));
        };
        if method == SignMethod::HmacMd5 && md5 == Md5Policy::Refuse {
            return Err(SignError::Md5NotAllowed);
        }
        Ok(method)
    }

    /// The hex case the official SDKs send: upper for SHA-1 ("for historical
    /// reasons"), lower for SHA-256 (Java, Python) and MD5.
    pub const fn sdk_hex_case(self) -> HexCase {
        match self {
            SignMethod::HmacSha1 => HexCase::Upper,
            SignMethod::HmacSha256 | SignMethod::HmacMd5 => HexCase::Lower,
        }
    }

    /// Length of the password in hex characters.
    pub const fn hex_len(self) -> usize {
        match self {
            SignMethod::HmacSha1 => 40,
            SignMethod::HmacSha256 => 64,
            SignMethod::HmacMd5 => 32,
        }
    }
}

impl fmt::Display for SignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignMethod {
    type Err = SignError;
    /// Parses with [`Md5Policy::Refuse`].
    fn from_str(s: &str) -> Result<Self, SignError> {
        SignMethod::parse(s, Md5Policy::Refuse)
    }
}

/// What the password is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecureMode {
    /// `2`: the device secret; the normal case.
    DeviceSecret,
    /// `3`: the product secret, for dynamic activation.
    ProductSecret,
    /// `4`: the product secret, for a message-integration channel
    /// (device key `%channel%`, client id = product key).
    ChannelProductSecret,
}

impl SecureMode {
    /// The number sent in the MQTT client id (`securemode=…`).
    pub const fn as_u8(self) -> u8 {
        match self {
            SecureMode::DeviceSecret => 2,
            SecureMode::ProductSecret => 3,
            SecureMode::ChannelProductSecret => 4,
        }
    }

    /// The kind of secret this mode signs with.
    pub const fn secret_kind(self) -> Field {
        match self {
            SecureMode::DeviceSecret => Field::DeviceSecret,
            SecureMode::ProductSecret | SecureMode::ChannelProductSecret => Field::ProductSecret,
        }
    }

    /// The mode for its number.
    pub fn from_u8(n: u8) -> Result<Self, SignError> {
        match n {
            2 => Ok(SecureMode::DeviceSecret),
            3 => Ok(SecureMode::ProductSecret),
            4 => Ok(SecureMode::ChannelProductSecret),
            other => Err(SignError::UnknownSecureMode(other.to_string())),
        }
    }
}

impl fmt::Display for SecureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u8())
    }
}

impl FromStr for SecureMode {
    type Err = SignError;
    fn from_str(s: &str) -> Result<Self, SignError> {
        match s {
            "2" => Ok(SecureMode::DeviceSecret),
            "3" => Ok(SecureMode::ProductSecret),
            "4" => Ok(SecureMode::ChannelProductSecret),
            other => Err(SignError::UnknownSecureMode(
                other.chars().take(8).collect(),
            )),
        }
    }
}

/// The case of the hex password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HexCase {
    /// `0-9A-F`.
    Upper,
    /// `0-9a-f`.
    Lower,
}
