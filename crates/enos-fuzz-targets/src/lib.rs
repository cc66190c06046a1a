//! The bodies of the project's fuzz targets: each takes the fuzzer's bytes,
//! feeds them to one parser or handler that sees untrusted input, and
//! checks what must hold whatever the input (no panic, and a few
//! invariants). `fuzz/` wraps each in a libFuzzer target (nightly,
//! `cargo xtask fuzz`); `tests/replay.rs` runs every seed, corpus entry and
//! crash through the same body on stable, in `cargo xtask test`.
//!
//! # Layout
//!
//! | target | what it feeds |
//! |---|---|
//! | `mqtt_login` | a CONNECT's client id, username and password to [`enos_sign_core::PresentedLogin`] parse and verify |
//! | `certificate_identity` | a URI SAN to [`enos_signer_proto::identity::PeerIdentity::from_uri`] |
//! | `device_file` | a device CSV (the signer's import, the sandbox's devices) to [`enos_domain::device_file::read`] |
//! | `signer_config`, `agent_config`, `sandbox_config`, `pkcs11_config` | each TOML configuration |
//! | `pkcs11_uri` | an RFC 7512 PKCS#11 URI |
//! | `sandbox_requests` | a topic and payload to the sandbox's request responder |
//! | `agent_downstream` | a topic and payload as EnOS sends them to the agent: service routing, reply parsing, the activation push |
#![forbid(unsafe_code)]

mod targets;

pub use targets::*;

/// A target's body: the fuzzer's bytes in, a panic on a defect.
pub type Body = fn(&[u8]);

/// Every target by name, for the replay test (`cargo xtask fuzz` has the
/// same list; a test there checks it against `fuzz/Cargo.toml`).
pub const TARGETS: &[(&str, Body)] = &[
    ("mqtt_login", mqtt_login),
    ("certificate_identity", certificate_identity),
    ("device_file", device_file),
    ("signer_config", signer_config),
    ("agent_config", agent_config),
    ("sandbox_config", sandbox_config),
    ("pkcs11_config", pkcs11_config),
    ("pkcs11_uri", pkcs11_uri),
    ("sandbox_requests", sandbox_requests),
    ("agent_downstream", agent_downstream),
];
