//! The `EnosCertificates` service (issue 26): a gateway gets its EnOS
//! device certificate through the signer, which alone holds the EnOS API
//! credential.
//!
//! Order: identity (a device certificate: the device is the caller's own,
//! never one it names), rate limit, `[enos_api]` serves its product
//! (FailedPrecondition), the CSR by EnOS's rules and the signer's subject
//! template (InvalidArgument, before EnOS is called), then EnOS's
//! apply or renew with `validDay` from policy and `issueAuthority` from
//! the key's type. Every outcome is audited (EnOS serials, never keys).
//! A renewal's serial must be recorded as the caller's own valid
//! certificate before EnOS is called; the intent is audited before the
//! call, and the registry records what EnOS issued ([`enos_records`]).

use std::{sync::Arc, time::Instant};

use enos_signer_proto::{
    identity::PeerIdentity,
    v1::{self, enos_certificates_server::EnosCertificates},
};
use tonic::{Request, Response, Status};
use x509_parser::{
    certification_request::X509CertificationRequest,
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION},
    prelude::FromDer,
    public_key::PublicKey,
};

use crate::{
    audit::AuditRecord,
    enos_api::Authority,
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    services::{caller::caller_device, enos_records},
    state::SignerState,
};

/// The largest CSR read.
const CSR_LIMIT: usize = 16 * 1024;

/// The EnosCertificates service.
pub struct EnosCertificatesService {
    /// Shared state.
    state: Arc<SignerState>,
}

/// Checks `csr_pem` by EnOS's rules and `expected` subject: the key's
/// authority, or why not (never key material).
pub fn check_csr(csr_pem: &str, expected: &[(&'static str, String); 6]) -> Result<Authority> {
    let bad = |reason: String| SignerError::invalid("csr_pem", reason);
    if csr_pem.len() > CSR_LIMIT {
        return Err(bad(format!("larger than {CSR_LIMIT} bytes")));
    }
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|_| bad("not PEM".into()))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(bad(format!(
            "PEM label {:?}, not CERTIFICATE REQUEST",
            pem.label
        )));
    }
    let (rest, request) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|_| bad("not a PKCS#10 request".into()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the request".into()));
    }
    let spki = &request.certification_request_info.subject_pki;
    let signature = request.signature_algorithm.algorithm.to_id_string();
    let authority = if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        if bits != 2048 {
            return Err(bad(format!(
                "an RSA key must have 2048 bits (EnOS's rule); this one has {bits}"
            )));
        }
        if signature != "1.2.840.113549.1.1.11" {
            return Err(bad(format!(
                "an RSA request must be signed SHA256withRSA, not {signature}"
            )));
        }
        Authority::Rsa
    } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve != Some(OID_EC_P256) {
            return Err(bad(format!(
                "an EC key must be on P-256 (EnOS's rule); this one is on {}",
                curve.map_or_else(|| "?".to_owned(), |c| c.to_id_string())
            )));
        }
        if signature != "1.2.840.10045.4.3.2" {
            return Err(bad(format!(
                "an EC request must be signed SHA256withECDSA, not {signature}"
            )));
        }
        Authority::Ecc
    } else {
        return Err(bad(format!(
            "the key must be RSA-2048 or EC P-256, not {}",
            spki.algorithm.algorithm.to_id_string()
        )));
    };
    request
        .verify_signature()
        .map_err(|_| bad("its signature does not verify with its key".into()))?;
    let mut found: Vec<(String, String)> = Vec::new();
    for rdn in request.certification_request_info.subject.iter() {
        for attr in rdn.iter() {
            let name = match attr.attr_type().to_id_string().as_str() {
                "2.5.4.6" => "C".to_owned(),
                "2.5.4.8" => "ST".to_owned(),
                "2.5.4.7" => "L".to_owned(),
                "2.5.4.10" => "O".to_owned(),
                "2.5.4.11" => "OU".to_owned(),
                "2.5.4.3" => "CN".to_owned(),
                other => other.to_owned(),
            };
            let value = attr
                .as_str()
                .map_err(|_| bad(format!("subject {name} is not a string")))?;
            found.push((name, value.to_owned()));
        }
    }
    let mut wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect();
    let mut sorted = found.clone();
    sorted.sort();
    wanted.sort();
    if sorted != wanted {
        let show = |v: &[(String, String)]| {
            v.iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(bad(format!(
            "the subject must be exactly {} (the signer's template for this product); the request has {}",
            show(
                &expected
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), v.clone()))
                    .collect::<Vec<_>>()
            ),
            show(&found)
        )));
    }
    Ok(authority)
}

impl EnosCertificatesService {
    /// The service over `state`.
    pub fn new(state: Arc<SignerState>) -> Self {
        EnosCertificatesService { state }
    }

    async fn issue(
        &self,
        rpc: &'static str,
        identity: &PeerIdentity,
        csr_pem: &str,
        renews: Option<&str>,
        record: &mut AuditRecord,
    ) -> Result<v1::EnosCertificate> {
        self.state.limiter.check(identity)?;
        let device = caller_device(identity, "only a device gets an EnOS certificate")?;
        let api = self.state.enos_api.as_ref().ok_or_else(|| {
            SignerError::FailedPrecondition("this signer has no [enos_api] section".into())
        })?;
        let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
        let subject = api.config.subject_of(pk).expand(pk, dk);
        let authority = check_csr(csr_pem, &subject)?;
        let client = api.client_for(pk)?;
        let valid_day = api.config.valid_day;
        if let Some(old) = renews {
            enos_records::check_renewable(self.state.registry.as_ref(), &device, old).await?;
        }
        enos_records::audit_intent(&self.state, rpc, identity, &device, renews).await?;
        let issued = match renews {
            None => client.apply(pk, dk, csr_pem, valid_day, authority).await?,
            Some(old) => {
                client
                    .renew(pk, dk, old, csr_pem, valid_day, authority)
                    .await?
            }
        };
        record.serial = Some(issued.cert_sn.clone());
        enos_records::record_issued(&self.state, &client, &device, &issued, authority, renews)
            .await?;
        Ok(v1::EnosCertificate {
            cert_pem: issued.cert_pem,
            cert_sn: issued.cert_sn,
            ca_cert_pem: issued.ca_cert_pem,
        })
    }

    async fn serve(
        &self,
        rpc: &'static str,
        identity: Result<(PeerIdentity, Arc<str>)>,
        csr_pem: &str,
        renews: Option<&str>,
    ) -> Result<Response<v1::EnosCertificate>, Status> {
        let started = Instant::now();
        let (identity, _) = self.state.identified(rpc, identity, started)?;
        let device = crate::audit::device_of(&identity);
        let mut record = AuditRecord::new(rpc, Some(&identity), device.clone(), "");
        record.detail = renews.map(|old| format!("renews EnOS certSN {old}"));
        let result = self
            .issue(rpc, &identity, csr_pem, renews, &mut record)
            .await;
        let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
        self.state.metrics.issuance(rpc, outcome, started.elapsed());
        record.outcome = outcome.into();
        match &result {
            Ok(_) => {
                tracing::info!(
                    device = device.as_deref().unwrap_or(""),
                    cert_sn = record.serial.as_deref().unwrap_or(""),
                    renews = renews.unwrap_or(""),
                    "EnOS certificate issued"
                );
                self.state.audit_best_effort(&record);
            }
            Err(e) => {
                if let SignerError::EnosApi { .. } | SignerError::EnosApiUnreachable(_) = e {
                    record.detail = Some(format!(
                        "{}{e}",
                        record
                            .detail
                            .as_deref()
                            .map(|d| format!("{d}; "))
                            .unwrap_or_default()
                    ));
                }
                self.state.refused(rpc, Some(&identity), e, Some(&record))
            }
        }
        Ok(Response::new(result?))
    }
}

#[tonic::async_trait]
impl EnosCertificates for EnosCertificatesService {
    async fn apply_enos_certificate(
        &self,
        request: Request<v1::ApplyEnosCertificateRequest>,
    ) -> Result<Response<v1::EnosCertificate>, Status> {
        let identity = self.state.identify(&request).await;
        let request = request.into_inner();
        self.serve("apply_enos_certificate", identity, &request.csr_pem, None)
            .await
    }

    async fn renew_enos_certificate(
        &self,
        request: Request<v1::RenewEnosCertificateRequest>,
    ) -> Result<Response<v1::EnosCertificate>, Status> {
        let identity = self.state.identify(&request).await;
        let request = request.into_inner();
        if request.current_cert_sn.is_empty()
            || !request.current_cert_sn.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(SignerError::invalid(
                "current_cert_sn",
                "the EnOS serial (certSN) of the current certificate, decimal",
            )
            .into());
        }
        self.serve(
            "renew_enos_certificate",
            identity,
            &request.csr_pem,
            Some(&request.current_cert_sn),
        )
        .await
    }

    async fn get_enos_certificate_subject(
        &self,
        request: Request<v1::GetEnosCertificateSubjectRequest>,
    ) -> Result<Response<v1::EnosCertificateSubject>, Status> {
        let started = Instant::now();
        let rpc = "get_enos_certificate_subject";
        let identity = self.state.identify(&request).await;
        let (identity, _) = self.state.identified(rpc, identity, started)?;
        let result = self.subject_for(&identity);
        if let Err(e) = &result {
            self.state.refused(rpc, Some(&identity), e, None);
        }
        Ok(Response::new(result?))
    }

    async fn retire_enos_certificate(
        &self,
        request: Request<v1::RetireEnosCertificateRequest>,
    ) -> Result<Response<v1::RetireEnosCertificateResponse>, Status> {
        let started = Instant::now();
        let rpc = "retire_enos_certificate";
        let identity = self.state.identify(&request).await;
        let cert_sn = request.into_inner().cert_sn;
        let (identity, _) = self.state.identified(rpc, identity, started)?;
        let device = crate::audit::device_of(&identity);
        let mut record = AuditRecord::new(rpc, Some(&identity), device.clone(), "");
        record.serial = Some(cert_sn.clone());
        let result = self.retire(&identity, &cert_sn).await;
        let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
        record.outcome = outcome.into();
        match &result {
            Ok(already) => {
                record.detail = Some(if *already {
                    "superseded; revoked or expired already".into()
                } else {
                    "revoked SUPERSEDED".into()
                });
                tracing::info!(
                    device = device.as_deref().unwrap_or(""),
                    cert_sn = %cert_sn,
                    already_done = *already,
                    "superseded EnOS certificate retired"
                );
                self.state.audit_best_effort(&record);
            }
            Err(e) => {
                if let SignerError::EnosApi { .. } | SignerError::EnosApiUnreachable(_) = e {
                    record.detail = Some(e.to_string());
                }
                self.state.refused(rpc, Some(&identity), e, Some(&record))
            }
        }
        Ok(Response::new(v1::RetireEnosCertificateResponse {
            already_done: result?,
        }))
    }
}

/// RFC 5280's `superseded`, as EnOS numbers revocation reasons.
const REASON_SUPERSEDED: u8 = 4;

/// EnOS's `certStatus` of a valid certificate.
const STATUS_VALID: i64 = 0;

impl EnosCertificatesService {
    /// The caller's CSR subject, from the signer's template for its
    /// product, and the policy applied to its requests.
    fn subject_for(&self, identity: &PeerIdentity) -> Result<v1::EnosCertificateSubject> {
        self.state.limiter.check(identity)?;
        let device = caller_device(identity, "only a device gets an EnOS certificate")?;
        let api = self.state.enos_api.as_ref().ok_or_else(|| {
            SignerError::FailedPrecondition("this signer has no [enos_api] section".into())
        })?;
        let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
        if api.config.environment_of(pk).is_none() {
            return Err(SignerError::FailedPrecondition(format!(
                "no [enos_api] environment serves product {pk}"
            )));
        }
        Ok(v1::EnosCertificateSubject {
            attributes: api
                .config
                .subject_of(pk)
                .expand(pk, dk)
                .into_iter()
                .map(|(name, value)| v1::SubjectAttribute {
                    name: name.to_owned(),
                    value,
                })
                .collect(),
            valid_day: api.config.valid_day,
            key_types: vec!["EC-P256".into(), "RSA-2048".into()],
        })
    }

    /// Revokes `cert_sn` of the caller's own device with SUPERSEDED;
    /// `Ok(true)` when it was revoked or expired already. A serial that is
    /// not the caller's is NotFound: EnOS lists the caller's device only,
    /// so another device's serial is never touched.
    async fn retire(&self, identity: &PeerIdentity, cert_sn: &str) -> Result<bool> {
        self.state.limiter.check(identity)?;
        let device = caller_device(identity, "only a device retires its EnOS certificates")?;
        if cert_sn.is_empty() || !cert_sn.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignerError::invalid(
                "cert_sn",
                "the EnOS serial (certSN) of the superseded certificate, decimal",
            ));
        }
        let api = self.state.enos_api.as_ref().ok_or_else(|| {
            SignerError::FailedPrecondition("this signer has no [enos_api] section".into())
        })?;
        let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
        let same = |listed: &str| listed.trim_start_matches('0') == cert_sn.trim_start_matches('0');
        // The registry's current certificate is the one the gateway
        // connects with: retiring it would take the gateway off EnOS
        // (a crash between promotion and retirement must not do that).
        let registry = self.state.registry.as_ref();
        if let Some(current) = registry
            .current_enos_certificate(&device, enos_domain::now_ms())
            .await?
        {
            if same(&current.cert_sn) {
                return Err(SignerError::FailedPrecondition(format!(
                    "EnOS certificate {cert_sn} is {pk}/{dk}'s current one; only a superseded certificate is retired"
                )));
            }
        }
        let client = api.client_for(pk)?;
        let listed = client.list(pk, dk).await?;
        let Some(found) = listed.iter().find(|c| same(&c.cert_sn)) else {
            return Err(SignerError::NotFound(format!(
                "EnOS certificate {cert_sn} is not one of {pk}/{dk}'s"
            )));
        };
        if found.status != STATUS_VALID {
            enos_records::mark_revoked(
                registry,
                &device,
                &found.cert_sn,
                enos_records::REASON_SUPERSEDED,
            )
            .await;
            return Ok(true);
        }
        // Audited before EnOS is asked: a revocation that cannot be
        // audited does not happen.
        let mut intent = AuditRecord::new(
            "retire_enos_certificate_intent",
            Some(identity),
            Some(device.to_string()),
            "pending",
        );
        intent.serial = Some(found.cert_sn.clone());
        self.state.audit.record(&intent).await?;
        client.revoke(pk, dk, cert_sn, REASON_SUPERSEDED).await?;
        enos_records::mark_revoked(
            registry,
            &device,
            &found.cert_sn,
            enos_records::REASON_SUPERSEDED,
        )
        .await;
        Ok(false)
    }
}
