//! The device registry: a trait ([`Registry`]), its embedded default
//! ([`RedbRegistry`]) and the shared one of stateless replicas
//! ([`PostgresRegistry`]).
//!
//! The trait is async and object safe so that a shared registry (PostgreSQL,
//! for several stateless replicas) stands beside the embedded one.
//! Every change goes through [`Registry::modify`]: read some records, decide,
//! write, all in one transaction, which also enforces the
//! [`gateway_rules`] (no gateway is a sub-device, no device with
//! sub-devices is bound or deleted).
//!
//! Beside the devices, the registry keeps the products' own secrets
//! ([`ProductRecord`], for dynamic activation): few, rarely read (once per
//! activation credential), so never cached, and changed through
//! [`Registry::modify_product`], one product per transaction.
//!
//! Secrets reach this crate sealed ([`enos_custody::SealedSecret`]) and
//! leave it sealed: it never sees a key, opens nothing, and knows nothing
//! of gRPC.
//!
//! As the devices' CA (issue 25) the signer keeps here its CA key (as
//! custody stores it) and chain ([`CaRecord`]), every certificate it
//! issued ([`CertificateRecord`]) and the one-time enrollment tokens
//! ([`EnrollTokenRecord`], hashes only). Enrollment and renewal are one
//! transaction each (a token enrolls once, even through two replicas at
//! the same moment), and disabling or deleting a device revokes its
//! certificates and tokens in the transaction that does it. Whether a
//! serial is revoked is answered from memory in steady state
//! ([`Registry::is_revoked`]).
//!
//! For EnOS's own device certificates (issue 26, issued by EnOS through
//! the signer) it records each one's serial, validity, authority and
//! state ([`EnosCertificateRecord`]), read from the store on every call.
//! The signer is its one user; `tests/contract.rs` is the one
//! contract suite that both backends pass.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `lib.rs` | the [`Registry`] trait, [`Write`] / [`Change`] (one transaction's decision), [`open`] / [`create`] |
//! | [`record`] | [`DeviceRecord`], [`ProductRecord`] |
//! | [`certificates`] | [`CertificateRecord`], [`EnrollTokenRecord`], [`CaRecord`], [`CertificateRefusal`]; the enrollment and renewal rules; the in-memory revoked set |
//! | [`enos_certificates`] | [`EnosCertificateRecord`]: which EnOS device certificates (serials) each device holds (issue 26) |
//! | [`config`] | [`RegistryConfig`]: `[registry]` of the signer's config |
//! | [`gateway_rules`] | the gateway/sub-device rules every change is checked against |
//! | `redb_store` | [`RedbRegistry`]: one embedded file, a single process |
//! | `redb_commit` | redb's write transactions on one thread, made durable in groups (one fsync for every write waiting) |
//! | `redb_sub_index` | redb's gateway → sub-devices index |
//! | `redb_certificates` | redb's tables of certificates, tokens and the CA row |
//! | `record_cache` | decoded records in memory, invalidated by commits (and the change feed) |
//! | [`postgres`] | [`PostgresRegistry`]: migrations, the pool, the change feed (LISTEN/NOTIFY), TLS |
//! | [`copy`] | `registry copy`: every record from one registry into another, sealed as it is |
//! | [`error`] | [`RegistryError`], the one error type |
#![forbid(unsafe_code)]

pub mod certificates;
pub mod config;
pub mod copy;
pub mod enos_certificates;
pub mod error;
pub mod gateway_rules;
pub mod postgres;
pub mod record;
mod record_cache;
mod redb_certificates;
mod redb_commit;
mod redb_store;
mod redb_sub_index;

use std::{collections::HashMap, sync::Arc};

pub use certificates::{
    CaChange, CaRecord, CertificateRecord, CertificateRefusal, EnrollTokenRecord, MergeCounts,
    Revocation, RevokeTarget,
};
pub use config::RegistryConfig;
pub use enos_certificates::EnosCertificateRecord;
pub use enos_domain::DeviceId;
use enos_sign_core::ProductKey;
pub use error::{RegistryError, Result};
pub use postgres::PostgresRegistry;
pub use record::{DeviceRecord, ProductRecord};
pub use redb_store::RedbRegistry;

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
    ///
    /// A write that deletes a device, or turns an enabled one disabled,
    /// revokes in the same transaction its certificates that have not
    /// expired (reason `device deleted` / `device disabled`) and its
    /// unused enrollment tokens. Enabling it again un-revokes nothing.
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

    /// Stores a new enrollment token; its device must exist
    /// ([`CertificateRefusal::DeviceUnknown`] otherwise).
    async fn put_enroll_token(&self, token: EnrollTokenRecord) -> Result<()>;

    /// The token of `hash`, if any: a read-only pre-check, so that a bad
    /// token is refused before anything is signed ([`Registry::enroll`]
    /// decides).
    async fn enroll_token(&self, hash: &[u8; 32]) -> Result<Option<EnrollTokenRecord>>;

    /// Enrolls `device` with the token of `hash`, in one transaction: the
    /// token must exist, be `device`'s, unused, unrevoked and unexpired at
    /// `now_ms`; the device must exist and be enabled; the token is
    /// marked used and `cert` recorded. Of two calls with one token (on
    /// any replicas) exactly one succeeds. A refusal is
    /// [`RegistryError::Refusal`] and writes nothing.
    async fn enroll(
        &self,
        hash: &[u8; 32],
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()>;

    /// Revokes `device`'s unused, unrevoked tokens; returns how many.
    async fn revoke_enroll_tokens(&self, device: &DeviceId, now_ms: u64) -> Result<u32>;

    /// Renews the certificate `old_serial` of `device` by `cert`, in one
    /// transaction: the old one must exist, be `device`'s, unrevoked and
    /// unexpired at `now_ms`; the device must exist and be enabled; the
    /// old one is marked renewed by the new one, which is recorded.
    async fn renew(
        &self,
        old_serial: &str,
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()>;

    /// Revokes the certificate of a serial (even an expired one;
    /// [`CertificateRefusal::CertificateUnknown`] if there is none) or
    /// every unexpired one of a device. Returns the newly revoked; those
    /// revoked already are neither returned nor changed.
    async fn revoke_certificates(
        &self,
        target: RevokeTarget,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<CertificateRecord>>;

    /// The certificate of `serial`, if any.
    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>>;

    /// Every certificate of `device`, newest first.
    async fn certificates_of(&self, device: &DeviceId) -> Result<Vec<CertificateRecord>>;

    /// The revoked certificates that have not expired at `now_ms`: the
    /// CRL's entries, in serial order.
    async fn revoked_certificates(&self, now_ms: u64) -> Result<Vec<CertificateRecord>>;

    /// How many certificates, neither revoked nor renewed, expire in
    /// `(now_ms, now_ms + within_ms]`.
    async fn count_expiring(&self, now_ms: u64, within_ms: u64) -> Result<u64>;

    /// Whether `serial` is revoked: the per-call check. A memory lookup
    /// in steady state; reads the store while the in-memory set cannot be
    /// trusted (PostgreSQL: the change feed down or a revocation just
    /// reported).
    async fn is_revoked(&self, serial: &str) -> Result<bool>;

    /// Whether `serial` is revoked, from memory only, for the TLS
    /// handshake verifier: `None` when the in-memory set cannot be trusted
    /// right now (the caller then uses [`Registry::is_revoked`]).
    fn revoked_cached(&self, serial: &str) -> Option<bool>;

    /// Goes up whenever the revoked set may have changed (a revocation
    /// committed here, one reported by the change feed, a feed
    /// reconnect), so that verdicts kept per connection are dropped.
    fn revocation_generation(&self) -> u64;

    /// Whether the change feed is up right now (reads served from the
    /// cache), for the signer's `enos_signer_registry_change_feed_up`
    /// gauge; `None` when this registry has no feed (redb, or PostgreSQL
    /// with `cache = false`: every read goes to the store) or has not
    /// started it yet (it starts with the first read that uses the cache).
    fn change_feed_up(&self) -> Option<bool> {
        None
    }

    /// The CA row, if the signer is a CA.
    async fn get_ca(&self) -> Result<Option<CaRecord>>;

    /// Reads the CA row, lets `change` decide, and stores its result;
    /// serialised with every other change of the row. If `change` fails
    /// nothing is written.
    async fn modify_ca(&self, change: CaChange) -> Result<CaRecord>;

    /// Up to `limit` certificates in serial order, strictly after
    /// `after` (for `registry copy`).
    async fn list_certificates(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>>;

    /// Up to `limit` enrollment tokens in hash order, strictly after
    /// `after` (for `registry copy`).
    async fn list_enroll_tokens(
        &self,
        after: Option<&[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<EnrollTokenRecord>>;

    /// Writes copied certificates in one transaction: a missing one as it
    /// is; over an existing one only what it lacks (a revocation, a
    /// successor), so that nothing is un-revoked. A serial of another
    /// device is refused (nothing written).
    async fn merge_certificates(&self, certs: Vec<CertificateRecord>) -> Result<MergeCounts>;

    /// Writes copied tokens in one transaction, by the same rule: a use
    /// or a revocation is never undone.
    async fn merge_enroll_tokens(&self, tokens: Vec<EnrollTokenRecord>) -> Result<MergeCounts>;

    /// Records an EnOS certificate EnOS just issued to `cert.device`; with
    /// `supersedes` (a renewal) the device's certificate of that serial
    /// is marked superseded by it, in the same transaction (if recorded:
    /// one EnOS issued before the registry recorded serials is not). A
    /// serial recorded already for the device is refused (nothing
    /// written).
    async fn record_enos_certificate(
        &self,
        cert: EnosCertificateRecord,
        supersedes: Option<String>,
    ) -> Result<()>;

    /// Marks `device`'s EnOS certificate `cert_sn` revoked at `now_ms`
    /// for `reason`. Returns it as revoked, or `None` when it is not
    /// recorded for that device or was revoked already (then nothing
    /// changes: the first revocation's reason and time stand).
    async fn revoke_enos_certificate(
        &self,
        device: &DeviceId,
        cert_sn: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<EnosCertificateRecord>>;

    /// Every EnOS certificate recorded for `device`, newest first; read
    /// from the store (never a replica's copy).
    async fn enos_certificates_of(&self, device: &DeviceId) -> Result<Vec<EnosCertificateRecord>>;

    /// `device`'s current EnOS certificate at `now_ms`: the newest
    /// recorded that is neither revoked, expired nor superseded.
    async fn current_enos_certificate(
        &self,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<Option<EnosCertificateRecord>> {
        let certs = self.enos_certificates_of(device).await?;
        Ok(enos_certificates::current(&certs, now_ms).cloned())
    }

    /// Up to `limit` EnOS certificate records in `(productKey, deviceKey,
    /// certSN)` order, strictly after `after` (for `registry copy`).
    async fn list_enos_certificates(
        &self,
        after: Option<&(DeviceId, String)>,
        limit: usize,
    ) -> Result<Vec<EnosCertificateRecord>>;

    /// Writes copied EnOS certificate records in one transaction: a
    /// missing one as it is; over an existing one only what it lacks (a
    /// revocation, a successor).
    async fn merge_enos_certificates(
        &self,
        certs: Vec<EnosCertificateRecord>,
    ) -> Result<MergeCounts>;
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
