//! The reconnect-storm harness behind `enos-fleet`: N device identities,
//! N agents in this process (the real `enos-agent` library: credential
//! fetch over mTLS, backoff, MQTT connect), a scenario, the figures, and
//! the raw-client anchor against the same sandbox in the same run.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`options`] | [`FleetOptions`], [`Scenario`]: what to run, bounded in count and time |
//! | [`world`] | [`FleetWorld`]: PKI, signer (Admin import), sandbox, device identities (enrolled with tokens for `renew`) |
//! | [`limits`] | the file-descriptor limit the harness raises for itself |
//! | [`timeline`] | [`Timeline`]: samples of connected agents, connects and issuances over time, and the events |
//! | [`phase`] | [`PhaseFigures`]: what one event (start, broker restart, signer restart) cost |
//! | [`raw`] | the anchor: N raw rumqttc clients with pre-signed passwords |
//! | [`renew`] | `renew`: one certificate lifetime, every agent renewing by itself; [`renew::RenewFigures`] |
//! | [`enos_wave`] | `renew --enos-certificates`: a wave of EnOS certificate renewals through the `enos-signer` binary to the sandbox's API; [`enos_wave::EnosWaveFigures`] |
//! | [`run`] | [`run`]: the whole run, its [`FleetReport`] |
//! | [`plot`] | the SVG picture (`--plot`) |
//!
//! Everything stays on 127.0.0.1; the signer runs in this process on its
//! own runtime (real mTLS), the sandbox is a child process.

pub mod enos_wave;
pub mod limits;
pub mod options;
pub mod phase;
pub mod plot;
pub mod raw;
pub mod renew;
pub mod run;
pub mod timeline;
pub mod world;

pub use options::{FleetOptions, Scenario};
pub use phase::PhaseFigures;
pub use run::{FleetReport, run};
pub use timeline::Timeline;
pub use world::FleetWorld;
