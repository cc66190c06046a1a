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
    /// A CRL entry's serial is not one: hex of 1 to 20 bytes.
    #[error("not a certificate serial (hex, 1 to 20 bytes): {0:?}")]
    Serial(String),
    /// The CA key's custody cannot sign now (an HSM is away); retrying
    /// later may succeed. The message is the custody's.
    #[error("the CA key is unavailable: {0}")]
    KeyUnavailable(String),
    /// Building or signing the certificate failed (the CA key refused to
    /// sign, an HSM session was lost): the message is the encoder's.
    #[error("signing the certificate: {0}")]
    Signing(String),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        // rcgen reduces a remote key's failure to `RemoteKeyError`; the
        // custody's own reason was kept aside by `CustodyKey::sign` on
        // this thread (rcgen signs synchronously, on the caller's thread).
        if matches!(e, rcgen::Error::RemoteKeyError) {
            match crate::authority::take_key_error() {
                Some(enos_custody::CustodyError::Unavailable(reason)) => {
                    return CaError::KeyUnavailable(reason);
                }
                Some(other) => {
                    return CaError::Signing(format!("the CA key did not sign: {other}"));
                }
                None => {}
            }
        }
        CaError::Signing(e.to_string())
    }
}
