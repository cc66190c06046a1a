//! Bulk import (`Admin.ImportDevices`): all rows or none.
//!
//! Each message is checked as it arrives (keys, secrets, duplicates; its
//! secrets leave their prost strings for zeroizing types at once) and
//! counted against the row and byte caps; then the gateways are checked
//! and everything is written in one registry transaction. Any bad row aborts
//! the whole import and every bad row is reported by its source line. A
//! dry run does the same checks and writes nothing.
//!
//! An import never undoes a rotation by accident: a row whose secret
//! differs from the one in custody (or gives a secret to a device that
//! awaits activation) is refused unless the request says
//! `replace_secrets`; a row whose secret is the one in custody leaves the
//! record as it is (no new version). Custody is asked by signing, not
//! opening ([`crate::custody::CustodyHandle::holds`]), so this works with
//! every custody. The `enabled` column, when the file has it, sets the
//! flag. The response (and the `import_summary` audit record of a
//! committed import) counts new, unchanged and changed devices
//! ([`ImportCounts`](crate::audit::ImportCounts)).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use enos_sign_core::DeviceSecret;
use enos_signer_proto::{identity::PeerIdentity, v1};
use tonic::Streaming;
use zeroize::Zeroize;

use crate::{
    audit::AuditRecord,
    audit::ImportCounts,
    error::{Result, SignerError},
    state::SignerState,
};
use enos_domain::now_ms;
use enos_registry::{DeviceId, DeviceRecord, Write};

/// Refuse imports larger than this (memory bound; split bigger files).
pub const MAX_ROWS: usize = 1_000_000;

/// A row that passed the syntax checks.
struct Row {
    /// Source line, for reports.
    line: u32,
    /// The device.
    id: DeviceId,
    /// Its secret (zeroized on drop); `None` for a device awaiting
    /// activation (an empty `deviceSecret` in the file).
    secret: Option<DeviceSecret>,
    /// Its gateway, when it is a sub-device.
    gateway: Option<DeviceId>,
    /// The file's `enabled` cell; `None` when the file does not say, and
    /// then an existing device keeps its flag (a new one is enabled).
    enabled: Option<bool>,
}

/// The rows checked so far.
struct Checked {
    /// Rows that passed, in arrival order.
    good: Vec<Row>,
    /// `(line, reason)` of each bad row.
    errors: Vec<(u32, String)>,
    /// The line of each device seen, for duplicates.
    seen: HashMap<DeviceId, u32>,
    /// The line of each secret seen, by a digest keyed with a key made for
    /// this import alone (the digest outlives no import and matches nothing
    /// elsewhere): two devices with one secret make signed content
    /// ambiguous (`clientId a` + `deviceKey bdeviceKeyc` signs like
    /// `clientId adeviceKeyb` + `deviceKey c`), so an import refuses them.
    secrets: HashMap<[u8; 32], u32>,
    /// The key of those digests; wiped on drop.
    secret_key: zeroize::Zeroizing<[u8; 32]>,
}

impl Checked {
    fn new() -> Self {
        use chacha20poly1305::aead::{OsRng, rand_core::RngCore};
        let mut secret_key = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut secret_key[..]);
        Checked {
            good: Vec::new(),
            errors: Vec::new(),
            seen: HashMap::new(),
            secrets: HashMap::new(),
            secret_key,
        }
    }

    /// The keyed digest of a secret.
    fn secret_digest(&self, secret: &DeviceSecret) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.secret_key[..])
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(enos_sign_core::ExposeSecret::expose_secret(secret).as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Checks each row of one message on its own and against the rows before.
fn check_rows(checked: &mut Checked, rows: Vec<v1::ImportRow>) {
    for mut row in rows {
        let line = row.line;
        let mut problems = Vec::new();
        let pk = enos_sign_core::ProductKey::new(&row.product_key)
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        let dk = enos_sign_core::DeviceKey::new(&row.device_key)
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        let secret = if row.awaiting_activation {
            if row.device_secret.is_empty() {
                Some(None)
            } else {
                row.device_secret.zeroize();
                problems.push("a device awaiting activation has no deviceSecret".into());
                None
            }
        } else {
            DeviceSecret::new(row.device_secret)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
                .map(Some)
        };
        let gateway = match &row.gateway {
            Some(g) if !(g.product_key.is_empty() && g.device_key.is_empty()) => {
                let gpk = enos_sign_core::ProductKey::new(&g.product_key)
                    .map_err(|e| problems.push(format!("gateway {e}")))
                    .ok();
                let gdk = enos_sign_core::DeviceKey::new(&g.device_key)
                    .map_err(|e| problems.push(format!("gateway {e}")))
                    .ok();
                gpk.zip(gdk).map(|(p, d)| Some(DeviceId::new(p, d)))
            }
            _ => Some(None),
        };
        match (pk, dk, secret, gateway) {
            (Some(pk), Some(dk), Some(secret), Some(gateway)) if problems.is_empty() => {
                let id = DeviceId::new(pk, dk);
                if let Some(first) = checked.seen.get(&id) {
                    checked
                        .errors
                        .push((line, format!("device {id} is also on line {first}")));
                    continue;
                }
                if gateway.as_ref() == Some(&id) {
                    checked
                        .errors
                        .push((line, format!("device {id} cannot be its own gateway")));
                    continue;
                }
                if let Some(secret) = &secret {
                    let digest = checked.secret_digest(secret);
                    if let Some(first) = checked.secrets.get(&digest) {
                        checked.errors.push((
                            line,
                            format!(
                                "deviceSecret is the same as on line {first}: every device needs \
                                 its own secret"
                            ),
                        ));
                        continue;
                    }
                    checked.secrets.insert(digest, line);
                }
                checked.seen.insert(id.clone(), line);
                checked.good.push(Row {
                    line,
                    id,
                    secret,
                    gateway,
                    enabled: row.enabled,
                });
            }
            _ => checked.errors.push((line, problems.join("; "))),
        }
    }
}

/// Zeroes the secrets of rows about to be dropped unread (prost strings
/// do not zero themselves).
fn wipe(rows: &mut [v1::ImportRow]) {
    for row in rows {
        row.device_secret.zeroize();
    }
}

/// Checks gateways against the import itself and the registry (`current`
/// holds the records of every id the import names; `has_subs` one
/// sub-device of each row's device that has any in the registry).
///
/// A bound sub-device is not moved to another gateway by an import (as
/// BindSubDevice, the operator unbinds it first), and a device with
/// sub-devices does not become one ([`enos_registry::gateway_rules`]).
fn check_gateways(
    rows: &[Row],
    current: &HashMap<DeviceId, DeviceRecord>,
    has_subs: &HashMap<DeviceId, DeviceId>,
) -> Vec<(u32, String)> {
    let in_import: HashMap<&DeviceId, &Row> = rows.iter().map(|r| (&r.id, r)).collect();
    let mut errors = Vec::new();
    for row in rows {
        let Some(gateway) = &row.gateway else {
            continue;
        };
        if let Some(bound) = current.get(&row.id).and_then(|r| r.gateway.as_ref())
            && bound != gateway
        {
            errors.push((
                row.line,
                format!(
                    "{} is bound to gateway {bound}; unbind it first (enos-signer unbind) to \
                     bind it to {gateway}",
                    row.id
                ),
            ));
        }
        if let Some(example) = has_subs.get(&row.id) {
            let (_, message) =
                enos_registry::gateway_rules::sub_has_sub_devices(&row.id, gateway, example);
            errors.push((row.line, message));
        }
        let gateway_is_sub = match in_import.get(gateway) {
            // A row without a gateway keeps the binding it has.
            Some(g) => {
                g.gateway.is_some() || current.get(gateway).is_some_and(|r| r.gateway.is_some())
            }
            None => match current.get(gateway) {
                None => {
                    errors.push((
                        row.line,
                        format!("gateway {gateway} is neither in the registry nor in this import"),
                    ));
                    continue;
                }
                Some(r) => r.gateway.is_some(),
            },
        };
        if gateway_is_sub {
            errors.push((
                row.line,
                format!("gateway {gateway} is itself a sub-device"),
            ));
        }
    }
    errors
}

/// Runs one import stream.
pub async fn run(
    state: &SignerState,
    identity: Option<&PeerIdentity>,
    mut stream: Streaming<v1::ImportDevicesRequest>,
) -> Result<v1::ImportDevicesResponse> {
    let mut rows_checked = Checked::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    let mut dry_run = None;
    let mut replace_secrets = None;
    while let Some(mut message) = stream
        .message()
        .await
        .map_err(|s| SignerError::invalid("rows", format!("stream failed: {}", s.message())))?
    {
        dry_run.get_or_insert(message.dry_run);
        replace_secrets.get_or_insert(message.replace_secrets);
        rows += message.rows.len();
        bytes += prost::Message::encoded_len(&message);
        if rows > MAX_ROWS {
            wipe(&mut message.rows);
            return Err(SignerError::invalid(
                "rows",
                format!("more than {MAX_ROWS} rows; split the file"),
            ));
        }
        if bytes > state.import_max_bytes {
            wipe(&mut message.rows);
            return Err(SignerError::invalid(
                "rows",
                format!(
                    "more than {} bytes (server.limits.import_max_bytes); split the file",
                    state.import_max_bytes
                ),
            ));
        }
        check_rows(&mut rows_checked, message.rows);
    }
    let dry_run = dry_run.unwrap_or(false);
    let replace_secrets = replace_secrets.unwrap_or(false);
    let checked = rows as u32;
    let Checked {
        good, mut errors, ..
    } = rows_checked;
    // The rows that bind a sub-device: their lines name a broken gateway
    // rule, and those of them that have sub-devices are refused.
    let binding: HashMap<DeviceId, u32> = good
        .iter()
        .filter(|r| r.gateway.is_some())
        .map(|r| (r.id.clone(), r.line))
        .collect();
    let binding_ids: Vec<DeviceId> = binding.keys().cloned().collect();
    let has_subs = state.registry.a_sub_device_of(&binding_ids).await?;
    if !errors.is_empty() {
        // Report gateway problems of the good rows too, so one round trip
        // names every bad row that can be named.
        let mut ids = gateway_ids(&good);
        ids.extend(binding_ids);
        let mut current = HashMap::new();
        for id in ids {
            if let Some(r) = state.registry.get(&id).await? {
                current.insert(id, r);
            }
        }
        errors.extend(check_gateways(&good, &current, &has_subs));
        return Ok(refused(checked, errors));
    }

    let mut ids: Vec<DeviceId> = good.iter().map(|r| r.id.clone()).collect();
    let named: HashSet<DeviceId> = ids.iter().cloned().collect();
    ids.extend(
        gateway_ids(&good)
            .into_iter()
            .filter(|g| !named.contains(g)),
    );
    let custody = state.custody.clone();
    // The counts leave the registry's change through here (its result is
    // the writes alone).
    let counted: Arc<Mutex<ImportCounts>> = Arc::default();
    let counts_out = Arc::clone(&counted);
    let outcome = state
        .registry
        .modify(
            ids.clone(),
            Box::new(move |records| {
                let current: HashMap<DeviceId, DeviceRecord> = ids
                    .into_iter()
                    .zip(records)
                    .filter_map(|(id, r)| r.map(|r| (id, r)))
                    .collect();
                let mut errors = check_gateways(&good, &current, &has_subs);
                // A blank secret never discards one: re-activating a device
                // is a deliberate admin call, not a side effect of a file.
                for row in &good {
                    if row.secret.is_none()
                        && current
                            .get(&row.id)
                            .is_some_and(|r| !r.is_awaiting_activation())
                    {
                        errors.push((
                            row.line,
                            format!(
                                "device {} has a secret; an empty deviceSecret would discard it \
                                 (`enos-signer await-activation` re-activates a device)",
                                row.id
                            ),
                        ));
                    }
                }
                // What each row changes; a secret other than the one in
                // custody only when the operator said so.
                let mut counts = ImportCounts::default();
                let mut plans = Vec::with_capacity(good.len());
                for row in good {
                    let existing = current.get(&row.id);
                    let plan = match existing {
                        None => {
                            counts.new_devices += 1;
                            Plan {
                                row,
                                new_secret: true,
                            }
                        }
                        Some(existing) => {
                            let new_secret = match &row.secret {
                                // An existing device that has a secret was
                                // refused above: it awaits activation, and
                                // so does the row.
                                None => false,
                                Some(secret) => !custody.holds(existing, secret)?,
                            };
                            if new_secret && !replace_secrets {
                                errors.push((row.line, other_secret(existing)));
                                continue;
                            }
                            let binding = row.gateway.is_some() && row.gateway != existing.gateway;
                            let enabled = row.enabled.is_some_and(|e| e != existing.enabled);
                            counts.changed_secrets += u32::from(new_secret);
                            counts.changed_bindings += u32::from(binding);
                            counts.changed_enabled += u32::from(enabled);
                            if !(new_secret || binding || enabled) {
                                counts.unchanged_devices += 1;
                                continue;
                            }
                            Plan { row, new_secret }
                        }
                    };
                    plans.push(plan);
                }
                errors.sort_by_key(|(line, _)| *line);
                if !errors.is_empty() {
                    return Err(SignerError::ImportRejected(errors).into());
                }
                *counts_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = counts;
                if dry_run {
                    return Ok(Vec::new());
                }
                let now = now_ms();
                let mut writes = Vec::with_capacity(plans.len());
                for Plan { row, new_secret } in plans {
                    let existing = current.get(&row.id);
                    let mut record = match existing {
                        // Only the binding or the flag changes.
                        Some(existing) if !new_secret => {
                            let mut record = existing.clone();
                            record.updated_at_ms = now;
                            record
                        }
                        _ => match row.secret {
                            Some(secret) => {
                                DeviceRecord::with_new_secret(row.id, existing, now, |id, v| {
                                    custody.seal(id, v, secret)
                                })?
                            }
                            None => DeviceRecord::awaiting_activation(row.id, existing, now),
                        },
                    };
                    if let Some(gateway) = row.gateway {
                        record.gateway = Some(gateway);
                    }
                    match (row.enabled, existing) {
                        (Some(enabled), _) => record.enabled = enabled,
                        (None, None) => record.enabled = true,
                        (None, Some(_)) => {}
                    }
                    writes.push(Write::Put(record));
                }
                Ok(writes)
            }),
        )
        .await
        .map_err(SignerError::from);
    let writes = match outcome {
        Ok(writes) => writes,
        Err(SignerError::ImportRejected(errors)) => return Ok(refused(checked, errors)),
        // A rule a concurrent change broke after the checks above: the
        // registry's own check, reported by line too.
        Err(SignerError::GatewayRules(broken)) => {
            let errors = broken
                .into_iter()
                .map(|(id, message)| (binding.get(&id).copied().unwrap_or(0), message))
                .collect();
            return Ok(refused(checked, errors));
        }
        Err(e) => return Err(e),
    };
    let counts = *counted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for write in &writes {
        if let Write::Put(record) = write {
            state.audit_best_effort(&AuditRecord::new(
                "import_device",
                identity,
                Some(record.id.to_string()),
                "ok",
            ));
        }
    }
    if !dry_run {
        // One record of the import as a whole, with what it changed.
        let mut summary = AuditRecord::new("import_summary", identity, None, "ok");
        summary.import = Some(counts);
        state.audit_best_effort(&summary);
    }
    Ok(v1::ImportDevicesResponse {
        imported: writes.len() as u32,
        checked,
        errors: Vec::new(),
        committed: !dry_run,
        new_devices: counts.new_devices,
        unchanged_devices: counts.unchanged_devices,
        changed_secrets: counts.changed_secrets,
        changed_bindings: counts.changed_bindings,
        changed_enabled: counts.changed_enabled,
    })
}

/// One row to write, and whether it brings a new secret.
struct Plan {
    /// The row.
    row: Row,
    /// Whether its secret is sealed as a new version (a new device, or a
    /// replaced secret); otherwise the record's secret stays.
    new_secret: bool,
}

/// Why a row with another secret than the registry's is refused; names
/// the device and version, never a secret.
fn other_secret(existing: &DeviceRecord) -> String {
    if existing.is_awaiting_activation() {
        format!(
            "device {} awaits activation; this row would give it a secret (pass \
             --replace-secrets to do so)",
            existing.id
        )
    } else {
        format!(
            "device {} has another secret in the registry (version {}): importing this row \
             would replace it, and undo a rotation if the file is older; pass \
             --replace-secrets to replace it",
            existing.id, existing.secret_version
        )
    }
}

fn gateway_ids(rows: &[Row]) -> Vec<DeviceId> {
    let set: HashSet<&DeviceId> = rows.iter().filter_map(|r| r.gateway.as_ref()).collect();
    set.into_iter().cloned().collect()
}

fn refused(checked: u32, mut errors: Vec<(u32, String)>) -> v1::ImportDevicesResponse {
    errors.sort_by_key(|(line, _)| *line);
    v1::ImportDevicesResponse {
        imported: 0,
        checked,
        errors: errors
            .into_iter()
            .map(|(line, message)| v1::RowError { line, message })
            .collect(),
        committed: false,
        ..Default::default()
    }
}
