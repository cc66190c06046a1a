//! [`Serial`]: a certificate's serial number, 128 random bits.
//!
//! RFC 5280 wants serials unique per CA, positive, and at most 20 bytes;
//! CA/B Forum practice wants at least 64 unpredictable bits. 128 random
//! bits with the top bit cleared (a DER INTEGER stays positive without a
//! leading zero byte) meet both, with no counter to share between
//! replicas.

use crate::error::CaError;

/// A serial number: 16 bytes, big-endian, top bit clear, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial([u8; 16]);

impl Serial {
    /// A new random serial.
    pub fn random() -> Result<Self, CaError> {
        loop {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|_| CaError::Random)?;
            bytes[0] &= 0x7f;
            // Zero (2^-127) is not a valid serial; a leading zero byte
            // would shorten the DER encoding, which is fine.
            if bytes != [0; 16] {
                return Ok(Serial(bytes));
            }
        }
    }

    /// The serial's bytes, big-endian.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The serial as a certificate shows it: lower-case hex, no
    /// separators, leading zero bytes dropped (as x509-parser and OpenSSL
    /// print it).
    pub fn to_hex(&self) -> String {
        let start = self.0.iter().position(|b| *b != 0).unwrap_or(15);
        self.0[start..].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl From<Serial> for rcgen::SerialNumber {
    fn from(serial: Serial) -> Self {
        rcgen::SerialNumber::from_slice(serial.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_distinct_and_print_as_hex() {
        let a = Serial::random().expect("random");
        let b = Serial::random().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[0] & 0x80, 0, "positive");
        assert!(a.to_hex().len() <= 32 && a.to_hex().len() >= 2);
        let fixed = Serial([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xff]);
        assert_eq!(fixed.to_hex(), "0102030405060708090a0b0c0dff");
    }
}
