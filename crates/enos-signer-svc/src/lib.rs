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
//! The tree reads bottom-up; imports run one way, from a group to the
//! groups above it in this table, never back:
//!
//! | module | what it holds |
//! |---|---|
//! | [`error`], [`config`], [`key_file`] | [`SignerError`] and its gRPC status; [`SignerConfig`], the TOML config as serde structs; 256-bit key files |
//! | [`custody`] | config → `Custody` (software XChaCha20-Poly1305, or PKCS#11), and the threads that run blocking HSM signs |
//! | [`ca`] | with `[ca]`: the CA of the devices' client certificates (key in custody, chain in the registry), enrollment tokens, the CRL, the expiring-certificates gauge |
//! | [`audit`] | one JSON record per issuance and admin change; password HMAC; fail-closed; sinks: file, log, PostgreSQL |
//! | [`listener`] | what runs before a call is admitted: TLS material and reload, the accept loop, peer identity, connection limits and throttle, metrics, readiness, the plain health port. Never imports a service |
//! | [`state`] | [`state::SignerState`], what every call needs, and its parts: policy per product, rate limit per identity, sampled refusal logs, the admin allow-list |
//! | [`services`] | the gRPC services: `Credentials` (with activation and batch login), `Admin` (with import and product secrets) |
//! | [`server`] | [`Signer`], [`run`]: the listener and the services together; serve until shutdown, then drain |
//! | [`ops`] | what the binary does with the service stopped: `init`, `ca init` / `ca import-cert`, `custody migrate`, `registry copy` |
//! | [`client`] | [`client::connect_mtls`]: how the admin CLI and tests reach a signer |
//!
//! The device registry (trait, records, redb, PostgreSQL, its cache and
//! change feed) is its own crate, [`enos_registry`]: it knows nothing of
//! gRPC, and secrets reach it and leave it sealed.
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
//! | no client certificate, or one from another CA, revoked or expired | refused in the TLS handshake (no call reaches a service) |
//! | a valid certificate naming no identity | `Unauthenticated` |
//! | not allowed (a device for another, an unbound sub-device, a device on Admin, an admin on Credentials) | `PermissionDenied` |
//! | unknown device | `NotFound` |
//! | disabled device (or gateway) | `FailedPrecondition` |
//! | a change against the gateway rules ([`enos_registry::gateway_rules`]) | `FailedPrecondition` |
//! | bad field (the message names it) | `InvalidArgument` |
//! | over the rate limit | `ResourceExhausted` |
//! | audit sink failing while fail-closed | `Unavailable` |
#![forbid(unsafe_code)]

pub mod audit;
pub mod ca;
pub mod client;
pub mod config;
pub mod custody;
pub mod enos_api;
pub mod error;
pub mod key_file;
pub mod listener;
pub mod ops;
pub mod server;
pub mod services;
pub mod state;

pub use config::SignerConfig;
pub use error::SignerError;
pub use server::{Signer, run};
