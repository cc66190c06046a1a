//! The `Enrollment` service: a device's first client certificate, for a
//! one-time token, on the enrollment listener (server-authenticated TLS;
//! the device has no certificate yet).
//!
//! Order of checks, cheapest first, so that a caller that proved nothing
//! costs a hash and one lookup and is never audited: the signer is a CA
//! (FailedPrecondition), the token's form, the device's name
//! (InvalidArgument), the token known (Unauthenticated). From there the
//! caller holds a real token, and every outcome is audited: a token for
//! another device (PermissionDenied), expired, used or revoked
//! (Unauthenticated), the CSR (InvalidArgument: unreadable, too large, a
//! signature that does not verify, a key of another kind). Then the
//! certificate is signed, its intent audited (fail-closed: no audit, no
//! certificate), and one registry transaction spends the token and
//! records the certificate; of two replicas given the same token at once,
//! exactly one commits, and the other's certificate is never sent.

use std::{sync::Arc, time::Instant};

use enos_registry::DeviceId;
use enos_signer_proto::{
    identity::PeerIdentity,
    v1::{self, enrollment_server::Enrollment},
};
use tonic::{Request, Response, Status};

use crate::{
    audit::AuditRecord,
    ca::{CertificateAuthority, token},
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    services::convert,
    state::SignerState,
};

/// The RPC's name in metrics and the audit trail.
const RPC: &str = "enroll";

/// Why a signer without `[ca]` refuses.
pub const NOT_A_CA: &str = "this signer is not a CA: its config has no [ca] section";

/// The Enrollment service.
pub struct EnrollmentService {
    /// Shared state.
    state: Arc<SignerState>,
}

impl EnrollmentService {
    /// The service over `state`.
    pub fn new(state: Arc<SignerState>) -> Self {
        EnrollmentService { state }
    }
}

/// What the audit record of a call says.
struct Trail {
    /// The device named, once the token is known to be real.
    device: Option<DeviceId>,
    /// The certificate, once signed.
    serial: Option<String>,
    /// Its notAfter.
    not_after_ms: Option<u64>,
}

impl EnrollmentService {
    async fn enroll(
        &self,
        request: v1::EnrollRequest,
        trail: &mut Trail,
    ) -> Result<v1::IssuedCertificate> {
        let ca = self
            .state
            .ca
            .as_ref()
            .ok_or_else(|| SignerError::FailedPrecondition(NOT_A_CA.into()))?;
        token::check_form(&request.token)?;
        let device = convert::device_ref(
            "device",
            ("device.product_key", "device.device_key"),
            request.device.as_ref(),
        )?;
        let hash = token::hash(&request.token);
        let known =
            self.state
                .registry
                .enroll_token(&hash)
                .await?
                .ok_or(SignerError::Unauthenticated(
                    "the enrollment token is not valid",
                ))?;
        trail.device = Some(device.clone());
        let now = enos_domain::now_ms();
        // A spent token costs no signature (the transaction checks again).
        enos_registry::certificates::check_token(&known, &device, now)
            .map_err(crate::error::certificate_refusal)?;
        let key = CertificateAuthority::requested_key(&request.csr_der)?;
        let issued = ca.issue(&device, key).await?;
        trail.serial = Some(issued.record.serial.clone());
        trail.not_after_ms = Some(issued.record.not_after_ms);
        // The intent first, fail-closed: a certificate that could not be
        // audited is never recorded nor sent.
        let mut intent =
            AuditRecord::new("enroll_intent", None, Some(device.to_string()), "pending");
        intent.serial = trail.serial.clone();
        intent.expires_at_ms = trail.not_after_ms;
        self.state.audit.record(&intent).await?;
        self.state
            .registry
            .enroll(&hash, &device, now, issued.record)
            .await?;
        ca.certificates_changed();
        Ok(issued.message)
    }

    /// Audits (a caller with a real token), logs and counts a finished call.
    fn finish(
        &self,
        started: Instant,
        trail: Trail,
        result: Result<v1::IssuedCertificate>,
    ) -> Result<Response<v1::IssuedCertificate>, Status> {
        let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
        self.state.metrics.issuance(RPC, outcome, started.elapsed());
        if let Some(device) = &trail.device {
            // The token is the caller's only proof: it is named by its
            // device, never by itself.
            let identity = PeerIdentity::Device {
                product_key: device.product_key.clone(),
                device_key: device.device_key.clone(),
            };
            let mut record =
                AuditRecord::new(RPC, Some(&identity), Some(device.to_string()), outcome);
            record.serial = trail.serial;
            record.expires_at_ms = trail.not_after_ms;
            match &result {
                Ok(_) => {
                    tracing::info!(device = %device, serial = record.serial.as_deref().unwrap_or(""), "device enrolled");
                    self.state.audit_best_effort(&record);
                }
                Err(e) => self.state.refused(RPC, Some(&identity), e, Some(&record)),
            }
        } else if let Err(e) = &result {
            self.state.refused(RPC, None, e, None);
        }
        Ok(Response::new(result?))
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::IssuedCertificate>, Status> {
        let started = Instant::now();
        let mut trail = Trail {
            device: None,
            serial: None,
            not_after_ms: None,
        };
        let result = EnrollmentService::enroll(self, request.into_inner(), &mut trail).await;
        self.finish(started, trail, result)
    }
}
