//! The EnOS device certificates the signer got for its gateways (issue
//! 26): one [`EnosCertificateRecord`] per certificate EnOS issued, so
//! that the registry knows which serial each device holds (a renewal
//! names one of its own; `enos-cert list` shows which is held).
//!
//! EnOS is the authority on a certificate's state; the registry records
//! what the signer did or learnt: issued (apply, renew), superseded by a
//! renewal, revoked (by `enos-cert revoke`, a device's deletion, or a
//! gateway retiring its old one). Records are read from the database on
//! every call (no cache): a replica never trusts a copy of its own.
//!
//! Keyed by device and serial (`certSN`, a decimal string): two EnOS
//! environments have two CAs whose serials may meet.

use enos_domain::DeviceId;

use crate::certificates::Revocation;

/// One EnOS device certificate, as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnosCertificateRecord {
    /// The device EnOS issued it for (the caller of apply or renew, never
    /// one it named): a renewal's serial is checked against it.
    pub device: DeviceId,
    /// EnOS's serial (`certSN`), decimal: how renew, revoke and list name
    /// it.
    pub cert_sn: String,
    /// Start of validity, from the certificate (for listings).
    pub not_before_ms: u64,
    /// End of validity, from the certificate: an expired one is not
    /// current and cannot be renewed.
    pub not_after_ms: u64,
    /// `issueAuthority` (`RSA` or `ECC`): which EnOS root signed it, i.e.
    /// the key's type.
    pub issue_authority: String,
    /// When the signer recorded it (newest first in listings; the current
    /// one is the newest valid).
    pub recorded_at_ms: u64,
    /// Set once it is known revoked (never cleared), with the reason in
    /// words (`superseded`, `cessation-of-operation`, …).
    pub revoked: Option<Revocation>,
    /// The serial of the certificate that renewed it: it is no longer the
    /// device's current one, though it stays valid at EnOS until the
    /// gateway (or EnOS) revokes it.
    pub superseded_by: Option<String>,
}

impl EnosCertificateRecord {
    /// Neither revoked nor expired at `now_ms` (a superseded one may
    /// still be: the gateway uses it until the new one is proven).
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        self.revoked.is_none() && now_ms < self.not_after_ms
    }

    /// Its state in one word, for listings: `valid`, `superseded`,
    /// `revoked` or `expired`.
    pub fn status_at(&self, now_ms: u64) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if now_ms >= self.not_after_ms {
            "expired"
        } else if self.superseded_by.is_some() {
            "superseded"
        } else {
            "valid"
        }
    }
}

/// The device's current certificate among `certs` at `now_ms`: the
/// newest recorded that is valid and not superseded.
pub fn current(certs: &[EnosCertificateRecord], now_ms: u64) -> Option<&EnosCertificateRecord> {
    certs
        .iter()
        .filter(|c| c.is_valid_at(now_ms) && c.superseded_by.is_none())
        .max_by(|a, b| (a.recorded_at_ms, &a.cert_sn).cmp(&(b.recorded_at_ms, &b.cert_sn)))
}

/// Newest first, then by serial (both stores list in this order).
pub(crate) fn sort_newest_first(certs: &mut [EnosCertificateRecord]) {
    certs.sort_by(|a, b| (b.recorded_at_ms, &b.cert_sn).cmp(&(a.recorded_at_ms, &a.cert_sn)));
}

/// What to write for a copied record given the destination's (as
/// [`crate::certificates::merge_certificate`]): revocations and
/// successors are only ever added.
pub(crate) fn merge(
    existing: Option<&EnosCertificateRecord>,
    incoming: EnosCertificateRecord,
    counts: &mut crate::MergeCounts,
) -> Option<EnosCertificateRecord> {
    let Some(existing) = existing else {
        counts.created += 1;
        return Some(incoming);
    };
    let mut merged = existing.clone();
    if merged.revoked.is_none() {
        merged.revoked = incoming.revoked;
    }
    if merged.superseded_by.is_none() {
        merged.superseded_by = incoming.superseded_by;
    }
    if merged == *existing {
        counts.unchanged += 1;
        None
    } else {
        counts.updated += 1;
        Some(merged)
    }
}
