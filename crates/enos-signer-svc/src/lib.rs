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
//! | [`limits`] | `[server.limits]`: connections, streams, requests in flight, import bytes; metrics/health listener timeouts |
//! | [`peer`] | the caller's identity from its client certificate |
//! | [`credentials`] | the `Credentials` service |
//! | [`admin`] | the `Admin` service; [`import`] its all-or-nothing bulk import; [`products`] product secrets |
//! | [`activation`] | dynamic activation: `securemode=3` credentials and `CompleteActivation` |
//! | [`batch_login`] | `SignSubDeviceLoginBatch`: one signed `combine.login.batch` for a gateway |
//! | [`metrics`] | Prometheus metrics and their mTLS `/metrics` endpoint |
//! | [`tls`] | [`tls::connect_mtls`] for clients |
//! | [`tls_reload`] | server TLS material, re-read when its files change (and on SIGHUP) |
//! | [`tls_incoming`] | the gRPC listener's TLS handshakes, each with the current material |
//! | [`server`] | [`Signer`], [`run`]: serve until shutdown, then drain |
//! | [`state`] | [`state::SignerState`]: what every call needs, built once from the config |
//! | [`convert`] | request fields → validated ids (errors name the field); records → messages |
//! | [`readiness`] | what the health service answers: registry, custody, draining; liveness |
//! | [`health_port`] | the plain (no TLS) health port for kubelet probes |
//! | [`refusal_log`] | [`refusal_log::RefusalLog`]: refusals a caller can repeat for free, sampled |
//! | [`init`] | create keys and registry |
//! | [`error`] | [`SignerError`], and how it becomes a gRPC status |
//!
//! # Secrets in memory
//!
//! What this crate owns is wiped: secrets live in `DeviceSecret` /
//! `ProductSecret` (zeroized on drop), the CLI reads secret files and CSV
//! exports into `Zeroizing` buffers, an import's checked rows hold
//! `DeviceSecret`s and a refused message's prost strings are zeroed, the
//! import's duplicate-secret digests are keyed by a per-import key that is
//! wiped. What it cannot wipe, and leaves to the allocator: the prost
//! `String`s of a request or response while tonic encodes or decodes them
//! (an issued password, a pushed device secret in `CompleteActivation`, a
//! secret in `PutDevice` or an import row on the CLI side), and hyper's
//! and rustls's buffers of the same bytes on the wire. They live for one
//! call; a process dump during that call could hold them.
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
//! | a change against the gateway rules ([`registry::gateway_rules`]) | `FailedPrecondition` |
//! | bad field (the message names it) | `InvalidArgument` |
//! | over the rate limit | `ResourceExhausted` |
//! | audit sink failing while fail-closed | `Unavailable` |
#![forbid(unsafe_code)]

pub mod activation;
pub mod admin;
pub mod admin_gate;
pub mod audit;
pub mod batch_login;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod custody;
pub mod custody_migrate;
pub mod error;
pub mod health_port;
pub mod import;
pub mod init;
pub mod key_file;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod products;
pub mod rate_limit;
pub mod readiness;
pub mod refusal_log;
pub mod registry;
pub mod registry_copy;
pub mod server;
pub mod sign_threads;
pub mod state;
pub mod tls;
pub mod tls_incoming;
pub mod tls_reload;

pub use config::SignerConfig;
pub use error::SignerError;
pub use server::{Signer, run};
