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
//! | [`enroll`] | the `enroll` command: a key made here, a certificate for a one-time token |
//! | [`enos_cert`] | the EnOS device certificate brokered by the signer: applied for, renewed, proven by one reconnect, the old one retired |
//! | [`renewal`] | the certificate renewed at 2/3 of its lifetime ± jitter, inside `run` |
//! | [`pair`] | the key and certificate files: atomic writes, crash-safe promotion of a candidate |
//! | [`device_key`] | where the key is: a 0600 file, or a PKCS#11 token (`pkcs11:` URI) that signs handshakes and CSRs |
//! | [`check`] | `enos-agent check`'s steps: the EnOS broker, a real login there, the local broker |
//! | [`certificate`] | a certificate's validity, for the renewal schedule |
//! | [`queue`] | [`BoundedQueue`]: drop-oldest, counted (no `[spool]`) |
//! | [`spool`] | [`spool::Spool`]: the crash-safe upstream spool, one file |
//! | [`topics`] | EnOS topic names and the JSON envelope |
//! | [`status`] | [`AgentStatus`] and the status file |
//! | [`notify`] | systemd READY / WATCHDOG / STOPPING |
//! | [`offline_sign`] | the `sign` command |
//! | [`agent`] | [`Agent`]: runs all of the above until shutdown |
//! | `handshake` | a failed TLS handshake (signer, broker) explained with the config's keys and files |
//! | `shared`, `tls`, `error` | plumbing; [`AgentError`] (with [`SignerClientError`], one of its causes) |
//!
//! Passwords and signs are held in zeroizing, redacting types and never
//! logged; rumqttc's `MqttOptions` (whose `Debug` prints the password) is
//! never printed.
//!
//! # Footprint
//!
//! The agent ships built with the workspace's `agent-release` profile
//! (`cargo build --profile agent-release -p enos-agent`). Its resident set
//! is mostly its own code (the kernel maps the cached pages around every
//! page touched), so what pays is a smaller binary; the heap is ~0.7 MiB.
//! Measured one choice at a time with `cargo bench -p enos-agent --bench
//! rss` (VmHWM bridging 100 msg/s, median of 3 runs):
//!
//! | choice | VmHWM | kept |
//! |---|---|---|
//! | release profile, as before | 7.95 MiB | — |
//! | + fat LTO, one codegen unit | 7.05 MiB | yes |
//! | + `panic = "abort"` | 6.47 MiB | yes |
//! | + `opt-level = "z"` (`"s"`: 0.27 MiB more) | 5.41 MiB | yes |
//! | + logs through a `Targets` filter, not an `EnvFilter` (no regex engine) | 5.18 MiB | yes |
//! | signer channels closed when idle (`signer_channels`) | −0.02 MiB | no: noise, and an mTLS handshake per reconnect |
//! | one blocking thread instead of two | −0.03 MiB | no: noise |
//! | `MALLOC_ARENA_MAX=1` (glibc) | −0.01 MiB | no: noise |
//! | mimalloc (0.1, default features off) as the global allocator | 12.9 MiB (+7.7: its heap 8.4 MiB) | no |
//!
//! The runtime is tokio's current-thread one (one MQTT session needs no
//! more); rumqttc's request channels (16 and 64) and the bounded queues
//! grow only with what they hold.
#![forbid(unsafe_code)]

pub mod activation;
pub mod agent;
pub mod backoff;
pub mod bridge;
pub mod certificate;
pub mod check;
pub mod config;
pub mod credential;
pub mod device_key;
pub mod enos_cert;
pub mod enroll;
mod error;
mod handshake;
pub mod issued;
pub mod notify;
pub mod offline_sign;
pub mod pair;
pub mod queue;
pub mod refusal;
pub mod renewal;
pub mod session;
mod shared;
pub mod signer;
mod signer_channels;
pub mod spool;
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
pub use issued::{
    IssuedCredential, SignedBatchEntry, SignedCertificate, SignedLoginBatch, SignedSubDeviceLogin,
};
pub use queue::BoundedQueue;
pub use shared::{EnosReply, Outbound, Shared};
pub use signer::{GrpcSigner, SignerClient};
pub use status::{
    ActivationState, AgentStatus, CertificateStatus, ConnectionState, RenewalState, SubDeviceState,
};
pub use tls::install_crypto_provider;
