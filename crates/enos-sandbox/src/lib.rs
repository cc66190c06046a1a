//! A local EnOS-compatible MQTT broker that checks signed device
//! credentials, so that devices, gateways, the agent and the signer can be
//! tested on one machine, without the cloud.
//!
//! Built on [rumqttd] 0.20 (MQTT 3.1.1, the version EnOS speaks) behind
//! an MQTT-aware front ([`front`]), which behaves as EnOS at the
//! connection: CONNACK codes 4/5 for refusals, the TLS certificate bound
//! to the device, topic isolation, downstream delivered without
//! SUBSCRIBE, and a console login for the cloud's side:
//!
//! - a plain listener (EnOS's 11883) and a TLS listener (18883) that
//!   requires a client certificate chaining to the configured CA and
//!   naming the device of the login ([`CertificateRule`]); both
//!   check the signed password of every CONNECT with [`enos_sign_core`]
//!   (sha1 and sha256, hex in either case, constant-time compare; md5 only
//!   when enabled), accepting every login form the official SDKs send
//!   ([`enos_sign_core::PresentedLogin`]); no freshness check, as EnOS,
//!   unless `--freshness-window` turns one on;
//! - devices from a CSV file ([`devices`]), reloadable at run time;
//! - dynamic activation ([`activation`]): securemode 3 with the product
//!   secret, the new secret pushed on `thing/activate/info`;
//! - an in-broker responder ([`responder`]) answering `combine.login`,
//!   `combine.login.batch`, `combine.logout` (at most 200 online
//!   sub-devices per gateway) and `thing.measurepoint.post`, through
//!   rumqttd's in-process link (`Broker::link`).
//!
//! # Layout
//!
//! The modules in layers, lowest first. A module imports only from lower
//! layers (a smaller number), so the imports form no circle: a type that
//! two layers share lives in the lower one (as [`CertificateRule`], which
//! the settings hold and the front applies), and a lower module is handed
//! values rather than reaching up. Doc links may point anywhere.
//!
//! | layer | module | what it holds | imports |
//! |---|---|---|---|
//! | 0 | `error` | [`SandboxError`], the one error type | — |
//! | 0 | `readiness` | [`ListenWatch`]: when rumqttd actually listens | — |
//! | 0 | `status` | [`StatusLine`]: what the binary prints on stdout for programs that drive it | — |
//! | 1 | [`devices`] | [`DeviceRegistry`] from the CSV file, [`DeviceStore`] swapping in reloads | `error` |
//! | 1 | [`console`] | [`ConsoleLogin`]: the cloud's side | `error` |
//! | 1 | `ports` | [`PortReservation`]: free ports that rumqttd can still bind | `error` |
//! | 2 | [`enos_api`] | [`enos_api::EnosApi`]: EnOS's certificate API (token method, apply/renew/revoke/list), its CA and the certificates it issued | `devices`, `error` |
//! | 2 | `certificate` | [`CertificateRule`]: which device a TLS client certificate belongs to | `devices` |
//! | 2 | [`activation`] | [`Activations`]: dynamic activation (securemode 3), pending and activated secrets; [`ActivationPush`]: the push | `devices` |
//! | 2 | [`sub_devices`] | [`SubDeviceSessions`]: which sub-devices are online through which gateway, at most 200 each | `devices` |
//! | 2 | [`sessions`] | [`SessionTracker`]: drops the open sessions a reload revokes | `devices`, `error` |
//! | 3 | [`config`] | [`ConfigFile`] (`--config FILE.toml`), [`Overrides`] (command line), [`Settings`] | `certificate`, `sub_devices`, `error` |
//! | 4 | [`auth`] | [`Authenticator`]: the CONNECT checks; [`Admitted`]: who may connect; [`Refusal`]: why a CONNECT was refused, and its CONNACK code | `config`, `activation`, `devices` |
//! | 5 | [`front`] | the public listeners: CONNECT, certificate rule, topic rules, delivery, in front of rumqttd | `auth`, `config` and layers 0–2 |
//! | 1 | [`record`] | [`record::Record`]: what devices published, one JSON line each (`--record`), for tests | `devices`, `error` |
//! | 5 | [`responder`] | [`Responder`]: request/reply topics and their EnOS codes | `auth`, `sub_devices`, `devices` |
//! | 6 | [`broker`] | [`RunningBroker`]: rumqttd, the responder and the front in this process (what the binary runs) | all of the above |
//!
//! So the spine reads one way, config → auth → front and responder →
//! broker: `front` and `responder` know neither each other nor `broker`,
//! which wires them together. Inside `front`, `context` (what every
//! connection is handed) and `session_state` (what a session keeps across
//! connections) sit below both `front` itself and `connection`.
//!
//! # Designing around rumqttd
//!
//! - **No CONNACK on a refused login, no client certificate in the auth
//!   hook, no topic rules, routing by subscription only.** Hence the
//!   front: rumqttd listens on loopback only, behind it, and only the
//!   front's own logins (a per-process token) reach it. See [`front`] for
//!   what the front decides and what it costs.
//! - **No stop API.** rumqttd's listener threads run until the process
//!   ends, so the sandbox runs as a **child process** in tests
//!   (see "Tests" below): it stops for real, frees its ports, restarts on the
//!   same ports (for reconnect tests), and its output can be captured and
//!   scanned for leaked secrets. [`RunningBroker`] (in-process) exists for
//!   the binary; starting it twice in one process would leak the first.
//! - **No bound address for port 0.** rumqttd binds from a `SocketAddr`
//!   and does not report the port it got. The sandbox picks the port with
//!   a [`PortReservation`] (a bound, non-listening `SO_REUSEADDR` socket,
//!   see `ports`) and hands rumqttd the actual port; the test harness
//!   holds its reservations for the life of a `Sandbox`, so a restart
//!   gets the same ports back. Linux semantics; the project runs on Linux.
//! - **No readiness signal.** rumqttd binds in its own thread and only
//!   logs. [`ListenWatch`] watches rumqttd's own log events, so the
//!   sandbox reports `listening` only once rumqttd listens, and fails with
//!   rumqttd's reason (say, address in use) otherwise.
//! - **No disconnect on request.** rumqttd cannot close a client's
//!   connection on demand. A reload therefore *takes over* the sessions it
//!   revokes (devices removed, disabled or with a new secret): the sandbox
//!   connects to itself with the same client id, which makes rumqttd close
//!   the device's connection, then disconnects ([`sessions`]). Other
//!   sessions stay open; restarting the process drops them all.
//! - **TLS details.** rumqttd reads the TLS files on each connection, and
//!   only the first certificate of the CA file (so the sandbox checks the
//!   files once at start). With client certificates on, rumqttd treats a
//!   subject Organization (O=) as a tenant: it must be alphanumeric or the
//!   handshake is refused, and the client id is prefixed with it inside
//!   rumqttd (topics are unchanged). It does the TLS handshake in its
//!   accept loop, so one stalled handshake delays the next TLS client.
//!   The certificate is not matched to the device's identity: rumqttd does
//!   not hand the peer certificate to the auth hook.
//! - **No topic ACLs.** Any authenticated client may publish or subscribe
//!   on any topic; the responder answers by topic.
//!
//! - **Not implemented** (EnOS has them): securemode 4 (message-integration
//!   channels), sub-device dynamic activation through a gateway.
//!
//! # Log lines
//!
//! The log (stderr, `RUST_LOG`, default `info`) has one line per decision;
//! tests may match these messages and fields:
//!
//! | message | fields |
//! |---|---|
//! | `accepted MQTT CONNECT` | `listener="enos-mqtt"` or `"enos-mqtts"`, `device=pk/dk`, `client_id` |
//! | `refused MQTT CONNECT` | `listener`, `client_id`, `username`, `reason=` the [`Refusal`] |
//! | `answered request` | `request="combine.login"` (…), `device=` the topic's device, `code`, `message` |
//! | `refused a sub-device login` | `request="combine.login.batch"`, `device=` the gateway, `sub_device`, `code`, `message` |
//! | `the gateway's session ended: its sub-devices are offline` | `device`, `sub_devices` (how many) |
//! | `activation pending` / `activation pushed` / `activation completed` | `device` |
//! | `activation reply ignored; still pending` (or `activation reply ignored`) | `device`, `reason` |
//! | `reloaded the device file` | `devices`, `dropped_sessions` |
//! | `dropped the session: …` | `device`, `client_id` |
//!
//! Passwords, signs, secrets (activation secrets included) and the
//! take-over token never appear in it.
//!
//! # Tests
//!
//! Tests run the binary as a child process (the reasons are above)
//! through `enos_testkit::sandbox::Sandbox`, in the test-support crate:
//! this crate ships no test code. The binary's stdout carries
//! [`StatusLine`]s for such a driver; `--exit-on-stdin-close` makes the
//! child exit when the test process dies.
//!
//! [rumqttd]: https://docs.rs/rumqttd/0.20
#![forbid(unsafe_code)]

pub mod activation;
pub mod auth;
pub mod broker;
mod certificate;
pub mod config;
pub mod console;
pub mod devices;
pub mod enos_api;
mod error;
pub mod front;
mod ports;
mod readiness;
pub mod record;
pub mod responder;
pub mod sessions;
mod status;
pub mod sub_devices;

pub use activation::{ActivationPush, Activations};
pub use auth::{ActivationStep, Admitted, Authenticator, Refusal};
pub use broker::{ReloadOutcome, RunningBroker};
pub use certificate::{CertificateRule, DEFAULT_CERTIFICATE_RULE};
pub use config::{ConfigFile, ConsoleSettings, FreshnessPolicy, Overrides, Settings, TlsSettings};
pub use console::ConsoleLogin;
pub use devices::{Device, DeviceId, DeviceRegistry, DeviceStore};
pub use enos_api::EnosApiSettings;
pub use error::SandboxError;
pub use ports::PortReservation;
pub use readiness::{ListenWatch, ListenWatchLayer, listen_watch};
pub use responder::{Reply, Responder};
pub use sessions::SessionTracker;
pub use status::StatusLine;
pub use sub_devices::SubDeviceSessions;
