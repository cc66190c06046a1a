//! [`RedbRegistry`]: the embedded registry, one redb file (ACID, crash
//! safe, copy-on-write B-trees).
//!
//! Records are keyed by `(productKey, deviceKey)` and stored as a small
//! protobuf message, so fields can be added without a migration. A device
//! awaiting activation is stored with an empty scheme and no sealed bytes
//! (every custody names its scheme). Product secrets live in their own
//! table, created on open in files older than it; so do the CA's tables
//! and the EnOS certificates' table (`redb_certificates`): redb's
//! migrations are tables made at open, records being protobuf.
//!
//! Every write transaction is exclusive: an enrollment reads and marks
//! its token in one, so a token enrolls once. The revoked serials are
//! kept in memory (loaded at open, extended after each commit that
//! revokes): only this process writes the file.

use std::os::unix::fs::OpenOptionsExt;
use std::{
    collections::HashMap,
    ops::Bound,
    path::{Path, PathBuf},
    sync::Arc,
};

use enos_custody::SealedSecret;
use enos_sign_core::{DeviceKey, ProductKey};
use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};

use super::{
    Change, DeviceId, DeviceRecord, ProductChange, ProductRecord, ProductWrite, Registry, Write,
    certificates::{
        self, CaChange, CaRecord, CertificateRecord, CertificateRefusal, EnrollTokenRecord,
        MergeCounts, REASON_DEVICE_DELETED, REASON_DEVICE_DISABLED, Revocation, RevokeTarget,
        RevokedSet,
    },
    enos_certificates::{self, EnosCertificateRecord},
    gateway_rules::{self, GatewayChanges},
    record_cache::RecordCache,
    redb_certificates::{
        self as certs, CA, CERTIFICATES, CERTIFICATES_BY_DEVICE, ENOS_CERTIFICATES, ENROLL_TOKENS,
    },
    redb_sub_index::{self, SUB_DEVICES},
};
use crate::error::{RegistryError, Result};

/// `(productKey, deviceKey)` → encoded [`StoredDevice`].
const DEVICES: TableDefinition<'static, (&str, &str), &[u8]> = TableDefinition::new("devices");

/// `productKey` → encoded [`StoredProduct`].
const PRODUCTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("products");

/// The stored form of a [`ProductRecord`].
#[derive(Clone, PartialEq, prost::Message)]
struct StoredProduct {
    #[prost(uint32, tag = "1")]
    secret_version: u32,
    #[prost(string, tag = "2")]
    scheme: String,
    #[prost(bytes = "vec", tag = "3")]
    sealed: Vec<u8>,
    #[prost(uint64, tag = "4")]
    created_at_ms: u64,
    #[prost(uint64, tag = "5")]
    updated_at_ms: u64,
}

/// The stored form of a [`DeviceRecord`].
#[derive(Clone, PartialEq, prost::Message)]
struct StoredDevice {
    #[prost(bool, tag = "1")]
    enabled: bool,
    #[prost(uint32, tag = "2")]
    secret_version: u32,
    #[prost(string, tag = "3")]
    scheme: String,
    #[prost(bytes = "vec", tag = "4")]
    sealed: Vec<u8>,
    #[prost(string, tag = "5")]
    gateway_product_key: String,
    #[prost(string, tag = "6")]
    gateway_device_key: String,
    #[prost(uint64, tag = "7")]
    created_at_ms: u64,
    #[prost(uint64, tag = "8")]
    updated_at_ms: u64,
}

/// The embedded registry.
pub struct RedbRegistry {
    /// Read transactions; writes go through `committer`.
    db: Arc<Database>,
    /// The one thread that runs write transactions and makes them durable
    /// in groups ([`crate::redb_commit`]).
    committer: crate::redb_commit::Committer,
    /// The file, for error messages.
    path: PathBuf,
    /// Decoded records, so that an issuance reads no page and decodes
    /// nothing. Correct because only this process writes the file (redb
    /// locks it) and every write goes through `modify`, which drops the
    /// written ids from the cache after its commit: a call that starts
    /// after `modify` returned reads the change from the file (a rotated
    /// secret is used by the next issuance, after one miss).
    cache: Arc<RecordCache>,
    /// Every revoked serial, so that the per-call and per-handshake
    /// checks read no page. Loaded at open; a commit that revokes adds
    /// its serials before the call returns (only this process writes).
    revoked: Arc<RevokedSet>,
}

impl RedbRegistry {
    /// Creates a new, empty registry file; refuses an existing one.
    pub fn create(path: &Path) -> Result<()> {
        if path.exists() {
            return Err(RegistryError::Config(format!(
                "{} already exists; refusing to overwrite a registry",
                path.display()
            )));
        }
        // Created owner-only before redb writes a byte: it holds the
        // sealed secrets (redb alone would use the umask, often 0644).
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| RegistryError::Store(format!("creating {}: {e}", path.display())))?;
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(DEVICES)?;
        txn.open_table(PRODUCTS)?;
        txn.open_table(SUB_DEVICES)?;
        certs::create_tables(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Opens an existing registry file (made by [`RedbRegistry::create`]).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(RegistryError::Config(format!(
                "registry {} does not exist; run `enos-signer init` first",
                path.display()
            )));
        }
        // Loose like a key file: refused, as the key files are.
        enos_domain::private_file::check(path)?;
        let db = Database::open(path)
            .map_err(|e| RegistryError::Store(format!("opening {}: {e}", path.display())))?;
        // A file made before product secrets existed has no such table:
        // reads would fail, so make it (once, empty). One made before the
        // sub-device index gets it built from its records.
        let txn = db.begin_write()?;
        txn.open_table(PRODUCTS)?;
        certs::create_tables(&txn)?;
        let built = redb_sub_index::build_if_missing(&txn, || {
            let table = txn.open_table(DEVICES)?;
            let mut bindings = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let (pk, dk) = key.value();
                let record = decode(pk, dk, value.value())?;
                if let Some(gateway) = record.gateway {
                    bindings.push((record.id, gateway));
                }
            }
            Ok(bindings)
        })?;
        txn.commit()?;
        if built {
            tracing::info!(path = %path.display(), "registry: sub-device index built");
        }
        let revoked = certs::revoked_serials(&db)?;
        let db = Arc::new(db);
        Ok(RedbRegistry {
            committer: crate::redb_commit::Committer::spawn(Arc::clone(&db), path)?,
            db,
            path: path.to_owned(),
            cache: Arc::new(RecordCache::new()),
            revoked: Arc::new(RevokedSet::new(revoked, true)),
        })
    }

    /// Runs `work` in one write transaction on the committer thread and
    /// commits it unless it fails (then nothing is written); returns once
    /// the commit is on disk (see [`crate::redb_commit`]).
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.committer.write(work).await
    }
}

/// Now, in unix milliseconds (for the revocations a device change makes,
/// which carries no time of its own).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether the device is registered (`None`) and enabled, in `txn`.
fn device_enabled(txn: &redb::WriteTransaction, device: &DeviceId) -> Result<Option<bool>> {
    let table = txn.open_table(DEVICES)?;
    let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
    table
        .get((pk, dk))?
        .map(|v| decode(pk, dk, v.value()).map(|r| r.enabled))
        .transpose()
}

fn encode(record: &DeviceRecord) -> Vec<u8> {
    let (gateway_product_key, gateway_device_key) = match &record.gateway {
        Some(g) => (g.product_key.to_string(), g.device_key.to_string()),
        None => (String::new(), String::new()),
    };
    StoredDevice {
        enabled: record.enabled,
        secret_version: record.secret_version,
        scheme: record
            .sealed
            .as_ref()
            .map(|s| s.scheme.clone())
            .unwrap_or_default(),
        sealed: record
            .sealed
            .as_ref()
            .map(|s| s.bytes.clone())
            .unwrap_or_default(),
        gateway_product_key,
        gateway_device_key,
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
    .encode_to_vec()
}

fn decode(pk: &str, dk: &str, bytes: &[u8]) -> Result<DeviceRecord> {
    let corrupt = |what: &str| RegistryError::Store(format!("record {pk}/{dk}: {what}"));
    let stored = StoredDevice::decode(bytes).map_err(|_| corrupt("undecodable"))?;
    let id = DeviceId::new(
        ProductKey::new(pk).map_err(|_| corrupt("bad productKey"))?,
        DeviceKey::new(dk).map_err(|_| corrupt("bad deviceKey"))?,
    );
    let gateway = if stored.gateway_product_key.is_empty() {
        None
    } else {
        Some(DeviceId::new(
            ProductKey::new(&stored.gateway_product_key)
                .map_err(|_| corrupt("bad gateway productKey"))?,
            DeviceKey::new(&stored.gateway_device_key)
                .map_err(|_| corrupt("bad gateway deviceKey"))?,
        ))
    };
    Ok(DeviceRecord {
        id,
        enabled: stored.enabled,
        secret_version: stored.secret_version,
        sealed: (!stored.scheme.is_empty()).then_some(SealedSecret {
            scheme: stored.scheme,
            bytes: stored.sealed,
        }),
        gateway,
        created_at_ms: stored.created_at_ms,
        updated_at_ms: stored.updated_at_ms,
    })
}

fn encode_product(record: &ProductRecord) -> Vec<u8> {
    StoredProduct {
        secret_version: record.secret_version,
        scheme: record.sealed.scheme.clone(),
        sealed: record.sealed.bytes.clone(),
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
    .encode_to_vec()
}

fn decode_product(pk: &str, bytes: &[u8]) -> Result<ProductRecord> {
    let corrupt = |what: &str| RegistryError::Store(format!("product record {pk}: {what}"));
    let stored = StoredProduct::decode(bytes).map_err(|_| corrupt("undecodable"))?;
    Ok(ProductRecord {
        product_key: ProductKey::new(pk).map_err(|_| corrupt("bad productKey"))?,
        secret_version: stored.secret_version,
        sealed: SealedSecret {
            scheme: stored.scheme,
            bytes: stored.sealed,
        },
        created_at_ms: stored.created_at_ms,
        updated_at_ms: stored.updated_at_ms,
    })
}

#[async_trait::async_trait]
impl Registry for RedbRegistry {
    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        let generation = match self.cache.lookup(id)? {
            Ok(record) => return Ok(Some(record)),
            Err(generation) => generation,
        };
        // A read transaction is a snapshot and cheap (microseconds): run
        // it inline rather than pay for a hop to the blocking pool.
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let (pk, dk) = (id.product_key.as_str(), id.device_key.as_str());
        match table.get((pk, dk))? {
            Some(value) => {
                let record = decode(pk, dk, value.value())?;
                self.cache.fill(generation, &record)?;
                Ok(Some(record))
            }
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        product: Option<&ProductKey>,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let start = match (after, product) {
            (Some(a), _) => Bound::Excluded((a.product_key.as_str(), a.device_key.as_str())),
            (None, Some(p)) => Bound::Included((p.as_str(), "")),
            (None, None) => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for entry in table.range::<(&str, &str)>((start, Bound::Unbounded))? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            let (pk, dk) = key.value();
            if product.is_some_and(|p| p.as_str() != pk) {
                break;
            }
            out.push(decode(pk, dk, value.value())?);
        }
        Ok(out)
    }

    async fn a_sub_device_of(&self, gateways: &[DeviceId]) -> Result<HashMap<DeviceId, DeviceId>> {
        let txn = self.db.begin_read()?;
        let subs = txn.open_table(SUB_DEVICES)?;
        let mut found = HashMap::new();
        for gateway in gateways {
            if let Some(sub) = redb_sub_index::first(&subs, gateway)? {
                found.insert(gateway.clone(), sub);
            }
        }
        Ok(found)
    }

    async fn modify(&self, ids: Vec<DeviceId>, change: Change) -> Result<Vec<Write>> {
        let db = Arc::clone(&self.db);
        let cache = Arc::clone(&self.cache);
        let revoked = Arc::clone(&self.revoked);
        let path = self.path.clone();
        // Write transactions fsync on commit and wait for each other: keep
        // them off the async workers.
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write()?;
            // Devices this change deletes or disables: their certificates
            // and tokens are revoked in this same transaction.
            let mut ended: Vec<(DeviceId, &'static str)> = Vec::new();
            let writes = {
                let mut table = txn.open_table(DEVICES)?;
                let mut current = Vec::with_capacity(ids.len());
                for id in &ids {
                    let (pk, dk) = (id.product_key.as_str(), id.device_key.as_str());
                    current.push(match table.get((pk, dk))? {
                        Some(v) => Some(decode(pk, dk, v.value())?),
                        None => None,
                    });
                }
                // On error the transaction is dropped, i.e. aborted.
                let writes = change(current)?;
                let mut subs = txn.open_table(SUB_DEVICES)?;
                let mut changes = GatewayChanges::default();
                for write in &writes {
                    let (id, old, new) = match write {
                        Write::Put(record) => {
                            let (pk, dk) = (
                                record.id.product_key.as_str(),
                                record.id.device_key.as_str(),
                            );
                            let old = table
                                .insert((pk, dk), encode(record).as_slice())?
                                .map(|v| decode(pk, dk, v.value()))
                                .transpose()?;
                            changes.put(&record.id, old_gateway(&old), record.gateway.as_ref());
                            if old.as_ref().is_some_and(|o| o.enabled) && !record.enabled {
                                ended.push((record.id.clone(), REASON_DEVICE_DISABLED));
                            }
                            (&record.id, old, record.gateway.as_ref())
                        }
                        Write::Delete(id) => {
                            let (pk, dk) = (id.product_key.as_str(), id.device_key.as_str());
                            let old = table
                                .remove((pk, dk))?
                                .map(|v| decode(pk, dk, v.value()))
                                .transpose()?;
                            changes.delete(id);
                            if old.is_some() {
                                ended.push((id.clone(), REASON_DEVICE_DELETED));
                            }
                            (id, old, None)
                        }
                    };
                    let old = old_gateway(&old);
                    if old != new {
                        if let Some(g) = old {
                            redb_sub_index::set(&mut subs, g, id, false)?;
                        }
                        if let Some(g) = new {
                            redb_sub_index::set(&mut subs, g, id, true)?;
                        }
                    }
                }
                check_gateway_rules(&table, &subs, &changes)?;
                writes
            };
            let now = now_ms();
            let mut newly_revoked = Vec::new();
            for (device, reason) in &ended {
                newly_revoked.extend(
                    certs::revoke_device_certificates(&txn, device, reason, now)?
                        .into_iter()
                        .map(|c| c.serial),
                );
                certs::revoke_device_tokens(&txn, device, now)?;
            }
            txn.commit()?;
            revoked.add(newly_revoked);
            // Drop, never write back: even in one process this is racy.
            // Once `commit` returned, the next write transaction may begin,
            // commit and reach the cache (or a read may refill it with the
            // newer record) before this thread gets here; writing our
            // copy back would then put an older record over a newer one
            // for good. One rule with PostgreSQL (issue 23, finding 4).
            cache.committed(&writes)?;
            Ok(writes)
        })
        .await
        .map_err(|e| RegistryError::Store(format!("{}: write task failed: {e}", path.display())))?
    }

    async fn get_product(&self, product: &ProductKey) -> Result<Option<ProductRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PRODUCTS)?;
        match table.get(product.as_str())? {
            Some(value) => Ok(Some(decode_product(product.as_str(), value.value())?)),
            None => Ok(None),
        }
    }

    async fn list_products(&self) -> Result<Vec<ProductRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PRODUCTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode_product(key.value(), value.value())?);
        }
        Ok(out)
    }

    async fn modify_product(
        &self,
        product: ProductKey,
        change: ProductChange,
    ) -> Result<ProductWrite> {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write()?;
            let write = {
                let mut table = txn.open_table(PRODUCTS)?;
                let current = match table.get(product.as_str())? {
                    Some(v) => Some(decode_product(product.as_str(), v.value())?),
                    None => None,
                };
                let write = change(current)?;
                match &write {
                    ProductWrite::Put(record) => {
                        table.insert(
                            record.product_key.as_str(),
                            encode_product(record).as_slice(),
                        )?;
                    }
                    ProductWrite::Delete(key) => {
                        table.remove(key.as_str())?;
                    }
                }
                write
            };
            txn.commit()?;
            Ok(write)
        })
        .await
        .map_err(|e| RegistryError::Store(format!("{}: write task failed: {e}", path.display())))?
    }

    async fn put_enroll_token(&self, token: EnrollTokenRecord) -> Result<()> {
        self.write(move |txn| {
            if device_enabled(txn, &token.device)?.is_none() {
                return Err(CertificateRefusal::DeviceUnknown.into());
            }
            if certs::token(&txn.open_table(ENROLL_TOKENS)?, &token.hash)?.is_some() {
                return Err(RegistryError::Store(format!(
                    "an enrollment token for {} with this hash exists already",
                    token.device
                )));
            }
            certs::put_token(txn, &token)
        })
        .await
    }

    async fn enroll_token(&self, hash: &[u8; 32]) -> Result<Option<EnrollTokenRecord>> {
        let txn = self.db.begin_read()?;
        certs::token(&txn.open_table(ENROLL_TOKENS)?, hash)
    }

    async fn enroll(
        &self,
        hash: &[u8; 32],
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()> {
        let (hash, device) = (*hash, device.clone());
        self.write(move |txn| {
            let mut token = certs::token(&txn.open_table(ENROLL_TOKENS)?, &hash)?
                .ok_or(CertificateRefusal::TokenUnknown)?;
            certificates::check_token(&token, &device, now_ms)?;
            certificates::check_device(device_enabled(txn, &device)?)?;
            token.used_at_ms = Some(now_ms);
            certs::put_token(txn, &token)?;
            certs::insert_certificate(txn, &cert)
        })
        .await
    }

    async fn revoke_enroll_tokens(&self, device: &DeviceId, now_ms: u64) -> Result<u32> {
        let device = device.clone();
        self.write(move |txn| certs::revoke_device_tokens(txn, &device, now_ms))
            .await
    }

    async fn renew(
        &self,
        old_serial: &str,
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()> {
        let (old_serial, device) = (old_serial.to_owned(), device.clone());
        self.write(move |txn| {
            let mut old = certs::certificate(&txn.open_table(CERTIFICATES)?, &old_serial)?
                .ok_or(CertificateRefusal::CertificateUnknown)?;
            certificates::check_renewal(&old, &device, now_ms)?;
            certificates::check_device(device_enabled(txn, &device)?)?;
            old.renewed_by = Some(cert.serial.clone());
            certs::update_certificate(txn, &old)?;
            certs::insert_certificate(txn, &cert)
        })
        .await
    }

    async fn revoke_certificates(
        &self,
        target: RevokeTarget,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<CertificateRecord>> {
        let reason = reason.to_owned();
        let revoked = self
            .write(move |txn| match target {
                RevokeTarget::Device(device) => {
                    certs::revoke_device_certificates(txn, &device, &reason, now_ms)
                }
                RevokeTarget::Serial(serial) => {
                    let mut cert = certs::certificate(&txn.open_table(CERTIFICATES)?, &serial)?
                        .ok_or(CertificateRefusal::CertificateUnknown)?;
                    if cert.revoked.is_some() {
                        return Ok(Vec::new());
                    }
                    cert.revoked = Some(Revocation {
                        at_ms: now_ms,
                        reason,
                    });
                    certs::update_certificate(txn, &cert)?;
                    Ok(vec![cert])
                }
            })
            .await?;
        self.revoked.add(revoked.iter().map(|c| c.serial.clone()));
        Ok(revoked)
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        let txn = self.db.begin_read()?;
        certs::certificate(&txn.open_table(CERTIFICATES)?, serial)
    }

    async fn certificates_of(&self, device: &DeviceId) -> Result<Vec<CertificateRecord>> {
        let txn = self.db.begin_read()?;
        let serials = certs::serials_of(&txn.open_table(CERTIFICATES_BY_DEVICE)?, device)?;
        let table = txn.open_table(CERTIFICATES)?;
        let mut out = Vec::with_capacity(serials.len());
        for serial in serials {
            out.extend(certs::certificate(&table, &serial)?);
        }
        out.sort_by(|a, b| (b.issued_at_ms, &b.serial).cmp(&(a.issued_at_ms, &a.serial)));
        Ok(out)
    }

    async fn revoked_certificates(&self, now_ms: u64) -> Result<Vec<CertificateRecord>> {
        // Revoked serials are in memory; read only theirs.
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CERTIFICATES)?;
        let mut out = Vec::new();
        for serial in self.revoked.serials() {
            if let Some(cert) = certs::certificate(&table, &serial)?
                && cert.revoked.is_some()
                && cert.not_after_ms > now_ms
            {
                out.push(cert);
            }
        }
        out.sort_by(|a, b| a.serial.cmp(&b.serial));
        Ok(out)
    }

    async fn count_expiring(&self, now_ms: u64, within_ms: u64) -> Result<u64> {
        // A full scan: a metric read every scrape of a small table (one
        // row per live certificate, a few hundred bytes each).
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CERTIFICATES)?;
        let until = now_ms.saturating_add(within_ms);
        let mut count = 0;
        for entry in table.iter()? {
            let (key, value) = entry?;
            let cert = certs::decode_cert(key.value(), value.value())?;
            if cert.revoked.is_none()
                && cert.renewed_by.is_none()
                && now_ms < cert.not_after_ms
                && cert.not_after_ms <= until
            {
                count += 1;
            }
        }
        Ok(count)
    }

    async fn is_revoked(&self, serial: &str) -> Result<bool> {
        // Always trusted on redb (see the field).
        Ok(self.revoked.lookup(serial).unwrap_or(false))
    }

    fn revoked_cached(&self, serial: &str) -> Option<bool> {
        self.revoked.lookup(serial)
    }

    fn revocation_generation(&self) -> u64 {
        self.revoked.generation()
    }

    async fn get_ca(&self) -> Result<Option<CaRecord>> {
        let txn = self.db.begin_read()?;
        certs::ca(&txn.open_table(CA)?)
    }

    async fn modify_ca(&self, change: CaChange) -> Result<CaRecord> {
        self.write(move |txn| {
            let current = certs::ca(&txn.open_table(CA)?)?;
            let record = change(current)?;
            certs::put_ca(txn, &record)?;
            Ok(record)
        })
        .await
    }

    async fn list_certificates(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>> {
        let txn = self.db.begin_read()?;
        certs::all_certificates(&txn.open_table(CERTIFICATES)?, after, limit)
    }

    async fn list_enroll_tokens(
        &self,
        after: Option<&[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<EnrollTokenRecord>> {
        let txn = self.db.begin_read()?;
        certs::all_tokens(&txn.open_table(ENROLL_TOKENS)?, after, limit)
    }

    async fn merge_certificates(&self, incoming: Vec<CertificateRecord>) -> Result<MergeCounts> {
        let (counts, revoked) = self
            .write(move |txn| {
                let mut counts = MergeCounts::default();
                let mut revoked = Vec::new();
                for cert in incoming {
                    let existing =
                        certs::certificate(&txn.open_table(CERTIFICATES)?, &cert.serial)?;
                    let was_revoked = existing.as_ref().is_some_and(|e| e.revoked.is_some());
                    let is_new = existing.is_none();
                    if let Some(write) =
                        certificates::merge_certificate(existing.as_ref(), cert, &mut counts)?
                    {
                        if write.revoked.is_some() && !was_revoked {
                            revoked.push(write.serial.clone());
                        }
                        if is_new {
                            certs::insert_certificate(txn, &write)?;
                        } else {
                            certs::update_certificate(txn, &write)?;
                        }
                    }
                }
                Ok((counts, revoked))
            })
            .await?;
        self.revoked.add(revoked);
        Ok(counts)
    }

    async fn merge_enroll_tokens(&self, incoming: Vec<EnrollTokenRecord>) -> Result<MergeCounts> {
        self.write(move |txn| {
            let mut counts = MergeCounts::default();
            for token in incoming {
                let existing = certs::token(&txn.open_table(ENROLL_TOKENS)?, &token.hash)?;
                if let Some(write) =
                    certificates::merge_token(existing.as_ref(), token, &mut counts)?
                {
                    certs::put_token(txn, &write)?;
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn record_enos_certificate(
        &self,
        cert: EnosCertificateRecord,
        supersedes: Option<String>,
    ) -> Result<()> {
        self.write(move |txn| {
            let table = txn.open_table(ENOS_CERTIFICATES)?;
            if certs::enos_certificate(&table, &cert.device, &cert.cert_sn)?.is_some() {
                return Err(RegistryError::Store(format!(
                    "EnOS certificate {} of {} is recorded already",
                    cert.cert_sn, cert.device
                )));
            }
            let old = match &supersedes {
                Some(sn) => certs::enos_certificate(&table, &cert.device, sn)?,
                None => None,
            };
            drop(table);
            if let Some(mut old) = old
                && old.superseded_by.is_none()
            {
                old.superseded_by = Some(cert.cert_sn.clone());
                certs::put_enos_certificate(txn, &old)?;
            }
            certs::put_enos_certificate(txn, &cert)
        })
        .await
    }

    async fn revoke_enos_certificate(
        &self,
        device: &DeviceId,
        cert_sn: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<EnosCertificateRecord>> {
        let (device, cert_sn, reason) = (device.clone(), cert_sn.to_owned(), reason.to_owned());
        self.write(move |txn| {
            let found =
                certs::enos_certificate(&txn.open_table(ENOS_CERTIFICATES)?, &device, &cert_sn)?;
            let Some(mut cert) = found.filter(|c| c.revoked.is_none()) else {
                return Ok(None);
            };
            cert.revoked = Some(Revocation {
                at_ms: now_ms,
                reason,
            });
            certs::put_enos_certificate(txn, &cert)?;
            Ok(Some(cert))
        })
        .await
    }

    async fn enos_certificates_of(&self, device: &DeviceId) -> Result<Vec<EnosCertificateRecord>> {
        let txn = self.db.begin_read()?;
        let mut out = certs::enos_certificates(
            &txn.open_table(ENOS_CERTIFICATES)?,
            None,
            Some(device),
            usize::MAX,
        )?;
        enos_certificates::sort_newest_first(&mut out);
        Ok(out)
    }

    async fn list_enos_certificates(
        &self,
        after: Option<&(DeviceId, String)>,
        limit: usize,
    ) -> Result<Vec<EnosCertificateRecord>> {
        let txn = self.db.begin_read()?;
        let after =
            after.map(|(d, sn)| (d.product_key.as_str(), d.device_key.as_str(), sn.as_str()));
        certs::enos_certificates(&txn.open_table(ENOS_CERTIFICATES)?, after, None, limit)
    }

    async fn merge_enos_certificates(
        &self,
        incoming: Vec<EnosCertificateRecord>,
    ) -> Result<MergeCounts> {
        self.write(move |txn| {
            let mut counts = MergeCounts::default();
            for cert in incoming {
                let existing = certs::enos_certificate(
                    &txn.open_table(ENOS_CERTIFICATES)?,
                    &cert.device,
                    &cert.cert_sn,
                )?;
                if let Some(write) = enos_certificates::merge(existing.as_ref(), cert, &mut counts)
                {
                    certs::put_enos_certificate(txn, &write)?;
                }
            }
            Ok(counts)
        })
        .await
    }
}

fn old_gateway(old: &Option<DeviceRecord>) -> Option<&DeviceId> {
    old.as_ref().and_then(|r| r.gateway.as_ref())
}

/// The gateway rules over the records as the change left them.
fn check_gateway_rules(
    devices: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    subs: &impl ReadableTable<(&'static str, &'static str, &'static str, &'static str), ()>,
    changes: &GatewayChanges,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let gateway_of = |id: &DeviceId| -> Result<Option<Option<DeviceId>>> {
        let (pk, dk) = (id.product_key.as_str(), id.device_key.as_str());
        match devices.get((pk, dk))? {
            Some(v) => Ok(Some(decode(pk, dk, v.value())?.gateway)),
            None => Ok(None),
        }
    };
    let mut violations = Vec::new();
    for (sub, gateway) in &changes.bound {
        // A later write of the same change may have bound it elsewhere.
        if gateway_of(sub)?.flatten().as_ref() != Some(gateway) {
            continue;
        }
        if gateway_of(gateway)?.flatten().is_some() {
            violations.push(gateway_rules::gateway_is_sub(sub, gateway));
        }
        if let Some(example) = redb_sub_index::first(subs, sub)? {
            violations.push(gateway_rules::sub_has_sub_devices(sub, gateway, &example));
        }
    }
    for deleted in &changes.deleted {
        if gateway_of(deleted)?.is_none()
            && let Some(example) = redb_sub_index::first(subs, deleted)?
        {
            violations.push(gateway_rules::gateway_in_use(deleted, &example));
        }
    }
    gateway_rules::verdict(violations)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_registry_file_is_owner_only_and_a_loose_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.redb");
        RedbRegistry::create(&path).expect("create");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "created {mode:o}");
        RedbRegistry::open(&path).expect("opens");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            RedbRegistry::open(&path),
            Err(RegistryError::PrivateFile(
                enos_domain::private_file::PrivateFileError::Loose { mode: 0o644, .. }
            ))
        ));
    }

    /// A new device's record, made as the signer makes one.
    fn record(pk: &str, dk: &str) -> DeviceRecord {
        let id = DeviceId::new(
            ProductKey::new(pk).expect("pk"),
            DeviceKey::new(dk).expect("dk"),
        );
        DeviceRecord::with_new_secret(id, None, 2, |_, version| {
            Ok::<_, RegistryError>(SealedSecret {
                scheme: "test".into(),
                bytes: vec![1, 2, 3, version as u8],
            })
        })
        .expect("record")
    }

    #[tokio::test]
    async fn a_registry_from_before_the_sub_device_index_gets_it_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.redb");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("file");
        let mut sub = record("p", "sub");
        sub.gateway = Some(record("p", "gw").id);
        {
            // As an older binary wrote it: the device table alone.
            let db = Database::create(&path).expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(DEVICES).expect("table");
                for r in [record("p", "gw"), sub.clone()] {
                    let key = (r.id.product_key.as_str(), r.id.device_key.as_str());
                    table.insert(key, encode(&r).as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let registry = RedbRegistry::open(&path).expect("open");
        let gw = record("p", "gw").id;
        assert_eq!(
            registry
                .a_sub_device_of(std::slice::from_ref(&gw))
                .await
                .expect("subs"),
            HashMap::from([(gw.clone(), sub.id.clone())])
        );
        let refused = registry
            .modify(vec![], Box::new(move |_| Ok(vec![Write::Delete(gw)])))
            .await;
        assert!(
            matches!(refused, Err(RegistryError::GatewayRules(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn modify_is_all_or_nothing_and_list_pages_in_key_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.redb");
        RedbRegistry::create(&path).expect("create");
        assert!(RedbRegistry::create(&path).is_err(), "never overwritten");
        let registry: Arc<dyn Registry> = Arc::new(RedbRegistry::open(&path).expect("open"));

        let mut sub = record("a-b", "x");
        sub.gateway = Some(record("a", "gw").id);
        let all = [
            record("a", "gw"),
            record("a", "z"),
            sub.clone(),
            record("b", "1"),
        ];
        let writes = all.iter().cloned().map(Write::Put).collect::<Vec<_>>();
        registry
            .modify(vec![], Box::new(move |_| Ok(writes)))
            .await
            .expect("import");

        // A failing change writes nothing, not even its first writes.
        let r = registry
            .modify(
                vec![record("a", "gw").id],
                Box::new(|current| {
                    assert!(current[0].is_some());
                    Err(RegistryError::refused("abort"))
                }),
            )
            .await;
        assert!(r.is_err());
        assert_eq!(registry.get(&sub.id).await.expect("get"), Some(sub.clone()));

        let page1 = registry.list(None, None, 2).await.expect("list");
        let keys: Vec<String> = page1.iter().map(|r| r.id.to_string()).collect();
        assert_eq!(keys, ["a/gw", "a/z"]);
        let page2 = registry
            .list(None, Some(&page1[1].id), 10)
            .await
            .expect("list");
        let keys: Vec<String> = page2.iter().map(|r| r.id.to_string()).collect();
        assert_eq!(keys, ["a-b/x", "b/1"]);
        let only_a = registry
            .list(Some(&ProductKey::new("a").expect("pk")), None, 10)
            .await
            .expect("list");
        assert_eq!(only_a.len(), 2);

        // Cached reads follow every commit.
        let mut changed = sub.clone();
        changed.enabled = false;
        changed.secret_version = 9;
        let put = changed.clone();
        registry
            .modify(vec![], Box::new(move |_| Ok(vec![Write::Put(put)])))
            .await
            .expect("change");
        assert_eq!(
            registry.get(&sub.id).await.expect("get"),
            Some(changed.clone())
        );
        let gone = sub.id.clone();
        registry
            .modify(vec![], Box::new(move |_| Ok(vec![Write::Delete(gone)])))
            .await
            .expect("delete");
        assert_eq!(registry.get(&sub.id).await.expect("get"), None);
        let back = sub.clone();
        registry
            .modify(vec![], Box::new(move |_| Ok(vec![Write::Put(back)])))
            .await
            .expect("put back");

        drop(registry);
        let reopened = RedbRegistry::open(&path).expect("reopen");
        assert_eq!(reopened.get(&sub.id).await.expect("get"), Some(sub));
    }
}
