//! [`RegistryError`], the one error type of this crate.
//!
//! Messages never contain a secret: statements carry sealed secrets only
//! as parameters, a database URL is shown without its password, and a
//! password file is named, never quoted.

use std::path::PathBuf;

use enos_domain::{DeviceId, private_file::PrivateFileError};

/// Everything that can go wrong in a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The configuration is wrong; the message says what and where.
    #[error("configuration: {0}")]
    Config(String),
    /// A file the configuration names (a password file, a CA) cannot be
    /// read: this crate reads such files and writes none.
    #[error("reading {what} {path}: {cause}")]
    Unreadable {
        /// Which of the configured files (`the registry CA`, …).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
    },
    /// A file holding secrets (the redb file, a password file) may be
    /// read by others than its owner, or cannot be inspected.
    #[error(transparent)]
    PrivateFile(#[from] PrivateFileError),
    /// A password file holds no usable password.
    #[error("{path}: {reason}")]
    BadPassword {
        /// The password file.
        path: PathBuf,
        /// What is wrong, never the password.
        reason: &'static str,
    },
    /// TLS material for the database connection is wrong.
    #[error("tls: {0}")]
    Tls(String),
    /// The store failed (a corrupt record, a refused statement).
    #[error("registry: {0}")]
    Store(String),
    /// The store cannot be reached right now (database down or
    /// restarting, connection lost, out of connections, a read-only
    /// standby): the caller may retry, here or at another replica.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A change would break the [gateway rules](crate::gateway_rules):
    /// nothing was written. Each entry is the device concerned and the
    /// rule, in words.
    #[error("{}", .0.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "))]
    GatewayRules(Vec<(DeviceId, String)>),
    /// The caller's own decision ([`crate::Change`],
    /// [`crate::ProductChange`]) aborted the transaction: nothing was
    /// written. Carried as the caller's own error, so that it gets it back
    /// (by downcasting) with its meaning intact.
    #[error("{0}")]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// An enrollment or a renewal was refused by the registry's rules
    /// (token, certificate or device): nothing was written. The message
    /// names no token, hash or key.
    #[error("{0}")]
    Refusal(#[from] crate::certificates::CertificateRefusal),
}

impl RegistryError {
    /// A [`RegistryError::Refused`]: the caller's decision aborts the change.
    pub fn refused(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        RegistryError::Refused(error.into())
    }
}

impl From<redb::Error> for RegistryError {
    fn from(e: redb::Error) -> Self {
        RegistryError::Store(e.to_string())
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for RegistryError {
            fn from(e: $t) -> Self {
                RegistryError::Store(e.to_string())
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Shorthand for this crate's results.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
