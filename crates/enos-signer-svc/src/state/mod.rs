//! [`SignerState`]: everything a call needs, built once from the config and
//! shared by both services, and the parts that exist only for it.
//!
//! | module | what it holds |
//! |---|---|
//! | [`policy`] | TTL, sign method and broker URLs per product |
//! | [`rate_limit`] | a budget per identity (governor) |
//! | [`refusal_log`] | [`refusal_log::RefusalLog`]: refusals a caller can repeat for free, sampled |
//! | [`admin_names`] | `server.admin_names`: the admin allow-list |

pub mod admin_names;
pub mod policy;
pub mod rate_limit;
pub mod refusal_log;

use std::sync::Arc;

use enos_signer_proto::identity::PeerIdentity;

use crate::{
    audit::{Audit, AuditRecord},
    config::SignerConfig,
    custody,
    error::Result,
    listener::metrics::Metrics,
    state::policy::Policy,
    state::rate_limit::RateLimiter,
};
use enos_registry::{self as registry, Registry};

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
    pub identities: crate::listener::peer::IdentityCache,
    /// Samples the log lines of refusals a caller can repeat for free.
    pub refusal_log: crate::state::refusal_log::RefusalLog,
    /// Bytes one import may stream (`server.limits.import_max_bytes`).
    pub import_max_bytes: usize,
    /// The TLS material, following its files: the listeners take their
    /// configs from it, Admin its admin-CA verifier.
    pub tls: Arc<crate::listener::tls_reload::ReloadingTls>,
    /// `server.admin_names`: who may use Admin (empty: any admin).
    pub admin_names: admin_names::AdminNames,
    /// With `[ca]`: the CA of the devices' client certificates
    /// (enrollment, renewal, revocation); `None`: the operator's own PKI.
    pub ca: Option<Arc<crate::ca::CertificateAuthority>>,
    /// With `[enos_api]`: EnOS's certificate API, per environment.
    pub enos_api: Option<Arc<crate::enos_api::EnosApi>>,
}

impl SignerState {
    /// Opens the registry, custody and audit sink the config names.
    pub fn open(config: &SignerConfig) -> Result<Self> {
        let metrics = Metrics::new();
        let registry = registry::open(&config.registry)?;
        {
            let registry = Arc::downgrade(&registry);
            metrics.watch_registry(move || registry.upgrade().and_then(|r| r.change_feed_up()));
        }
        let custody = custody::build(&config.custody)?;
        let ca = config.ca.as_ref().map(|ca| {
            Arc::new(crate::ca::CertificateAuthority::new(
                ca.clone(),
                Arc::clone(&registry),
                custody.clone(),
            ))
        });
        let enos_api = config.enos_api.as_ref().map(|api| {
            Arc::new(
                crate::enos_api::EnosApi::new(api.clone(), custody.clone().into_custody())
                    .with_metrics(metrics.enos_api()),
            )
        });
        Ok(SignerState {
            enos_api,
            tls: Arc::new(crate::listener::tls_reload::ReloadingTls::load(
                &config.server,
                metrics.clone(),
                ca.is_some().then(|| Arc::clone(&registry)),
            )?),
            admin_names: admin_names::AdminNames::new(&config.server.admin_names),
            custody,
            registry,
            ca,
            policy: Policy::from_config(&config.policy)?,
            audit: {
                let audit = Audit::open(&config.audit)?;
                metrics.watch_audit(audit.losses_reader());
                audit
            },
            limiter: RateLimiter::new(config.rate_limit.as_ref())?,
            metrics,
            identities: crate::listener::peer::IdentityCache::new(IDENTITY_CACHE_CAPACITY),
            refusal_log: crate::state::refusal_log::RefusalLog::default(),
            import_max_bytes: config.server.limits.import_max_bytes,
        })
    }

    /// The identity `found` for an issuance `rpc`, or, when the caller
    /// proved none, the refusal logged and counted (with the time since
    /// `started`) and returned as the caller's status.
    pub fn identified<T>(
        &self,
        rpc: &'static str,
        found: crate::error::Result<T>,
        started: std::time::Instant,
    ) -> Result<T, tonic::Status> {
        found.map_err(|e| {
            self.refused(rpc, None, &e, None);
            self.metrics.issuance(
                rpc,
                crate::listener::metrics::outcome_name(Some(e.code())),
                started.elapsed(),
            );
            e.into()
        })
    }

    /// Logs and audits a refused call, unless the caller can repeat it for
    /// free: with no identity (nothing proved) it is never audited, and
    /// it, like a caller over its rate limit, is logged at most once a
    /// second per caller. Metrics count every call elsewhere.
    pub fn refused(
        &self,
        rpc: &'static str,
        identity: Option<&PeerIdentity>,
        error: &crate::SignerError,
        record: Option<&AuditRecord>,
    ) {
        let name = crate::audit::identity_name(identity);
        let cheap = identity.is_none() || error.code() == tonic::Code::ResourceExhausted;
        if cheap {
            let Some(left_out) = self.refusal_log.sample(&name) else {
                return;
            };
            tracing::info!(rpc, identity = %name, code = ?error.code(), error = %error, left_out, "refused (sampled: at most one line a second per caller)");
        } else {
            tracing::info!(rpc, identity = %name, code = ?error.code(), error = %error, "refused");
        }
        if let (Some(record), Some(_)) = (record, identity) {
            self.audit_best_effort(record);
        }
    }

    /// Writes an audit record for an outcome already decided (a refusal,
    /// or an admin change that is committed), without waiting for it: a
    /// sink failure is logged and cannot change that outcome.
    pub fn audit_best_effort(&self, record: &AuditRecord) {
        self.audit.record_detached(record);
    }
}

/// Client certificates whose identity is remembered (a few hundred bytes
/// each): more than the connections one signer serves at once.
const IDENTITY_CACHE_CAPACITY: usize = 50_000;

impl SignerState {
    /// The caller's identity (Unauthenticated if none).
    pub fn identity<T>(&self, request: &tonic::Request<T>) -> Result<PeerIdentity> {
        self.identities.identity(request, &self.tls.current())
    }

    /// The caller's identity and its certificate's serial, refused
    /// (Unauthenticated) when the registry lists that certificate as
    /// revoked: with `[ca]`, a revocation on any replica reaches the
    /// connections already open at their next call. The lookup is in
    /// memory while the registry's change feed is up, a read otherwise.
    pub async fn identify<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<(PeerIdentity, Arc<str>)> {
        let (identity, serial) = self.identities.identify(request, &self.tls.current())?;
        if self.ca.is_some()
            && matches!(identity, PeerIdentity::Device { .. })
            && self.registry.is_revoked(&serial).await?
        {
            return Err(crate::SignerError::Unauthenticated(
                "the client certificate is revoked",
            ));
        }
        Ok((identity, serial))
    }
}
