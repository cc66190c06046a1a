//! [`device_login`]: a device's MQTT login signed as the official SDKs
//! sign it (securemode 2, the device key as client id), for tests and
//! benchmarks that play a device without the signer.

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, MqttCredential, ProductKey, SecureMode, SignMethod,
    SignedFields, TimestampMs,
};

/// The login of `pk/dk` with `secret`, signed with `method` at `timestamp_ms`.
/// Panics on an invalid id or secret: a test's own constants.
pub fn device_login(
    pk: &str,
    dk: &str,
    secret: &str,
    method: SignMethod,
    timestamp_ms: u64,
) -> MqttCredential {
    let fields = SignedFields {
        client_id: ClientId::new(dk).expect("a valid client id"),
        device_key: DeviceKey::new(dk).expect("a valid device key"),
        product_key: ProductKey::new(pk).expect("a valid product key"),
        timestamp: TimestampMs::from_millis(timestamp_ms),
    };
    let secret = DeviceSecret::new(secret.to_owned()).expect("a valid secret");
    MqttCredential::sign(fields, SecureMode::DeviceSecret, method, &secret)
        .expect("a device login signs")
}
