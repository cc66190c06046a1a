//! The EnOS device signing rules, exactly as EnOS brokers accept them.
//!
//! A device logs in to EnOS over MQTT with
//!
//! ```text
//! client id  clientId|securemode=2,signmethod=hmacsha1,timestamp=1524448722000|
//! username   deviceKey&productKey
//! password   HEX(SHA1("clientId" clientId "deviceKey" deviceKey
//!                     "productKey" productKey "timestamp" timestamp ‖ secret))
//! ```
//!
//! The password is a **plain digest** of the content with the secret
//! appended, not an HMAC, whatever the method names say. SHA-1 is sent in
//! upper-case hex, SHA-256 and MD5 in lower case; verifiers accept either.
//!
//! What we *issue* is strict: validated ids ([`ClientId`], [`DeviceKey`],
//! [`ProductKey`]) and integer milliseconds ([`TimestampMs`]), so that no
//! field can forge another. What a broker *verifies* is as liberal as
//! EnOS: [`PresentedLogin::parse`] takes every form the official SDKs send
//! ([`PresentedFields`]: the Java SDK's `deviceKey{ip=…,version=…}`
//! clientId, Python's fractional timestamp, `sha256`-style method names)
//! and verifies over exactly the text that was sent.
//!
//! This crate is pure: no I/O, no async, no clock. Callers pass the time.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `ident` | [`ProductKey`], [`DeviceKey`], [`ClientId`]: validated, so `|`, `,`, `=`, `&` can never forge a field |
//! | `timestamp` | [`TimestampMs`] |
//! | `method` | [`SignMethod`] (with [`Md5Policy`]), [`SecureMode`], [`HexCase`] |
//! | `secret` | [`DeviceSecret`], [`ProductSecret`], [`Password`]: unprintable, zeroed on drop |
//! | `sign` | [`SignedFields`] (what we issue: strict) and [`sign`]: the digest, streamed, allocation-free; [`SignedContent`] |
//! | `credential` | [`MqttCredential`]: the CONNECT client id, username and password |
//! | `presented` | the broker side's liberal fields: [`PresentedClientId`], [`PresentedTimestamp`], [`PresentedFields`], exactly as the official SDKs send them |
//! | `verify` | the broker side: [`PresentedLogin::parse`], [`verify_sign`], [`Freshness`] |
//! | `sub_device` | [`SubDeviceLogin`]: the signed params of a gateway's `combine.login` |
//! | `error` | [`SignError`], the one error type; it never contains secret material |
//!
//! # Example
//!
//! ```
//! use enos_sign_core::{
//!     ClientId, DeviceKey, DeviceSecret, ExposeSecret, Freshness, Md5Policy, MqttCredential,
//!     PresentedLogin, ProductKey, SecureMode, SignMethod, SignedFields, TimestampMs,
//! };
//!
//! # fn main() -> Result<(), enos_sign_core::SignError> {
//! let fields = SignedFields {
//!     client_id: ClientId::new("123")?,
//!     device_key: DeviceKey::new("test")?,
//!     product_key: ProductKey::new("123")?,
//!     timestamp: TimestampMs::from_millis(1524448722000),
//! };
//! let secret = DeviceSecret::new("aaabbbcc123".to_owned())?;
//! let credential =
//!     MqttCredential::sign(fields, SecureMode::DeviceSecret, SignMethod::HmacSha1, &secret)?;
//!
//! assert_eq!(credential.mqtt_client_id, "123|securemode=2,signmethod=hmacsha1,timestamp=1524448722000|");
//! assert_eq!(credential.username, "test&123");
//! assert_eq!(credential.password.expose_secret(), "97AA97335D6EC3D7E1F9E3119501E399CC0B4125");
//! // Debug never shows the password.
//! assert!(!format!("{credential:?}").contains("97AA"));
//!
//! // The broker side.
//! let presented =
//!     PresentedLogin::parse(&credential.mqtt_client_id, &credential.username, Md5Policy::Refuse)?;
//! presented.verify(credential.password.expose_secret(), &secret, Freshness::Any)?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod credential;
mod error;
mod ident;
mod method;
mod presented;
mod secret;
mod sign;
mod sub_device;
mod timestamp;
mod verify;

/// Only this crate's secret types may sign.
mod sealed {
    pub trait Sealed {}
}

pub use credential::{MqttCredential, mqtt_client_id, mqtt_username};
pub use error::{Field, ForbiddenChar, SignError};
pub use ident::{ClientId, DeviceKey, ProductKey};
pub use method::{HexCase, Md5Policy, SecureMode, SignMethod};
pub use presented::{PresentedClientId, PresentedFields, PresentedTimestamp};
/// Re-exported so that callers can read secrets without naming `secrecy`.
pub use secrecy::ExposeSecret;
pub use secret::{DeviceSecret, MAX_SECRET_LEN, Password, ProductSecret, SigningSecret};
pub use sign::{SignedContent, SignedFields, sign, sign_with_case};
pub use sub_device::SubDeviceLogin;
pub use timestamp::TimestampMs;
pub use verify::{Freshness, PresentedLogin, verify_sign};
