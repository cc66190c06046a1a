//! What `enos-signer` does with the service stopped: create its keys and
//! registry, move secrets between custodies, copy a registry. Each is a
//! library function, so the CLI stays a thin layer and tests call the
//! same code.
//!
//! | module | what it holds |
//! |---|---|
//! | [`init`] | `init`: the master key, the audit key, an empty registry |
//! | [`custody_migrate`] | `custody migrate`: re-seal every record software ↔ HSM, atomic per record, resumable |
//! | [`registry_copy`] | `registry copy`: the custody check, then [`enos_registry::copy`] |

pub mod ca;
pub mod custody_migrate;
pub mod init;
pub mod registry_copy;
