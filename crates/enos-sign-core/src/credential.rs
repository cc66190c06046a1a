//! [`MqttCredential`]: the CONNECT triple a device logs in with.

use crate::{
    error::SignError,
    ident::{ClientId, DeviceKey, ProductKey},
    method::{HexCase, SecureMode, SignMethod},
    secret::{Password, SigningSecret},
    sign::{SignedFields, sign_with_case},
    timestamp::TimestampMs,
};

/// The MQTT client id: `clientId|securemode=M,signmethod=S,timestamp=T|`.
pub fn mqtt_client_id(
    client_id: &ClientId,
    secure_mode: SecureMode,
    method: SignMethod,
    timestamp: TimestampMs,
) -> String {
    format!("{client_id}|securemode={secure_mode},signmethod={method},timestamp={timestamp}|")
}

/// The MQTT username: `deviceKey&productKey`.
pub fn mqtt_username(device_key: &DeviceKey, product_key: &ProductKey) -> String {
    format!("{device_key}&{product_key}")
}

/// Client id, username and password for one MQTT CONNECT, and what they
/// were built from. `Debug` redacts the password.
#[derive(Debug, Clone)]
pub struct MqttCredential {
    /// What was signed; kept so that callers can log identity and time.
    pub fields: SignedFields,
    /// The secure mode announced in the client id.
    pub secure_mode: SecureMode,
    /// The method announced in the client id and used for the digest.
    pub sign_method: SignMethod,
    /// The full MQTT client id, parameters included.
    pub mqtt_client_id: String,
    /// The MQTT username.
    pub username: String,
    /// The MQTT password.
    pub password: Password,
}

impl MqttCredential {
    /// Signs a credential with the SDKs' hex case for `method`.
    ///
    /// Fails when the secret does not fit the secure mode (mode 2 takes a
    /// [`crate::DeviceSecret`], modes 3 and 4 a [`crate::ProductSecret`]).
    pub fn sign<S: SigningSecret>(
        fields: SignedFields,
        secure_mode: SecureMode,
        method: SignMethod,
        secret: &S,
    ) -> Result<Self, SignError> {
        Self::sign_with_case(fields, secure_mode, method, secret, method.sdk_hex_case())
    }

    /// As [`MqttCredential::sign`], with an explicit hex case.
    pub fn sign_with_case<S: SigningSecret>(
        fields: SignedFields,
        secure_mode: SecureMode,
        method: SignMethod,
        secret: &S,
        case: HexCase,
    ) -> Result<Self, SignError> {
        check_secret_kind::<S>(secure_mode)?;
        let password = sign_with_case(&fields, method, secret, case);
        Ok(MqttCredential {
            mqtt_client_id: mqtt_client_id(
                &fields.client_id,
                secure_mode,
                method,
                fields.timestamp,
            ),
            username: mqtt_username(&fields.device_key, &fields.product_key),
            fields,
            secure_mode,
            sign_method: method,
            password,
        })
    }
}

/// Refuses a device secret for a product-secret mode and the reverse.
pub(crate) fn check_secret_kind<S: SigningSecret>(mode: SecureMode) -> Result<(), SignError> {
    if S::KIND == mode.secret_kind() {
        Ok(())
    } else {
        Err(SignError::SecretKindMismatch {
            mode: mode.as_u8(),
            expected: mode.secret_kind(),
            given: S::KIND,
        })
    }
}
