//! The signer: central custody of EnOS device secrets and gRPC issuance of
//! short-lived MQTT credentials to mTLS-authenticated devices.
//!
//! A device never holds its secret. It presents a client certificate
//! naming it (`spiffe://enos/device/{productKey}/{deviceKey}`, see
//! [`enos_signer_proto::identity`]) and receives a password signed for
//! *now*, valid for the policy's TTL. Admin certificates
//! (`spiffe://enos/admin/{name}`) manage the registry.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`SignerConfig`]: the TOML config as serde structs |
//! | [`key_file`] | 256-bit key files: mode 0600 or `$CREDENTIALS_DIRECTORY`, never argv |
//! | [`custody`] | [`custody::build`] (config → `Custody`), [`custody::SoftwareCustody`] (XChaCha20-Poly1305) |
//! | [`sign_threads`] | dedicated threads for blocking (HSM) signs, one per token session |
//! | [`custody_migrate`] | `custody migrate`: re-seal every record software ↔ HSM, atomic per record, resumable |
//! | [`registry`] | the [`registry::Registry`] trait, [`registry::RedbRegistry`], [`registry::PostgresRegistry`] |
//! | [`registry_copy`] | `registry copy`: every record from one registry to another, sealed as it is, resumable |
//! | [`policy`] | TTL, sign method and broker URLs per product |
//! | [`audit`] | one JSON record per issuance and admin change; password HMAC; fail-closed |
//! | [`rate_limit`] | a budget per identity (governor) |
//! | [`peer`] | the caller's identity from its client certificate |
//! | [`credentials`] | the `Credentials` service |
//! | [`admin`] | the `Admin` service; [`import`] its all-or-nothing bulk import |
//! | [`metrics`] | Prometheus metrics and their mTLS `/metrics` endpoint |
//! | [`tls`] | server TLS material; [`tls::connect_mtls`] for clients |
//! | [`server`] | [`Signer`], [`run`]: serve until shutdown, then drain |
//! | [`init`] | create keys and registry |
//! | [`csv_rows`] | EnOS console CSV exports → import rows |
//! | [`testing`] | [`testing::TestSigner`], for tests and the demo |
//! | [`error`] | [`SignerError`], and how it becomes a gRPC status |
//!
//! # Status codes
//!
//! | situation | code |
//! |---|---|
//! | no client certificate, or one naming no identity | `Unauthenticated` |
//! | a certificate from another CA | refused in the TLS handshake |
//! | not allowed (a device for another, an unbound sub-device, a device on Admin, an admin on Credentials) | `PermissionDenied` |
//! | unknown device | `NotFound` |
//! | disabled device (or gateway) | `FailedPrecondition` |
//! | bad field (the message names it) | `InvalidArgument` |
//! | over the rate limit | `ResourceExhausted` |
//! | audit sink failing while fail-closed | `Unavailable` |
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod config;
pub mod credentials;
pub mod csv_rows;
pub mod custody;
pub mod custody_migrate;
pub mod error;
pub mod import;
pub mod init;
pub mod key_file;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod rate_limit;
pub mod registry;
pub mod registry_copy;
pub mod server;
pub mod sign_threads;
pub mod state;
pub mod testing;
pub mod tls;

pub use config::SignerConfig;
pub use error::SignerError;
pub use server::{Signer, run};
