//! `#[serde(with = "enos_toml::duration")]`: a [`Duration`] as a humantime
//! string (`"10s"`, `"500ms"`, `"5m"`, `"1h 30m"`), the one form every
//! config of the workspace writes a duration in.
//!
//! A bare number is refused: whether `10` means seconds or milliseconds is
//! what the unit says. [`crate::from_str`] turns the refusal into a message
//! naming the key and the form.

use core::fmt;
use std::time::Duration;

use serde::{Deserializer, Serializer, de};

/// What the refusal of a non-string says; [`crate::from_str`] recognises it.
pub(crate) const EXPECTED: &str = "a duration with its unit";

/// Writes `d` as a humantime string (`"5m"`).
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*d))
}

/// Reads a humantime string; anything else is refused.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(Visitor)
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        // humantime's reason (unknown unit, number expected) without the
        // text itself, which enos-toml never echoes.
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format_args!(
                "not a duration ({}): write it like `10s`, `500ms`, `5m`",
                reason(&e)
            ))
        })
    }
}

/// humantime's error without the quoted input.
fn reason(e: &humantime::DurationError) -> &'static str {
    match e {
        humantime::DurationError::InvalidCharacter(_) => "invalid character",
        humantime::DurationError::NumberExpected(_) => "a number expected",
        humantime::DurationError::UnknownUnit { .. } => "unknown unit",
        humantime::DurationError::NumberOverflow => "too large",
        humantime::DurationError::Empty => "empty",
    }
}

/// The same for an `Option<Duration>` (with `#[serde(default)]`).
pub mod option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `Some(d)` as a humantime string.
    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads a humantime string as `Some`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::deserialize(deserializer).map(Some)
    }
}
