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

impl From<enos_testkit::HarnessError> for E2eError {
    fn from(e: enos_testkit::HarnessError) -> Self {
        E2eError::Component(Box::new(e))
    }
}

impl From<enos_sandbox::SandboxError> for E2eError {
    fn from(e: enos_sandbox::SandboxError) -> Self {
        E2eError::Component(Box::new(e))
    }
}

impl From<enos_signer_svc::SignerError> for E2eError {
    fn from(e: enos_signer_svc::SignerError) -> Self {
        E2eError::Component(Box::new(e))
    }
}

impl From<enos_agent::AgentError> for E2eError {
    fn from(e: enos_agent::AgentError) -> Self {
        E2eError::Component(Box::new(e))
    }
}

/// This crate's result.
pub type Result<T, E = E2eError> = std::result::Result<T, E>;
