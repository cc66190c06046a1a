//! [`DeviceId`]: which device, `(productKey, deviceKey)`.

use std::fmt;

use enos_sign_core::{DeviceKey, ProductKey};

/// Names one device: `(productKey, deviceKey)`. Displayed `pk/dk`, as in
/// logs and audit records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// The product the device belongs to.
    pub product_key: ProductKey,
    /// The device within its product.
    pub device_key: DeviceKey,
}

impl DeviceId {
    /// The id of `product_key`/`device_key`.
    pub fn new(product_key: ProductKey, device_key: DeviceKey) -> Self {
        DeviceId {
            product_key,
            device_key,
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.product_key, self.device_key)
    }
}
