//! HSM custody: device secrets wrapped under keys that never leave a
//! PKCS#11 token, and EnOS passwords digested inside the token.
//!
//! No plaintext device secret exists on the signer's host while it signs:
//! the registry holds a sealed record per device; to sign, the record is
//! checked and turned back into the secret *inside the token*, as a
//! session key that is sensitive and not extractable, and the token
//! computes `DIGEST(content ‖ secret)` with
//! `C_DigestInit → C_DigestUpdate(content) → C_DigestKey(secret) →
//! C_DigestFinal`. The key is destroyed straight after.
//!
//! ```no_run
//! use enos_custody::{Custody, SecretRef};
//! use enos_custody_pkcs11::{Pkcs11Config, Pkcs11Custody, generate_kek};
//! use enos_sign_core::{DeviceKey, DeviceSecret, HexCase, ProductKey, SignMethod, SignedFields, TimestampMs};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: Pkcs11Config = toml::from_str(r#"
//!     module = "/usr/lib/softhsm/libsofthsm2.so"
//!     token = { label = "enos" }
//!     pin = { file = "/etc/enos-signer/hsm.pin" }
//! "#)?;
//! generate_kek(&config)?; // once, when the token is set up
//! let custody = Pkcs11Custody::connect(&config)?;
//!
//! let (pk, dk) = (ProductKey::new("123")?, DeviceKey::new("test")?);
//! let id = SecretRef { product_key: &pk, device_key: Some(&dk), version: 1 };
//! let sealed = custody.seal(id, &DeviceSecret::new("aaabbbcc123".into())?)?;
//! let fields = SignedFields::with_device_key_as_client_id(pk.clone(), dk.clone(), TimestampMs::from_millis(1524448722000))?;
//! let password = custody.sign(id, &sealed, &fields, SignMethod::HmacSha1, HexCase::Upper)?;
//! # Ok(()) }
//! ```
//!
//! # Keys and records
//!
//! The token holds two keys, made by [`generate_kek`]: the KEK (AES-256)
//! and a record MAC key (HMAC-SHA256), both token objects, private,
//! sensitive, never extractable, each allowed its one use. A record is an
//! envelope: a fresh AES-256 record key R, wrapped under the KEK with
//! CKM_AES_KEY_WRAP_PAD, and the secret sealed under R so that
//! CKM_AES_CBC_ENCRYPT_DATA derivation re-creates it at exactly its
//! length; an HMAC tag, computed and checked in the token, binds the
//! record to its [`SecretRef`](enos_custody::SecretRef). The `record`
//! module documents the layout and why the secret is not wrapped directly
//! (SoftHSM2 2.6 keeps the KWP padding on unwrap).
//!
//! # Export
//!
//! [`Custody::open`](enos_custody::Custody::open) is refused unless the
//! custody was connected with [`ExportPolicy::AllowForMigration`], which
//! only the migration command does.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `config` | [`Pkcs11Config`] (serde) and [`Pkcs11Settings`], the resolved form |
//! | `uri` | PKCS#11 URIs (RFC 7512), the part custody needs |
//! | `pin` | reading the PIN from a file or `$CREDENTIALS_DIRECTORY` |
//! | `token` | loading the module (once per process), finding the token and keys, [`generate_kek`] |
//! | `pool` | a connection: module, login and a pool of sessions |
//! | `ops` | seal, sign and export inside one session |
//! | `record` | the sealed record's bytes and what its MAC covers |
//! | `custody` | [`Pkcs11Custody`]: the `Custody` impl and reconnection |
//! | `ca` | the signer's CA key: an EC P-256 pair generated in the token, C_Sign with CKM_ECDSA |
//! | `device_key` | a device's own key (the agent's `pkcs11:` key): pairs found by the public key their certificate certifies |
//! | `error` | [`Pkcs11Error`] and how PKCS#11 return values are sorted |
//! | `softhsm` | (feature `softhsm-fixture`) a throwaway SoftHSM2 token per test process |
#![forbid(unsafe_code)]

mod ca;
mod config;
mod custody;
mod device_key;
mod error;
mod ops;
mod pin;
mod pool;
mod record;
#[cfg(feature = "softhsm-fixture")]
pub mod softhsm;
mod token;
mod uri;

pub use ca::CA_SCHEME;
pub use config::{DEFAULT_KEK_LABEL, PinSource, Pkcs11Config, Pkcs11Settings, TokenSelector};
pub use custody::{CustodyStatus, ExportPolicy, Pkcs11Custody};
pub use device_key::{DeviceKeyToken, DeviceKeyUri, TokenKey};
pub use error::Pkcs11Error;
pub use record::SCHEME;
pub use token::generate_kek;
