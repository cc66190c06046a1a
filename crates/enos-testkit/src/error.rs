//! [`HarnessError`]: why a child process or a binary failed a test.

use std::path::PathBuf;

/// What went wrong while locating, running or driving a child process.
/// Messages carry the child's last lines where they help; tests never
/// give a child a secret on its command line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A binary was not found and could not be built.
    #[error("cannot find or build {program}: {reason}")]
    Locate {
        /// The binary's name.
        program: &'static str,
        /// Why.
        reason: String,
    },
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A signal could not be sent, or waiting for the child failed.
    #[error("{child}: {action}: {source}")]
    Os {
        /// The child's name.
        child: String,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The child misbehaved (exited early, did not exit or log in time,
    /// ignored SIGTERM, was not running); the message says how, with its
    /// last lines.
    #[error("{0}")]
    Failed(String),
    /// The sandbox refused to reload its device file; the previous devices
    /// stay in force. The reason is the sandbox's own.
    #[cfg(feature = "sandbox")]
    #[error("reloading devices failed: {0}")]
    Reload(String),
    /// The sandbox library refused (say, a port that cannot be reserved).
    #[cfg(feature = "sandbox")]
    #[error(transparent)]
    Sandbox(#[from] enos_sandbox::SandboxError),
}
