//! The EnOS device vocabulary that the sandbox, the signer and the agent
//! share, so that each word has one meaning (and one implementation) in
//! the workspace. The signing rules themselves are in [`enos_sign_core`];
//! this crate holds what sits on top of them and is not about signing.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`device_id`] | [`DeviceId`]: `(productKey, deviceKey)`, the key of every device table |
//! | [`device_file`] | [`device_file::read`]: the device CSV file the sandbox loads and the signer imports |
//! | [`clock`] | [`now_ms`]: wall-clock time in EnOS's unit |
//! | `error` | [`DeviceFileError`], the one error type |
#![forbid(unsafe_code)]

pub mod clock;
pub mod device_file;
pub mod device_id;
mod error;

pub use clock::now_ms;
pub use device_file::{DeviceFile, DeviceRow, UnreadableRow};
pub use device_id::DeviceId;
pub use error::DeviceFileError;
