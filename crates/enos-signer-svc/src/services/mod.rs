//! The gRPC services, one file per RPC family. Each call asks the
//! [listener](crate::listener)'s identity who the caller is, then reads
//! the registry, signs through custody and writes the audit record; the
//! listener never names a service.
//!
//! | module | what it holds |
//! |---|---|
//! | [`credentials`] | the `Credentials` service: `IssueMqttCredential`, `SignSubDeviceLogin` |
//! | [`activation`] | dynamic activation: `securemode=3` credentials and `CompleteActivation` |
//! | [`batch_login`] | `SignSubDeviceLoginBatch`: one signed `combine.login.batch` for a gateway |
//! | [`enrollment`] | the `Enrollment` service: a device's first certificate for a one-time token |
//! | [`certificates`] | the `Certificates` service: a device renews its own certificate |
//! | [`enos_records`] | the registry's record of each gateway's EnOS certificates: the renewal's check, the writes and their audit |
//! | [`admin`] | the `Admin` service: the device registry, for admin certificates |
//! | [`admin_certificates`] | Admin's CA RPCs: enrollment tokens, revocation, a device's certificates |
//! | [`admin_gate`] | who may use Admin beyond holding an admin certificate |
//! | [`import`] | `ImportDevices`: all-or-nothing bulk import |
//! | [`products`] | product secrets (`PutProductSecret`, `RotateProductSecret`) |
//! | [`caller`] | who calls a Credentials RPC: the identity, a device |
//! | [`convert`] | request fields → validated ids (errors name the field); records → messages |

pub mod activation;
pub mod admin;
pub mod admin_certificates;
pub mod admin_gate;
pub mod batch_login;
pub mod caller;
pub mod certificates;
pub mod convert;
pub mod credentials;
pub mod enos_certificates;
pub mod enos_records;
pub mod enrollment;
pub mod import;
pub mod products;
