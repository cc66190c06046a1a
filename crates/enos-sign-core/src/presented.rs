//! What a broker receives: [`PresentedClientId`], [`PresentedTimestamp`]
//! and [`PresentedFields`], the liberal forms of the signed fields.
//!
//! What we *issue* is strict ([`crate::ClientId`], [`crate::TimestampMs`]).
//! What a broker *verifies* must accept everything the official EnOS SDKs
//! send, because EnOS accepts it, and it must digest exactly the text that
//! was sent:
//!
//! | SDK | signed clientId | timestamp |
//! |---|---|---|
//! | Python 0.1.1 | `deviceKey` | `1796063142221.4375` (`str(time.time() * 1000)`) |
//! | Java 2.3 | `deviceKey{ip=10.1.2.3,version=2.3.0}` (`,compress=…` when set) | integer ms |
//! | Node | `deviceKey` | integer ms |
//! | C | `productKey.deviceKey` | `2524608000000`, on every login |
//!
//! The grammar accepted here:
//!
//! - clientId: 1 to [`PresentedClientId::MAX_LEN`] ASCII graphic characters
//!   (`!` to `~`), except `|`, which ends it.
//! - timestamp: 1 to [`PresentedTimestamp::MAX_INTEGER_DIGITS`] decimal
//!   digits (at most `u64::MAX`), optionally followed by one `.` and 1 to
//!   [`PresentedTimestamp::MAX_FRACTION_DIGITS`] digits. No sign, exponent,
//!   space or other character.

use core::fmt;

use crate::{
    error::{Field, ForbiddenChar, SignError},
    ident::{DeviceKey, ProductKey},
    sign::SignedContent,
    timestamp::TimestampMs,
};

/// The signed clientId as presented: everything before the first `|` of
/// the MQTT client id, kept exactly as sent because it is signed that way.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PresentedClientId(
    /// The text as sent; private so that no unchecked value exists.
    Box<str>,
);

impl PresentedClientId {
    /// The longest accepted clientId, in characters. The Java SDK's
    /// longest form is a 64-character device key, `{ip=` an IPv4 address
    /// `,version=` its version `,compress=` a codec `}`: about 120.
    /// 256 leaves room for what we have not seen (a longer version string,
    /// an IPv6 address) without admitting unbounded input.
    pub const MAX_LEN: usize = 256;

    /// Validates `value`: 1 to 256 ASCII graphic characters, no `|`.
    pub fn new(value: &str) -> Result<Self, SignError> {
        if value.is_empty() {
            return Err(SignError::Empty {
                field: Field::ClientId,
            });
        }
        if let Some((position, found)) = value
            .chars()
            .enumerate()
            .find(|&(_, c)| !c.is_ascii_graphic() || c == '|')
        {
            return Err(SignError::ForbiddenChar {
                field: Field::ClientId,
                found: ForbiddenChar(found),
                position,
                allowed: "allowed are ASCII characters from ! to ~ except |",
            });
        }
        // Only ASCII is left, so bytes are characters.
        if value.len() > Self::MAX_LEN {
            return Err(SignError::TooLong {
                field: Field::ClientId,
                len: value.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(PresentedClientId(value.into()))
    }

    /// The clientId as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PresentedClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedClientId({:?})", &*self.0)
    }
}

impl fmt::Display for PresentedClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The signed timestamp as presented: the exact text (it is signed that
/// way) and its whole milliseconds (for a freshness check, if any).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PresentedTimestamp {
    /// The text as sent, e.g. `1796063142221.4375`; digested as is.
    text: Box<str>,
    /// The integer part, for comparing against a clock; the fraction is a
    /// sub-millisecond detail no check needs.
    millis: TimestampMs,
}

impl PresentedTimestamp {
    /// The most integer digits: those of `u64::MAX`, the range of the
    /// milliseconds we issue; no SDK sends more than 13.
    pub const MAX_INTEGER_DIGITS: usize = 20;
    /// The most fraction digits. Python's `str` of a float of
    /// milliseconds has at most 17 significant digits, so at most 4
    /// after the point today; 16 admits any float formatting.
    pub const MAX_FRACTION_DIGITS: usize = 16;

    /// Parses `digits[.digits]`, within the bounds above.
    pub fn new(text: &str) -> Result<Self, SignError> {
        let malformed = |reason| SignError::Malformed {
            field: Field::Timestamp,
            reason,
        };
        if text.is_empty() {
            return Err(SignError::Empty {
                field: Field::Timestamp,
            });
        }
        let (integer, fraction) = match text.split_once('.') {
            Some((integer, fraction)) => (integer, Some(fraction)),
            None => (text, None),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if integer.is_empty() || !all_digits(integer) {
            return Err(malformed(
                "must be decimal digits, optionally with one . and fraction digits",
            ));
        }
        if integer.len() > Self::MAX_INTEGER_DIGITS {
            return Err(malformed("has more than 20 digits before the point"));
        }
        if let Some(fraction) = fraction {
            if fraction.is_empty() || !all_digits(fraction) {
                return Err(malformed(
                    "must be decimal digits, optionally with one . and fraction digits",
                ));
            }
            if fraction.len() > Self::MAX_FRACTION_DIGITS {
                return Err(malformed("has more than 16 digits after the point"));
            }
        }
        let millis = integer
            .parse::<u64>()
            .map_err(|_| malformed("is beyond 18446744073709551615 milliseconds"))?;
        Ok(PresentedTimestamp {
            text: text.into(),
            millis: TimestampMs::from_millis(millis),
        })
    }

    /// The text as sent.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The whole milliseconds, fraction dropped.
    pub fn millis(&self) -> TimestampMs {
        self.millis
    }
}

impl From<TimestampMs> for PresentedTimestamp {
    /// The text our own credentials carry: the integer milliseconds.
    fn from(timestamp: TimestampMs) -> Self {
        PresentedTimestamp {
            text: timestamp.to_string().into(),
            millis: timestamp,
        }
    }
}

impl fmt::Debug for PresentedTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedTimestamp({:?})", &*self.text)
    }
}

impl fmt::Display for PresentedTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The four signed fields as a broker received them, to verify a password
/// or a sub-device `sign` over exactly the text that was sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PresentedFields {
    /// The part of the MQTT client id before the first `|` (or a
    /// `combine.login`'s `clientId`), as sent.
    pub client_id: PresentedClientId,
    /// The device key: validated, because it names a registered device.
    pub device_key: DeviceKey,
    /// The product key: validated, because it names a registered product.
    pub product_key: ProductKey,
    /// The timestamp, as sent.
    pub timestamp: PresentedTimestamp,
}

impl SignedContent for PresentedFields {
    fn write_content(&self, sink: impl FnMut(&[u8])) {
        crate::sign::write_named(
            sink,
            [
                self.client_id.as_str(),
                self.device_key.as_str(),
                self.product_key.as_str(),
                self.timestamp.as_str(),
            ],
        );
    }
}

impl From<&crate::SignedFields> for PresentedFields {
    /// The fields a strict credential presents: every strict value is a
    /// valid presented one.
    fn from(fields: &crate::SignedFields) -> Self {
        PresentedFields {
            client_id: PresentedClientId(fields.client_id.as_str().into()),
            device_key: fields.device_key.clone(),
            product_key: fields.product_key.clone(),
            timestamp: PresentedTimestamp::from(fields.timestamp),
        }
    }
}
