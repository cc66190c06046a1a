//! [`PostgresRegistry`]: device records in a PostgreSQL database shared by
//! any number of stateless signer replicas.
//!
//! # Layout
//!
//! - `mod.rs`: the registry (get, list, modify) and connections.
//! - [`config`]: `[registry] kind = "postgres"`, password file, TLS.
//! - [`migrations`]: the embedded, versioned schema.
//! - `listener`: the LISTEN/NOTIFY change feed that keeps each replica's
//!   record cache and revoked set correct.
//! - `certificates`: the CA's records (migration 0005): single-use
//!   tokens, renewal, revocation, the CA row, the revoked set's reload.
//! - `enos_certificates`: which EnOS certificates each device holds
//!   (migration 0006), read from the table on every call.
//!
//! # Semantics (the same as redb's)
//!
//! [`Registry::modify`] is one transaction: it takes a transaction-scoped
//! advisory lock per requested id (in key order, so two changes never
//! deadlock; absent rows are locked too, which `FOR UPDATE` alone cannot
//! do), reads the rows `FOR UPDATE`, lets the change decide, writes, and
//! commits. Two replicas rotating one device at once are serialised: the
//! second sees the first's version and adds one.

mod certificates;
pub mod config;
mod enos_certificates;
mod gateway_rules;
mod listener;
pub mod migrations;

use std::{
    future::Future,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use enos_custody::SealedSecret;
use enos_sign_core::{DeviceKey, ProductKey};
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_postgres::{AsyncMessage, Client, Row, Socket, tls::MakeTlsConnect};

pub use config::PostgresConfig;
pub use listener::{FEED_PING_EVERY, FEED_PING_TIMEOUT, LISTEN_APPLICATION_NAME};

pub use self::config::{Connect, Tls};
use super::{
    Change, DeviceId, DeviceRecord, ProductChange, ProductRecord, ProductWrite, Registry, Write,
    certificates::{
        CaChange, CaRecord, CertificateRecord, EnrollTokenRecord, MergeCounts, RevokeTarget,
        RevokedSet,
    },
    enos_certificates::EnosCertificateRecord,
    record_cache::RecordCache,
};
use crate::error::{RegistryError, Result};

/// The registry over a PostgreSQL pool.
pub struct PostgresRegistry {
    /// Connections for reads and transactions.
    pool: Pool,
    /// The cache and whether the change feed keeps it correct.
    shared: Arc<Shared>,
    /// Whether reads use the cache at all (`registry.cache`).
    cache_enabled: bool,
    /// What the change feed connects with.
    connect: Connect,
    /// The change feed task, started on first use in the serving runtime;
    /// aborted when the registry goes.
    feed: OnceLock<JoinHandle<()>>,
}

/// What the registry and its change feed share.
struct Shared {
    /// Records already read.
    cache: RecordCache,
    /// True while the change feed is listening; the cache is used only
    /// then.
    feed_live: AtomicBool,
    /// The revoked serials, trusted only from a reload made while the
    /// feed listens until the feed reports a revocation or goes down.
    revoked: RevokedSet,
    /// Asks the feed for a reload of `revoked` after a revocation
    /// committed here: its notification may have been handled (and the
    /// set reloaded) before this replica marked the set stale.
    reload_revoked: tokio::sync::Notify,
}

impl Shared {
    /// A revocation was committed through this replica: answer from the
    /// database until the feed has reloaded the set (never add the
    /// serials ourselves).
    fn revoked_here(&self) {
        self.revoked.stale();
        self.reload_revoked.notify_one();
    }
}

/// Rows written per statement (arrays through `unnest`).
const BATCH: usize = 10_000;

/// The columns every read selects, in [`record_from_row`]'s order.
const COLUMNS: &str = "product_key, device_key, enabled, secret_version, sealed_scheme, sealed, \
                       gateway_product_key, gateway_device_key, created_at_ms, updated_at_ms";

impl PostgresRegistry {
    /// Applies the schema migrations this binary carries (`enos-signer
    /// init`); returns the versions applied.
    pub fn create(config: &PostgresConfig) -> Result<Vec<i32>> {
        let connect = config.connect()?;
        on_own_runtime(async {
            let mut session = Session::open(&connect.config, &connect.tls).await?;
            migrations::apply(&mut session.client).await
        })
        .map_err(|e| context(config, e))
    }

    /// Connects, refuses a database whose schema is not this binary's, and
    /// returns the registry (its pool connects on demand).
    pub fn open(config: &PostgresConfig) -> Result<Self> {
        let connect = config.connect()?;
        on_own_runtime(async {
            let session = Session::open(&connect.config, &connect.tls).await?;
            migrations::check(&session.client).await
        })
        .map_err(|e| context(config, e))?;
        tracing::info!(target = %config.display_target(), pool_size = config.pool_size, cache = config.cache, "registry: PostgreSQL");
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &connect.tls {
            Tls::None => Manager::from_config(
                connect.config.clone(),
                tokio_postgres::NoTls,
                manager_config,
            ),
            Tls::Rustls(tls) => {
                Manager::from_config(connect.config.clone(), tls.clone(), manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| RegistryError::Config(format!("registry pool: {e}")))?;
        Ok(PostgresRegistry {
            pool,
            shared: Arc::new(Shared {
                cache: RecordCache::new(),
                feed_live: AtomicBool::new(false),
                revoked: RevokedSet::new(std::collections::HashSet::new(), false),
                reload_revoked: tokio::sync::Notify::new(),
            }),
            cache_enabled: config.cache,
            connect,
            feed: OnceLock::new(),
        })
    }

    /// Whether reads are served from the cache right now (the change feed
    /// is up). For tests and health reporting.
    pub fn cache_live(&self) -> bool {
        self.cache_enabled && self.shared.feed_live.load(Ordering::Acquire)
    }

    /// Starts the change feed in the calling runtime, once.
    fn ensure_feed(&self) {
        if !self.cache_enabled {
            return;
        }
        self.feed.get_or_init(|| {
            tokio::spawn(listener::run(
                self.connect.config.clone(),
                self.connect.tls.clone(),
                Arc::clone(&self.shared),
            ))
        });
    }

    /// [`Self::ensure_feed`] from a synchronous caller (the TLS verifier)
    /// that may run outside a runtime: then the feed waits for the next
    /// async call.
    fn ensure_feed_if_in_runtime(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.ensure_feed();
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("postgres pool: {e}")))
    }
}

impl Drop for PostgresRegistry {
    fn drop(&mut self) {
        if let Some(feed) = self.feed.get() {
            feed.abort();
        }
    }
}

#[async_trait::async_trait]
impl Registry for PostgresRegistry {
    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        self.ensure_feed();
        let generation = if self.cache_live() {
            match self.shared.cache.lookup(id)? {
                Ok(record) => return Ok(Some(record)),
                Err(generation) => Some(generation),
            }
        } else {
            None
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM devices WHERE product_key = $1 AND device_key = $2"
            ))
            .await
            .map_err(db)?;
        let row = client
            .query_opt(
                &statement,
                &[&id.product_key.as_str(), &id.device_key.as_str()],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let record = record_from_row(&row)?;
        if let Some(generation) = generation {
            self.shared.cache.fill(generation, &record)?;
        }
        Ok(Some(record))
    }

    async fn list(
        &self,
        product: Option<&ProductKey>,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>> {
        // Keys are never empty: ("", "") is before every record, and
        // (p, "") before every record of product p.
        let (from_pk, from_dk) = match (after, product) {
            (Some(a), _) => (a.product_key.as_str(), a.device_key.as_str()),
            (None, Some(p)) => (p.as_str(), ""),
            (None, None) => ("", ""),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM devices \
                 WHERE (product_key, device_key) > ($1::text, $2::text) \
                   AND ($3::text IS NULL OR product_key = $3::text) \
                 ORDER BY product_key, device_key LIMIT $4"
            ))
            .await
            .map_err(db)?;
        let rows = client
            .query(
                &statement,
                &[&from_pk, &from_dk, &product.map(ProductKey::as_str), &limit],
            )
            .await
            .map_err(db)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn a_sub_device_of(
        &self,
        gateways: &[DeviceId],
    ) -> Result<std::collections::HashMap<DeviceId, DeviceId>> {
        let client = self.client().await?;
        gateway_rules::first_subs(&**client, gateways).await
    }

    async fn modify(&self, ids: Vec<DeviceId>, change: Change) -> Result<Vec<Write>> {
        self.ensure_feed();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        lock_ids(&tx, &ids).await?;
        let current = rows_for_update(&tx, &ids).await?;
        let read: std::collections::HashMap<DeviceId, Option<DeviceId>> = ids
            .into_iter()
            .zip(&current)
            .map(|(id, r)| (id, r.as_ref().and_then(|r| r.gateway.clone())))
            .collect();
        // A change seals secrets (CPU, or an HSM round trip): off the
        // async workers. On error the transaction is dropped: rolled back.
        let writes = tokio::task::spawn_blocking(move || change(current))
            .await
            .map_err(|e| RegistryError::Store(format!("registry change task failed: {e}")))??;
        let changes = gateway_rules::changes(&tx, read, &writes).await?;
        // Devices deleted or disabled: their certificates and tokens are
        // revoked in this transaction (rows locked before the writes).
        let ended = certificates::ending_devices(&tx, &writes).await?;
        write_all(&tx, &writes).await?;
        gateway_rules::check(&tx, &changes).await?;
        let revoked = certificates::revoke_ended(&tx, &ended, now_ms()).await?;
        tx.commit().await.map_err(db)?;
        if revoked > 0 {
            // Read through until the feed's reload has them.
            self.shared.revoked_here();
        }
        // Drop the written ids, never write our copy back: while the
        // COMMIT reply travelled, another replica may have committed a
        // newer record and a read here refilled the cache with it (issue
        // 23, finding 4). The next read of each id is one miss.
        self.shared.cache.committed(&writes)?;
        Ok(writes)
    }

    async fn get_product(&self, product: &ProductKey) -> Result<Option<ProductRecord>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {PRODUCT_COLUMNS} FROM product_secrets WHERE product_key = $1"
            ))
            .await
            .map_err(db)?;
        let row = client
            .query_opt(&statement, &[&product.as_str()])
            .await
            .map_err(db)?;
        row.as_ref().map(product_from_row).transpose()
    }

    async fn list_products(&self) -> Result<Vec<ProductRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {PRODUCT_COLUMNS} FROM product_secrets ORDER BY product_key"),
                &[],
            )
            .await
            .map_err(db)?;
        rows.iter().map(product_from_row).collect()
    }

    async fn modify_product(
        &self,
        product: ProductKey,
        change: ProductChange,
    ) -> Result<ProductWrite> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // A product without a row has nothing to lock FOR UPDATE: an
        // advisory lock serialises its creation too (another key space
        // than the devices': the name is hashed with a prefix).
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&product_lock_key(&product)],
        )
        .await
        .map_err(db)?;
        let current = tx
            .query_opt(
                &format!(
                    "SELECT {PRODUCT_COLUMNS} FROM product_secrets WHERE product_key = $1 FOR UPDATE"
                ),
                &[&product.as_str()],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(product_from_row)
            .transpose()?;
        let write = tokio::task::spawn_blocking(move || change(current))
            .await
            .map_err(|e| RegistryError::Store(format!("registry change task failed: {e}")))??;
        match &write {
            ProductWrite::Put(r) => {
                tx.execute(
                    &format!(
                        "INSERT INTO product_secrets ({PRODUCT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (product_key) DO UPDATE SET \
                           secret_version = EXCLUDED.secret_version, \
                           sealed_scheme = EXCLUDED.sealed_scheme, sealed = EXCLUDED.sealed, \
                           created_at_ms = EXCLUDED.created_at_ms, \
                           updated_at_ms = EXCLUDED.updated_at_ms"
                    ),
                    &[
                        &r.product_key.as_str(),
                        &i64::from(r.secret_version),
                        &r.sealed.scheme.as_str(),
                        &r.sealed.bytes.as_slice(),
                        &ms(r.created_at_ms),
                        &ms(r.updated_at_ms),
                    ],
                )
                .await
                .map_err(db)?;
            }
            ProductWrite::Delete(key) => {
                tx.execute(
                    "DELETE FROM product_secrets WHERE product_key = $1",
                    &[&key.as_str()],
                )
                .await
                .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(write)
    }

    async fn put_enroll_token(&self, token: EnrollTokenRecord) -> Result<()> {
        self.put_enroll_token_pg(token).await
    }

    async fn enroll_token(&self, hash: &[u8; 32]) -> Result<Option<EnrollTokenRecord>> {
        self.enroll_token_pg(hash).await
    }

    async fn enroll(
        &self,
        hash: &[u8; 32],
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()> {
        self.enroll_pg(hash, device, now_ms, cert).await
    }

    async fn revoke_enroll_tokens(&self, device: &DeviceId, now_ms: u64) -> Result<u32> {
        self.revoke_enroll_tokens_pg(device, now_ms).await
    }

    async fn renew(
        &self,
        old_serial: &str,
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()> {
        self.renew_pg(old_serial, device, now_ms, cert).await
    }

    async fn revoke_certificates(
        &self,
        target: RevokeTarget,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<CertificateRecord>> {
        self.revoke_certificates_pg(target, reason, now_ms).await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        self.certificate_pg(serial).await
    }

    async fn certificates_of(&self, device: &DeviceId) -> Result<Vec<CertificateRecord>> {
        self.certificates_of_pg(device).await
    }

    async fn revoked_certificates(&self, now_ms: u64) -> Result<Vec<CertificateRecord>> {
        self.revoked_certificates_pg(now_ms).await
    }

    async fn count_expiring(&self, now_ms: u64, within_ms: u64) -> Result<u64> {
        self.count_expiring_pg(now_ms, within_ms).await
    }

    async fn is_revoked(&self, serial: &str) -> Result<bool> {
        self.is_revoked_pg(serial).await
    }

    fn revoked_cached(&self, serial: &str) -> Option<bool> {
        self.revoked_cached_pg(serial)
    }

    fn revocation_generation(&self) -> u64 {
        self.ensure_feed_if_in_runtime();
        self.shared.revoked.generation()
    }

    fn change_feed_up(&self) -> Option<bool> {
        // The feed starts with the first read that needs it: until then
        // there is no feed to be down (an idle replica must not look like
        // one whose feed broke).
        self.feed.get().map(|_| self.cache_live())
    }

    async fn get_ca(&self) -> Result<Option<CaRecord>> {
        self.get_ca_pg().await
    }

    async fn modify_ca(&self, change: CaChange) -> Result<CaRecord> {
        self.modify_ca_pg(change).await
    }

    async fn list_certificates(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>> {
        self.list_certificates_pg(after, limit).await
    }

    async fn list_enroll_tokens(
        &self,
        after: Option<&[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<EnrollTokenRecord>> {
        self.list_enroll_tokens_pg(after, limit).await
    }

    async fn merge_certificates(&self, certs: Vec<CertificateRecord>) -> Result<MergeCounts> {
        self.merge_certificates_pg(certs).await
    }

    async fn merge_enroll_tokens(&self, tokens: Vec<EnrollTokenRecord>) -> Result<MergeCounts> {
        self.merge_enroll_tokens_pg(tokens).await
    }

    async fn record_enos_certificate(
        &self,
        cert: EnosCertificateRecord,
        supersedes: Option<String>,
    ) -> Result<()> {
        self.record_enos_certificate_pg(cert, supersedes).await
    }

    async fn revoke_enos_certificate(
        &self,
        device: &DeviceId,
        cert_sn: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<EnosCertificateRecord>> {
        self.revoke_enos_certificate_pg(device, cert_sn, reason, now_ms)
            .await
    }

    async fn enos_certificates_of(&self, device: &DeviceId) -> Result<Vec<EnosCertificateRecord>> {
        self.enos_certificates_of_pg(device).await
    }

    async fn list_enos_certificates(
        &self,
        after: Option<&(DeviceId, String)>,
        limit: usize,
    ) -> Result<Vec<EnosCertificateRecord>> {
        self.list_enos_certificates_pg(after, limit).await
    }

    async fn merge_enos_certificates(
        &self,
        certs: Vec<EnosCertificateRecord>,
    ) -> Result<MergeCounts> {
        self.merge_enos_certificates_pg(certs).await
    }
}

/// The columns of a product read, in [`product_from_row`]'s order.
const PRODUCT_COLUMNS: &str =
    "product_key, secret_version, sealed_scheme, sealed, created_at_ms, updated_at_ms";

/// The advisory lock key of a product's record (see [`lock_key`]).
fn product_lock_key(product: &ProductKey) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"product:")
        .chain_update(product.as_str())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

fn product_from_row(row: &Row) -> Result<ProductRecord> {
    let pk: &str = row.try_get(0).map_err(db)?;
    let corrupt = |what: &str| RegistryError::Store(format!("product record {pk}: {what}"));
    let version: i64 = row.try_get(1).map_err(db)?;
    let created: i64 = row.try_get(4).map_err(db)?;
    let updated: i64 = row.try_get(5).map_err(db)?;
    Ok(ProductRecord {
        product_key: ProductKey::new(pk).map_err(|_| corrupt("bad productKey"))?,
        secret_version: u32::try_from(version).map_err(|_| corrupt("bad secret_version"))?,
        sealed: SealedSecret {
            scheme: row.try_get(2).map_err(db)?,
            bytes: row.try_get(3).map_err(db)?,
        },
        created_at_ms: u64::try_from(created).unwrap_or(0),
        updated_at_ms: u64::try_from(updated).unwrap_or(0),
    })
}

/// Takes the advisory lock of every id, in key order (no deadlock between
/// two changes); held until the transaction ends. A bulk change (an
/// import) locks the table instead: PostgreSQL's lock table holds a few
/// thousand locks, and one lock serialises the bulk change with every
/// other writer just as well (`EXCLUSIVE` still lets plain reads, i.e.
/// issuance, through; it blocks the `FOR UPDATE` of other changes).
async fn lock_ids(tx: &tokio_postgres::Transaction<'_>, ids: &[DeviceId]) -> Result<()> {
    if ids.len() > BULK_LOCK_FROM {
        tx.batch_execute("LOCK TABLE devices IN EXCLUSIVE MODE")
            .await
            .map_err(db)?;
        return Ok(());
    }
    let mut keys: Vec<i64> = ids.iter().map(lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) WITH ORDINALITY AS u(k, n) ORDER BY n",
        &[&keys],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Changes naming more ids than this lock the whole table.
const BULK_LOCK_FROM: usize = 64;

/// The advisory lock key of a device: 64 bits of SHA-256 of `pk/dk`,
/// the same in every replica (a collision only serialises two devices).
fn lock_key(id: &DeviceId) -> i64 {
    let digest = Sha256::new()
        .chain_update(id.product_key.as_str())
        .chain_update(b"/")
        .chain_update(id.device_key.as_str())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The current rows of `ids`, locked, in request order.
async fn rows_for_update(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &[DeviceId],
) -> Result<Vec<Option<DeviceRecord>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let pks: Vec<&str> = ids.iter().map(|id| id.product_key.as_str()).collect();
    let dks: Vec<&str> = ids.iter().map(|id| id.device_key.as_str()).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM devices \
                 WHERE (product_key, device_key) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
                 FOR UPDATE"
            ),
            &[&pks, &dks],
        )
        .await
        .map_err(db)?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let record = record_from_row(row)?;
        found.insert(record.id.clone(), record);
    }
    Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
}

/// Applies `writes` in order, consecutive writes of one kind batched.
async fn write_all(tx: &tokio_postgres::Transaction<'_>, writes: &[Write]) -> Result<()> {
    let mut rest = writes;
    while !rest.is_empty() {
        // A batch: writes of one kind, distinct ids (an upsert may not
        // touch a row twice in one statement), at most BATCH.
        let put = matches!(rest[0], Write::Put(_));
        let mut seen = std::collections::HashSet::new();
        let len = rest
            .iter()
            .take(BATCH)
            .take_while(|w| {
                let id = match w {
                    Write::Put(r) => &r.id,
                    Write::Delete(id) => id,
                };
                matches!(w, Write::Put(_)) == put && seen.insert(id)
            })
            .count();
        let (batch, tail) = rest.split_at(len);
        if put {
            upsert(tx, batch).await?;
        } else {
            delete(tx, batch).await?;
        }
        rest = tail;
    }
    Ok(())
}

async fn upsert(tx: &tokio_postgres::Transaction<'_>, batch: &[Write]) -> Result<()> {
    let records: Vec<&DeviceRecord> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Put(r) => Some(r),
            Write::Delete(_) => None,
        })
        .collect();
    let pk: Vec<&str> = records.iter().map(|r| r.id.product_key.as_str()).collect();
    let dk: Vec<&str> = records.iter().map(|r| r.id.device_key.as_str()).collect();
    let enabled: Vec<bool> = records.iter().map(|r| r.enabled).collect();
    let version: Vec<i64> = records
        .iter()
        .map(|r| i64::from(r.secret_version))
        .collect();
    let scheme: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.sealed.as_ref().map(|s| s.scheme.as_str()))
        .collect();
    let sealed: Vec<Option<&[u8]>> = records
        .iter()
        .map(|r| r.sealed.as_ref().map(|s| s.bytes.as_slice()))
        .collect();
    let gw_pk: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.gateway.as_ref().map(|g| g.product_key.as_str()))
        .collect();
    let gw_dk: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.gateway.as_ref().map(|g| g.device_key.as_str()))
        .collect();
    let created: Vec<i64> = records.iter().map(|r| ms(r.created_at_ms)).collect();
    let updated: Vec<i64> = records.iter().map(|r| ms(r.updated_at_ms)).collect();
    tx.execute(
        &format!(
            "INSERT INTO devices ({COLUMNS}) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[], $5::text[], \
                                  $6::bytea[], $7::text[], $8::text[], $9::bigint[], $10::bigint[]) \
             ON CONFLICT (product_key, device_key) DO UPDATE SET \
               enabled = EXCLUDED.enabled, secret_version = EXCLUDED.secret_version, \
               sealed_scheme = EXCLUDED.sealed_scheme, sealed = EXCLUDED.sealed, \
               gateway_product_key = EXCLUDED.gateway_product_key, \
               gateway_device_key = EXCLUDED.gateway_device_key, \
               created_at_ms = EXCLUDED.created_at_ms, updated_at_ms = EXCLUDED.updated_at_ms"
        ),
        &[
            &pk, &dk, &enabled, &version, &scheme, &sealed, &gw_pk, &gw_dk, &created, &updated,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

async fn delete(tx: &tokio_postgres::Transaction<'_>, batch: &[Write]) -> Result<()> {
    let ids: Vec<&DeviceId> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Delete(id) => Some(id),
            Write::Put(_) => None,
        })
        .collect();
    let pk: Vec<&str> = ids.iter().map(|id| id.product_key.as_str()).collect();
    let dk: Vec<&str> = ids.iter().map(|id| id.device_key.as_str()).collect();
    tx.execute(
        "DELETE FROM devices WHERE (product_key, device_key) IN \
         (SELECT * FROM unnest($1::text[], $2::text[]))",
        &[&pk, &dk],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Now, in unix milliseconds (for the revocations a device change makes,
/// which carries no time of its own).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds as PostgreSQL's bigint (times before 2^63 ms).
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A device id from two text columns of `row`.
fn id_from(row: &Row, pk: usize, dk: usize) -> Result<DeviceId> {
    device_id(row.try_get(pk).map_err(db)?, row.try_get(dk).map_err(db)?)
}

/// A device id read back from the database.
fn device_id(pk: &str, dk: &str) -> Result<DeviceId> {
    let corrupt = || RegistryError::Store(format!("bad device id {pk}/{dk} in the database"));
    Ok(DeviceId::new(
        ProductKey::new(pk).map_err(|_| corrupt())?,
        DeviceKey::new(dk).map_err(|_| corrupt())?,
    ))
}

fn record_from_row(row: &Row) -> Result<DeviceRecord> {
    let pk: &str = row.try_get(0).map_err(db)?;
    let dk: &str = row.try_get(1).map_err(db)?;
    let corrupt = |what: &str| RegistryError::Store(format!("record {pk}/{dk}: {what}"));
    let id = DeviceId::new(
        ProductKey::new(pk).map_err(|_| corrupt("bad productKey"))?,
        DeviceKey::new(dk).map_err(|_| corrupt("bad deviceKey"))?,
    );
    let version: i64 = row.try_get(3).map_err(db)?;
    let gw_pk: Option<&str> = row.try_get(6).map_err(db)?;
    let gw_dk: Option<&str> = row.try_get(7).map_err(db)?;
    let gateway = match (gw_pk, gw_dk) {
        (Some(gpk), Some(gdk)) => Some(DeviceId::new(
            ProductKey::new(gpk).map_err(|_| corrupt("bad gateway productKey"))?,
            DeviceKey::new(gdk).map_err(|_| corrupt("bad gateway deviceKey"))?,
        )),
        _ => None,
    };
    let created: i64 = row.try_get(8).map_err(db)?;
    let updated: i64 = row.try_get(9).map_err(db)?;
    Ok(DeviceRecord {
        enabled: row.try_get(2).map_err(db)?,
        secret_version: u32::try_from(version).map_err(|_| corrupt("bad secret_version"))?,
        sealed: match (
            row.try_get::<_, Option<String>>(4).map_err(db)?,
            row.try_get::<_, Option<Vec<u8>>>(5).map_err(db)?,
        ) {
            (Some(scheme), Some(bytes)) => Some(SealedSecret { scheme, bytes }),
            _ => None,
        },
        gateway,
        created_at_ms: u64::try_from(created).unwrap_or(0),
        updated_at_ms: u64::try_from(updated).unwrap_or(0),
        id,
    })
}

/// A database error as a registry error (the server's message, never a
/// parameter value: statements carry sealed secrets only as parameters).
pub fn db(e: tokio_postgres::Error) -> RegistryError {
    let message = format!("postgres: {}", db_message(&e));
    if is_transient(&e) {
        RegistryError::Unavailable(message)
    } else {
        RegistryError::Store(message)
    }
}

/// Whether `e` says the database is out of reach for now rather than that
/// something is wrong: a retry (the pool reconnects) may succeed.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        Some(d) => {
            let code = d.code().code();
            // 08: connection exception; 53: insufficient resources (too
            // many connections); 57P: the server shutting down or not yet
            // accepting; 40001/40P01: serialization failure or deadlock
            // left after our retries; 25006: a standby after a failover.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || matches!(code, "40001" | "40P01" | "25006")
        }
        // No answer from the server: an I/O error or a timeout.
        None => {
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if s.is::<std::io::Error>() {
                    return true;
                }
                source = s.source();
            }
            false
        }
    }
}

/// The most useful line of a driver error.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Names the database in a connection or schema error.
fn context(config: &PostgresConfig, e: RegistryError) -> RegistryError {
    match e {
        RegistryError::Store(m) => {
            RegistryError::Store(format!("{}: {m}", config.display_target()))
        }
        RegistryError::Unavailable(m) => {
            RegistryError::Unavailable(format!("{}: {m}", config.display_target()))
        }
        RegistryError::Config(m) => {
            RegistryError::Config(format!("{}: {m}", config.display_target()))
        }
        other => other,
    }
}

/// One connection outside the pool, its asynchronous messages
/// (notifications) forwarded to `messages`.
pub struct Session {
    /// Runs queries.
    pub client: Client,
    /// Notifications and notices; an error or the end means the
    /// connection is gone.
    messages: mpsc::UnboundedReceiver<std::result::Result<AsyncMessage, tokio_postgres::Error>>,
    /// Drives the connection; aborted with the session.
    driver: JoinHandle<()>,
}

impl Session {
    /// Connects in the calling runtime.
    pub async fn open(config: &tokio_postgres::Config, tls: &Tls) -> Result<Session> {
        match tls {
            Tls::None => Self::open_with(config, tokio_postgres::NoTls).await,
            Tls::Rustls(tls) => Self::open_with(config, tls.clone()).await,
        }
    }

    async fn open_with<T>(config: &tokio_postgres::Config, tls: T) -> Result<Session>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, mut connection) = config.connect(tls).await.map_err(db)?;
        let (sender, messages) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                let failed = message.is_err();
                if sender.send(message).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Session {
            client,
            messages,
            driver,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Runs `future` to completion on a runtime of its own, on a thread of its
/// own: for the synchronous `open` and `create`, which may be called from
/// async code (whose runtime must not be blocked on itself).
fn on_own_runtime<T: Send>(future: impl Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| RegistryError::Store(format!("runtime: {e}")))?
                    .block_on(future)
            })
            .join()
            .map_err(|_| RegistryError::Store("registry connection thread panicked".into()))?
    })
}
