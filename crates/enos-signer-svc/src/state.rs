//! [`SignerState`]: everything a call needs, built once from the config and
//! shared by both services.

use std::sync::Arc;

use enos_sign_core::{ClientId, DeviceKey, ProductKey};
use enos_signer_proto::{identity::PeerIdentity, v1};

use crate::{
    audit::{Audit, AuditRecord},
    config::SignerConfig,
    custody,
    error::{Result, SignerError},
    metrics::Metrics,
    policy::Policy,
    rate_limit::RateLimiter,
    registry::{self, DeviceId, Registry},
};

/// Shared by every call.
pub struct SignerState {
    /// Device records.
    pub registry: Arc<dyn Registry>,
    /// Seals secrets and signs with them.
    pub custody: custody::CustodyHandle,
    /// TTL, methods, broker URLs.
    pub policy: Policy,
    /// The audit trail.
    pub audit: Audit,
    /// Per-identity budget.
    pub limiter: RateLimiter,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// Identities of client certificates already seen.
    pub identities: crate::peer::IdentityCache,
}

impl SignerState {
    /// Opens the registry, custody and audit sink the config names.
    pub fn open(config: &SignerConfig) -> Result<Self> {
        Ok(SignerState {
            custody: custody::build(&config.custody)?,
            registry: registry::open(&config.registry)?,
            policy: Policy::from_config(&config.policy)?,
            audit: Audit::open(&config.audit)?,
            limiter: RateLimiter::new(config.rate_limit.as_ref())?,
            metrics: Metrics::new(),
            identities: crate::peer::IdentityCache::new(IDENTITY_CACHE_CAPACITY),
        })
    }

    /// Writes an audit record for an outcome already decided (a refusal,
    /// or an admin change that is committed): a sink failure is logged by
    /// [`Audit::record`] and cannot change that outcome.
    pub fn audit_best_effort(&self, record: &AuditRecord) {
        if let Err(e) = self.audit.record(record) {
            tracing::error!(error = %e, event = record.event, "audit record lost");
        }
    }
}

/// Client certificates whose identity is remembered (a few hundred bytes
/// each): more than the connections one signer serves at once.
const IDENTITY_CACHE_CAPACITY: usize = 50_000;

impl SignerState {
    /// The caller's identity (Unauthenticated if none).
    pub fn identity<T>(&self, request: &tonic::Request<T>) -> Result<PeerIdentity> {
        crate::peer::identity_cached(request, Some(&self.identities))
    }
}

/// How an identity is written in audit records.
pub fn identity_name(identity: Option<&PeerIdentity>) -> String {
    identity.map_or_else(|| "unauthenticated".to_owned(), PeerIdentity::to_string)
}

/// Parses a product key field, naming `field` in the error.
pub fn product_key(field: &'static str, value: &str) -> Result<ProductKey> {
    ProductKey::new(value).map_err(|e| SignerError::invalid(field, e))
}

/// Parses a device key field, naming `field` in the error.
pub fn device_key(field: &'static str, value: &str) -> Result<DeviceKey> {
    DeviceKey::new(value).map_err(|e| SignerError::invalid(field, e))
}

/// Parses a client id field, naming `field` in the error.
pub fn client_id(field: &'static str, value: &str) -> Result<ClientId> {
    ClientId::new(value).map_err(|e| SignerError::invalid(field, e))
}

/// Parses a required `DeviceRef` whose fields are `{prefix}.product_key`
/// and `{prefix}.device_key`.
pub fn device_ref(
    prefix: &'static str,
    fields: (&'static str, &'static str),
    value: Option<&v1::DeviceRef>,
) -> Result<DeviceId> {
    let value = value.ok_or_else(|| SignerError::invalid(prefix, "is required"))?;
    Ok(DeviceId::new(
        product_key(fields.0, &value.product_key)?,
        device_key(fields.1, &value.device_key)?,
    ))
}

/// The proto form of a record (never the secret).
pub fn device_message(record: &registry::DeviceRecord) -> v1::Device {
    v1::Device {
        product_key: record.id.product_key.to_string(),
        device_key: record.id.device_key.to_string(),
        enabled: record.enabled,
        secret_version: record.secret_version,
        gateway: record.gateway.as_ref().map(v1::DeviceRef::from),
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
}
