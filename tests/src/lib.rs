//! The whole loop on one machine: the demo (`cargo xtask demo` runs the
//! `enos-demo` binary) and the end-to-end suite (`tests/e2e`), over the
//! real binaries and libraries: the EnOS sandbox, the signer, the agent,
//! and Debian's Mosquitto.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`pki`] | [`LoopPki`]: one throwaway CA and its files |
//! | [`devices`] | [`TestDevice`]: random secrets, the CSV files of the sandbox and the signer |
//! | [`signer`] | [`SignerProcess`]: `enos-signer init`, `serve` (kill, restart), admin commands |
//! | [`agent`] | [`AgentToml`]: the agent's config; [`InProcessAgent`]: the agent library in this process |
//! | [`mqtt`] | [`MqttClient`]: the console's and the local application's MQTT client |
//! | [`tls`] | rustls client configs (ring) for those clients |
//! | [`local_broker`] | [`LocalBroker`]: rumqttd in process, the demo's local broker |
//! | [`mosquitto`] | [`Mosquitto`]: Debian's broker with the suite's config on a free port |
//! | [`logs`] | [`ProcessLogs`]: this process's `tracing` output, captured |
//! | [`leaks`] | [`LeakScan`]: secrets and issued passwords (from the audit trail), searched in logs |
//! | [`demo`] | the demo's steps, told in plain words |
//! | [`fleet`] | the reconnect-storm harness behind `enos-fleet`: N agents, scenarios, figures, the raw anchor, the picture |
//! | `error` | [`E2eError`], the one error type |
//!
//! Child processes ([`ChildProcess`]) and where the binaries are
//! ([`Binaries`]) come from `enos-testkit`, shared with the components'
//! own tests.
//!
//! No secret or password is ever printed: [`TestDevice`]'s `Debug` redacts the
//! secret, and the issued passwords are only ever held to look for them.
#![forbid(unsafe_code)]

pub mod agent;
pub mod demo;
pub mod devices;
mod error;
pub mod fleet;
pub mod leaks;
pub mod local_broker;
pub mod logs;
pub mod mosquitto;
pub mod mqtt;
pub mod pki;
pub mod signer;
pub mod tls;

pub use agent::{AgentToml, InProcessAgent};
pub use devices::TestDevice;
pub use enos_testkit::{Binaries, ChildProcess};
pub use error::{E2eError, Result};
pub use leaks::LeakScan;
pub use local_broker::LocalBroker;
pub use logs::ProcessLogs;
pub use mosquitto::Mosquitto;
pub use mqtt::MqttClient;
pub use pki::LoopPki;
pub use signer::SignerProcess;
