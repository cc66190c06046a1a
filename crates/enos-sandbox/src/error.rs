//! [`SandboxError`], the one error type of this crate.

use std::{net::SocketAddr, path::PathBuf};

/// Everything that can go wrong when configuring or running the sandbox.
///
/// Messages name the file, line or address and the reason. They never
/// contain a device secret or a password: where a secret is at fault only
/// its line and column are reported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
    },
    /// The config file is not valid TOML for [`crate::ConfigFile`].
    #[error("invalid config file {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong (from the TOML parser: names the key and position).
        message: String,
    },
    /// The settings are incomplete or contradictory (say, a TLS listener
    /// without a CA).
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The device file is not valid; `line` is 1-based and counts the
    /// header row.
    #[error("invalid device file {path}, line {line}: {reason}")]
    Devices {
        /// The device file.
        path: PathBuf,
        /// The line of the offending record (0 when the whole file is at fault).
        line: u64,
        /// What is wrong; never the secret itself.
        reason: String,
    },
    /// A listener could not be set up or did not come up.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// rumqttd refused its configuration or an in-process link.
    #[error("broker: {0}")]
    Broker(String),
}
