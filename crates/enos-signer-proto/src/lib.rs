//! The signer's gRPC API, `enos.signer.v1`, shared by the service, the agent
//! and the tests.
//!
//! # Layout
//!
//! - [`v1`]: messages, the `Credentials`, `Enrollment`, `Certificates` and `Admin` clients and servers,
//!   generated from `proto/enos/signer/v1/signer.proto`.
//! - [`identity`]: the rule that maps a client certificate's URI SAN to a
//!   device or an admin.
//! - `convert`: the conversions between messages and domain types
//!   (`SignMethod`, `DeviceRef` ⇄ `DeviceId`, device-file row → `ImportRow`),
//!   as `From` impls and methods on the messages.
//! - [`tls_failure`]: why a TLS handshake failed, found in an error's
//!   source chain: the clients' message, the signer's log line and label.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//!
//! Messages that carry a password or a secret (`MqttCredential`,
//! `SubDeviceLogin`, `PutDeviceRequest`, `RotateSecretRequest`, `ImportRow`)
//! have a redacting `Debug` (`redact.rs`), so logging a message never leaks
//! one.
#![forbid(unsafe_code)]

mod convert;
pub mod identity;
mod redact;
pub mod tls_failure;

/// `enos.signer.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("enos.signer.v1");
}

/// The encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/signer_descriptor.bin"));
