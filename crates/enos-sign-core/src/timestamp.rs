//! [`TimestampMs`]: the signed login time.

use core::{fmt, str::FromStr};

use crate::error::{Field, SignError};

/// Milliseconds since the Unix epoch, as signed and sent in the client id.
///
/// This crate never reads a clock: callers pass the time in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimestampMs(
    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub u64,
);

impl TimestampMs {
    /// The timestamp for `ms` milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        TimestampMs(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self - other` in milliseconds, signed.
    pub fn skew_from(self, other: TimestampMs) -> i128 {
        i128::from(self.0) - i128::from(other.0)
    }
}

impl fmt::Display for TimestampMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimestampMs {
    type Err = SignError;
    /// Decimal digits only: no sign, no spaces, no fraction, at most 20 digits.
    fn from_str(s: &str) -> Result<Self, SignError> {
        if s.is_empty() {
            return Err(SignError::Empty {
                field: Field::Timestamp,
            });
        }
        if s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignError::NotANumber {
                field: Field::Timestamp,
            });
        }
        s.parse::<u64>()
            .map(TimestampMs)
            .map_err(|_| SignError::NotANumber {
                field: Field::Timestamp,
            })
    }
}
