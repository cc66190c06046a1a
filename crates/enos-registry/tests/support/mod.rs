//! What the registry's test files share: ids and a record of fixed
//! contents (its sealed bytes include 0 and 255, so an encoding that
//! loses bytes is caught).

use enos_custody::SealedSecret;
use enos_registry::{DeviceId, DeviceRecord};
use enos_sign_core::{DeviceKey, ProductKey};

/// `pk/dk`, valid keys.
pub(crate) fn id(pk: &str, dk: &str) -> DeviceId {
    DeviceId::new(
        ProductKey::new(pk).expect("pk"),
        DeviceKey::new(dk).expect("dk"),
    )
}

/// An enabled device with secret version 1, no gateway.
pub(crate) fn record(pk: &str, dk: &str) -> DeviceRecord {
    DeviceRecord {
        id: id(pk, dk),
        enabled: true,
        secret_version: 1,
        sealed: Some(SealedSecret {
            scheme: "test".into(),
            bytes: vec![1, 2, 3, 0, 255],
        }),
        gateway: None,
        created_at_ms: 1,
        updated_at_ms: 2,
    }
}
