//! Between the API's messages and the service's types: request fields
//! parsed into validated identifiers (the error names the field), records
//! turned into messages (never the secret).

use enos_sign_core::{ClientId, DeviceKey, ProductKey};
use enos_signer_proto::v1;

use crate::error::{Result, SignerError};
use enos_registry::{DeviceId, DeviceRecord};

/// Parses a product key field, naming `field` in the error.
pub fn product_key(field: &'static str, value: &str) -> Result<ProductKey> {
    ProductKey::new(value).map_err(|e| SignerError::invalid(field, e))
}

/// Parses a device key field, naming `field` in the error.
pub fn device_key(field: &'static str, value: &str) -> Result<DeviceKey> {
    DeviceKey::new(value).map_err(|e| SignerError::invalid(field, e))
}

/// Parses a client id field, naming `field` in the error.
pub fn client_id(field: &'static str, value: &str) -> Result<ClientId> {
    ClientId::new(value).map_err(|e| SignerError::invalid(field, e))
}

/// Parses a required `DeviceRef` whose fields are `{prefix}.product_key`
/// and `{prefix}.device_key`.
pub fn device_ref(
    prefix: &'static str,
    fields: (&'static str, &'static str),
    value: Option<&v1::DeviceRef>,
) -> Result<DeviceId> {
    let value = value.ok_or_else(|| SignerError::invalid(prefix, "is required"))?;
    Ok(DeviceId::new(
        product_key(fields.0, &value.product_key)?,
        device_key(fields.1, &value.device_key)?,
    ))
}

/// The proto form of a record (never the secret).
pub fn device_message(record: &DeviceRecord) -> v1::Device {
    v1::Device {
        product_key: record.id.product_key.to_string(),
        device_key: record.id.device_key.to_string(),
        enabled: record.enabled,
        secret_version: record.secret_version,
        gateway: record.gateway.as_ref().map(v1::DeviceRef::from),
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
        awaiting_activation: record.is_awaiting_activation(),
    }
}

/// `pk` of a possibly invalid ref, for the audit trail of a refusal.
pub(crate) fn shown_product(value: Option<&v1::ProductRef>) -> Option<String> {
    value.map(|p| {
        p.product_key
            .chars()
            .take(64)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect()
    })
}
