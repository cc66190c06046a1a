//! Redacting `Debug` for the messages that carry a password or a secret
//! (their derived `Debug` is switched off in build.rs).

use core::fmt;

use crate::v1::{
    CompleteActivationRequest, EnrollRequest, EnrollToken, ImportRow, MqttCredential,
    PutDeviceRequest, PutProductSecretRequest, RotateSecretRequest, SubDeviceBatchEntry,
    SubDeviceLogin,
};

/// What a redacted field prints as.
const REDACTED: &str = "[REDACTED]";

impl fmt::Debug for MqttCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttCredential")
            .field("mqtt_client_id", &self.mqtt_client_id)
            .field("username", &self.username)
            .field("password", &REDACTED)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("sign_method", &self.sign_method)
            .field("secure_mode", &self.secure_mode)
            .field("broker_urls", &self.broker_urls)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl fmt::Debug for SubDeviceLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubDeviceLogin")
            .field("product_key", &self.product_key)
            .field("device_key", &self.device_key)
            .field("client_id", &self.client_id)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("sign_method", &self.sign_method)
            .field("sign", &REDACTED)
            .field("secure_mode", &self.secure_mode)
            .field("clean_session", &self.clean_session)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl fmt::Debug for PutDeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutDeviceRequest")
            .field("device", &self.device)
            .field("device_secret", &REDACTED)
            .field("enabled", &self.enabled)
            .field("awaiting_activation", &self.awaiting_activation)
            .finish()
    }
}

impl fmt::Debug for RotateSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateSecretRequest")
            .field("device", &self.device)
            .field("new_device_secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for ImportRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportRow")
            .field("line", &self.line)
            .field("product_key", &self.product_key)
            .field("device_key", &self.device_key)
            .field("device_secret", &REDACTED)
            .field("gateway", &self.gateway)
            .field("awaiting_activation", &self.awaiting_activation)
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl fmt::Debug for SubDeviceBatchEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubDeviceBatchEntry")
            .field("product_key", &self.product_key)
            .field("device_key", &self.device_key)
            .field("sign", &REDACTED)
            .field("secure_mode", &self.secure_mode)
            .finish()
    }
}

impl fmt::Debug for CompleteActivationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompleteActivationRequest")
            .field("device_secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for PutProductSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutProductSecretRequest")
            .field("product", &self.product)
            .field("product_secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("device", &self.device)
            .field("token", &REDACTED)
            .field("csr_der_len", &self.csr_der.len())
            .finish()
    }
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollToken")
            .field("device", &self.device)
            .field("token", &REDACTED)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::*;

    #[test]
    fn secret_bearing_messages_do_not_print_secrets() {
        let secret = "TopSecretValue123";
        let printed = [
            format!(
                "{:?}",
                MqttCredential {
                    password: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                SubDeviceLogin {
                    sign: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                PutDeviceRequest {
                    device_secret: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                RotateSecretRequest {
                    new_device_secret: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ImportDevicesRequest {
                    rows: vec![ImportRow {
                        device_secret: secret.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                SubDeviceLoginBatch {
                    signed: vec![SubDeviceBatchEntry {
                        sign: secret.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                CompleteActivationRequest {
                    device_secret: secret.into(),
                }
            ),
            format!(
                "{:?}",
                PutProductSecretRequest {
                    product_secret: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                EnrollRequest {
                    token: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                EnrollToken {
                    token: secret.into(),
                    ..Default::default()
                }
            ),
        ];
        for p in printed {
            assert!(!p.contains(secret), "{p}");
            assert!(p.contains("[REDACTED]"), "{p}");
        }
    }
}
