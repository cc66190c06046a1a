//! `enos-signer custody migrate`: re-seals every device secret from one
//! custody to another (software ↔ HSM).
//!
//! Atomic per record: a secret is opened by the source custody and sealed
//! by the target outside the registry, both are checked to sign the same
//! password, and the new sealed form replaces the old one in one
//! [`Registry::modify`] transaction, only if the record has not changed
//! meanwhile. A record is therefore always either wholly in the source
//! scheme or wholly in the target scheme.
//!
//! Resumable: records already in the target scheme are skipped, so an
//! interrupted run (Ctrl-C, a crash, the token going away) is finished by
//! running it again. Nothing is lost at any point: the old sealed form is
//! replaced only by one that was just shown to sign identically.
//!
//! Run it with the service stopped (the embedded registry is one writer):
//! `enos-signer custody migrate --from OLD.toml --to NEW.toml`
//! moves the registry both configs name from OLD's custody to NEW's
//! ([`migrate_configs`]); then serve with NEW. `enos-signer custody
//! init-hsm --config NEW.toml` creates the token's keys first
//! ([`init_hsm`]).

use std::{ops::ControlFlow, sync::Arc};

use enos_custody::{Custody, SealedSecret};
use enos_sign_core::{ClientId, HexCase, ProductKey, SignMethod, SignedFields, TimestampMs};

use crate::{
    SignerConfig,
    config::CustodyConfig,
    custody,
    error::{Result, SignerError},
};
use enos_domain::now_ms;
use enos_registry::{self as registry, DeviceId, DeviceRecord, ProductWrite, Registry, Write};

/// How many records are read per registry page.
const PAGE: usize = 256;

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Re-sealed under the target custody and committed.
    Migrated,
    /// Already in the target scheme (an earlier, interrupted run).
    AlreadyMigrated,
    /// Left as it was; the reason (never a secret). Running again retries.
    Failed(String),
}

/// The totals of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Records re-sealed by this run.
    pub migrated: u64,
    /// Records that were already in the target scheme.
    pub already_migrated: u64,
    /// Records left unchanged, with the reason.
    pub failed: Vec<(DeviceId, String)>,
    /// Product secrets left unchanged, with the reason (the counts above
    /// include product secrets).
    pub failed_products: Vec<(ProductKey, String)>,
    /// Whether the run was stopped before the end by the progress callback.
    pub interrupted: bool,
}

/// Creates the KEK and record MAC key on the token `config`'s HSM custody
/// names. Refuses when the config's custody is not an HSM, or when the
/// keys exist already.
pub fn init_hsm(config: &SignerConfig) -> Result<()> {
    let CustodyConfig::Pkcs11(hsm) = &config.custody else {
        return Err(SignerError::Config(
            "init-hsm: the config's [custody] is not kind = \"pkcs11\"".into(),
        ));
    };
    enos_custody_pkcs11::generate_kek(hsm)
        .map_err(|e| SignerError::Custody(enos_custody::CustodyError::from(e)))
}

/// The source custody of a migration: as [`custody::build`], except that
/// an HSM custody may export (the only place that allows it).
pub fn build_source(config: &CustodyConfig) -> Result<Arc<dyn Custody>> {
    match config {
        CustodyConfig::Pkcs11(hsm) => Ok(Arc::new(
            enos_custody_pkcs11::Pkcs11Custody::connect_with(
                hsm,
                enos_custody_pkcs11::ExportPolicy::AllowForMigration,
            )
            .map_err(enos_custody::CustodyError::from)?,
        )),
        other => custody::build(other).map(custody::CustodyHandle::into_custody),
    }
}

/// Migrates the registry `target` and `source` both name from `source`'s
/// custody to `target`'s.
pub async fn migrate_configs(
    target: &SignerConfig,
    source: &SignerConfig,
    progress: impl FnMut(&DeviceId, &Outcome) -> ControlFlow<()>,
) -> Result<MigrationReport> {
    if target.registry != source.registry {
        return Err(SignerError::Config(
            "the two configs name different registries; a migration re-seals one registry in place"
                .into(),
        ));
    }
    let from = build_source(&source.custody)?;
    let to = custody::build(&target.custody)?.into_custody();
    let registry = registry::open(&target.registry)?;
    migrate(&*registry, from, to, progress).await
}

/// Re-seals every record from `from` to `to`. `progress` sees each record
/// as it is done and may stop the run ([`ControlFlow::Break`]); what was
/// committed until then stays committed.
///
/// `from` must be able to [`Custody::open`]: an HSM custody connected with
/// `ExportPolicy::AllowForMigration` when moving back to software custody.
pub async fn migrate(
    registry: &dyn Registry,
    from: Arc<dyn Custody>,
    to: Arc<dyn Custody>,
    mut progress: impl FnMut(&DeviceId, &Outcome) -> ControlFlow<()>,
) -> Result<MigrationReport> {
    if from.scheme() == to.scheme() {
        return Err(SignerError::Config(format!(
            "source and target custody are both {}; nothing to migrate",
            to.scheme()
        )));
    }
    let mut report = MigrationReport::default();
    let mut after: Option<DeviceId> = None;
    loop {
        let page = registry.list(None, after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else {
            migrate_products(registry, &from, &to, &mut report).await?;
            return Ok(report);
        };
        after = Some(last.id.clone());
        for record in page {
            let outcome = migrate_one(registry, &from, &to, record.clone()).await;
            match &outcome {
                Outcome::Migrated => report.migrated += 1,
                Outcome::AlreadyMigrated => report.already_migrated += 1,
                Outcome::Failed(reason) => report.failed.push((record.id.clone(), reason.clone())),
            }
            if progress(&record.id, &outcome).is_break() {
                report.interrupted = true;
                return Ok(report);
            }
        }
    }
}

async fn migrate_one(
    registry: &dyn Registry,
    from: &Arc<dyn Custody>,
    to: &Arc<dyn Custody>,
    record: DeviceRecord,
) -> Outcome {
    // A device awaiting activation has nothing sealed: nothing to move.
    let Some(old) = record.sealed.clone() else {
        return Outcome::AlreadyMigrated;
    };
    if old.scheme == to.scheme() {
        return Outcome::AlreadyMigrated;
    }
    if old.scheme != from.scheme() {
        return Outcome::Failed(format!(
            "sealed by {}, neither the source ({}) nor the target ({})",
            old.scheme,
            from.scheme(),
            to.scheme()
        ));
    }
    // Custody calls block (an HSM takes its time): off the async threads.
    let (from, to) = (Arc::clone(from), Arc::clone(to));
    let id = record.id.clone();
    let expected = record.sealed.clone();
    let version = record.secret_version;
    let resealed =
        tokio::task::spawn_blocking(move || reseal(&*from, &*to, &id, version, &old)).await;
    let resealed = match resealed {
        Ok(Ok(sealed)) => sealed,
        Ok(Err(reason)) => return Outcome::Failed(reason),
        Err(join) => return Outcome::Failed(format!("re-sealing task failed: {join}")),
    };
    let committed = registry
        .modify(
            vec![record.id.clone()],
            Box::new(move |mut current| {
                // Compare and swap: only the record we re-sealed is replaced.
                match current.pop().flatten() {
                    Some(mut now) if now.sealed == expected && now.secret_version == version => {
                        now.sealed = Some(resealed);
                        now.updated_at_ms = now_ms();
                        Ok(vec![Write::Put(now)])
                    }
                    Some(_) => Err(SignerError::FailedPrecondition(
                        "the record changed during migration; run again".into(),
                    )
                    .into()),
                    None => Err(SignerError::FailedPrecondition(
                        "the record was deleted during migration".into(),
                    )
                    .into()),
                }
            }),
        )
        .await;
    match committed {
        Ok(_) => Outcome::Migrated,
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

/// Re-seals every product secret (few; after the devices), by the same
/// rule: opened, sealed, checked to sign alike, swapped only if unchanged.
async fn migrate_products(
    registry: &dyn Registry,
    from: &Arc<dyn Custody>,
    to: &Arc<dyn Custody>,
    report: &mut MigrationReport,
) -> Result<()> {
    for product in registry.list_products().await? {
        let key = product.product_key.clone();
        if product.sealed.scheme == to.scheme() {
            report.already_migrated += 1;
            continue;
        }
        let (f, t) = (Arc::clone(from), Arc::clone(to));
        let old = product.clone();
        let resealed = tokio::task::spawn_blocking(move || {
            // The probe signs as a device of the product would.
            let probe_id = DeviceId::new(
                old.product_key.clone(),
                enos_sign_core::DeviceKey::new("probe").map_err(|e| e.to_string())?,
            );
            let secret_ref = enos_custody::SecretRef::product(&old.product_key, old.secret_version);
            reseal_ref(&*f, &*t, secret_ref, &probe_id, &old.sealed)
        })
        .await;
        let resealed = match resealed {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(reason)) => {
                report.failed_products.push((key, reason));
                continue;
            }
            Err(join) => {
                report
                    .failed_products
                    .push((key, format!("re-sealing task failed: {join}")));
                continue;
            }
        };
        let committed = registry
            .modify_product(
                key.clone(),
                Box::new(move |current| match current {
                    Some(mut now) if now == product => {
                        now.sealed = resealed;
                        now.updated_at_ms = now_ms();
                        Ok(ProductWrite::Put(now))
                    }
                    _ => Err(SignerError::FailedPrecondition(
                        "the product record changed during migration; run again".into(),
                    )
                    .into()),
                }),
            )
            .await;
        match committed {
            Ok(_) => report.migrated += 1,
            Err(e) => report.failed_products.push((key, e.to_string())),
        }
    }
    Ok(())
}

/// Opens under `from`, seals under `to`, and checks that both sign the
/// same password. The plaintext lives only inside this function, in a
/// `DeviceSecret` that is wiped when it drops.
fn reseal(
    from: &dyn Custody,
    to: &dyn Custody,
    id: &DeviceId,
    version: u32,
    old: &SealedSecret,
) -> std::result::Result<SealedSecret, String> {
    reseal_ref(from, to, enos_custody::SecretRef::of(id, version), id, old)
}

/// [`reseal`] for any secret: `secret_ref` names it, `id` the fields of the
/// probe signature (for a product secret: the product and a probe key).
fn reseal_ref(
    from: &dyn Custody,
    to: &dyn Custody,
    secret_ref: enos_custody::SecretRef<'_>,
    id: &DeviceId,
    old: &SealedSecret,
) -> std::result::Result<SealedSecret, String> {
    let secret = from
        .open(secret_ref, old)
        .map_err(|e| format!("opening under {}: {e}", from.scheme()))?;
    let new = to
        .seal(secret_ref, &secret)
        .map_err(|e| format!("sealing under {}: {e}", to.scheme()))?;
    drop(secret);
    let timestamp = TimestampMs::from_millis(now_ms());
    // The channel device key has no default client id: the product key is
    // its client id.
    let probe = SignedFields::with_device_key_as_client_id(
        id.product_key.clone(),
        id.device_key.clone(),
        timestamp,
    )
    .or_else(|_| {
        Ok::<_, enos_sign_core::SignError>(SignedFields {
            client_id: ClientId::new(id.product_key.as_str())?,
            device_key: id.device_key.clone(),
            product_key: id.product_key.clone(),
            timestamp,
        })
    })
    .map_err(|e| format!("probe fields: {e}"))?;
    let sign = |custody: &dyn Custody, sealed: &SealedSecret| {
        custody
            .sign(
                secret_ref,
                sealed,
                &probe,
                SignMethod::HmacSha256,
                HexCase::Lower,
            )
            .map_err(|e| format!("probe signature under {}: {e}", custody.scheme()))
    };
    let (before, after) = (sign(from, old)?, sign(to, &new)?);
    if !before.matches_ignore_case(enos_sign_core::ExposeSecret::expose_secret(&after)) {
        return Err("the re-sealed secret signs differently; left unchanged".into());
    }
    Ok(new)
}
