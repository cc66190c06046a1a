//! Dynamic activation: EnOS's `securemode=3`, with the pushed device
//! secret going straight into custody instead of a file on the device.
//!
//! 1. A device registered without a secret (awaiting activation) asks for
//!    a credential as usual. If its product opts in
//!    (`[policy.products.PK] dynamic_activation = true`) and has a product
//!    secret, it gets a `securemode=3` credential signed with the
//!    product's secret ([`sign_login`]); otherwise FailedPrecondition
//!    (EnOS's 770, "dynamic activation not allowed").
//! 2. EnOS (or the sandbox) pushes the new device secret to the device on
//!    `/ext/session/{pk}/{dk}/thing/activate/info`.
//! 3. The agent hands it over with `CompleteActivation` ([`complete`]):
//!    only the device itself (its certificate), only while its product
//!    opts in and has a product secret (the same conditions as step 1:
//!    otherwise FailedPrecondition, audited, nothing written), only while
//!    it awaits activation, once. The secret is sealed as version 1 and the device
//!    is activated in one registry transaction; an intent record is
//!    written first and the outcome after, by a task a cancelled call
//!    cannot stop (as for admin changes). A second attempt is refused
//!    (FailedPrecondition) and audited.
//! 4. From then on the device is issued `securemode=2` credentials.

use std::{sync::Arc, time::Instant};

use enos_sign_core::{DeviceSecret, Password, SecureMode, SignMethod, SignedFields};
use enos_signer_proto::v1;
use tonic::{Request, Response, Status};

use crate::{
    audit::AuditRecord,
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    services::caller::{caller_device, identified},
    services::convert::device_message,
    state::SignerState,
};
use enos_domain::now_ms;
use enos_registry::{DeviceId, DeviceRecord, Write};

/// The RPC's name in metrics and audit records.
const RPC: &str = "complete_activation";

/// Signs a device's login: with its own secret (`securemode=2`), or, for a
/// device awaiting activation whose product allows it, with the product's
/// secret (`securemode=3`).
pub(crate) async fn sign_login(
    state: &SignerState,
    record: DeviceRecord,
    fields: SignedFields,
    method: SignMethod,
) -> Result<(SignedFields, Password, SecureMode)> {
    if !record.is_awaiting_activation() {
        let (fields, password) = state.custody.sign(record, fields, method).await?;
        return Ok((fields, password, SecureMode::DeviceSecret));
    }
    let product_record = activation_product(state, &record.id, "awaits activation, and").await?;
    let (fields, password) = state
        .custody
        .sign_with_product(product_record, fields, method)
        .await?;
    Ok((fields, password, SecureMode::ProductSecret))
}

/// The product record of `device` if its product allows dynamic activation
/// (it opts in, and has a product secret); otherwise FailedPrecondition,
/// whose message says of the device `what` (ending in a conjunction or a
/// colon) and why.
async fn activation_product(
    state: &SignerState,
    device: &DeviceId,
    what: &str,
) -> Result<enos_registry::ProductRecord> {
    let product = &device.product_key;
    if !state.policy.for_product(product).dynamic_activation {
        return Err(SignerError::FailedPrecondition(format!(
            "device {device} {what} product {product} does not allow dynamic \
             activation (EnOS 770)"
        )));
    }
    state.registry.get_product(product).await?.ok_or_else(|| {
        SignerError::FailedPrecondition(format!(
            "device {device} {what} product {product} has no product secret"
        ))
    })
}

/// `CompleteActivation`: seals the pushed secret and activates the caller.
pub(crate) async fn complete(
    state: Arc<SignerState>,
    request: Request<v1::CompleteActivationRequest>,
) -> std::result::Result<Response<v1::CompleteActivationResponse>, Status> {
    let started = Instant::now();
    let identity = identified(&state, RPC, &request, started).await?;
    let prepared = state
        .limiter
        .check(&identity)
        .and_then(|()| caller_device(&identity, "only a device may complete its own activation"))
        .and_then(|device| {
            let secret = DeviceSecret::new(request.into_inner().device_secret)
                .map_err(|e| SignerError::invalid("device_secret", e))?;
            Ok((device, secret))
        });
    // Only a device its product's policy lets activate (as for the
    // securemode=3 login): without the opt-in no device may choose its
    // own secret.
    let prepared = match prepared {
        Ok((device, secret)) => {
            activation_product(&state, &device, "may not complete an activation:")
                .await
                .map(|_| (device, secret))
        }
        Err(e) => Err(e),
    };
    let (device, secret) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            let device = caller_device(&identity, "").ok().map(|d| d.to_string());
            let record =
                AuditRecord::new(RPC, Some(&identity), device, outcome_name(Some(e.code())));
            state.refused(RPC, Some(&identity), &e, Some(&record));
            state
                .metrics
                .issuance(RPC, outcome_name(Some(e.code())), started.elapsed());
            return Err(e.into());
        }
    };
    // The change is audited as part of itself: no intent record, no change.
    let intent = AuditRecord::new(RPC, Some(&identity), Some(device.to_string()), "started");
    if let Err(e) = state.audit.record(&intent).await {
        tracing::error!(rpc = RPC, error = %e, "activation refused: its audit record cannot be written");
        state
            .metrics
            .issuance(RPC, outcome_name(Some(e.code())), started.elapsed());
        return Err(e.into());
    }
    // The change, its metrics and its outcome record run to the end even
    // if the caller goes away.
    let task = tokio::spawn(async move {
        let result = activate(&state, device.clone(), secret).await;
        let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
        let record = AuditRecord::new(RPC, Some(&identity), Some(device.to_string()), outcome);
        match &result {
            Ok(_) => {
                tracing::info!(device = %device, "device activated: its pushed secret is in custody");
                state.audit_best_effort(&record);
            }
            Err(e) => state.refused(RPC, Some(&identity), e, Some(&record)),
        }
        state.metrics.issuance(RPC, outcome, started.elapsed());
        result
    });
    match task.await {
        Ok(result) => Ok(Response::new(result?)),
        Err(e) => {
            tracing::error!(rpc = RPC, error = %e, "activation task failed");
            Err(Status::internal("the call failed"))
        }
    }
}

/// One transaction: the device must exist, be enabled and still await
/// activation; its secret is sealed as version 1.
async fn activate(
    state: &SignerState,
    device: DeviceId,
    secret: DeviceSecret,
) -> Result<v1::CompleteActivationResponse> {
    let custody = state.custody.clone();
    let id = device.clone();
    let writes = state
        .registry
        .modify(
            vec![device],
            Box::new(move |current| {
                let existing = current
                    .into_iter()
                    .next()
                    .flatten()
                    .ok_or_else(|| SignerError::NotFound(format!("device {id}")))?;
                if !existing.enabled {
                    return Err(SignerError::FailedPrecondition(format!(
                        "device {id} is disabled"
                    ))
                    .into());
                }
                if !existing.is_awaiting_activation() {
                    return Err(SignerError::FailedPrecondition(format!(
                        "device {id} is not awaiting activation (activated already, or \
                         registered with a secret)"
                    ))
                    .into());
                }
                let record =
                    DeviceRecord::with_new_secret(id, Some(&existing), now_ms(), |id, v| {
                        custody.seal(id, v, secret)
                    })?;
                Ok(vec![Write::Put(record)])
            }),
        )
        .await?;
    match writes.first() {
        Some(Write::Put(record)) => Ok(v1::CompleteActivationResponse {
            device: Some(device_message(record)),
        }),
        _ => Err(SignerError::Registry("expected one written record".into())),
    }
}
