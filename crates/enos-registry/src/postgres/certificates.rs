//! The CA's records in PostgreSQL (migration 0005): certificates,
//! enrollment tokens, the CA row, and the replica's revoked set.
//!
//! A token is used by one conditional `UPDATE … RETURNING` (unused,
//! unrevoked, unexpired, of this device): of two replicas enrolling with
//! it at once, the second waits on the row and finds it used. Enrollment
//! and renewal read their device row `FOR SHARE` first, so a concurrent
//! disable or delete (which revokes in its own transaction) is ordered
//! before or after them, never between; rows are always locked device
//! first, then tokens or certificates, as `modify` does.
//!
//! The revoked set is trusted only from a reload made while the change
//! feed listens (`listener`), until a revocation is committed here or
//! reported by the feed, or the feed goes down; meanwhile `is_revoked`
//! reads the row.

use std::collections::{HashMap, HashSet};

use tokio_postgres::{GenericClient, Row, Transaction};

use super::{PostgresRegistry, db, id_from, ms};
use crate::{
    DeviceId, Write,
    certificates::{
        self, CaChange, CaRecord, CertificateRecord, CertificateRefusal, EnrollTokenRecord,
        MergeCounts, REASON_DEVICE_DELETED, REASON_DEVICE_DISABLED, Revocation, RevokeTarget,
        RevokedSet,
    },
    error::{RegistryError, Result},
};
use enos_custody::StoredCaKey;

/// The columns of a certificate read, in [`cert_from_row`]'s order.
pub(super) const CERT_COLUMNS: &str = "serial, product_key, device_key, not_before_ms, \
    not_after_ms, issued_at_ms, revoked_at_ms, revoked_reason, renewed_by";
/// The columns of a token read, in [`token_from_row`]'s order.
pub(super) const TOKEN_COLUMNS: &str =
    "hash, product_key, device_key, created_at_ms, expires_at_ms, used_at_ms, revoked_at_ms";
/// The columns of the CA row, in [`ca_from_row`]'s order.
const CA_COLUMNS: &str =
    "key_scheme, key_bytes, key_public_der, chain_der, pending_csr_der, created_at_ms";
/// The advisory lock that serialises changes of the CA row (absent at
/// first, so `FOR UPDATE` alone cannot): "enos" "ca" in ASCII.
const CA_LOCK_KEY: i64 = 0x656e_6f73_0000_6361;

/// Milliseconds read back (never negative as written).
fn from_ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(super) fn cert_from_row(row: &Row) -> Result<CertificateRecord> {
    let revoked_at: Option<i64> = row.try_get(6).map_err(db)?;
    let reason: Option<String> = row.try_get(7).map_err(db)?;
    Ok(CertificateRecord {
        serial: row.try_get(0).map_err(db)?,
        device: id_from(row, 1, 2)?,
        not_before_ms: from_ms(row.try_get(3).map_err(db)?),
        not_after_ms: from_ms(row.try_get(4).map_err(db)?),
        issued_at_ms: from_ms(row.try_get(5).map_err(db)?),
        revoked: revoked_at.map(|at| Revocation {
            at_ms: from_ms(at),
            reason: reason.unwrap_or_default(),
        }),
        renewed_by: row.try_get(8).map_err(db)?,
    })
}

pub(super) fn token_from_row(row: &Row) -> Result<EnrollTokenRecord> {
    let hash: &[u8] = row.try_get(0).map_err(db)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| RegistryError::Store("an enrollment token hash is not 32 bytes".into()))?;
    let used: Option<i64> = row.try_get(5).map_err(db)?;
    let revoked: Option<i64> = row.try_get(6).map_err(db)?;
    Ok(EnrollTokenRecord {
        hash,
        device: id_from(row, 1, 2)?,
        created_at_ms: from_ms(row.try_get(3).map_err(db)?),
        expires_at_ms: from_ms(row.try_get(4).map_err(db)?),
        used_at_ms: used.map(from_ms),
        revoked_at_ms: revoked.map(from_ms),
    })
}

fn ca_from_row(row: &Row) -> Result<CaRecord> {
    Ok(CaRecord {
        key: StoredCaKey {
            scheme: row.try_get(0).map_err(db)?,
            bytes: row.try_get(1).map_err(db)?,
            public_key_der: row.try_get(2).map_err(db)?,
        },
        chain_der: row.try_get(3).map_err(db)?,
        pending_csr_der: row.try_get(4).map_err(db)?,
        created_at_ms: from_ms(row.try_get(5).map_err(db)?),
    })
}

/// Whether `device` is registered and enabled, its row locked `FOR
/// SHARE` until the transaction ends (a disable or delete waits).
async fn device_enabled_locked(tx: &Transaction<'_>, device: &DeviceId) -> Result<Option<bool>> {
    let row = tx
        .query_opt(
            "SELECT enabled FROM devices WHERE product_key = $1 AND device_key = $2 FOR SHARE",
            &[&device.product_key.as_str(), &device.device_key.as_str()],
        )
        .await
        .map_err(db)?;
    row.map(|r| r.try_get(0).map_err(db)).transpose()
}

/// Records a new certificate; a serial recorded already is refused.
pub(super) async fn insert_certificate(
    client: &Transaction<'_>,
    cert: &CertificateRecord,
) -> Result<()> {
    let inserted = client
        .execute(
            &format!(
                "INSERT INTO certificates ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (serial) DO NOTHING"
            ),
            &[
                &cert.serial,
                &cert.device.product_key.as_str(),
                &cert.device.device_key.as_str(),
                &ms(cert.not_before_ms),
                &ms(cert.not_after_ms),
                &ms(cert.issued_at_ms),
                &cert.revoked.as_ref().map(|r| ms(r.at_ms)),
                &cert.revoked.as_ref().map(|r| r.reason.as_str()),
                &cert.renewed_by,
            ],
        )
        .await
        .map_err(db)?;
    if inserted == 0 {
        return Err(RegistryError::Store(format!(
            "certificate serial {} is recorded already",
            cert.serial
        )));
    }
    Ok(())
}

/// Writes a token; one with this hash already is refused (the message
/// names no hash).
pub(super) async fn insert_token(
    client: &Transaction<'_>,
    token: &EnrollTokenRecord,
) -> Result<()> {
    let inserted = client
        .execute(
            &format!(
                "INSERT INTO enroll_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (hash) DO NOTHING"
            ),
            &[
                &token.hash.as_slice(),
                &token.device.product_key.as_str(),
                &token.device.device_key.as_str(),
                &ms(token.created_at_ms),
                &ms(token.expires_at_ms),
                &token.used_at_ms.map(ms),
                &token.revoked_at_ms.map(ms),
            ],
        )
        .await
        .map_err(db)?;
    if inserted == 0 {
        return Err(RegistryError::Store(format!(
            "an enrollment token for {} with this hash exists already",
            token.device
        )));
    }
    Ok(())
}

/// Inside `modify`'s transaction, before its writes: which devices the
/// writes delete or turn from enabled to disabled (their rows locked),
/// with the reason, following the writes in order.
pub(super) async fn ending_devices(
    tx: &Transaction<'_>,
    writes: &[Write],
) -> Result<Vec<(DeviceId, &'static str)>> {
    let candidates: Vec<&DeviceId> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Put(r) if !r.enabled => Some(&r.id),
            Write::Put(_) => None,
            Write::Delete(id) => Some(id),
        })
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let pk: Vec<&str> = candidates
        .iter()
        .map(|id| id.product_key.as_str())
        .collect();
    let dk: Vec<&str> = candidates.iter().map(|id| id.device_key.as_str()).collect();
    let rows = tx
        .query(
            "SELECT product_key, device_key, enabled FROM devices \
             WHERE (product_key, device_key) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
             FOR UPDATE",
            &[&pk, &dk],
        )
        .await
        .map_err(db)?;
    // The state of each device as the writes go: None = absent.
    let mut state: HashMap<DeviceId, Option<bool>> = HashMap::new();
    for row in &rows {
        state.insert(id_from(row, 0, 1)?, Some(row.try_get(2).map_err(db)?));
    }
    let mut ended: Vec<(DeviceId, &'static str)> = Vec::new();
    for write in writes {
        match write {
            Write::Put(r) => {
                let before = state.get(&r.id).copied().flatten();
                if before == Some(true) && !r.enabled {
                    ended.push((r.id.clone(), REASON_DEVICE_DISABLED));
                }
                state.insert(r.id.clone(), Some(r.enabled));
            }
            Write::Delete(id) => {
                if state.get(id).copied().flatten().is_some() {
                    ended.push((id.clone(), REASON_DEVICE_DELETED));
                }
                state.insert(id.clone(), None);
            }
        }
    }
    // A device ended twice in one change: the first reason stands.
    let mut seen = HashSet::new();
    ended.retain(|(id, _)| seen.insert(id.clone()));
    Ok(ended)
}

/// Revokes the ended devices' unexpired certificates and unused tokens in
/// `modify`'s transaction; returns how many certificates.
pub(super) async fn revoke_ended(
    tx: &Transaction<'_>,
    ended: &[(DeviceId, &'static str)],
    now_ms: u64,
) -> Result<u64> {
    if ended.is_empty() {
        return Ok(0);
    }
    let pk: Vec<&str> = ended
        .iter()
        .map(|(id, _)| id.product_key.as_str())
        .collect();
    let dk: Vec<&str> = ended.iter().map(|(id, _)| id.device_key.as_str()).collect();
    let reason: Vec<&str> = ended.iter().map(|(_, r)| *r).collect();
    let certificates = tx
        .execute(
            "UPDATE certificates c SET revoked_at_ms = $4, revoked_reason = e.reason \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS e(pk, dk, reason) \
             WHERE c.product_key = e.pk AND c.device_key = e.dk \
               AND c.revoked_at_ms IS NULL AND c.not_after_ms > $4",
            &[&pk, &dk, &reason, &ms(now_ms)],
        )
        .await
        .map_err(db)?;
    tx.execute(
        "UPDATE enroll_tokens t SET revoked_at_ms = $3 \
         FROM unnest($1::text[], $2::text[]) AS e(pk, dk) \
         WHERE t.product_key = e.pk AND t.device_key = e.dk \
           AND t.used_at_ms IS NULL AND t.revoked_at_ms IS NULL",
        &[&pk, &dk, &ms(now_ms)],
    )
    .await
    .map_err(db)?;
    Ok(certificates)
}

/// Reads every revoked serial and installs it in `revoked` unless a
/// revocation was reported meanwhile (then the next reload will).
pub(super) async fn reload_revoked(
    client: &impl GenericClient,
    revoked: &RevokedSet,
) -> Result<bool> {
    let read_at = revoked.generation();
    let rows = client
        .query(
            "SELECT serial FROM certificates WHERE revoked_at_ms IS NOT NULL",
            &[],
        )
        .await
        .map_err(db)?;
    let serials = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0).map_err(db))
        .collect::<Result<HashSet<String>>>()?;
    Ok(revoked.install(read_at, serials))
}

impl PostgresRegistry {
    pub(super) async fn put_enroll_token_pg(&self, token: EnrollTokenRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        if device_enabled_locked(&tx, &token.device).await?.is_none() {
            return Err(CertificateRefusal::DeviceUnknown.into());
        }
        insert_token(&tx, &token).await?;
        tx.commit().await.map_err(db)
    }

    pub(super) async fn enroll_token_pg(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<EnrollTokenRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM enroll_tokens WHERE hash = $1"),
                &[&hash.as_slice()],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub(super) async fn enroll_pg(
        &self,
        hash: &[u8; 32],
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let enabled = device_enabled_locked(&tx, device).await?;
        // The single use: of two transactions here, the second waits for
        // the first's commit, re-reads the row and matches nothing.
        let used = tx
            .query_opt(
                "UPDATE enroll_tokens SET used_at_ms = $4 \
                 WHERE hash = $1 AND product_key = $2 AND device_key = $3 \
                   AND used_at_ms IS NULL AND revoked_at_ms IS NULL AND expires_at_ms > $4 \
                 RETURNING hash",
                &[
                    &hash.as_slice(),
                    &device.product_key.as_str(),
                    &device.device_key.as_str(),
                    &ms(now_ms),
                ],
            )
            .await
            .map_err(db)?;
        if used.is_none() {
            // Why not, for the caller (rolled back: nothing written).
            let row = tx
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM enroll_tokens WHERE hash = $1"),
                    &[&hash.as_slice()],
                )
                .await
                .map_err(db)?;
            let token = row
                .as_ref()
                .map(token_from_row)
                .transpose()?
                .ok_or(CertificateRefusal::TokenUnknown)?;
            certificates::check_token(&token, device, now_ms)?;
            return Err(RegistryError::Unavailable(
                "the enrollment token changed during the enrollment; retry".into(),
            ));
        }
        certificates::check_device(enabled)?;
        insert_certificate(&tx, &cert).await?;
        tx.commit().await.map_err(db)
    }

    pub(super) async fn revoke_enroll_tokens_pg(
        &self,
        device: &DeviceId,
        now_ms: u64,
    ) -> Result<u32> {
        let client = self.client().await?;
        let revoked = client
            .execute(
                "UPDATE enroll_tokens SET revoked_at_ms = $3 \
                 WHERE product_key = $1 AND device_key = $2 \
                   AND used_at_ms IS NULL AND revoked_at_ms IS NULL",
                &[
                    &device.product_key.as_str(),
                    &device.device_key.as_str(),
                    &ms(now_ms),
                ],
            )
            .await
            .map_err(db)?;
        Ok(u32::try_from(revoked).unwrap_or(u32::MAX))
    }

    pub(super) async fn renew_pg(
        &self,
        old_serial: &str,
        device: &DeviceId,
        now_ms: u64,
        cert: CertificateRecord,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let enabled = device_enabled_locked(&tx, device).await?;
        let old = tx
            .query_opt(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1 FOR UPDATE"),
                &[&old_serial],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(cert_from_row)
            .transpose()?
            .ok_or(CertificateRefusal::CertificateUnknown)?;
        certificates::check_renewal(&old, device, now_ms)?;
        certificates::check_device(enabled)?;
        tx.execute(
            "UPDATE certificates SET renewed_by = $2 WHERE serial = $1",
            &[&old_serial, &cert.serial],
        )
        .await
        .map_err(db)?;
        insert_certificate(&tx, &cert).await?;
        tx.commit().await.map_err(db)
    }

    pub(super) async fn revoke_certificates_pg(
        &self,
        target: RevokeTarget,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<CertificateRecord>> {
        self.ensure_feed();
        let client = self.client().await?;
        let rows = match &target {
            RevokeTarget::Serial(serial) => {
                let rows = client
                    .query(
                        &format!(
                            "UPDATE certificates SET revoked_at_ms = $2, revoked_reason = $3 \
                             WHERE serial = $1 AND revoked_at_ms IS NULL RETURNING {CERT_COLUMNS}"
                        ),
                        &[serial, &ms(now_ms), &reason],
                    )
                    .await
                    .map_err(db)?;
                if rows.is_empty() && self.certificate_pg(serial).await?.is_none() {
                    return Err(CertificateRefusal::CertificateUnknown.into());
                }
                rows
            }
            RevokeTarget::Device(device) => client
                .query(
                    &format!(
                        "UPDATE certificates SET revoked_at_ms = $3, revoked_reason = $4 \
                         WHERE product_key = $1 AND device_key = $2 \
                           AND revoked_at_ms IS NULL AND not_after_ms > $3 \
                         RETURNING {CERT_COLUMNS}"
                    ),
                    &[
                        &device.product_key.as_str(),
                        &device.device_key.as_str(),
                        &ms(now_ms),
                        &reason,
                    ],
                )
                .await
                .map_err(db)?,
        };
        let mut revoked = rows.iter().map(cert_from_row).collect::<Result<Vec<_>>>()?;
        if !revoked.is_empty() {
            // Committed: stop answering from memory here until the feed's
            // reload (never add the serials ourselves).
            self.shared.revoked_here();
        }
        revoked.sort_by(|a, b| a.serial.cmp(&b.serial));
        Ok(revoked)
    }

    pub(super) async fn certificate_pg(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"),
                &[&serial],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(cert_from_row).transpose()
    }

    pub(super) async fn certificates_of_pg(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<CertificateRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CERT_COLUMNS} FROM certificates \
                     WHERE product_key = $1 AND device_key = $2 \
                     ORDER BY issued_at_ms DESC, serial DESC"
                ),
                &[&device.product_key.as_str(), &device.device_key.as_str()],
            )
            .await
            .map_err(db)?;
        rows.iter().map(cert_from_row).collect()
    }

    pub(super) async fn revoked_certificates_pg(
        &self,
        now_ms: u64,
    ) -> Result<Vec<CertificateRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CERT_COLUMNS} FROM certificates \
                     WHERE revoked_at_ms IS NOT NULL AND not_after_ms > $1 ORDER BY serial"
                ),
                &[&ms(now_ms)],
            )
            .await
            .map_err(db)?;
        rows.iter().map(cert_from_row).collect()
    }

    pub(super) async fn count_expiring_pg(&self, now_ms: u64, within_ms: u64) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM certificates \
                 WHERE revoked_at_ms IS NULL AND renewed_by IS NULL \
                   AND not_after_ms > $1 AND not_after_ms <= $2",
                &[&ms(now_ms), &ms(now_ms.saturating_add(within_ms))],
            )
            .await
            .map_err(db)?;
        let count: i64 = row.try_get(0).map_err(db)?;
        Ok(from_ms(count))
    }

    pub(super) async fn is_revoked_pg(&self, serial: &str) -> Result<bool> {
        self.ensure_feed();
        if let Some(revoked) = self.shared.revoked.lookup(serial) {
            return Ok(revoked);
        }
        // The set cannot be trusted now: the row decides.
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT revoked_at_ms IS NOT NULL FROM certificates WHERE serial = $1",
                &[&serial],
            )
            .await
            .map_err(db)?;
        Ok(match row {
            Some(row) => row.try_get(0).map_err(db)?,
            None => false,
        })
    }

    pub(super) fn revoked_cached_pg(&self, serial: &str) -> Option<bool> {
        self.ensure_feed_if_in_runtime();
        self.shared.revoked.lookup(serial)
    }

    pub(super) async fn list_certificates_pg(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CERT_COLUMNS} FROM certificates \
                     WHERE ($1::text IS NULL OR serial > $1::text) ORDER BY serial LIMIT $2"
                ),
                &[&after, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(db)?;
        rows.iter().map(cert_from_row).collect()
    }

    pub(super) async fn list_enroll_tokens_pg(
        &self,
        after: Option<&[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<EnrollTokenRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM enroll_tokens \
                     WHERE ($1::bytea IS NULL OR hash > $1::bytea) ORDER BY hash LIMIT $2"
                ),
                &[
                    &after.map(|a| a.as_slice()),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db)?;
        rows.iter().map(token_from_row).collect()
    }

    pub(super) async fn merge_certificates_pg(
        &self,
        incoming: Vec<CertificateRecord>,
    ) -> Result<MergeCounts> {
        self.ensure_feed();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let serials: Vec<&str> = incoming.iter().map(|c| c.serial.as_str()).collect();
        let rows = tx
            .query(
                &format!(
                    "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ANY($1) FOR UPDATE"
                ),
                &[&serials],
            )
            .await
            .map_err(db)?;
        let mut existing = HashMap::with_capacity(rows.len());
        for row in &rows {
            let cert = cert_from_row(row)?;
            existing.insert(cert.serial.clone(), cert);
        }
        let mut counts = MergeCounts::default();
        let mut revoked = false;
        for cert in incoming {
            let current = existing.get(&cert.serial);
            let Some(write) = certificates::merge_certificate(current, cert, &mut counts)? else {
                continue;
            };
            revoked |= write.revoked.is_some() && current.is_none_or(|c| c.revoked.is_none());
            if current.is_none() {
                insert_certificate(&tx, &write).await?;
            } else {
                tx.execute(
                    "UPDATE certificates SET revoked_at_ms = $2, revoked_reason = $3, \
                     renewed_by = $4 WHERE serial = $1",
                    &[
                        &write.serial,
                        &write.revoked.as_ref().map(|r| ms(r.at_ms)),
                        &write.revoked.as_ref().map(|r| r.reason.as_str()),
                        &write.renewed_by,
                    ],
                )
                .await
                .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        if revoked {
            self.shared.revoked_here();
        }
        Ok(counts)
    }

    pub(super) async fn merge_enroll_tokens_pg(
        &self,
        incoming: Vec<EnrollTokenRecord>,
    ) -> Result<MergeCounts> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let hashes: Vec<&[u8]> = incoming.iter().map(|t| t.hash.as_slice()).collect();
        let rows = tx
            .query(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM enroll_tokens WHERE hash = ANY($1) FOR UPDATE"
                ),
                &[&hashes],
            )
            .await
            .map_err(db)?;
        let mut existing = HashMap::with_capacity(rows.len());
        for row in &rows {
            let token = token_from_row(row)?;
            existing.insert(token.hash, token);
        }
        let mut counts = MergeCounts::default();
        for token in incoming {
            let current = existing.get(&token.hash);
            let Some(write) = certificates::merge_token(current, token, &mut counts)? else {
                continue;
            };
            if current.is_none() {
                insert_token(&tx, &write).await?;
            } else {
                tx.execute(
                    "UPDATE enroll_tokens SET used_at_ms = $2, revoked_at_ms = $3 WHERE hash = $1",
                    &[
                        &write.hash.as_slice(),
                        &write.used_at_ms.map(ms),
                        &write.revoked_at_ms.map(ms),
                    ],
                )
                .await
                .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(counts)
    }

    pub(super) async fn get_ca_pg(&self) -> Result<Option<CaRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {CA_COLUMNS} FROM ca"), &[])
            .await
            .map_err(db)?;
        row.as_ref().map(ca_from_row).transpose()
    }

    pub(super) async fn modify_ca_pg(&self, change: CaChange) -> Result<CaRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CA_LOCK_KEY])
            .await
            .map_err(db)?;
        let current = tx
            .query_opt(&format!("SELECT {CA_COLUMNS} FROM ca FOR UPDATE"), &[])
            .await
            .map_err(db)?
            .as_ref()
            .map(ca_from_row)
            .transpose()?;
        // A change may sign with the CA key (an HSM round trip): off the
        // async workers. On error the transaction is rolled back.
        let record = tokio::task::spawn_blocking(move || change(current))
            .await
            .map_err(|e| RegistryError::Store(format!("CA change task failed: {e}")))??;
        tx.execute(
            &format!(
                "INSERT INTO ca (id, {CA_COLUMNS}) VALUES (true, $1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET key_scheme = EXCLUDED.key_scheme, \
                   key_bytes = EXCLUDED.key_bytes, key_public_der = EXCLUDED.key_public_der, \
                   chain_der = EXCLUDED.chain_der, pending_csr_der = EXCLUDED.pending_csr_der, \
                   created_at_ms = EXCLUDED.created_at_ms"
            ),
            &[
                &record.key.scheme,
                &record.key.bytes,
                &record.key.public_key_der,
                &record.chain_der,
                &record.pending_csr_der,
                &ms(record.created_at_ms),
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }
}
