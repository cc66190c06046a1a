//! The device-side agent: fetches short-lived MQTT credentials from the
//! signer over mTLS, stays connected to EnOS over MQTT (11883) or MQTTS
//! (18883), and carries the device's data to and from the gateway's local
//! broker. The device secret never reaches the device.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the TOML config as serde structs, validated |
//! | [`signer`] | the [`SignerClient`] trait and [`GrpcSigner`] (mTLS, failover) |
//! | [`issued`] | what the signer issues: [`IssuedCredential`], [`SignedSubDeviceLogin`] |
//! | `signer_channels` | the signer channels, rebuilt when the mTLS files change |
//! | [`credential`] | [`CredentialCache`]: fresh per connect, reuse rules, the 70 % rule |
//! | [`backoff`] | [`Backoff`]: exponential, full jitter, refusals back off further |
//! | [`refusal`] | telling a broker's refusal from a network failure |
//! | [`session`] | the EnOS connect loop around rumqttc |
//! | [`bridge`] | the local-broker side of the data path |
//! | [`sub_device`] | `combine.login.batch` (then `combine.login` for the rest) for sub-devices after every connect |
//! | [`activation`] | dynamic activation: the pushed device secret handed straight to the signer |
//! | [`queue`] | [`BoundedQueue`]: drop-oldest, counted |
//! | [`topics`] | EnOS topic names and the JSON envelope |
//! | [`status`] | [`AgentStatus`] and the status file |
//! | [`notify`] | systemd READY / WATCHDOG / STOPPING |
//! | [`offline_sign`] | the `sign` command |
//! | [`agent`] | [`Agent`]: runs all of the above until shutdown |
//! | `shared`, `tls`, `error` | plumbing; [`AgentError`] (with [`SignerClientError`], one of its causes) |
//!
//! Passwords and signs are held in zeroizing, redacting types and never
//! logged; rumqttc's `MqttOptions` (whose `Debug` prints the password) is
//! never printed.
#![forbid(unsafe_code)]

pub mod activation;
pub mod agent;
pub mod backoff;
pub mod bridge;
pub mod config;
pub mod credential;
mod error;
pub mod issued;
pub mod notify;
pub mod offline_sign;
pub mod queue;
pub mod refusal;
pub mod session;
mod shared;
pub mod signer;
mod signer_channels;
pub mod status;
pub mod sub_device;
mod tls;
pub mod topics;

pub use agent::Agent;
pub use backoff::Backoff;
pub use config::Config;
pub use credential::CredentialCache;
pub use enos_domain::now_ms;
pub use error::{AgentError, SignerClientError};
pub use issued::{IssuedCredential, SignedBatchEntry, SignedLoginBatch, SignedSubDeviceLogin};
pub use queue::BoundedQueue;
pub use shared::{EnosReply, Outbound, Shared};
pub use signer::{GrpcSigner, SignerClient};
pub use status::{ActivationState, AgentStatus, ConnectionState, SubDeviceState};
pub use tls::install_crypto_provider;
