//! [`Pkcs11Error`], the one error type of HSM custody, and how PKCS#11
//! return values are sorted into "the token went away", "the record is
//! bad" and "the setup is wrong".

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};
use enos_custody::CustodyError;

/// What can go wrong when connecting to, or working with, the token.
///
/// Messages name the module, token, key label and PKCS#11 function and
/// return value; they never contain the PIN or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The configuration is incomplete or contradictory.
    #[error("invalid HSM custody configuration: {0}")]
    InvalidConfig(String),
    /// The PIN could not be read from where the configuration says.
    #[error("cannot read the token PIN from {from}: {reason}")]
    Pin {
        /// Where the PIN was looked for (a path, never the PIN).
        from: String,
        /// Why it failed.
        reason: String,
    },
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {}: {reason}", path.display())]
    Module {
        /// The module's path.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// Another HSM custody in this process already holds the module.
    /// PKCS#11 allows one initialisation per process, and recovery
    /// finalises and re-initialises the module, so it cannot be shared.
    #[error(
        "PKCS#11 module {} is already in use by another HSM custody in this process (one per module and process)",
        path.display()
    )]
    ModuleInUse {
        /// The module's path.
        path: PathBuf,
    },
    /// No slot holds the configured token.
    #[error("no token {selector} in PKCS#11 module {}; tokens present: [{present}]", module.display())]
    TokenNotFound {
        /// The configured selector (`label "x"`, `slot 3`, `serial "y"`).
        selector: String,
        /// The module searched.
        module: PathBuf,
        /// Labels of the tokens that are present, for the operator.
        present: String,
    },
    /// The token refused the PIN (CKR_PIN_INCORRECT). Custody does not
    /// retry it on its own: repeated wrong PINs lock real tokens.
    #[error(
        "token {token}: the user PIN was rejected (CKR_PIN_INCORRECT); not retrying, fix the PIN and restart"
    )]
    WrongPin {
        /// The token's label.
        token: String,
    },
    /// The token's user PIN is locked, expired or not initialised.
    #[error("token {token}: cannot log in: {reason}")]
    LoginRefused {
        /// The token's label.
        token: String,
        /// The PKCS#11 reason.
        reason: String,
    },
    /// A key custody needs is not on the token.
    #[error(
        "token {token}: no {role} labelled {label:?}; create the keys with `generate_kek` (or `enos-signer custody init-hsm`)"
    )]
    KeyMissing {
        /// `key-encryption key` or `record MAC key`.
        role: &'static str,
        /// The configured label.
        label: String,
        /// The token's label.
        token: String,
    },
    /// No key pair of the device (its label) is the key its certificate
    /// certifies: the token was reset, or the certificate is another's.
    #[error(
        "token {token}: no key pair labelled {label:?} is the key the device certificate certifies; enroll again (enos-agent enroll --force)"
    )]
    DeviceKeyMissing {
        /// The URI's `object`.
        label: String,
        /// The token's label.
        token: String,
    },
    /// More than one key carries the label, so custody cannot tell which.
    #[error("token {token}: {count} keys are labelled {label:?} ({role}); labels must be unique")]
    KeyAmbiguous {
        /// Which key.
        role: &'static str,
        /// The label.
        label: String,
        /// The token's label.
        token: String,
        /// How many were found.
        count: usize,
    },
    /// `generate_kek` found keys already there and will not add a second.
    #[error("token {token}: a key labelled {label:?} already exists; refusing to create another")]
    KeyExists {
        /// The label.
        label: String,
        /// The token's label.
        token: String,
    },
    /// A key with the configured label exists but is not safe or not fit
    /// for its role (for example an extractable KEK).
    #[error("token {token}: key {label:?} cannot serve as the {role}: {reason}")]
    KeyUnfit {
        /// Which key.
        role: &'static str,
        /// The label.
        label: String,
        /// The token's label.
        token: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token lacks a mechanism custody needs.
    #[error("token {token} does not support {mechanism}, which HSM custody needs for {purpose}")]
    MechanismUnsupported {
        /// The PKCS#11 name, for example `CKM_AES_KEY_WRAP_PAD`.
        mechanism: String,
        /// What custody uses it for.
        purpose: &'static str,
        /// The token's label.
        token: String,
    },
    /// The token or device cannot be reached now; it may come back.
    #[error("HSM token unavailable: {0}")]
    Unavailable(String),
    /// Any other failed PKCS#11 call.
    #[error("PKCS#11 call failed: {0}")]
    Call(String),
}

impl From<Pkcs11Error> for CustodyError {
    fn from(error: Pkcs11Error) -> Self {
        match error {
            Pkcs11Error::TokenNotFound { .. } | Pkcs11Error::Unavailable(_) => {
                CustodyError::Unavailable(error.to_string())
            }
            Pkcs11Error::Call(_) => CustodyError::Unavailable(error.to_string()),
            _ => CustodyError::Config(error.to_string()),
        }
    }
}

/// `C_UnwrapKey → UnwrappingKeyHandleInvalid`: short and greppable,
/// unlike cryptoki's paragraph-long `Display` of return values.
pub(crate) fn describe(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} → {rv:?}"),
        other => other.to_string(),
    }
}

/// How a failed PKCS#11 call during an operation is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The session, login, module or token is gone (or our cached key
    /// handles no longer name anything): reconnect and retry.
    Lost,
    /// The record does not authenticate or unwrap: tampered, copied, or
    /// made under other keys.
    Integrity,
    /// The token refuses a mechanism or key use: a setup problem.
    Refused,
    /// Anything else.
    Other,
}

/// Sorts a PKCS#11 error (see [`Failure`]).
pub(crate) fn classify(error: &CkError) -> Failure {
    let CkError::Pkcs11(rv, _) = error else {
        return Failure::Other;
    };
    match rv {
        RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::DeviceRemoved
        | RvError::DeviceError
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::CryptokiNotInitialized
        | RvError::UserNotLoggedIn
        | RvError::KeyHandleInvalid
        | RvError::ObjectHandleInvalid
        | RvError::UnwrappingKeyHandleInvalid
        | RvError::WrappingKeyHandleInvalid
        // SoftHSM2 answers CKR_GENERAL_ERROR once its token directory is
        // gone; for a real device it is "unrecoverable" — either way the
        // only useful reaction is a fresh connection.
        | RvError::GeneralError
        | RvError::FunctionFailed => Failure::Lost,
        RvError::SignatureInvalid
        | RvError::SignatureLenRange
        | RvError::WrappedKeyInvalid
        | RvError::WrappedKeyLenRange
        | RvError::EncryptedDataInvalid
        | RvError::EncryptedDataLenRange
        | RvError::DataLenRange
        | RvError::DataInvalid => Failure::Integrity,
        RvError::MechanismInvalid
        | RvError::MechanismParamInvalid
        | RvError::KeyIndigestible
        | RvError::KeyFunctionNotPermitted
        | RvError::KeyTypeInconsistent
        | RvError::KeyNotWrappable
        | RvError::KeyUnextractable
        | RvError::FunctionNotSupported
        | RvError::TemplateInconsistent
        | RvError::AttributeValueInvalid => Failure::Refused,
        _ => Failure::Other,
    }
}

#[cfg(test)]
mod tests {
    use cryptoki::context::Function;

    use super::*;

    #[test]
    fn token_loss_is_retryable_and_bad_records_are_not() {
        let lost = CkError::Pkcs11(RvError::DeviceRemoved, Function::DigestKey);
        assert_eq!(classify(&lost), Failure::Lost);
        let forged = CkError::Pkcs11(RvError::SignatureInvalid, Function::Verify);
        assert_eq!(classify(&forged), Failure::Integrity);
        let md5 = CkError::Pkcs11(RvError::KeyIndigestible, Function::DigestKey);
        assert_eq!(classify(&md5), Failure::Refused);
        assert_eq!(describe(&forged), "C_Verify → SignatureInvalid");
    }

    #[test]
    fn custody_errors_say_whether_a_retry_can_help() {
        let missing = Pkcs11Error::TokenNotFound {
            selector: "label \"enos\"".into(),
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            present: String::new(),
        };
        assert!(matches!(
            CustodyError::from(missing),
            CustodyError::Unavailable(_)
        ));
        let pin = Pkcs11Error::WrongPin {
            token: "enos".into(),
        };
        assert!(matches!(CustodyError::from(pin), CustodyError::Config(_)));
    }
}
