//! [`E2eError`]: the one error type of this crate.

use std::time::Duration;

/// What went wrong while setting up or driving the loop. Messages never
/// carry a secret or a password.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path or program.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something expected did not happen within its time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
    },
    /// A component misbehaved or refused; the message says how.
    #[error("{0}")]
    Failed(String),
    /// An error from another crate of the project (PKI, sandbox, signer).
    #[error(transparent)]
    Component(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl E2eError {
    /// A [`E2eError::Failed`] with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        E2eError::Failed(message.into())
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| E2eError::Io { what, source }
    }
}

/// The other crates' errors become [`E2eError::Component`], cause kept.
macro_rules! component_errors {
    ($($error:ty),+ $(,)?) => {
        $(impl From<$error> for E2eError {
            fn from(e: $error) -> Self {
                E2eError::Component(Box::new(e))
            }
        })+
    };
}

component_errors!(
    enos_testkit::HarnessError,
    enos_sandbox::SandboxError,
    enos_signer_svc::SignerError,
    enos_agent::AgentError,
);

/// This crate's result.
pub type Result<T, E = E2eError> = std::result::Result<T, E>;
