//! [`AgentError`], the one error type of this crate.
//!
//! Messages name what went wrong and where (a config field, a file, an
//! endpoint); they never contain a password, a sign or key material.

use std::path::PathBuf;

/// Everything that stops the agent or one of its commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A file named in the config or on the command line could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
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
    /// The signer could not be reached or refused to issue.
    #[error("signer: {0}")]
    SignerClient(#[from] crate::signer::SignerClientError),
    /// The status file could not be written.
    #[error("cannot write status file {path}: {source}")]
    StatusFile {
        /// The status file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
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
