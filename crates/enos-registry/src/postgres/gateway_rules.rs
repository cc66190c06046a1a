//! The gateway rules ([`crate::gateway_rules`]) in PostgreSQL:
//! what a change binds and deletes, and the check of the rows it left,
//! inside its transaction (two queries over the `devices_gateway` index).

use std::collections::HashMap;

use tokio_postgres::Transaction;

use super::{DeviceId, DeviceRecord, Write, db, id_from};
use crate::{
    error::Result,
    gateway_rules::{self, GatewayChanges},
};

/// What `writes` bind and delete. `read` holds the gateway of every id the
/// change read (absent ids: `None`); the stored gateway of any other id
/// written is queried.
pub(super) async fn changes(
    tx: &Transaction<'_>,
    read: HashMap<DeviceId, Option<DeviceId>>,
    writes: &[Write],
) -> Result<GatewayChanges> {
    let mut gateways = read;
    let unread: Vec<&DeviceId> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Put(DeviceRecord {
                id,
                gateway: Some(_),
                ..
            }) => Some(id),
            Write::Delete(id) => Some(id),
            Write::Put(_) => None,
        })
        .filter(|id| !gateways.contains_key(*id))
        .collect();
    if !unread.is_empty() {
        let pk: Vec<&str> = unread.iter().map(|id| id.product_key.as_str()).collect();
        let dk: Vec<&str> = unread.iter().map(|id| id.device_key.as_str()).collect();
        let rows = tx
            .query(
                "SELECT product_key, device_key, gateway_product_key, gateway_device_key \
                 FROM devices WHERE (product_key, device_key) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[]))",
                &[&pk, &dk],
            )
            .await
            .map_err(db)?;
        for row in &rows {
            let id = id_from(row, 0, 1)?;
            let gateway = match (row.try_get(2).map_err(db)?, row.try_get(3).map_err(db)?) {
                (Some(gpk), Some(gdk)) => Some(super::device_id(gpk, gdk)?),
                _ => None,
            };
            gateways.insert(id, gateway);
        }
    }
    let mut changes = GatewayChanges::default();
    for write in writes {
        match write {
            Write::Put(record) => {
                let old = gateways.insert(record.id.clone(), record.gateway.clone());
                changes.put(&record.id, old.flatten().as_ref(), record.gateway.as_ref());
            }
            Write::Delete(id) => {
                gateways.insert(id.clone(), None);
                changes.delete(id);
            }
        }
    }
    Ok(changes)
}

/// Checks the rows as the change left them; an error aborts it.
pub(super) async fn check(tx: &Transaction<'_>, changes: &GatewayChanges) -> Result<()> {
    let mut violations = Vec::new();
    if !changes.bound.is_empty() {
        let column = |pick: fn(&(DeviceId, DeviceId)) -> &str| -> Vec<&str> {
            changes.bound.iter().map(pick).collect()
        };
        let spk = column(|(s, _)| s.product_key.as_str());
        let sdk = column(|(s, _)| s.device_key.as_str());
        let gpk = column(|(_, g)| g.product_key.as_str());
        let gdk = column(|(_, g)| g.device_key.as_str());
        // Bindings still in place (a later write may have moved one)
        // whose gateway is a sub-device or whose sub-device has subs.
        let rows = tx
            .query(
                "SELECT b.spk, b.sdk, b.gpk, b.gdk, g.gateway_product_key IS NOT NULL, \
                        c.product_key, c.device_key \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS b(spk, sdk, gpk, gdk) \
                 JOIN devices s ON s.product_key = b.spk AND s.device_key = b.sdk \
                      AND s.gateway_product_key = b.gpk AND s.gateway_device_key = b.gdk \
                 LEFT JOIN devices g ON g.product_key = b.gpk AND g.device_key = b.gdk \
                 LEFT JOIN LATERAL (SELECT product_key, device_key FROM devices \
                      WHERE gateway_product_key = b.spk AND gateway_device_key = b.sdk LIMIT 1) c ON true \
                 WHERE g.gateway_product_key IS NOT NULL OR c.product_key IS NOT NULL",
                &[&spk, &sdk, &gpk, &gdk],
            )
            .await
            .map_err(db)?;
        for row in &rows {
            let sub = id_from(row, 0, 1)?;
            let gateway = id_from(row, 2, 3)?;
            if row.try_get::<_, bool>(4).map_err(db)? {
                violations.push(gateway_rules::gateway_is_sub(&sub, &gateway));
            }
            let example: (Option<&str>, Option<&str>) =
                (row.try_get(5).map_err(db)?, row.try_get(6).map_err(db)?);
            if let (Some(pk), Some(dk)) = example {
                violations.push(gateway_rules::sub_has_sub_devices(
                    &sub,
                    &gateway,
                    &super::device_id(pk, dk)?,
                ));
            }
        }
    }
    if !changes.deleted.is_empty() {
        let found = first_subs(tx, &changes.deleted).await?;
        for deleted in &changes.deleted {
            if let Some(example) = found.get(deleted) {
                violations.push(gateway_rules::gateway_in_use(deleted, example));
            }
        }
    }
    gateway_rules::verdict(violations)
}

/// For each of `gateways` that has sub-devices, one of them.
pub(super) async fn first_subs<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    gateways: &[DeviceId],
) -> Result<HashMap<DeviceId, DeviceId>> {
    let pk: Vec<&str> = gateways.iter().map(|id| id.product_key.as_str()).collect();
    let dk: Vec<&str> = gateways.iter().map(|id| id.device_key.as_str()).collect();
    let rows = client
        .query(
            "SELECT g.pk, g.dk, c.product_key, c.device_key \
             FROM unnest($1::text[], $2::text[]) AS g(pk, dk) \
             JOIN LATERAL (SELECT product_key, device_key FROM devices \
                  WHERE gateway_product_key = g.pk AND gateway_device_key = g.dk LIMIT 1) c ON true",
            &[&pk, &dk],
        )
        .await
        .map_err(db)?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(id_from(row, 0, 1)?, id_from(row, 2, 3)?);
    }
    Ok(found)
}
