//! `SignSubDeviceLoginBatch`: the params of one `combine.login.batch` for
//! a gateway's bound sub-devices — one clientId and timestamp shared (as
//! the official Java SDK sends them), one sign each with that sub-device's
//! secret.
//!
//! Entries are judged one by one exactly as `SignSubDeviceLogin` judges a
//! single one; an entry that may not be signed is listed among the
//! refused, with its code, and the others are signed. A sub-device that
//! does not exist answers exactly like one bound to another gateway (a
//! gateway learns nothing about devices that are not its own). Every
//! signed entry gets its own audit record (with the sign's HMAC), so a
//! leaked sign is traced as after a single login; with a fail-closed
//! trail one lost record drops the whole batch unsent. The refused
//! entries share one record per call (ids and reasons): a batch costs one
//! rate-limit token, and 200 unknown names must not buy 200 records.
//!
//! Each entry is signed under its own product's policy, as the single
//! call does: its TTL (its record's expiry) and its default method. The
//! batch carries one `signMethod` (EnOS's params do): the requested one,
//! or else the default of the first entry's product; an entry whose
//! product's default differs is refused (FailedPrecondition), never signed
//! with another product's method. The batch's `expires_at_ms` is the
//! earliest expiry of its signed entries.

use std::{collections::HashSet, sync::Arc, time::Instant};

use enos_sign_core::{ExposeSecret, SecureMode, SignedFields, TimestampMs};
use enos_signer_proto::{identity::PeerIdentity, v1};
use tonic::{Request, Response, Status};

use crate::{
    audit::{AuditRecord, RefusedEntry},
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    services::caller::{caller_device, identified},
    services::convert,
    state::SignerState,
};
use enos_domain::now_ms;
use enos_registry::DeviceId;

/// The RPC's name in metrics and audit records.
const RPC: &str = "sign_sub_device_login_batch";

/// At most this many entries per batch: a gateway's limit of online
/// sub-devices on EnOS.
pub const MAX_BATCH: usize = 200;

/// The clientId of a batch when the request names none (the official
/// Java SDK's).
const DEFAULT_CLIENT_ID: &str = "login.batch";

/// Serves one call: identify, check, sign, audit, count.
pub(crate) async fn sign(
    state: Arc<SignerState>,
    request: Request<v1::SignSubDeviceLoginBatchRequest>,
) -> std::result::Result<Response<v1::SubDeviceLoginBatch>, Status> {
    let started = Instant::now();
    let identity = identified(&state, RPC, &request, started).await?;
    let result = signed_batch(&state, &identity, request.into_inner()).await;
    let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
    if let Err(e) = &result {
        let record = AuditRecord::new(RPC, Some(&identity), None, outcome);
        state.refused(RPC, Some(&identity), e, Some(&record));
    }
    state.metrics.issuance(RPC, outcome, started.elapsed());
    Ok(Response::new(result?))
}

async fn signed_batch(
    state: &SignerState,
    identity: &PeerIdentity,
    request: v1::SignSubDeviceLoginBatchRequest,
) -> Result<v1::SubDeviceLoginBatch> {
    // The limit first: every refusal after it is bounded by it.
    state.limiter.check(identity)?;
    let gateway = caller_device(
        identity,
        "only device certificates may request sub-device logins",
    )?;
    if request.sub_devices.is_empty() {
        return Err(SignerError::invalid("sub_devices", "is empty"));
    }
    if request.sub_devices.len() > MAX_BATCH {
        return Err(SignerError::invalid(
            "sub_devices",
            format!(
                "{} entries; at most {MAX_BATCH} (a gateway's limit of online sub-devices)",
                request.sub_devices.len()
            ),
        ));
    }
    let client_id = convert::client_id(
        "client_id",
        if request.client_id.is_empty() {
            DEFAULT_CLIENT_ID
        } else {
            &request.client_id
        },
    )?;
    // The batch's one method: the requested one (the same for every
    // product), or the default of the first entry's product.
    let first_product = request
        .sub_devices
        .iter()
        .find_map(|e| enos_sign_core::ProductKey::new(&e.product_key).ok())
        .unwrap_or_else(|| gateway.product_key.clone());
    let method = state.policy.method(&first_product, request.sign_method)?;
    // The gateway itself must be known and enabled to sign for others.
    match state.registry.get(&gateway).await? {
        Some(record) if record.enabled => {}
        Some(_) => {
            return Err(SignerError::FailedPrecondition(format!(
                "device {gateway} is disabled"
            )));
        }
        None => return Err(SignerError::NotFound(format!("device {gateway}"))),
    }
    let timestamp_ms = now_ms();
    let mut batch = v1::SubDeviceLoginBatch {
        client_id: client_id.to_string(),
        timestamp_ms,
        sign_method: method.as_str().to_owned(),
        expires_at_ms: timestamp_ms,
        ..Default::default()
    };
    let mut records = Vec::new();
    let mut refused = Vec::new();
    let mut seen = HashSet::new();
    for entry in request.sub_devices {
        let signed = async {
            let sub = DeviceId::new(
                convert::product_key("sub_devices.product_key", &entry.product_key)?,
                convert::device_key("sub_devices.device_key", &entry.device_key)?,
            );
            if !seen.insert(sub.clone()) {
                return Err(SignerError::invalid(
                    "sub_devices",
                    format!("{sub} is listed twice"),
                ));
            }
            let record = match state.registry.get(&sub).await? {
                Some(record) if record.gateway.as_ref() == Some(&gateway) => record,
                _ => {
                    return Err(SignerError::PermissionDenied(format!(
                        "{sub} is not a sub-device of the calling gateway"
                    )));
                }
            };
            if !record.enabled {
                return Err(SignerError::FailedPrecondition(format!(
                    "device {sub} is disabled"
                )));
            }
            // Its own product's policy, as for a single login.
            let own = state.policy.method(&sub.product_key, request.sign_method)?;
            if own != method {
                return Err(SignerError::FailedPrecondition(format!(
                    "{sub}: product {} signs with {} by default and this batch with {} (its \
                     first entry's product's); ask for a sign_method, or send {}'s \
                     sub-devices in a batch of their own",
                    sub.product_key,
                    own.as_str(),
                    method.as_str(),
                    sub.product_key
                )));
            }
            let ttl = state.policy.for_product(&sub.product_key).ttl;
            let expires_at_ms = timestamp_ms + ttl.as_millis() as u64;
            let fields = SignedFields {
                client_id: client_id.clone(),
                device_key: sub.device_key.clone(),
                product_key: sub.product_key.clone(),
                timestamp: TimestampMs::from_millis(timestamp_ms),
            };
            let (_, sign) = state.custody.sign(record, fields, method).await?;
            Ok((sub, sign, expires_at_ms))
        }
        .await;
        match signed {
            Ok((sub, sign, expires_at_ms)) => {
                let mut record = AuditRecord::new(RPC, Some(identity), Some(sub.to_string()), "ok");
                record.client_id = Some(client_id.to_string());
                record.sign_method = Some(method.as_str());
                record.secure_mode = Some(SecureMode::DeviceSecret.as_u8());
                record.timestamp_ms = Some(timestamp_ms);
                record.expires_at_ms = Some(expires_at_ms);
                record.password_hmac = Some(state.audit.password_hmac(sign.expose_secret()));
                records.push(record);
                // The earliest expiry: the gateway renews before any
                // entry lapses.
                batch.expires_at_ms = if batch.signed.is_empty() {
                    expires_at_ms
                } else {
                    batch.expires_at_ms.min(expires_at_ms)
                };
                batch.signed.push(v1::SubDeviceBatchEntry {
                    product_key: sub.product_key.to_string(),
                    device_key: sub.device_key.to_string(),
                    sign: sign.expose_secret().to_owned(),
                    secure_mode: u32::from(SecureMode::DeviceSecret.as_u8()),
                });
            }
            Err(e) => {
                // Internal trouble (registry, custody) fails the batch: a
                // refused entry is the device's answer, not ours.
                if matches!(
                    e,
                    SignerError::Registry(_)
                        | SignerError::RegistryUnavailable(_)
                        | SignerError::Custody(_)
                        | SignerError::Audit(_)
                ) {
                    return Err(e);
                }
                let shown = |s: &str| -> String {
                    s.chars()
                        .take(64)
                        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                        .collect()
                };
                let (product_key, device_key) =
                    (shown(&entry.product_key), shown(&entry.device_key));
                refused.push(RefusedEntry {
                    device: format!("{product_key}/{device_key}"),
                    outcome: outcome_name(Some(e.code())),
                    reason: e.to_string(),
                });
                batch.refused.push(v1::RefusedSubDevice {
                    product_key,
                    device_key,
                    code: format!("{:?}", e.code()),
                    message: e.to_string(),
                });
            }
        }
    }
    // One record for every refused entry of the call: its cost is that of
    // the one rate-limit token the call spent.
    if !refused.is_empty() {
        let mut record = AuditRecord::new(RPC, Some(identity), None, "refused_entries");
        record.client_id = Some(client_id.to_string());
        record.refused = refused;
        state.audit_best_effort(&record);
    }
    // Fail-closed: a sign leaves only with its record.
    state.audit.record_all(&records).await?;
    Ok(batch)
}
