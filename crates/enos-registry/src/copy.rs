//! `enos-signer registry copy --from OLD.toml --to NEW.toml`: every record
//! of one registry into another (redb → PostgreSQL, and back).
//!
//! The CA goes too (issue 25): its row (the key as custody stores it, the
//! chain), every certificate it issued and every enrollment token.
//!
//! Secrets stay sealed: records are copied byte for byte and no custody
//! is built, so both must be sealed under the same custody (the same key
//! or token; the signer checks that before it calls [`copy`]); changing
//! custody is `custody migrate`. The destination is created (redb file)
//! or migrated (PostgreSQL schema) when needed ([`open_pair`]).
//!
//! Idempotent and resumable: each page is one destination transaction
//! that writes only records missing or older there; a record changed in
//! the destination since (an admin call on the new registry) is kept. An
//! interrupted copy is finished by running it again. Certificates and
//! tokens are merged: the destination gains what it lacks (a record, a
//! revocation, a use, a successor) and never loses one, so a revocation
//! made on either side stands. The CA row is written when the
//! destination has none (or has the same key still awaiting its
//! certificate); a destination with another CA key is refused.

use std::sync::{Arc, Mutex};

use crate::{
    CaRecord, DeviceId, DeviceRecord, MergeCounts, ProductWrite, Registry, RegistryConfig, Write,
    error::{RegistryError, Result},
};

/// Records read and written per transaction.
const PAGE: usize = 500;

/// The totals of one copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Records in the source.
    pub read: u64,
    /// Records written that the destination lacked.
    pub created: u64,
    /// Records written over an older copy in the destination.
    pub updated: u64,
    /// Records already identical in the destination (an earlier run).
    pub unchanged: u64,
    /// Records left alone because the destination's is newer.
    pub kept_newer: u64,
    /// Product secrets written (created or updated) in the destination.
    pub products_copied: u64,
    /// Whether the CA row was written in the destination (the signer is a
    /// CA and the destination lacked it, or lacked its chain).
    pub ca_copied: bool,
    /// The certificates, as merged into the destination: which were new
    /// there, which gained a revocation or a successor, which were there.
    pub certificates: MergeCounts,
    /// The enrollment tokens, as merged into the destination (by the
    /// same rule: a use or a revocation is never undone).
    pub enroll_tokens: MergeCounts,
    /// The EnOS certificate records (issue 26), merged by the same rule.
    pub enos_certificates: MergeCounts,
}

/// Opens the source and the destination of a copy: refuses one registry
/// named twice, and creates the destination (a redb file that does not
/// exist yet, the PostgreSQL schema) when needed.
pub fn open_pair(
    from: &RegistryConfig,
    to: &RegistryConfig,
) -> Result<(Arc<dyn Registry>, Arc<dyn Registry>)> {
    if from == to {
        return Err(RegistryError::Config(
            "registry copy: both configs name the same registry".into(),
        ));
    }
    let source = crate::open(from)?;
    let missing_file = matches!(to, RegistryConfig::Redb { path } if !path.exists());
    if missing_file || matches!(to, RegistryConfig::Postgres(_)) {
        crate::create(to)?;
    }
    Ok((source, crate::open(to)?))
}

/// Copies every record of `source` into `destination`. `progress` is
/// called after each page with the totals so far.
pub async fn copy(
    source: &dyn Registry,
    destination: &dyn Registry,
    mut progress: impl FnMut(&CopyReport),
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    let mut after: Option<DeviceId> = None;
    loop {
        let page = source.list(None, after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        report.read += page.len() as u64;
        let ids: Vec<DeviceId> = page.iter().map(|r| r.id.clone()).collect();
        // The change runs inside the destination's transaction and may
        // run on another thread: it reports its counts through a mutex.
        let counts = Arc::new(Mutex::new(CopyReport::default()));
        let seen = Arc::clone(&counts);
        destination
            .modify(
                ids,
                Box::new(move |current| {
                    let mut counts = seen.lock().map_err(|_| poisoned())?;
                    Ok(page
                        .into_iter()
                        .zip(current)
                        .filter_map(|(record, existing)| {
                            decide(record, existing.as_ref(), &mut counts)
                        })
                        .collect())
                }),
            )
            .await?;
        let page_report = counts.lock().map_err(|_| poisoned())?.clone();
        report.created += page_report.created;
        report.updated += page_report.updated;
        report.unchanged += page_report.unchanged;
        report.kept_newer += page_report.kept_newer;
        progress(&report);
    }
    // Product secrets (few): one transaction each, by the same rule.
    for product in source.list_products().await? {
        let key = product.product_key.clone();
        let copied = Arc::new(Mutex::new(false));
        let seen = Arc::clone(&copied);
        destination
            .modify_product(
                key,
                Box::new(move |existing| {
                    let newer = existing.as_ref().is_some_and(|e| {
                        (e.secret_version, e.updated_at_ms)
                            >= (product.secret_version, product.updated_at_ms)
                    });
                    match existing {
                        Some(e) if newer => Ok(ProductWrite::Put(e)),
                        _ => {
                            *seen.lock().map_err(|_| poisoned())? = true;
                            Ok(ProductWrite::Put(product))
                        }
                    }
                }),
            )
            .await?;
        if *copied.lock().map_err(|_| poisoned())? {
            report.products_copied += 1;
        }
    }
    progress(&report);
    // The CA: its row first, so that a destination that refuses it (it
    // has another CA) gets none of its certificates.
    if let Some(ca) = source.get_ca().await? {
        let copied = Arc::new(Mutex::new(false));
        let seen = Arc::clone(&copied);
        destination
            .modify_ca(Box::new(move |existing| {
                let (record, written) = decide_ca(ca, existing)?;
                *seen.lock().map_err(|_| poisoned())? = written;
                Ok(record)
            }))
            .await?;
        report.ca_copied = *copied.lock().map_err(|_| poisoned())?;
    }
    let mut after: Option<String> = None;
    loop {
        let page = source.list_certificates(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.serial.clone());
        let counts = destination.merge_certificates(page).await?;
        add(&mut report.certificates, counts);
        progress(&report);
    }
    let mut after: Option<[u8; 32]> = None;
    loop {
        let page = source.list_enroll_tokens(after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.hash);
        let counts = destination.merge_enroll_tokens(page).await?;
        add(&mut report.enroll_tokens, counts);
        progress(&report);
    }
    let mut after: Option<(DeviceId, String)> = None;
    loop {
        let page = source.list_enos_certificates(after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.device.clone(), last.cert_sn.clone()));
        let counts = destination.merge_enos_certificates(page).await?;
        add(&mut report.enos_certificates, counts);
        progress(&report);
    }
    Ok(report)
}

fn add(total: &mut MergeCounts, page: MergeCounts) {
    total.created += page.created;
    total.updated += page.updated;
    total.unchanged += page.unchanged;
}

/// The CA row to keep in the destination given the source's, and
/// whether it is the source's (written). The destination's own CA, with
/// another key, is never replaced.
fn decide_ca(source: CaRecord, existing: Option<CaRecord>) -> Result<(CaRecord, bool)> {
    match existing {
        None => Ok((source, true)),
        Some(e) if e == source => Ok((e, false)),
        Some(e) if e.key == source.key => {
            // The same key: the side that has its certificate wins (an
            // intermediate imported on one side only).
            if e.chain_der.is_empty() && !source.chain_der.is_empty() {
                Ok((source, true))
            } else {
                Ok((e, false))
            }
        }
        Some(_) => Err(RegistryError::Config(
            "registry copy: the destination has a CA with another key; refusing to replace it \
             (the certificates it issued would no longer verify)"
                .into(),
        )),
    }
}

fn poisoned() -> RegistryError {
    RegistryError::Store("copy counts lock poisoned".into())
}

/// What to do with one source record given the destination's.
fn decide(
    record: DeviceRecord,
    existing: Option<&DeviceRecord>,
    counts: &mut CopyReport,
) -> Option<Write> {
    match existing {
        None => {
            counts.created += 1;
            Some(Write::Put(record))
        }
        Some(e) if *e == record => {
            counts.unchanged += 1;
            None
        }
        Some(e)
            if (e.secret_version, e.updated_at_ms)
                > (record.secret_version, record.updated_at_ms) =>
        {
            counts.kept_newer += 1;
            None
        }
        Some(_) => {
            counts.updated += 1;
            Some(Write::Put(record))
        }
    }
}
