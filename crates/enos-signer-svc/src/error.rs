//! [`SignerError`], the one error type of this crate, and how it becomes a
//! gRPC status.
//!
//! Messages never contain a secret or a password. Internal detail (a file
//! path, a database error) is logged on the server; clients get a clear
//! status without internals.

use std::path::PathBuf;

use enos_custody::CustodyError;
use enos_domain::private_file::PrivateFileError;
use enos_registry::RegistryError;
use tonic::{Code, Status};

/// Everything that can go wrong in the signer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The configuration is wrong; the message says what and where.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done (`reading`, `creating`, …).
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
    },
    /// A key file is readable by others than its owner.
    #[error(
        "{path} has mode {mode:04o}: a key file must not be accessible by group or others (chmod 600; a file owned by root may be 0640)"
    )]
    LoosePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not hold a valid key.
    #[error("{path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong, never the key.
        reason: &'static str,
    },
    /// The registry's store failed.
    #[error("registry: {0}")]
    Registry(String),
    /// The registry's store cannot be reached right now (database down or
    /// restarting, connection lost, out of connections, a read-only
    /// standby): the caller may retry, here or at another replica.
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// A custody operation failed.
    #[error("custody: {0}")]
    Custody(#[from] CustodyError),
    /// The audit sink could not be written.
    #[error("audit sink: {0}")]
    Audit(String),
    /// The CA could not build or sign a certificate or CRL (the request
    /// was fine; the message is for the log).
    #[error("certificate authority: {0}")]
    Ca(String),
    /// TLS material or setup is wrong.
    #[error("tls: {0}")]
    Tls(String),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// No client certificate, or one that names no identity.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The device (or gateway) is not in the registry.
    #[error("{0} not found")]
    NotFound(String),
    /// The device is disabled, or the state forbids the change.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request field is invalid; the message names it.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the proto.
        field: &'static str,
        /// Why, without echoing secret input.
        reason: String,
    },
    /// An import with bad rows: nothing was written. Each entry is a
    /// source line and what is wrong on it (never a secret).
    #[error("import refused: {} bad rows, nothing written", .0.len())]
    ImportRejected(Vec<(u32, String)>),
    /// A change would break the gateway rules
    /// ([`enos_registry::gateway_rules`]): nothing was written. Each
    /// entry is the device concerned and the rule, in words.
    #[error("{}", .0.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "))]
    GatewayRules(Vec<(enos_domain::DeviceId, String)>),
    /// Over the caller's rate limit.
    #[error("rate limit exceeded; retry later")]
    RateLimited,
    /// EnOS's API gateway could not be reached or answered no usable
    /// reply (connect, TLS, timeout, not JSON): worth a retry.
    #[error("EnOS API unreachable: {0}")]
    EnosApiUnreachable(String),
    /// EnOS's API answered with a failure: its code and message (EnOS's
    /// text, never the secret or the token).
    #[error("EnOS API refused: code {code}: {message}")]
    EnosApi {
        /// EnOS's code (99400, 99500, 1003, …).
        code: i64,
        /// EnOS's `msg`.
        message: String,
    },
}

impl SignerError {
    /// An [`SignerError::InvalidArgument`] for `field`.
    pub fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        SignerError::InvalidArgument {
            field,
            reason: reason.to_string(),
        }
    }

    /// The gRPC code a client sees for this error.
    pub fn code(&self) -> Code {
        match self {
            SignerError::Unauthenticated(_) => Code::Unauthenticated,
            SignerError::PermissionDenied(_) => Code::PermissionDenied,
            SignerError::NotFound(_) => Code::NotFound,
            SignerError::FailedPrecondition(_) | SignerError::GatewayRules(_) => {
                Code::FailedPrecondition
            }
            SignerError::InvalidArgument { .. } | SignerError::ImportRejected(_) => {
                Code::InvalidArgument
            }
            SignerError::RateLimited => Code::ResourceExhausted,
            SignerError::Audit(_) | SignerError::RegistryUnavailable(_) => Code::Unavailable,
            SignerError::Custody(CustodyError::Unavailable(_)) => Code::Unavailable,
            SignerError::EnosApiUnreachable(_) => Code::Unavailable,
            // EnOS's internal errors are worth a retry; its other refusals
            // (a bad request, a device it does not know) are not.
            SignerError::EnosApi { code, .. } if *code == 99_500 || *code == 1005 => {
                Code::Unavailable
            }
            SignerError::EnosApi { .. } => Code::FailedPrecondition,
            _ => Code::Internal,
        }
    }
}

impl From<SignerError> for Status {
    /// Client errors keep their message (it names the field or the device,
    /// nothing more); server-side failures are logged here and reach the
    /// client as a bare code.
    fn from(error: SignerError) -> Status {
        let code = error.code();
        match code {
            Code::Internal => {
                tracing::error!(error = %error, "internal error");
                Status::internal("internal error")
            }
            Code::Unavailable => {
                tracing::error!(error = %error, "service unavailable");
                // The gateway's operator must tell an EnOS outage from the
                // signer's own (EnOS's details stay in the signer's log).
                if let SignerError::EnosApi { .. } | SignerError::EnosApiUnreachable(_) = error {
                    Status::unavailable("EnOS's certificate API is unavailable; retry later")
                } else {
                    Status::unavailable("temporarily unavailable; retry later")
                }
            }
            _ => Status::new(code, error.to_string()),
        }
    }
}

impl From<RegistryError> for SignerError {
    /// A registry error keeps its meaning: a configuration or file error
    /// stays one, an outage stays UNAVAILABLE, a broken gateway rule stays
    /// FailedPrecondition, and a change the signer itself refused (its own
    /// error, carried through the transaction) comes back as it was.
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Config(m) => SignerError::Config(m),
            unreadable @ RegistryError::Unreadable { .. } => {
                SignerError::Config(unreadable.to_string())
            }
            RegistryError::PrivateFile(PrivateFileError::Loose { path, mode }) => {
                SignerError::LoosePermissions { path, mode }
            }
            RegistryError::PrivateFile(PrivateFileError::Unreadable {
                path,
                cause: source,
            }) => SignerError::Io {
                action: "reading",
                path,
                cause: source,
            },
            RegistryError::BadPassword { path, reason } => SignerError::BadKey { path, reason },
            RegistryError::Tls(m) => SignerError::Tls(m),
            RegistryError::Unavailable(m) => SignerError::RegistryUnavailable(m),
            RegistryError::GatewayRules(broken) => SignerError::GatewayRules(broken),
            RegistryError::Refusal(refusal) => certificate_refusal(refusal),
            RegistryError::Refused(refusal) => match refusal.downcast::<SignerError>() {
                Ok(own) => *own,
                Err(other) => SignerError::Registry(other.to_string()),
            },
            other => SignerError::Registry(other.to_string()),
        }
    }
}

impl From<SignerError> for RegistryError {
    /// The signer's decision inside a registry transaction
    /// ([`enos_registry::Change`]) aborts it; [`SignerError::from`] gives
    /// the error back unchanged.
    fn from(error: SignerError) -> Self {
        RegistryError::refused(error)
    }
}

/// The status of a refused enrollment or renewal: a token that is not
/// (or no longer) a proof is Unauthenticated, one for another device
/// PermissionDenied; a device that cannot have a certificate is NotFound
/// or FailedPrecondition. Each message says what to do next.
pub fn certificate_refusal(refusal: enos_registry::CertificateRefusal) -> SignerError {
    use enos_registry::CertificateRefusal as R;
    const NEW_TOKEN: &str = "ask the operator for a new one (enos-signer enroll-token PK DK)";
    match refusal {
        R::TokenUnknown => SignerError::Unauthenticated("the enrollment token is not valid"),
        R::TokenExpired => SignerError::Unauthenticated(
            "the enrollment token has expired; ask the operator for a new one (enos-signer enroll-token PK DK)",
        ),
        R::TokenUsed => SignerError::Unauthenticated(
            "the enrollment token has been used already; ask the operator for a new one (enos-signer enroll-token PK DK)",
        ),
        R::TokenRevoked => SignerError::Unauthenticated(
            "the enrollment token was revoked; ask the operator for a new one (enos-signer enroll-token PK DK)",
        ),
        R::TokenForAnotherDevice => SignerError::PermissionDenied(
            "the enrollment token was made for another device".into(),
        ),
        R::CertificateUnknown => SignerError::FailedPrecondition(
            "the calling certificate was not issued by this signer's CA: enroll with a token instead (enos-agent enroll)".into(),
        ),
        R::CertificateRevoked => SignerError::Unauthenticated("the client certificate is revoked"),
        R::CertificateExpired => SignerError::Unauthenticated(
            "the client certificate has expired: it cannot renew; enroll again with a new token (enos-agent enroll)",
        ),
        R::CertificateOfAnotherDevice => SignerError::PermissionDenied(
            "the certificate renewed belongs to another device".into(),
        ),
        R::DeviceUnknown => SignerError::NotFound("the device".into()),
        R::DeviceDisabled => SignerError::FailedPrecondition(format!(
            "the device is disabled; enable it, then {NEW_TOKEN}"
        )),
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = SignerError> = std::result::Result<T, E>;
