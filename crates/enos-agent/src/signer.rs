//! The signer client: a small trait, [`Signer`], and its gRPC
//! implementation, [`GrpcSigner`], with failover across endpoints.
//!
//! The connect loop only sees the trait, so its credential logic is tested
//! against a scripted signer; the gRPC client is tested against the real
//! signer over mTLS. Identity comes from the device certificate: the
//! request only repeats it.

use std::{
    fmt,
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use enos_signer_proto::v1::{
    self, IssueMqttCredentialRequest, SignSubDeviceLoginRequest,
    credentials_client::CredentialsClient,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use crate::{
    config::{DeviceConfig, SignerConfig, SubDeviceConfig},
    error::AgentError,
    signer_channels::SignerChannels,
};

/// Why the signer gave no credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignerError {
    /// No endpoint answered (network, TLS, timeouts, overload): a cached,
    /// still-valid credential may be used instead.
    #[error("no signer endpoint answered; last was {endpoint}: {message}")]
    Unavailable {
        /// The last endpoint tried.
        endpoint: String,
        /// What went wrong there.
        message: String,
    },
    /// The signer answered and said no (device unknown or disabled, a
    /// sub-device not bound to this gateway, a certificate it does not
    /// accept). Asking again immediately gives the same answer.
    #[error("signer {endpoint} refused ({code:?}): {message}")]
    Refused {
        /// The endpoint that answered.
        endpoint: String,
        /// The gRPC status code.
        code: Code,
        /// The signer's message, which never carries secrets.
        message: String,
    },
    /// The signer answered with something unusable.
    #[error("signer {endpoint} sent an unusable response: {reason}")]
    BadResponse {
        /// The endpoint that answered.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SignerError {
    /// Whether a cached credential may stand in for a fresh one.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SignerError::Unavailable { .. })
    }
}

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
    /// Builds a credential (used by [`GrpcSigner`] and by test signers).
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
            Duration::from_millis(crate::clock::now_ms().saturating_sub(timestamp_ms));
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
    /// Builds a signed login (used by [`GrpcSigner`] and by test signers).
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

/// Where credentials come from. Implemented by [`GrpcSigner`]; the
/// connect-loop tests implement it with a scripted signer.
pub trait Signer: Send + Sync + 'static {
    /// A fresh MQTT credential for this device.
    fn issue_mqtt_credential(
        &self,
    ) -> impl Future<Output = Result<IssuedCredential, SignerError>> + Send;

    /// The signed `combine.login` params for `sub`, which must be bound to
    /// this gateway.
    fn sign_sub_device_login(
        &self,
        sub: &SubDeviceConfig,
    ) -> impl Future<Output = Result<SignedSubDeviceLogin, SignerError>> + Send;
}

impl<T: Signer> Signer for std::sync::Arc<T> {
    fn issue_mqtt_credential(
        &self,
    ) -> impl Future<Output = Result<IssuedCredential, SignerError>> + Send {
        (**self).issue_mqtt_credential()
    }

    fn sign_sub_device_login(
        &self,
        sub: &SubDeviceConfig,
    ) -> impl Future<Output = Result<SignedSubDeviceLogin, SignerError>> + Send {
        (**self).sign_sub_device_login(sub)
    }
}

/// The gRPC signer client: mTLS with the device certificate, endpoints
/// tried in order starting with the last one that answered.
pub struct GrpcSigner {
    /// One lazily connected channel per endpoint, with its URL for logs;
    /// rebuilt when the certificate files change.
    channels: SignerChannels,
    /// Index of the endpoint that answered last; tried first.
    preferred: AtomicUsize,
    /// Repeated in requests (the signer checks it against the certificate).
    device: DeviceConfig,
}

impl fmt::Debug for GrpcSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.channels.urls().collect();
        f.debug_struct("GrpcSigner")
            .field("endpoints", &urls)
            .finish()
    }
}

impl GrpcSigner {
    /// Reads the mTLS material and prepares (without connecting) a channel
    /// per endpoint; the files are re-read before every call
    /// ([`SignerChannels`]).
    pub fn new(config: &SignerConfig, device: &DeviceConfig) -> Result<Self, AgentError> {
        Ok(GrpcSigner {
            channels: SignerChannels::new(config)?,
            preferred: AtomicUsize::new(0),
            device: device.clone(),
        })
    }

    /// Runs `call` against each endpoint in turn until one answers.
    async fn with_failover<T, F, Fut>(&self, call: F) -> Result<T, SignerError>
    where
        F: Fn(CredentialsClient<Channel>, String) -> Fut,
        Fut: Future<Output = Result<T, SignerError>>,
    {
        let built = self.channels.current();
        let n = built.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = SignerError::Unavailable {
            endpoint: String::new(),
            message: "no endpoint configured".into(),
        };
        for k in 0..n {
            let i = (first + k) % n;
            let (url, channel) = &built.endpoints[i];
            match call(CredentialsClient::new(channel.clone()), url.clone()).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(endpoint = %url, error = %e, "signer endpoint unavailable; trying the next");
                    last = e;
                }
                Err(e) => {
                    // The signer decided: another replica would decide the same.
                    self.preferred.store(i, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Err(last)
    }
}

/// Maps a gRPC status to a [`SignerError`]: codes that mean "ask again
/// later" are unavailability, the rest are the signer's refusal.
fn classify(endpoint: String, status: tonic::Status) -> SignerError {
    let message: String = status.message().chars().take(300).collect();
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal => SignerError::Unavailable { endpoint, message },
        code => SignerError::Refused {
            endpoint,
            code,
            message,
        },
    }
}

fn sign_method_to_proto(m: Option<enos_sign_core::SignMethod>) -> i32 {
    use enos_sign_core::SignMethod;
    (match m {
        None => v1::SignMethod::Unspecified,
        Some(SignMethod::HmacSha1) => v1::SignMethod::Hmacsha1,
        Some(SignMethod::HmacSha256) => v1::SignMethod::Hmacsha256,
        Some(SignMethod::HmacMd5) => v1::SignMethod::Hmacmd5,
    }) as i32
}

impl Signer for GrpcSigner {
    async fn issue_mqtt_credential(&self) -> Result<IssuedCredential, SignerError> {
        let request = IssueMqttCredentialRequest {
            product_key: self.device.product_key.to_string(),
            device_key: self.device.device_key.to_string(),
            client_id: self
                .device
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            sign_method: sign_method_to_proto(self.device.sign_method),
        };
        self.with_failover(|mut client, endpoint| {
            let request = request.clone();
            async move {
                let mut reply = client
                    .issue_mqtt_credential(request)
                    .await
                    .map_err(|s| classify(endpoint.clone(), s))?
                    .into_inner();
                // Move the password out so that only the zeroizing copy remains.
                let password = std::mem::take(&mut reply.password);
                if password.is_empty()
                    || reply.mqtt_client_id.is_empty()
                    || reply.username.is_empty()
                {
                    return Err(SignerError::BadResponse {
                        endpoint,
                        reason: "empty client id, username or password".into(),
                    });
                }
                Ok(IssuedCredential::new(
                    reply.mqtt_client_id,
                    reply.username,
                    password,
                    reply.timestamp_ms,
                    (reply.expires_at_ms != 0).then_some(reply.expires_at_ms),
                    endpoint,
                ))
            }
        })
        .await
    }

    async fn sign_sub_device_login(
        &self,
        sub: &SubDeviceConfig,
    ) -> Result<SignedSubDeviceLogin, SignerError> {
        let request = SignSubDeviceLoginRequest {
            product_key: sub.product_key.to_string(),
            device_key: sub.device_key.to_string(),
            client_id: sub
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            sign_method: sign_method_to_proto(self.device.sign_method),
            clean_session: sub.clean_session,
        };
        self.with_failover(|mut client, endpoint| {
            let request = request.clone();
            async move {
                let mut reply = client
                    .sign_sub_device_login(request)
                    .await
                    .map_err(|s| classify(endpoint.clone(), s))?
                    .into_inner();
                let sign = std::mem::take(&mut reply.sign);
                if sign.is_empty() {
                    return Err(SignerError::BadResponse {
                        endpoint,
                        reason: "empty sign".into(),
                    });
                }
                Ok(SignedSubDeviceLogin::new(
                    reply.product_key,
                    reply.device_key,
                    reply.client_id,
                    reply.timestamp_ms,
                    reply.sign_method,
                    sign,
                    reply.secure_mode,
                    reply.clean_session,
                ))
            }
        })
        .await
    }
}
