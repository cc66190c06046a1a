//! Validated identities: [`ProductKey`], [`DeviceKey`] and [`ClientId`].
//!
//! All three share one character set: ASCII letters and digits and
//! `-` `_` `.` `:` `@`. That covers EnOS generated keys, serial numbers and
//! MAC addresses, and it excludes everything that has a meaning around these
//! fields: `|` `,` `=` (client id parameters), `&` (username), `/` `+` `#`
//! (MQTT topics, where the keys are embedded), `%` `"` `\` (JSON and URLs),
//! whitespace, control and non-ASCII characters. None may contain the name
//! of a signed field (`clientId`, `deviceKey`, `productKey`, `timestamp`),
//! which could make two different logins sign the same content.
//!
//! | type | length (characters) |
//! |---|---|
//! | [`ProductKey`] | 1 to [`ProductKey::MAX_LEN`] (32; EnOS generates 8) |
//! | [`DeviceKey`]  | 1 to [`DeviceKey::MAX_LEN`] (64), or exactly [`DeviceKey::CHANNEL`] |
//! | [`ClientId`]   | 1 to [`ClientId::MAX_LEN`] (64, the limit in the EnOS guide) |

use core::{fmt, str::FromStr};

use crate::error::{Field, ForbiddenChar, SignError};

/// The allowed set, in words, for error messages.
const ALLOWED: &str = "allowed are ASCII letters, digits and - _ . : @";

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')
}

/// Checks `value` against the shared character set and `1..=max` characters.
fn validate(field: Field, value: &str, max: usize) -> Result<(), SignError> {
    if value.is_empty() {
        return Err(SignError::Empty { field });
    }
    if let Some((position, found)) = value.chars().enumerate().find(|(_, c)| !is_allowed(*c)) {
        return Err(SignError::ForbiddenChar {
            field,
            found: ForbiddenChar(found),
            position,
            allowed: ALLOWED,
        });
    }
    // Only ASCII is left, so bytes are characters.
    if value.len() > max {
        return Err(SignError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if let Some(name) = SIGNED_NAMES.iter().find(|name| value.contains(**name)) {
        return Err(SignError::ReservedName { field, name });
    }
    Ok(())
}

/// The names in the signed content. An id that holds one could move the
/// boundary between two fields: clientId `a` with deviceKey
/// `bdeviceKeyc` signs exactly as clientId `adeviceKeyb` with deviceKey
/// `c`. None of the names overlaps itself, so an id without any of them
/// cannot create a second reading of the content.
const SIGNED_NAMES: [&str; 4] = ["clientId", "deviceKey", "productKey", "timestamp"];

macro_rules! identity {
    ($(#[$doc:meta])* $name:ident, $field:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(
            /// The validated value; private so that no unchecked value exists.
            Box<str>,
        );

        impl $name {
            /// The longest accepted value, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates `value`; the error names the field and the reason.
            pub fn new(value: impl AsRef<str>) -> Result<Self, SignError> {
                let value = value.as_ref();
                Self::check(value)?;
                Ok(Self(value.into()))
            }

            /// The value as sent on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = SignError;
            fn from_str(s: &str) -> Result<Self, SignError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = SignError;
            fn try_from(s: String) -> Result<Self, SignError> {
                Self::check(&s)?;
                Ok(Self(s.into_boxed_str()))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = SignError;
            fn try_from(s: &str) -> Result<Self, SignError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0.into()
            }
        }
    };
}

identity!(
    /// An EnOS product key: names the product (model) a device belongs to.
    ProductKey,
    Field::ProductKey,
    32
);
identity!(
    /// An EnOS device key: names a device within its product.
    DeviceKey,
    Field::DeviceKey,
    64
);
identity!(
    /// The signed client id: by default the device key, or a MAC address or
    /// serial number.
    ClientId,
    Field::ClientId,
    64
);

impl ProductKey {
    fn check(value: &str) -> Result<(), SignError> {
        validate(Field::ProductKey, value, Self::MAX_LEN)
    }
}

impl DeviceKey {
    /// The device key a message-integration channel logs in with
    /// (securemode 4); the one value outside the normal character set.
    pub const CHANNEL: &'static str = "%channel%";

    fn check(value: &str) -> Result<(), SignError> {
        if value == Self::CHANNEL {
            return Ok(());
        }
        validate(Field::DeviceKey, value, Self::MAX_LEN)
    }
}

impl ClientId {
    fn check(value: &str) -> Result<(), SignError> {
        validate(Field::ClientId, value, Self::MAX_LEN)
    }
}

impl ClientId {
    /// The SDKs' default client id: the device key itself. Fails only for
    /// [`DeviceKey::CHANNEL`], whose `%` a client id may not contain.
    pub fn from_device_key(dk: &DeviceKey) -> Result<Self, SignError> {
        Self::new(dk.as_str())
    }
}

impl From<&ProductKey> for ClientId {
    /// securemode 4 signs with the product key as client id.
    fn from(pk: &ProductKey) -> Self {
        ClientId(pk.0.clone())
    }
}
