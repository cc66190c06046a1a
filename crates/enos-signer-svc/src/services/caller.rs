//! Who is calling a Credentials RPC: [`identified`] asks the listener's
//! identity (and refuses, cheaply, a caller that proved none), and
//! [`caller_device`] requires a device. With `[ca]`, a device whose
//! certificate is revoked is refused here, on every connection. Shared by every Credentials RPC
//! (issuance, activation, batch login), so that they depend on it and
//! not on each other.

use std::time::Instant;

use enos_registry::DeviceId;
use enos_signer_proto::identity::PeerIdentity;
use tonic::{Request, Status};

use crate::{
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    state::SignerState,
};

/// The caller as a device; an admin certificate is refused with `why`.
pub(crate) fn caller_device(identity: &PeerIdentity, why: &str) -> Result<DeviceId> {
    match identity {
        PeerIdentity::Device {
            product_key,
            device_key,
        } => Ok(DeviceId::new(product_key.clone(), device_key.clone())),
        PeerIdentity::Admin { .. } => Err(SignerError::PermissionDenied(why.into())),
    }
}

/// The caller's identity; a caller that proved none is refused (sampled
/// log, counted, never audited) with the status it gets.
pub(crate) async fn identified<T>(
    state: &SignerState,
    rpc: &'static str,
    request: &Request<T>,
    started: Instant,
) -> Result<PeerIdentity, Status> {
    state
        .identify(request)
        .await
        .map(|(identity, _)| identity)
        .map_err(|e| {
            state.refused(rpc, None, &e, None);
            state
                .metrics
                .issuance(rpc, outcome_name(Some(e.code())), started.elapsed());
            e.into()
        })
}
