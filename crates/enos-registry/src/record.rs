//! The records a registry keeps: [`DeviceRecord`] per device,
//! [`ProductRecord`] per product that has its own secret.

use enos_custody::SealedSecret;
use enos_domain::DeviceId;
use enos_sign_core::ProductKey;

/// One registry entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Which device.
    pub id: DeviceId,
    /// A disabled device gets no credentials and no sub-device signatures.
    pub enabled: bool,
    /// 1 at creation, +1 per rotation; bound into the sealed secret. 0
    /// while the device awaits activation (it has no secret yet).
    pub secret_version: u32,
    /// The secret, sealed by the custody; never leaves the service.
    /// `None` for a device registered without one, awaiting dynamic
    /// activation: it logs in with its product's secret until it hands
    /// over the secret EnOS pushes to it.
    pub sealed: Option<SealedSecret>,
    /// Set when this device is a sub-device of that gateway.
    pub gateway: Option<DeviceId>,
    /// When the record was created (ms since the epoch).
    pub created_at_ms: u64,
    /// When the record last changed (ms since the epoch).
    pub updated_at_ms: u64,
}

impl DeviceRecord {
    /// `id`'s record once it gets a new secret (created, put again,
    /// rotated, imported): the secret version goes up by one (1 for a new
    /// device) and `seal` seals the secret under it; `enabled`, the gateway
    /// and `created_at_ms` stay those of `existing` (a new device: enabled,
    /// no gateway, created now); updated now.
    pub fn with_new_secret<E>(
        id: DeviceId,
        existing: Option<&DeviceRecord>,
        now_ms: u64,
        seal: impl FnOnce(&DeviceId, u32) -> Result<SealedSecret, E>,
    ) -> Result<DeviceRecord, E> {
        let secret_version = existing.map_or(1, |r| r.secret_version + 1);
        let sealed = seal(&id, secret_version)?;
        Ok(DeviceRecord {
            enabled: existing.is_none_or(|r| r.enabled),
            secret_version,
            sealed: Some(sealed),
            gateway: existing.and_then(|r| r.gateway.clone()),
            created_at_ms: existing.map_or(now_ms, |r| r.created_at_ms),
            updated_at_ms: now_ms,
            id,
        })
    }
}

impl DeviceRecord {
    /// A device registered without a secret (`id`, created now): it awaits
    /// dynamic activation. Put over an existing record it keeps that one's
    /// `enabled`, gateway and creation time.
    pub fn awaiting_activation(id: DeviceId, existing: Option<&DeviceRecord>, now_ms: u64) -> Self {
        DeviceRecord {
            enabled: existing.is_none_or(|r| r.enabled),
            secret_version: 0,
            sealed: None,
            gateway: existing.and_then(|r| r.gateway.clone()),
            created_at_ms: existing.map_or(now_ms, |r| r.created_at_ms),
            updated_at_ms: now_ms,
            id,
        }
    }

    /// True while the device has no secret (it awaits activation).
    pub fn is_awaiting_activation(&self) -> bool {
        self.sealed.is_none()
    }
}

/// A product's own secret (EnOS's product secret: `securemode=3` logins
/// of its devices that await activation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    /// Which product.
    pub product_key: ProductKey,
    /// 1 at creation, +1 per rotation; bound into the sealed secret.
    pub secret_version: u32,
    /// The secret, sealed by the custody like a device's, under the
    /// product's own reference; never leaves the service.
    pub sealed: SealedSecret,
    /// When the record was created (ms since the epoch).
    pub created_at_ms: u64,
    /// When the record last changed (ms since the epoch).
    pub updated_at_ms: u64,
}
