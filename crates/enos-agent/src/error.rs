//! [`AgentError`], the error of the agent and its commands, and
//! [`SignerClientError`], why the signer gave no credential (one of
//! [`AgentError`]'s causes, also handled on its own by the connect loop).
//!
//! Messages name what went wrong and where (a config field, a file, an
//! endpoint); they never contain a password, a sign or key material.

use std::path::PathBuf;

use tonic::Code;

/// Everything that stops the agent or one of its commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A file named in the config or on the command line could not be read.
    #[error("cannot read {path}: {cause}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
    },
    /// A file a config key names could not be read: the key, the path
    /// (absolute: relative paths are the config file's directory's) and
    /// why.
    #[error("{key} = {path}: cannot read it: {cause}")]
    ConfigFile {
        /// The config key, e.g. `signer.ca`.
        key: &'static str,
        /// The file, as resolved.
        path: PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit the schema.
    #[error("invalid config {path}: {message}")]
    ConfigSyntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A config value is well-formed TOML but not acceptable.
    #[error("invalid config: {field}: {reason}")]
    ConfigValue {
        /// The dotted path of the field, e.g. `enos.broker`.
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// PEM material (a CA, a certificate or a key) is unusable.
    #[error("invalid TLS material {path}: {reason}")]
    Tls {
        /// The PEM file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The signer could not be reached or refused to issue. Transparent:
    /// its message names the signer already, and a prefixed copy would
    /// print it twice where causes are listed (`{:#}`).
    #[error(transparent)]
    SignerClient(#[from] SignerClientError),
    /// The status file could not be written.
    #[error("cannot write status file {path}: {cause}")]
    StatusFile {
        /// The status file.
        path: PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
    },
    /// A file of the device's pair (or its candidate) could not be written.
    #[error("cannot write {path}: {cause}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
    },
    /// The device key in a PKCS#11 token cannot be used (module, token,
    /// PIN, or no pair for the certificate).
    #[error("device key {location}: {reason}")]
    DeviceKey {
        /// The `pkcs11:` URI (it holds no secret).
        location: String,
        /// What the token said.
        reason: String,
    },
    /// The spool file could not be created, read or written.
    #[error("spool {path}: {cause}")]
    Spool {
        /// The spool file.
        path: PathBuf,
        /// What failed, with the I/O error.
        cause: String,
    },
    /// A new key or its CSR could not be made.
    #[error("cannot make a new key: {0}")]
    KeyGeneration(String),
    /// `enroll` would not, or could not, enroll; the message says what to
    /// do. Never contains the token.
    #[error("enroll: {0}")]
    Enroll(String),
    /// An input to the offline `sign` command is invalid.
    #[error("{0}")]
    Sign(#[from] enos_sign_core::SignError),
}

impl AgentError {
    /// A [`AgentError::ConfigValue`] for `field`.
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AgentError::ConfigValue {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why the signer gave no credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignerClientError {
    /// No endpoint answered (network, TLS, timeouts, overload): a cached,
    /// still-valid credential may be used instead.
    #[error("no signer endpoint answered; last was {endpoint}: {message}")]
    Unavailable {
        /// The last endpoint tried.
        endpoint: String,
        /// What went wrong there.
        message: String,
    },
    /// The signer answered and said no (device unknown or disabled, a
    /// sub-device not bound to this gateway, a certificate it does not
    /// accept). Asking again immediately gives the same answer.
    #[error("signer {endpoint} refused ({code:?}): {message}")]
    Refused {
        /// The endpoint that answered.
        endpoint: String,
        /// The gRPC status code.
        code: Code,
        /// The signer's message, which never carries secrets.
        message: String,
    },
    /// The signer answered with something unusable.
    #[error("signer {endpoint} sent an unusable response: {reason}")]
    BadResponse {
        /// The endpoint that answered.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SignerClientError {
    /// Whether a cached credential may stand in for a fresh one.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SignerClientError::Unavailable { .. })
    }
}
