//! The redb registry's index of sub-devices by gateway, so that the
//! gateway rules ([`super::gateway_rules`]) cost a key lookup, not a scan.
//!
//! One entry `(gateway pk, gateway dk, sub pk, sub dk) → ()` per bound
//! sub-device, kept in the write transaction that changes the record. A
//! registry made before the index existed gets it built once, at open.

use std::ops::Bound;

use enos_sign_core::{DeviceKey, ProductKey};
use redb::{ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};

use super::DeviceId;
use crate::error::{RegistryError, Result};

/// `(gateway pk, gateway dk, sub pk, sub dk)` → nothing.
pub(super) const SUB_DEVICES: TableDefinition<'static, (&str, &str, &str, &str), ()> =
    TableDefinition::new("sub_devices");

/// Adds or removes the entry of `sub` bound to `gateway`.
pub(super) fn set(
    table: &mut Table<'_, (&str, &str, &str, &str), ()>,
    gateway: &DeviceId,
    sub: &DeviceId,
    present: bool,
) -> Result<()> {
    let key = (
        gateway.product_key.as_str(),
        gateway.device_key.as_str(),
        sub.product_key.as_str(),
        sub.device_key.as_str(),
    );
    if present {
        table.insert(key, ())?;
    } else {
        table.remove(key)?;
    }
    Ok(())
}

/// One sub-device of `gateway`, if it has any.
pub(super) fn first(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str, &'static str), ()>,
    gateway: &DeviceId,
) -> Result<Option<DeviceId>> {
    let (gpk, gdk) = (gateway.product_key.as_str(), gateway.device_key.as_str());
    let start = Bound::Included((gpk, gdk, "", ""));
    let Some(entry) = table
        .range::<(&str, &str, &str, &str)>((start, Bound::Unbounded))?
        .next()
    else {
        return Ok(None);
    };
    let (key, _) = entry?;
    let (pk, dk, spk, sdk) = key.value();
    if (pk, dk) != (gpk, gdk) {
        return Ok(None);
    }
    let corrupt = || RegistryError::Store(format!("sub-device index entry {spk}/{sdk}"));
    Ok(Some(DeviceId::new(
        ProductKey::new(spk).map_err(|_| corrupt())?,
        DeviceKey::new(sdk).map_err(|_| corrupt())?,
    )))
}

/// Builds the index from the device table when the file has none yet
/// (a registry made before it existed); true when it did.
pub(super) fn build_if_missing(
    txn: &WriteTransaction,
    bindings: impl FnOnce() -> Result<Vec<(DeviceId, DeviceId)>>,
) -> Result<bool> {
    let exists = txn.list_tables()?.any(|t| t.name() == SUB_DEVICES.name());
    if exists {
        return Ok(false);
    }
    let bindings = bindings()?;
    let mut table = txn.open_table(SUB_DEVICES)?;
    for (sub, gateway) in &bindings {
        set(&mut table, gateway, sub, true)?;
    }
    Ok(true)
}
