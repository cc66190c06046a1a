//! The device registry: a trait ([`Registry`]), its embedded default
//! ([`RedbRegistry`]) and the shared one of stateless replicas
//! ([`PostgresRegistry`]).
//!
//! The trait is async and object safe so that a shared registry (PostgreSQL,
//! for several stateless replicas) can be added beside the embedded one.
//! Every change goes through [`Registry::modify`]: read some records, decide,
//! write, all in one transaction, which also enforces the
//! [`gateway_rules`] (no gateway is a sub-device, no device with
//! sub-devices is bound or deleted).
//!
//! Beside the devices, the registry keeps the products' own secrets
//! ([`ProductRecord`], for dynamic activation): few, rarely read (once per
//! activation credential), so never cached, and changed through
//! [`Registry::modify_product`], one product per transaction.

pub mod gateway_rules;
pub mod postgres;
mod record_cache;
mod redb_store;
mod redb_sub_index;

use std::{collections::HashMap, sync::Arc};

use enos_custody::SealedSecret;
pub use enos_domain::DeviceId;
use enos_sign_core::ProductKey;

pub use postgres::PostgresRegistry;
pub use redb_store::RedbRegistry;

use crate::{config::RegistryConfig, error::Result};

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
    pub fn with_new_secret(
        id: DeviceId,
        existing: Option<&DeviceRecord>,
        now_ms: u64,
        seal: impl FnOnce(&DeviceId, u32) -> Result<SealedSecret>,
    ) -> Result<DeviceRecord> {
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

/// The one write of a [`Registry::modify_product`] transaction.
#[derive(Debug, Clone)]
pub enum ProductWrite {
    /// Create or replace the record.
    Put(ProductRecord),
    /// Remove the record (no-op if absent).
    Delete(ProductKey),
}

/// The decision of a [`Registry::modify_product`]: given the product's
/// current record, the write to commit, or an error to abort with.
pub type ProductChange =
    Box<dyn FnOnce(Option<ProductRecord>) -> Result<ProductWrite> + Send + 'static>;

/// One write of a [`Registry::modify`] transaction.
#[derive(Debug, Clone)]
pub enum Write {
    /// Create or replace the record.
    Put(DeviceRecord),
    /// Remove the record (no-op if absent).
    Delete(DeviceId),
}

/// The decision of a [`Registry::modify`]: given the current records of
/// the requested ids (in request order), the writes to commit, or an error
/// to abort with (then nothing is written).
pub type Change = Box<dyn FnOnce(Vec<Option<DeviceRecord>>) -> Result<Vec<Write>> + Send + 'static>;

/// Where device records live.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The record of `id`, if any.
    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>>;

    /// Up to `limit` records in `(productKey, deviceKey)` order, strictly
    /// after `after`, optionally of one product only.
    async fn list(
        &self,
        product: Option<&ProductKey>,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>>;

    /// Reads the records of `ids`, lets `change` decide, and commits its
    /// writes atomically; if `change` fails nothing is written. Changes are
    /// serialised, so the records `change` sees are current. Returns the
    /// committed writes.
    async fn modify(&self, ids: Vec<DeviceId>, change: Change) -> Result<Vec<Write>>;

    /// For each of `gateways` that has sub-devices, one of them. For
    /// reports (an import's dry run names every bad row); a change is
    /// checked against the [`gateway_rules`] in its own transaction.
    async fn a_sub_device_of(&self, gateways: &[DeviceId]) -> Result<HashMap<DeviceId, DeviceId>>;

    /// The secret record of `product`, if it has one. Read through, never
    /// cached: a rotation on another replica is seen at once.
    async fn get_product(&self, product: &ProductKey) -> Result<Option<ProductRecord>>;

    /// Every product record, in product-key order (products are few: a
    /// registry copy and a custody migration read them at once).
    async fn list_products(&self) -> Result<Vec<ProductRecord>>;

    /// Reads `product`'s record, lets `change` decide, and commits its
    /// write; if `change` fails nothing is written. Serialised with other
    /// changes of the same product. Returns the committed write.
    async fn modify_product(
        &self,
        product: ProductKey,
        change: ProductChange,
    ) -> Result<ProductWrite>;
}

/// Opens the registry the config names.
pub fn open(config: &RegistryConfig) -> Result<Arc<dyn Registry>> {
    match config {
        RegistryConfig::Redb { path } => Ok(Arc::new(RedbRegistry::open(path)?)),
        RegistryConfig::Postgres(pg) => Ok(Arc::new(PostgresRegistry::open(pg)?)),
    }
}

/// Creates the registry the config names (for `enos-signer init`): a new
/// redb file, or the PostgreSQL schema (migrations this binary carries).
pub fn create(config: &RegistryConfig) -> Result<()> {
    match config {
        RegistryConfig::Redb { path } => RedbRegistry::create(path),
        RegistryConfig::Postgres(pg) => PostgresRegistry::create(pg).map(drop),
    }
}
