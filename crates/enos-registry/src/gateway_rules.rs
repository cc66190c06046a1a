//! The gateway rules every registry enforces inside the transaction of a
//! change, so that no writer (an admin call, an import, `registry copy`, a
//! replica racing another) can break them:
//!
//! - a gateway is never itself a sub-device (one level: gateway → subs);
//! - a device that has sub-devices is never bound as a sub-device;
//! - a device that has sub-devices is not deleted: the operator unbinds or
//!   deletes them first (refused rather than cascaded, so that one call
//!   never silently takes a fleet of sub-devices with it, and a re-created
//!   id never regains authority over sub-devices of its predecessor).
//!
//! Only bindings a change *makes* are checked (a rotation of a bound
//! sub-device is not), so records written before these rules existed stay
//! writable. A registry records what a change binds and deletes in a
//! [`GatewayChanges`], applies the writes, checks the result in the same
//! transaction and aborts on any [`RegistryError::GatewayRules`].

use super::DeviceId;
use crate::error::{RegistryError, Result};

/// What one change binds and deletes, in write order.
#[derive(Debug, Default)]
pub(crate) struct GatewayChanges {
    /// `(sub-device, gateway)` for each record written with a gateway it
    /// did not have: the bindings the rules are checked for.
    pub(crate) bound: Vec<(DeviceId, DeviceId)>,
    /// Deleted ids: each must be the gateway of nothing afterwards.
    pub(crate) deleted: Vec<DeviceId>,
}

impl GatewayChanges {
    /// Records a put of `id`, which had gateway `old` (or was absent) and
    /// now has `new`.
    pub(crate) fn put(&mut self, id: &DeviceId, old: Option<&DeviceId>, new: Option<&DeviceId>) {
        if !self.deleted.is_empty() {
            // Deleted, then written again: it exists after all.
            self.deleted.retain(|d| d != id);
        }
        if let Some(gateway) = new
            && old != Some(gateway)
        {
            self.bound.push((id.clone(), gateway.clone()));
        }
    }

    /// Records a delete of `id`.
    pub(crate) fn delete(&mut self, id: &DeviceId) {
        self.deleted.push(id.clone());
    }

    /// Whether there is anything to check.
    pub(crate) fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.deleted.is_empty()
    }
}

/// `sub` was bound to `gateway`, which is itself a sub-device.
pub(crate) fn gateway_is_sub(sub: &DeviceId, gateway: &DeviceId) -> (DeviceId, String) {
    (
        sub.clone(),
        format!("gateway {gateway} is itself a sub-device and cannot be the gateway of {sub}"),
    )
}

/// `sub` was bound to `gateway` while it has sub-devices (`example` one).
pub fn sub_has_sub_devices(
    sub: &DeviceId,
    gateway: &DeviceId,
    example: &DeviceId,
) -> (DeviceId, String) {
    (
        sub.clone(),
        format!(
            "{sub} is the gateway of sub-devices (such as {example}) and cannot become a \
             sub-device of {gateway}; unbind them first"
        ),
    )
}

/// `deleted` still has sub-devices (`example` one).
pub(crate) fn gateway_in_use(deleted: &DeviceId, example: &DeviceId) -> (DeviceId, String) {
    (
        deleted.clone(),
        format!(
            "{deleted} is the gateway of sub-devices (such as {example}); unbind or delete \
             them first"
        ),
    )
}

/// Ok when nothing broke a rule, else the error that aborts the change.
pub(crate) fn verdict(mut violations: Vec<(DeviceId, String)>) -> Result<()> {
    if violations.is_empty() {
        return Ok(());
    }
    violations.sort();
    violations.dedup();
    Err(RegistryError::GatewayRules(violations))
}
