//! The one error type of this crate.

use core::fmt;

/// Which input a [`SignError`] is about, spelled as EnOS spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The product key (`productKey`).
    ProductKey,
    /// The device key (`deviceKey`).
    DeviceKey,
    /// The signed client id (`clientId`, the part of the MQTT client id before `|`).
    ClientId,
    /// The timestamp in milliseconds (`timestamp`).
    Timestamp,
    /// The sign method (`signmethod`).
    SignMethod,
    /// The secure mode (`securemode`).
    SecureMode,
    /// The device secret (`deviceSecret`); its value never appears in an error.
    DeviceSecret,
    /// The product secret (`productSecret`); its value never appears in an error.
    ProductSecret,
    /// The whole MQTT client id as presented in CONNECT.
    MqttClientId,
    /// The MQTT username as presented in CONNECT.
    MqttUsername,
    /// A presented password or sign; its value never appears in an error.
    Password,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::ProductKey => "productKey",
            Field::DeviceKey => "deviceKey",
            Field::ClientId => "clientId",
            Field::Timestamp => "timestamp",
            Field::SignMethod => "signmethod",
            Field::SecureMode => "securemode",
            Field::DeviceSecret => "deviceSecret",
            Field::ProductSecret => "productSecret",
            Field::MqttClientId => "MQTT client id",
            Field::MqttUsername => "MQTT username",
            Field::Password => "password",
        })
    }
}

/// A character refused in a field, printed so that control and non-ASCII
/// characters are visible (`U+0007`) rather than garbling a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ForbiddenChar(pub char);

impl fmt::Display for ForbiddenChar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        if c.is_ascii_graphic() {
            write!(f, "'{c}'")
        } else {
            write!(f, "U+{:04X}", c as u32)
        }
    }
}

/// Everything that can go wrong when validating, signing, parsing or verifying.
///
/// Messages name the field and the reason. They never contain a secret, a
/// password or a sign: where the input is secret only its position or length
/// is reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// A required field is empty.
    #[error("{field} is empty")]
    Empty {
        /// The empty field.
        field: Field,
    },
    /// A field is longer than its bound.
    #[error("{field} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// The field.
        field: Field,
        /// Its length in characters.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A field contains a character outside its allowed set.
    #[error("{field} contains the forbidden character {found} at position {position}; {allowed}")]
    ForbiddenChar {
        /// The field.
        field: Field,
        /// The first refused character.
        found: ForbiddenChar,
        /// Its position in characters, from 0.
        position: usize,
        /// What the field allows, in words.
        allowed: &'static str,
    },
    /// An id contains the name of a signed field, which would let two
    /// different logins sign the same content.
    #[error(
        "{field} contains {name:?}, the name of a signed field: two different logins could then sign the same content"
    )]
    ReservedName {
        /// The field.
        field: Field,
        /// The name it contains.
        name: &'static str,
    },
    /// A secret contains a character outside printable ASCII; the character
    /// itself is not reported.
    #[error("{field} has an invalid character at position {position}: {reason}")]
    InvalidSecret {
        /// [`Field::DeviceSecret`] or [`Field::ProductSecret`].
        field: Field,
        /// Position of the first invalid character, from 0.
        position: usize,
        /// The rule, in words.
        reason: &'static str,
    },
    /// A value that should be a decimal number is not one.
    #[error("{field} must be a decimal number of milliseconds, at most 20 digits")]
    NotANumber {
        /// The field.
        field: Field,
    },
    /// A sign method this crate does not know.
    #[error(
        "unknown signmethod {0:?}; expected hmacsha1, hmacsha256 or hmacmd5 (or sha1, sha256, md5)"
    )]
    UnknownSignMethod(String),
    /// `hmacmd5` was asked for but the caller did not allow it.
    #[error("signmethod hmacmd5 is refused: MD5 is weak and must be explicitly allowed")]
    Md5NotAllowed,
    /// A secure mode other than 2, 3 or 4.
    #[error("unknown securemode {0:?}; expected 2, 3 or 4")]
    UnknownSecureMode(String),
    /// The secret given does not fit the secure mode (mode 2 signs with a
    /// device secret, modes 3 and 4 with a product secret).
    #[error("securemode {mode} signs with a {expected}, but a {given} was given")]
    SecretKindMismatch {
        /// The secure mode asked for.
        mode: u8,
        /// The secret kind that mode needs.
        expected: Field,
        /// The secret kind that was given.
        given: Field,
    },
    /// The MQTT client id or username does not have the EnOS shape.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// [`Field::MqttClientId`] or [`Field::MqttUsername`].
        field: Field,
        /// What is wrong, without echoing secret material.
        reason: &'static str,
    },
    /// The same parameter appears twice in the MQTT client id.
    #[error("malformed MQTT client id: parameter {0} appears twice")]
    DuplicateParameter(&'static str),
    /// The presented password or sign does not match.
    #[error("password does not match")]
    WrongPassword,
    /// The signed timestamp is outside the freshness window.
    #[error("timestamp is {skew_ms} ms away from now; at most {window_ms} ms are accepted")]
    Stale {
        /// Signed timestamp minus now, in milliseconds (negative: in the past).
        skew_ms: i128,
        /// The accepted window either side of now.
        window_ms: u64,
    },
}
