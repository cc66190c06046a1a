//! The conversions between the API's messages and the domain types, in
//! one place for the signer, the agent and the tests.
//!
//! Only lossless conversions live here. Parsing a message field into a
//! validated type (a `DeviceRef` into a `DeviceId`) is the receiver's job:
//! its error names the field in the receiver's own terms.

use enos_domain::{DeviceId, DeviceRow, UnreadableRow};
use enos_sign_core::{ExposeSecret, SignMethod};

use crate::v1;

impl From<SignMethod> for v1::SignMethod {
    fn from(method: SignMethod) -> Self {
        match method {
            SignMethod::HmacSha1 => v1::SignMethod::Hmacsha1,
            SignMethod::HmacSha256 => v1::SignMethod::Hmacsha256,
            SignMethod::HmacMd5 => v1::SignMethod::Hmacmd5,
        }
    }
}

impl v1::SignMethod {
    /// The method asked for; `None` for `UNSPECIFIED` (the signer's policy
    /// chooses).
    pub fn to_core(self) -> Option<SignMethod> {
        match self {
            v1::SignMethod::Unspecified => None,
            v1::SignMethod::Hmacsha1 => Some(SignMethod::HmacSha1),
            v1::SignMethod::Hmacsha256 => Some(SignMethod::HmacSha256),
            v1::SignMethod::Hmacmd5 => Some(SignMethod::HmacMd5),
        }
    }

    /// The wire value of a method asked for, `UNSPECIFIED` for `None`.
    pub fn wire(method: Option<SignMethod>) -> i32 {
        method.map_or(v1::SignMethod::Unspecified, v1::SignMethod::from) as i32
    }
}

impl v1::DeviceRef {
    /// The reference to `product_key`/`device_key` (not checked here).
    pub fn new(product_key: impl Into<String>, device_key: impl Into<String>) -> Self {
        v1::DeviceRef {
            product_key: product_key.into(),
            device_key: device_key.into(),
        }
    }
}

impl From<&DeviceId> for v1::DeviceRef {
    fn from(id: &DeviceId) -> Self {
        v1::DeviceRef::new(id.product_key.as_str(), id.device_key.as_str())
    }
}

impl TryFrom<DeviceRow> for v1::ImportRow {
    type Error = UnreadableRow;

    /// A device-file row as an import row; the signer checks the rest.
    /// The `enabled` cell is read here with the rule the sandbox uses
    /// ([`enos_domain::device_file::enabled`]): `true`, `false`, or not
    /// stated; anything else is an error of the row (its line and
    /// column, never a value). An empty `deviceSecret` is a device
    /// awaiting dynamic activation, as in the sandbox's device file.
    fn try_from(mut row: DeviceRow) -> Result<Self, UnreadableRow> {
        let enabled =
            enos_domain::device_file::enabled(row.enabled.as_deref()).map_err(|reason| {
                UnreadableRow {
                    line: row.line,
                    reason,
                }
            })?;
        let awaiting_activation = row.device_secret.expose_secret().is_empty();
        Ok(v1::ImportRow {
            line: row.line,
            product_key: std::mem::take(&mut row.product_key),
            device_key: std::mem::take(&mut row.device_key),
            // The row's copy is wiped when it drops, here.
            device_secret: row.device_secret.expose_secret().to_owned(),
            gateway: row
                .gateway
                .take()
                .map(|(product_key, device_key)| v1::DeviceRef::new(product_key, device_key)),
            awaiting_activation,
            enabled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_methods_round_trip() {
        for method in [
            SignMethod::HmacSha1,
            SignMethod::HmacSha256,
            SignMethod::HmacMd5,
        ] {
            assert_eq!(v1::SignMethod::from(method).to_core(), Some(method));
        }
        assert_eq!(v1::SignMethod::Unspecified.to_core(), None);
        assert_eq!(
            v1::SignMethod::wire(None),
            v1::SignMethod::Unspecified as i32
        );
    }
}
