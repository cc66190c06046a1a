//! [`SignerState`]: everything a call needs, built once from the config and
//! shared by both services.

use std::sync::Arc;

use enos_signer_proto::identity::PeerIdentity;

use crate::{
    audit::{Audit, AuditRecord},
    config::SignerConfig,
    custody,
    error::Result,
    metrics::Metrics,
    policy::Policy,
    rate_limit::RateLimiter,
    registry::{self, Registry},
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
