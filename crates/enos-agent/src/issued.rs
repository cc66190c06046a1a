//! What the signer issues, as the agent holds it: [`IssuedCredential`]
//! (an MQTT login) and [`SignedSubDeviceLogin`] (a sub-device's
//! `combine.login` params). Both keep the secret part zeroizing and out of
//! `Debug`.

use std::{fmt, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

/// An MQTT credential from the signer. `Debug` redacts the password.
pub struct IssuedCredential {
    /// The full MQTT client id (`clientId|securemode=…,signmethod=…,timestamp=…|`).
    pub mqtt_client_id: String,
    /// The MQTT username (`deviceKey&productKey`).
    pub username: String,
    /// The MQTT password; zeroed on drop, never printed.
    password: SecretString,
    /// The signed timestamp (ms since the epoch), for logs.
    pub timestamp_ms: u64,
    /// The signer's expiry (ms since the epoch); `None` when it set none.
    pub expires_at_ms: Option<u64>,
    /// `expires_at_ms − timestamp_ms`: measured on the signer's clock, so
    /// that the local clock's skew does not matter.
    pub lifetime: Option<Duration>,
    /// When this agent received it, on the local monotonic clock.
    pub received_at: Instant,
    /// How old it already was on arrival (local wall clock minus the signed
    /// timestamp, at least 0): a slow failover eats into the lifetime. Clock
    /// skew enters only here, once.
    pub age_at_receipt: Duration,
    /// The endpoint that issued it, for logs.
    pub endpoint: String,
}

impl IssuedCredential {
    /// Builds a credential (used by [`crate::GrpcSigner`] and by test signers).
    pub fn new(
        mqtt_client_id: String,
        username: String,
        password: String,
        timestamp_ms: u64,
        expires_at_ms: Option<u64>,
        endpoint: String,
    ) -> Self {
        let lifetime = expires_at_ms.map(|e| Duration::from_millis(e.saturating_sub(timestamp_ms)));
        let age_at_receipt =
            Duration::from_millis(enos_domain::now_ms().saturating_sub(timestamp_ms));
        IssuedCredential {
            mqtt_client_id,
            username,
            password: SecretString::from(password),
            timestamp_ms,
            expires_at_ms,
            lifetime,
            received_at: Instant::now(),
            age_at_receipt,
            endpoint,
        }
    }

    /// The password, for the MQTT CONNECT only.
    pub fn password(&self) -> &str {
        self.password.expose_secret()
    }

    /// Whether it is an activation credential: `securemode=3`, signed with
    /// the product's secret, for a device that has no secret yet. Read from
    /// the client id, which is what the broker goes by.
    pub fn is_activation(&self) -> bool {
        let params = self.mqtt_client_id.split('|').nth(1).unwrap_or_default();
        params.split(',').any(|p| p.trim() == "securemode=3")
    }

    /// Its age at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.received_at) + self.age_at_receipt
    }

    /// Whether the signer's lifetime has run out at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.lifetime.is_some_and(|l| self.age(now) >= l)
    }

    /// The fraction of the lifetime used at `now`; 0 when it never expires.
    pub fn used_fraction(&self, now: Instant) -> f64 {
        match self.lifetime {
            Some(l) if !l.is_zero() => self.age(now).as_secs_f64() / l.as_secs_f64(),
            Some(_) => 1.0,
            None => 0.0,
        }
    }
}

impl fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("mqtt_client_id", &self.mqtt_client_id)
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .field("timestamp_ms", &self.timestamp_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The signed params of one sub-device's `combine.login`. `Debug` redacts
/// the sign.
pub struct SignedSubDeviceLogin {
    /// The sub-device's product key.
    pub product_key: String,
    /// The sub-device's device key.
    pub device_key: String,
    /// The signed clientId.
    pub client_id: String,
    /// The signed timestamp, ms since the epoch.
    pub timestamp_ms: u64,
    /// `signMethod` as sent: hmacsha1, hmacsha256 or hmacmd5.
    pub sign_method: String,
    /// The sign; zeroed on drop, never printed.
    sign: SecretString,
    /// `secureMode` as sent (2).
    pub secure_mode: u32,
    /// `cleanSession` as sent.
    pub clean_session: bool,
}

impl SignedSubDeviceLogin {
    /// Builds a signed login (used by [`crate::GrpcSigner`] and by test signers).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        product_key: String,
        device_key: String,
        client_id: String,
        timestamp_ms: u64,
        sign_method: String,
        sign: String,
        secure_mode: u32,
        clean_session: bool,
    ) -> Self {
        SignedSubDeviceLogin {
            product_key,
            device_key,
            client_id,
            timestamp_ms,
            sign_method,
            sign: SecretString::from(sign),
            secure_mode,
            clean_session,
        }
    }

    /// The `params` object of `combine.login`. It carries the sign, so it
    /// goes to the broker and nowhere else.
    pub fn params_json(&self) -> serde_json::Value {
        serde_json::json!({
            "productKey": self.product_key,
            "deviceKey": self.device_key,
            "clientId": self.client_id,
            "timestamp": self.timestamp_ms.to_string(),
            "signMethod": self.sign_method,
            "sign": self.sign.expose_secret(),
            "secureMode": self.secure_mode.to_string(),
            "cleanSession": self.clean_session.to_string(),
        })
    }
}

impl fmt::Debug for SignedSubDeviceLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedSubDeviceLogin")
            .field("product_key", &self.product_key)
            .field("device_key", &self.device_key)
            .field("client_id", &self.client_id)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("sign", &"[REDACTED]")
            .finish()
    }
}

/// The signed params of one `combine.login.batch` (one clientId and
/// timestamp shared, one sign per sub-device), and the sub-devices the
/// signer would not sign for. `Debug` redacts the signs.
pub struct SignedLoginBatch {
    /// The signed clientId every entry shares.
    pub client_id: String,
    /// The signed timestamp every entry shares, ms since the epoch.
    pub timestamp_ms: u64,
    /// `signMethod` as sent: hmacsha1, hmacsha256 or hmacmd5.
    pub sign_method: String,
    /// The signed entries.
    pub entries: Vec<SignedBatchEntry>,
    /// `(productKey, deviceKey, reason)` of each sub-device the signer
    /// refused to sign for.
    pub refused: Vec<(String, String, String)>,
}

/// One signed entry of a [`SignedLoginBatch`].
pub struct SignedBatchEntry {
    /// The sub-device's product key.
    pub product_key: String,
    /// The sub-device's device key.
    pub device_key: String,
    /// The sign; zeroed on drop, never printed.
    sign: SecretString,
    /// `secureMode` as sent (2).
    pub secure_mode: u32,
}

impl SignedBatchEntry {
    /// An entry (used by [`crate::GrpcSigner`] and by test signers).
    pub fn new(product_key: String, device_key: String, sign: String, secure_mode: u32) -> Self {
        SignedBatchEntry {
            product_key,
            device_key,
            sign: SecretString::from(sign),
            secure_mode,
        }
    }
}

impl SignedLoginBatch {
    /// The `params` object of `combine.login.batch`, as the official Java
    /// SDK sends it. It carries the signs, so it goes to the broker and
    /// nowhere else.
    pub fn params_json(&self) -> serde_json::Value {
        let sub_devices: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "productKey": e.product_key,
                    "deviceKey": e.device_key,
                    "secureMode": e.secure_mode.to_string(),
                    "sign": e.sign.expose_secret(),
                })
            })
            .collect();
        serde_json::json!({
            "clientId": self.client_id,
            "timestamp": self.timestamp_ms.to_string(),
            "signMethod": self.sign_method,
            "subDevices": sub_devices,
        })
    }
}

impl fmt::Debug for SignedLoginBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}/{}", e.product_key, e.device_key))
            .collect();
        f.debug_struct("SignedLoginBatch")
            .field("client_id", &self.client_id)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("entries", &entries)
            .field("signs", &"[REDACTED]")
            .field("refused", &self.refused)
            .finish()
    }
}

/// A certificate the signer's CA issued (enrollment or renewal). Public
/// material only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    /// The device certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The issuing CA's certificate first, up to the root, DER: written
    /// after the leaf so the whole chain is presented.
    pub chain_der: Vec<Vec<u8>>,
    /// Its serial (lower-case hex), for logs and `revoke-cert`.
    pub serial: String,
    /// The signer's `notAfter`, ms since the epoch, for the output.
    pub not_after_ms: u64,
    /// The endpoint that issued it, for logs.
    pub endpoint: String,
}
