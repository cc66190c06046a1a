//! The records of the signer as a CA (issue 25): the certificates it
//! issued ([`CertificateRecord`]), the one-time enrollment tokens
//! ([`EnrollTokenRecord`]), and its own key and chain ([`CaRecord`]);
//! the refusals of enrollment and renewal ([`CertificateRefusal`]); and
//! the rules both stores apply to them, so that redb and PostgreSQL
//! refuse alike.
//!
//! Serials are lower-case hex without separators (as
//! `enos_ca::Serial::to_hex` writes them); times are unix milliseconds.

use std::{
    collections::HashSet,
    fmt,
    sync::{PoisonError, RwLock},
};

use enos_custody::StoredCaKey;
use enos_domain::DeviceId;

use crate::error::Result;

/// One certificate the signer issued to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Its serial (lower-case hex): how a presented certificate, a
    /// revocation and a CRL entry name it. Unique.
    pub serial: String,
    /// The device it was issued to: renewal and revocation by device are
    /// checked against it.
    pub device: DeviceId,
    /// Start of validity, as in the certificate (for listings).
    pub not_before_ms: u64,
    /// End of validity, as in the certificate: renewal is refused after
    /// it, the CRL drops the entry after it, and the expiry metric counts
    /// by it.
    pub not_after_ms: u64,
    /// When it was issued (newest first in listings; the audit's time).
    pub issued_at_ms: u64,
    /// Set once it is revoked (never cleared): refused on every
    /// handshake and call, listed in the CRL until `not_after_ms`.
    pub revoked: Option<Revocation>,
    /// The serial of the certificate that renewed it: a renewed
    /// certificate is no longer counted as expiring.
    pub renewed_by: Option<String>,
}

/// When and why a certificate was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// When (the CRL entry's revocation date).
    pub at_ms: u64,
    /// Why, in words (`device disabled`, an operator's reason), for the
    /// listing and the audit.
    pub reason: String,
}

/// A one-time enrollment token, stored only as a hash.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollTokenRecord {
    /// SHA-256 of the token string: enough to recognise the token, useless
    /// to someone who reads the registry (the token has 256 random bits).
    pub hash: [u8; 32],
    /// The one device the token enrolls.
    pub device: DeviceId,
    /// When it was made (for listings and the audit).
    pub created_at_ms: u64,
    /// It is refused from this time on.
    pub expires_at_ms: u64,
    /// Set by the one enrollment that used it: single use.
    pub used_at_ms: Option<u64>,
    /// Set when it was revoked before use (by the operator, or because its
    /// device was disabled or deleted).
    pub revoked_at_ms: Option<u64>,
}

impl fmt::Debug for EnrollTokenRecord {
    /// Everything but the hash: a hash of a token is not printed either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollTokenRecord")
            .field("device", &self.device)
            .field("created_at_ms", &self.created_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("used_at_ms", &self.used_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish_non_exhaustive()
    }
}

/// What [`crate::Registry::revoke_certificates`] revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One certificate, by serial (revoked even if it expired already).
    Serial(String),
    /// Every certificate of a device that has not expired yet.
    Device(DeviceId),
}

/// Why a token or a renewal was refused (carried in
/// [`crate::RegistryError::Refusal`]). Messages name no token, hash or
/// key: they are safe to return to the caller and to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefusal {
    /// No token has this hash (a wrong or mistyped token).
    #[error("the enrollment token is not known")]
    TokenUnknown,
    /// The token was made for another device.
    #[error("the enrollment token was made for another device")]
    TokenForAnotherDevice,
    /// The token's time is over.
    #[error("the enrollment token has expired; make a new one")]
    TokenExpired,
    /// The token enrolled a device already (tokens are single use).
    #[error("the enrollment token was used already (a token enrolls once)")]
    TokenUsed,
    /// The token was revoked.
    #[error("the enrollment token was revoked")]
    TokenRevoked,
    /// No certificate has this serial (not issued by this CA).
    #[error("the certificate is not known to this CA")]
    CertificateUnknown,
    /// The certificate is revoked.
    #[error("the certificate is revoked")]
    CertificateRevoked,
    /// The certificate has expired: it cannot renew, the device enrolls
    /// again with a new token.
    #[error("the certificate has expired and cannot renew; enroll again with a new token")]
    CertificateExpired,
    /// The certificate was issued to another device.
    #[error("the certificate was issued to another device")]
    CertificateOfAnotherDevice,
    /// The device is not in the registry.
    #[error("the device is not registered")]
    DeviceUnknown,
    /// The device is disabled.
    #[error("the device is disabled")]
    DeviceDisabled,
}

/// The CA as the registry keeps it (one row): its key as custody stores
/// it, and its chain once it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// The CA key, sealed or named by the custody that holds it.
    pub key: StoredCaKey,
    /// The CA certificate first, up to the root (DER), served with every
    /// issued certificate; empty while an intermediate awaits its
    /// certificate.
    pub chain_der: Vec<Vec<u8>>,
    /// The intermediate's CSR (DER) until `ca import-cert` installs its
    /// certificate, so that it can be printed again.
    pub pending_csr_der: Option<Vec<u8>>,
    /// When the CA was made (for `ca show` and the audit).
    pub created_at_ms: u64,
}

/// The decision of a [`crate::Registry::modify_ca`]: given the current
/// CA row, the row to store, or an error to abort with (nothing written).
pub type CaChange = Box<dyn FnOnce(Option<CaRecord>) -> Result<CaRecord> + Send + 'static>;

/// What a merge of copied records did ([`crate::Registry::merge_certificates`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCounts {
    /// Records the destination lacked, written as they are.
    pub created: u64,
    /// Existing records that gained a revocation, a use or a successor.
    pub updated: u64,
    /// Existing records that had everything already (an earlier run).
    pub unchanged: u64,
}

/// What to write for a copied certificate given the destination's: the
/// record, or `None` when nothing changes. Revocations and successors
/// are only ever added.
pub(crate) fn merge_certificate(
    existing: Option<&CertificateRecord>,
    incoming: CertificateRecord,
    counts: &mut MergeCounts,
) -> Result<Option<CertificateRecord>> {
    let Some(existing) = existing else {
        counts.created += 1;
        return Ok(Some(incoming));
    };
    if existing.device != incoming.device {
        return Err(crate::RegistryError::Store(format!(
            "certificate {} belongs to {} in the destination, to {} in the source",
            incoming.serial, existing.device, incoming.device
        )));
    }
    let mut merged = existing.clone();
    if merged.revoked.is_none() {
        merged.revoked = incoming.revoked;
    }
    if merged.renewed_by.is_none() {
        merged.renewed_by = incoming.renewed_by;
    }
    Ok(if merged == *existing {
        counts.unchanged += 1;
        None
    } else {
        counts.updated += 1;
        Some(merged)
    })
}

/// What to write for a copied token given the destination's, by the
/// same rule: uses and revocations are only ever added.
pub(crate) fn merge_token(
    existing: Option<&EnrollTokenRecord>,
    incoming: EnrollTokenRecord,
    counts: &mut MergeCounts,
) -> Result<Option<EnrollTokenRecord>> {
    let Some(existing) = existing else {
        counts.created += 1;
        return Ok(Some(incoming));
    };
    if existing.device != incoming.device {
        return Err(crate::RegistryError::Store(format!(
            "an enrollment token of {} in the source is {}'s in the destination",
            incoming.device, existing.device
        )));
    }
    let mut merged = existing.clone();
    merged.used_at_ms = merged.used_at_ms.or(incoming.used_at_ms);
    merged.revoked_at_ms = merged.revoked_at_ms.or(incoming.revoked_at_ms);
    Ok(if merged == *existing {
        counts.unchanged += 1;
        None
    } else {
        counts.updated += 1;
        Some(merged)
    })
}

/// The reason recorded when a deleted device's certificates are revoked.
pub const REASON_DEVICE_DELETED: &str = "device deleted";
/// The reason recorded when a disabled device's certificates are revoked.
pub const REASON_DEVICE_DISABLED: &str = "device disabled";

/// Whether `token` may enroll `device` at `now_ms` (the device itself is
/// checked apart). The order decides which refusal a token with several
/// faults gets: the most useful to the operator first. The signer asks it
/// before it signs anything (a spent token costs no signature); the
/// enrollment's transaction asks it again.
pub fn check_token(
    token: &EnrollTokenRecord,
    device: &DeviceId,
    now_ms: u64,
) -> std::result::Result<(), CertificateRefusal> {
    if token.device != *device {
        Err(CertificateRefusal::TokenForAnotherDevice)
    } else if token.used_at_ms.is_some() {
        Err(CertificateRefusal::TokenUsed)
    } else if token.revoked_at_ms.is_some() {
        Err(CertificateRefusal::TokenRevoked)
    } else if now_ms >= token.expires_at_ms {
        Err(CertificateRefusal::TokenExpired)
    } else {
        Ok(())
    }
}

/// Whether `old` may be renewed by `device` at `now_ms` (the device itself
/// is checked apart).
pub(crate) fn check_renewal(
    old: &CertificateRecord,
    device: &DeviceId,
    now_ms: u64,
) -> std::result::Result<(), CertificateRefusal> {
    if old.device != *device {
        Err(CertificateRefusal::CertificateOfAnotherDevice)
    } else if old.revoked.is_some() {
        Err(CertificateRefusal::CertificateRevoked)
    } else if now_ms >= old.not_after_ms {
        Err(CertificateRefusal::CertificateExpired)
    } else {
        Ok(())
    }
}

/// Whether a device in this state may get a certificate: `None` when it
/// is not registered, else whether it is enabled.
pub(crate) fn check_device(enabled: Option<bool>) -> std::result::Result<(), CertificateRefusal> {
    match enabled {
        None => Err(CertificateRefusal::DeviceUnknown),
        Some(false) => Err(CertificateRefusal::DeviceDisabled),
        Some(true) => Ok(()),
    }
}

/// The serials of revoked certificates in memory: the per-call and
/// per-handshake check without a round trip.
///
/// A generation goes up whenever the set may have changed, so that a
/// caller keeping verdicts (per connection) knows when to drop them. The
/// set is *trusted* only while it is known to be complete: redb always
/// (one process writes the file); PostgreSQL from a reload made while the
/// change feed listens until the next revocation the feed reports (or a
/// feed outage). While untrusted, callers read the database.
pub(crate) struct RevokedSet {
    /// The serials, the trust and the generation, changed together.
    inner: RwLock<RevokedInner>,
}

/// The state of a [`RevokedSet`], under one lock.
struct RevokedInner {
    /// Every revoked serial (when trusted).
    serials: HashSet<String>,
    /// Whether `serials` may be answered from.
    trusted: bool,
    /// Advanced by every possible change of the set.
    generation: u64,
}

impl RevokedSet {
    /// A set holding `serials`, trusted or not.
    pub(crate) fn new(serials: HashSet<String>, trusted: bool) -> Self {
        RevokedSet {
            inner: RwLock::new(RevokedInner {
                serials,
                trusted,
                generation: 0,
            }),
        }
    }

    /// Whether `serial` is revoked, if the set can be trusted now.
    pub(crate) fn lookup(&self, serial: &str) -> Option<bool> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.trusted.then(|| inner.serials.contains(serial))
    }

    /// Every serial in the set (redb: the CRL's candidates).
    pub(crate) fn serials(&self) -> Vec<String> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.serials.iter().cloned().collect()
    }

    /// The current generation.
    pub(crate) fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// redb, after a commit that revoked `serials`: they join the set.
    pub(crate) fn add(&self, serials: impl IntoIterator<Item = String>) {
        let mut serials = serials.into_iter().peekable();
        if serials.peek().is_none() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.serials.extend(serials);
        inner.generation += 1;
    }

    /// PostgreSQL: the set may be missing a revocation (one committed
    /// here or reported by the feed, or the feed is down): stop answering
    /// from it until a reload; never add the serial ourselves.
    pub(crate) fn stale(&self) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.trusted = false;
        inner.generation += 1;
    }

    /// Installs `serials`, read from the database after the generation was
    /// `read_at`, unless the set went stale since (then a newer reload is
    /// due, and this one may miss a revocation). True when installed.
    pub(crate) fn install(&self, read_at: u64, serials: HashSet<String>) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.generation != read_at {
            return false;
        }
        inner.serials = serials;
        inner.trusted = true;
        inner.generation += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_read_before_a_revocation_is_not_installed() {
        let set = RevokedSet::new(HashSet::new(), false);
        assert_eq!(set.lookup("01"), None, "untrusted: read through");
        let read_at = set.generation();
        set.stale();
        assert!(
            !set.install(read_at, HashSet::new()),
            "a revocation came since"
        );
        assert_eq!(set.lookup("01"), None);
        let read_at = set.generation();
        assert!(set.install(read_at, HashSet::from(["01".to_owned()])));
        assert_eq!(set.lookup("01"), Some(true));
        assert_eq!(set.lookup("02"), Some(false));
        assert!(
            set.generation() > read_at,
            "an install bumps the generation"
        );
    }

    #[test]
    fn refusal_messages_name_no_secret_and_a_token_debug_omits_its_hash() {
        let token = EnrollTokenRecord {
            hash: [0xab; 32],
            device: DeviceId::new(
                enos_sign_core::ProductKey::new("p").expect("pk"),
                enos_sign_core::DeviceKey::new("d").expect("dk"),
            ),
            created_at_ms: 1,
            expires_at_ms: 2,
            used_at_ms: None,
            revoked_at_ms: None,
        };
        let debug = format!("{token:?}");
        assert!(!debug.contains("ab") && !debug.contains("171"), "{debug}");
        assert_eq!(
            crate::RegistryError::Refusal(CertificateRefusal::TokenUsed).to_string(),
            "the enrollment token was used already (a token enrolls once)"
        );
    }
}
