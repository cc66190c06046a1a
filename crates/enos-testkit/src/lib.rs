//! Test and demo support. No production crate depends on this one: the
//! sandbox, the signer and the agent list it under `[dev-dependencies]`
//! only, so none of it (nor rcgen, nor escargot) is in their binaries.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`pki`] | [`Pki`]: a throwaway CA; [`Identity`]: a certificate and its key as PEM |
//! | [`process`] | [`ChildProcess`]: a child with captured output, SIGTERM/SIGHUP/SIGKILL, killed on drop |
//! | [`binaries`] | [`Binaries`]: where `enos-sandbox`, `enos-signer`, `enos-agent` are (or are built) |
//! | [`docs`] | the docs' links resolve, their command lines parse with the programs' clap definitions |
//! | `sandbox` | (feature `sandbox`) `Sandbox`: the `enos-sandbox` binary as a child process |
//! | `signer` | (feature `signer`) `TestSigner`: a real signer in this process, real mTLS |
//! | `error` | [`HarnessError`]: why a child process or binary failed a test |
//!
//! Errors of the PKI and of `TestSigner` are test failures and come as
//! [`Result`] (any error, with its cause); the child-process harness,
//! whose failures tests match on (say, a refused reload), has
//! [`HarnessError`].
#![forbid(unsafe_code)]

pub mod binaries;
pub mod docs;
mod error;
pub mod login;
pub mod pki;
pub mod process;
#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "signer")]
pub mod signer;

pub use binaries::Binaries;
pub use error::HarnessError;
pub use login::device_login;
pub use pki::{Identity, IdentityFiles, Pki, write_private};
pub use process::{ChildProcess, OutputLog};

/// Errors are test failures: surface them with their cause.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
