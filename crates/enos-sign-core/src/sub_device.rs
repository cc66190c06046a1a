//! [`SubDeviceLogin`]: the params of a gateway's `combine.login` request.

use crate::{
    ident::{ClientId, DeviceKey, ProductKey},
    method::{SecureMode, SignMethod},
    secret::{DeviceSecret, Password},
    sign::{SignedFields, sign},
    timestamp::TimestampMs,
};

/// The `params` of `combine.login` for one sub-device, published by its
/// gateway on `/ext/session/{gwPk}/{gwDk}/combine/login`.
///
/// Only `clientId, deviceKey, productKey, timestamp` are signed;
/// `secureMode` and `cleanSession` are sent but not signed.
#[derive(Debug, Clone)]
pub struct SubDeviceLogin {
    /// The sub-device's product key.
    pub product_key: ProductKey,
    /// The sub-device's device key.
    pub device_key: DeviceKey,
    /// The signed client id.
    pub client_id: ClientId,
    /// The signed timestamp.
    pub timestamp: TimestampMs,
    /// `signMethod`.
    pub sign_method: SignMethod,
    /// `sign`: the digest with the sub-device's secret; redacted in `Debug`.
    pub sign: Password,
    /// `secureMode`; always 2, a sub-device logs in with its own secret.
    pub secure_mode: SecureMode,
    /// `cleanSession`: whether the broker drops the sub-device's session state.
    pub clean_session: bool,
}

impl SubDeviceLogin {
    /// Signs a `combine.login` for the sub-device named in `fields` with its
    /// own device secret.
    pub fn sign(
        fields: SignedFields,
        method: SignMethod,
        secret: &DeviceSecret,
        clean_session: bool,
    ) -> Self {
        let sign = sign(&fields, method, secret);
        SubDeviceLogin {
            product_key: fields.product_key,
            device_key: fields.device_key,
            client_id: fields.client_id,
            timestamp: fields.timestamp,
            sign_method: method,
            sign,
            secure_mode: SecureMode::DeviceSecret,
            clean_session,
        }
    }

    /// The signed fields, for verification on the broker side.
    pub fn signed_fields(&self) -> SignedFields {
        SignedFields {
            client_id: self.client_id.clone(),
            device_key: self.device_key.clone(),
            product_key: self.product_key.clone(),
            timestamp: self.timestamp,
        }
    }
}
