//! [`CaError`], the one error type of this crate. Messages say what is
//! wrong with the request, never quote it.

/// Why a request or an issuance was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaError {
    /// The request is larger than the caller allows.
    #[error("certificate request of {size} bytes; at most {limit} are accepted")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a PKCS#10 request (neither PEM nor DER), or trailing bytes.
    #[error("not a PKCS#10 certificate request (PEM or DER)")]
    Unreadable,
    /// The request's signature does not verify with its own key: the
    /// sender did not prove it holds the private key.
    #[error("the certificate request's signature does not verify")]
    BadSignature,
    /// A key this CA does not certify; the message names what is accepted.
    #[error("unsupported key {0}: EC P-256 or P-384, or RSA of 2048 bits or more, are accepted")]
    UnsupportedKey(String),
    /// The validity asked for is empty or out of range.
    #[error("validity: {0}")]
    Validity(&'static str),
    /// No randomness for a serial number.
    #[error("no randomness for a serial number")]
    Random,
    /// Building or signing the certificate failed (the CA key refused to
    /// sign, an HSM session was lost): the message is the encoder's.
    #[error("signing the certificate: {0}")]
    Signing(String),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Signing(e.to_string())
    }
}
