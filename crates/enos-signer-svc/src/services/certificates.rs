//! The `Certificates` service: a device renews its own client certificate
//! over mTLS with that certificate, for a new key.
//!
//! Order of checks: identity (Unauthenticated; a revoked certificate is
//! refused there, an expired one already by the handshake), role
//! (PermissionDenied for an admin), rate limit, the signer is a CA
//! (FailedPrecondition), the CSR (InvalidArgument), the calling
//! certificate issued by this CA (FailedPrecondition otherwise: a device
//! on the operator's own PKI enrolls first). Then sign, audit the intent
//! (fail-closed), and one registry transaction checks again that the old
//! certificate is the device's, not revoked, not expired, marks it
//! renewed and records the new one: a revocation a second earlier wins.

use std::{sync::Arc, time::Instant};

use enos_signer_proto::{
    identity::PeerIdentity,
    v1::{self, certificates_server::Certificates},
};
use tonic::{Request, Response, Status};

use crate::{
    audit::AuditRecord,
    ca::CertificateAuthority,
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    services::{caller::caller_device, enrollment::NOT_A_CA},
    state::SignerState,
};

/// The RPC's name in metrics and the audit trail.
const RPC: &str = "renew_certificate";

/// The Certificates service.
pub struct CertificatesService {
    /// Shared state.
    state: Arc<SignerState>,
}

impl CertificatesService {
    /// The service over `state`.
    pub fn new(state: Arc<SignerState>) -> Self {
        CertificatesService { state }
    }

    async fn renew(
        &self,
        identity: &PeerIdentity,
        old_serial: &str,
        request: v1::RenewCertificateRequest,
        record: &mut AuditRecord,
    ) -> Result<v1::IssuedCertificate> {
        self.state.limiter.check(identity)?;
        let device = caller_device(identity, "only device certificates are renewed")?;
        let ca = self
            .state
            .ca
            .as_ref()
            .ok_or_else(|| SignerError::FailedPrecondition(NOT_A_CA.into()))?;
        let key = CertificateAuthority::requested_key(&request.csr_der)?;
        if self.state.registry.certificate(old_serial).await?.is_none() {
            return Err(crate::error::certificate_refusal(
                enos_registry::CertificateRefusal::CertificateUnknown,
            ));
        }
        let issued = ca.issue(&device, key).await?;
        record.serial = Some(issued.record.serial.clone());
        record.expires_at_ms = Some(issued.record.not_after_ms);
        let mut intent = AuditRecord::new(
            "renew_certificate_intent",
            Some(identity),
            Some(device.to_string()),
            "pending",
        );
        intent.serial = record.serial.clone();
        intent.expires_at_ms = record.expires_at_ms;
        intent.detail = record.detail.clone();
        self.state.audit.record(&intent).await?;
        self.state
            .registry
            .renew(old_serial, &device, enos_domain::now_ms(), issued.record)
            .await?;
        ca.certificates_changed();
        Ok(issued.message)
    }
}

#[tonic::async_trait]
impl Certificates for CertificatesService {
    async fn renew_certificate(
        &self,
        request: Request<v1::RenewCertificateRequest>,
    ) -> Result<Response<v1::IssuedCertificate>, Status> {
        let started = Instant::now();
        let found = self.state.identify(&request).await;
        let (identity, serial) = self.state.identified(RPC, found, started)?;
        let device = crate::audit::device_of(&identity);
        let mut record = AuditRecord::new(RPC, Some(&identity), device.clone(), "");
        record.detail = Some(format!("renews {serial}"));
        let result = self
            .renew(&identity, &serial, request.into_inner(), &mut record)
            .await;
        let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
        self.state.metrics.issuance(RPC, outcome, started.elapsed());
        record.outcome = outcome.into();
        match &result {
            Ok(_) => {
                tracing::info!(device = device.as_deref().unwrap_or(""), old = %serial, new = record.serial.as_deref().unwrap_or(""), "certificate renewed");
                self.state.audit_best_effort(&record);
            }
            Err(e) => self.state.refused(RPC, Some(&identity), e, Some(&record)),
        }
        Ok(Response::new(result?))
    }
}
