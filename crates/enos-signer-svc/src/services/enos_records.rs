//! The registry's record of each gateway's EnOS certificates (issue 26,
//! "records and audit"), as the `EnosCertificates` service, the device
//! deletion and `enos-signer enos-cert` keep it.
//!
//! Order, as for the signer's own certificates: the checks (a renewal's
//! serial must be recorded as the caller's own valid certificate, before
//! EnOS is called), then the intent audited fail-closed, then EnOS's
//! call, then the registry's write, then the outcome (best effort). A
//! certificate EnOS issued that the registry cannot record is revoked at
//! EnOS again: no unrecorded certificate stays valid, and the gateway's
//! retry is not refused for a duplicate subject.

use enos_domain::now_ms;
use enos_registry::{DeviceId, EnosCertificateRecord, Registry};
use enos_signer_proto::identity::PeerIdentity;
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use crate::{
    audit::AuditRecord,
    enos_api::{Authority, EnosApiClient, IssuedEnosCert},
    error::{Result, SignerError},
    state::SignerState,
};

/// The reason recorded for a certificate superseded by a renewal and then
/// revoked (RFC 5280's name, as `enos-cert revoke --reason` spells it).
pub const REASON_SUPERSEDED: &str = "superseded";
/// The reason recorded when a deleted device's certificates are revoked.
pub const REASON_DEVICE_DELETED: &str = "cessation-of-operation";

/// Refuses a renewal of `cert_sn` unless the registry records it as
/// `device`'s own certificate, neither revoked nor expired (a superseded
/// one may renew: the gateway may have lost the first renewal's answer).
/// Called before EnOS is: a serial of another device, or one never
/// issued through this signer, costs EnOS nothing.
pub async fn check_renewable(
    registry: &dyn Registry,
    device: &DeviceId,
    cert_sn: &str,
) -> Result<()> {
    let certs = registry.enos_certificates_of(device).await?;
    let Some(cert) = certs.iter().find(|c| c.cert_sn == cert_sn) else {
        return Err(SignerError::PermissionDenied(format!(
            "EnOS certificate {cert_sn} is not recorded as {device}'s: a renewal names the \
             serial the signer issued to the caller (`enos-signer enos-cert list` shows it)"
        )));
    };
    if let Some(revoked) = &cert.revoked {
        return Err(SignerError::FailedPrecondition(format!(
            "EnOS certificate {cert_sn} of {device} is revoked ({}); apply for a new one",
            revoked.reason
        )));
    }
    if now_ms() >= cert.not_after_ms {
        return Err(SignerError::FailedPrecondition(format!(
            "EnOS certificate {cert_sn} of {device} has expired; apply for a new one"
        )));
    }
    Ok(())
}

/// The intent of an apply or renewal, audited before EnOS is called:
/// if it cannot be audited, nothing is asked of EnOS.
pub async fn audit_intent(
    state: &SignerState,
    rpc: &'static str,
    identity: &PeerIdentity,
    device: &DeviceId,
    renews: Option<&str>,
) -> Result<()> {
    let event = match rpc {
        "renew_enos_certificate" => "renew_enos_certificate_intent",
        _ => "apply_enos_certificate_intent",
    };
    let mut intent = AuditRecord::new(event, Some(identity), Some(device.to_string()), "pending");
    intent.detail = renews.map(|old| format!("renews EnOS certSN {old}"));
    state.audit.record(&intent).await
}

/// The record of `issued` for `device`: validity from the certificate
/// itself (EnOS's answer carries no dates).
pub fn record_of(
    device: &DeviceId,
    issued: &IssuedEnosCert,
    authority: Authority,
) -> Result<EnosCertificateRecord> {
    let bad = |why: &str| {
        SignerError::EnosApiUnreachable(format!(
            "EnOS answered certSN {} with a certificate that {why}",
            issued.cert_sn
        ))
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes())
        .map_err(|_| bad("is not PEM"))?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).map_err(|_| bad("does not parse"))?;
    let ms = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .unwrap_or(0)
            .saturating_mul(1000)
    };
    Ok(EnosCertificateRecord {
        device: device.clone(),
        cert_sn: issued.cert_sn.clone(),
        not_before_ms: ms(cert.validity().not_before),
        not_after_ms: ms(cert.validity().not_after),
        issue_authority: authority.name().to_owned(),
        recorded_at_ms: now_ms(),
        revoked: None,
        superseded_by: None,
    })
}

/// Records `issued` (superseding `renews`); when the registry cannot,
/// revokes it at EnOS again (audited) and fails the call.
pub async fn record_issued(
    state: &SignerState,
    client: &EnosApiClient,
    device: &DeviceId,
    issued: &IssuedEnosCert,
    authority: Authority,
    renews: Option<&str>,
) -> Result<()> {
    let recorded = match record_of(device, issued, authority) {
        Ok(record) => state
            .registry
            .record_enos_certificate(record, renews.map(str::to_owned))
            .await
            .map_err(SignerError::from),
        Err(e) => Err(e),
    };
    let Err(e) = recorded else { return Ok(()) };
    let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
    let undo = client.revoke(pk, dk, &issued.cert_sn, 0).await;
    tracing::warn!(device = %device, cert_sn = %issued.cert_sn, error = %e, revoked_again = undo.is_ok(), "an EnOS certificate could not be recorded in the registry");
    let mut record = AuditRecord::new(
        "revoke_enos_certificate",
        None,
        Some(device.to_string()),
        if undo.is_ok() { "ok" } else { "refused" },
    );
    record.serial = Some(issued.cert_sn.clone());
    record.detail = Some(match &undo {
        Ok(()) => format!("not recorded in the registry ({e}): revoked again"),
        Err(u) => format!("not recorded in the registry ({e}); revoking it failed: {u}"),
    });
    state.audit_best_effort(&record);
    Err(e)
}

/// After EnOS revoked `device`'s `cert_sn` and the revocation was
/// audited: the registry marks it revoked (nothing when it is not
/// recorded, or revoked already). A failure is logged, not returned:
/// EnOS's revocation stands, and EnOS stays the authority a renewal
/// meets.
pub async fn mark_revoked(registry: &dyn Registry, device: &DeviceId, cert_sn: &str, reason: &str) {
    if let Err(e) = registry
        .revoke_enos_certificate(device, cert_sn, reason, now_ms())
        .await
    {
        tracing::warn!(device = %device, cert_sn = %cert_sn, error = %e, "the registry could not record an EnOS certificate's revocation");
    }
}

/// What a listing of EnOS taught: each certificate EnOS lists revoked
/// (status 1) that the registry records unrevoked — EnOS revoked it on
/// renew (the reference leaves that open), or someone revoked it outside
/// the signer — is audited, then marked: `superseded` when a renewal
/// superseded it, else `revoked at EnOS`. Returns the serials marked.
pub async fn learn_revocations(
    registry: &dyn Registry,
    audit: &crate::audit::Audit,
    device: &DeviceId,
    listed: &[crate::enos_api::ListedEnosCert],
) -> Result<Vec<String>> {
    let records = registry.enos_certificates_of(device).await?;
    let mut marked = Vec::new();
    for cert in listed.iter().filter(|c| c.status == 1) {
        let Some(record) = records
            .iter()
            .find(|r| r.cert_sn == cert.cert_sn && r.revoked.is_none())
        else {
            continue;
        };
        let reason = if record.superseded_by.is_some() {
            REASON_SUPERSEDED
        } else {
            REASON_REVOKED_AT_ENOS
        };
        let mut entry = AuditRecord::new(
            "revoke_enos_certificate",
            None,
            Some(device.to_string()),
            "ok",
        );
        entry.serial = Some(cert.cert_sn.clone());
        entry.detail = Some(format!("EnOS lists it revoked; recorded as {reason}"));
        audit.record(&entry).await?;
        if registry
            .revoke_enos_certificate(device, &cert.cert_sn, reason, now_ms())
            .await?
            .is_some()
        {
            marked.push(cert.cert_sn.clone());
        }
    }
    Ok(marked)
}

/// The reason recorded for a certificate EnOS lists revoked without the
/// signer having revoked it (nor superseded it).
pub const REASON_REVOKED_AT_ENOS: &str = "revoked at EnOS";
