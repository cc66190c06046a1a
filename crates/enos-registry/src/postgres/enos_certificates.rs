//! The EnOS certificates' records in PostgreSQL (migration 0006): one
//! row per device and serial. Every read goes to the table (no cache, no
//! change feed): what one replica recorded, every other reads at once.

use tokio_postgres::{Row, Transaction};

use super::{PostgresRegistry, db, id_from, ms};
use crate::{
    DeviceId, MergeCounts,
    certificates::Revocation,
    enos_certificates::{self, EnosCertificateRecord},
    error::{RegistryError, Result},
};

/// The columns of a read, in [`from_row`]'s order.
const COLUMNS: &str = "product_key, device_key, cert_sn, not_before_ms, not_after_ms, \
    issue_authority, recorded_at_ms, revoked_at_ms, revoked_reason, superseded_by";

/// Milliseconds read back (never negative as written).
fn from_ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn from_row(row: &Row) -> Result<EnosCertificateRecord> {
    let revoked_at: Option<i64> = row.try_get(7).map_err(db)?;
    let reason: Option<String> = row.try_get(8).map_err(db)?;
    Ok(EnosCertificateRecord {
        device: id_from(row, 0, 1)?,
        cert_sn: row.try_get(2).map_err(db)?,
        not_before_ms: from_ms(row.try_get(3).map_err(db)?),
        not_after_ms: from_ms(row.try_get(4).map_err(db)?),
        issue_authority: row.try_get(5).map_err(db)?,
        recorded_at_ms: from_ms(row.try_get(6).map_err(db)?),
        revoked: revoked_at.map(|at| Revocation {
            at_ms: from_ms(at),
            reason: reason.unwrap_or_default(),
        }),
        superseded_by: row.try_get(9).map_err(db)?,
    })
}

/// `device`'s record of `sn`, locked for the transaction.
async fn select_one(
    client: &Transaction<'_>,
    device: &DeviceId,
    sn: &str,
) -> Result<Option<EnosCertificateRecord>> {
    client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM enos_certificates \
                 WHERE product_key = $1 AND device_key = $2 AND cert_sn = $3 FOR UPDATE"
            ),
            &[
                &device.product_key.as_str(),
                &device.device_key.as_str(),
                &sn,
            ],
        )
        .await
        .map_err(db)?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Writes `cert` whole (insert, or over its row).
async fn upsert(client: &Transaction<'_>, cert: &EnosCertificateRecord) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO enos_certificates ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (product_key, device_key, cert_sn) DO UPDATE SET \
                   revoked_at_ms = EXCLUDED.revoked_at_ms, \
                   revoked_reason = EXCLUDED.revoked_reason, \
                   superseded_by = EXCLUDED.superseded_by"
            ),
            &[
                &cert.device.product_key.as_str(),
                &cert.device.device_key.as_str(),
                &cert.cert_sn,
                &ms(cert.not_before_ms),
                &ms(cert.not_after_ms),
                &cert.issue_authority,
                &ms(cert.recorded_at_ms),
                &cert.revoked.as_ref().map(|r| ms(r.at_ms)),
                &cert.revoked.as_ref().map(|r| r.reason.as_str()),
                &cert.superseded_by,
            ],
        )
        .await
        .map_err(db)?;
    Ok(())
}

impl PostgresRegistry {
    pub(super) async fn record_enos_certificate_pg(
        &self,
        cert: EnosCertificateRecord,
        supersedes: Option<String>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO enos_certificates ({COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (product_key, device_key, cert_sn) DO NOTHING"
                ),
                &[
                    &cert.device.product_key.as_str(),
                    &cert.device.device_key.as_str(),
                    &cert.cert_sn,
                    &ms(cert.not_before_ms),
                    &ms(cert.not_after_ms),
                    &cert.issue_authority,
                    &ms(cert.recorded_at_ms),
                    &cert.revoked.as_ref().map(|r| ms(r.at_ms)),
                    &cert.revoked.as_ref().map(|r| r.reason.as_str()),
                    &cert.superseded_by,
                ],
            )
            .await
            .map_err(db)?;
        if inserted == 0 {
            return Err(RegistryError::Store(format!(
                "EnOS certificate {} of {} is recorded already",
                cert.cert_sn, cert.device
            )));
        }
        if let Some(old) = supersedes {
            tx.execute(
                "UPDATE enos_certificates SET superseded_by = $4 \
                 WHERE product_key = $1 AND device_key = $2 AND cert_sn = $3 \
                   AND superseded_by IS NULL",
                &[
                    &cert.device.product_key.as_str(),
                    &cert.device.device_key.as_str(),
                    &old,
                    &cert.cert_sn,
                ],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    pub(super) async fn revoke_enos_certificate_pg(
        &self,
        device: &DeviceId,
        cert_sn: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<EnosCertificateRecord>> {
        let client = self.client().await?;
        // One conditional UPDATE: of two revocations at once, the second
        // finds the row revoked and changes nothing.
        client
            .query_opt(
                &format!(
                    "UPDATE enos_certificates SET revoked_at_ms = $4, revoked_reason = $5 \
                     WHERE product_key = $1 AND device_key = $2 AND cert_sn = $3 \
                       AND revoked_at_ms IS NULL \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &device.product_key.as_str(),
                    &device.device_key.as_str(),
                    &cert_sn,
                    &ms(now_ms),
                    &reason,
                ],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    pub(super) async fn enos_certificates_of_pg(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<EnosCertificateRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM enos_certificates \
                     WHERE product_key = $1 AND device_key = $2"
                ),
                &[&device.product_key.as_str(), &device.device_key.as_str()],
            )
            .await
            .map_err(db)?;
        let mut out = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
        enos_certificates::sort_newest_first(&mut out);
        Ok(out)
    }

    pub(super) async fn list_enos_certificates_pg(
        &self,
        after: Option<&(DeviceId, String)>,
        limit: usize,
    ) -> Result<Vec<EnosCertificateRecord>> {
        let (pk, dk, sn) = match after {
            Some((d, sn)) => (d.product_key.as_str(), d.device_key.as_str(), sn.as_str()),
            None => ("", "", ""),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM enos_certificates \
                     WHERE (product_key, device_key, cert_sn) > ($1::text, $2::text, $3::text) \
                     ORDER BY product_key, device_key, cert_sn LIMIT $4"
                ),
                &[&pk, &dk, &sn, &limit],
            )
            .await
            .map_err(db)?;
        rows.iter().map(from_row).collect()
    }

    pub(super) async fn merge_enos_certificates_pg(
        &self,
        incoming: Vec<EnosCertificateRecord>,
    ) -> Result<MergeCounts> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut counts = MergeCounts::default();
        for cert in incoming {
            let existing = select_one(&tx, &cert.device, &cert.cert_sn).await?;
            if let Some(write) = enos_certificates::merge(existing.as_ref(), cert, &mut counts) {
                upsert(&tx, &write).await?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(counts)
    }
}
