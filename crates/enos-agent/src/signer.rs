//! The signer client: a small trait, [`SignerClient`], and its gRPC
//! implementation, [`GrpcSigner`], with failover across endpoints. What
//! they return is in [`crate::issued`]; why they fail, [`SignerClientError`].
//!
//! The connect loop only sees the trait, so its credential logic is tested
//! against a scripted signer; the gRPC client is tested against the real
//! signer over mTLS. Identity comes from the device certificate: the
//! request only repeats it.

use std::{
    fmt,
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
};

use enos_signer_proto::v1::{
    self, CompleteActivationRequest, IssueMqttCredentialRequest, RenewCertificateRequest,
    SignSubDeviceLoginBatchRequest, SignSubDeviceLoginRequest,
    certificates_client::CertificatesClient, credentials_client::CredentialsClient,
    enos_certificates_client::EnosCertificatesClient,
};
use secrecy::{ExposeSecret, SecretString};
use tonic::{Code, transport::Channel};

use crate::{
    config::{DeviceConfig, SignerClientConfig, SubDeviceConfig},
    error::{AgentError, SignerClientError},
    issued::{
        IssuedCredential, SignedBatchEntry, SignedCertificate, SignedLoginBatch,
        SignedSubDeviceLogin,
    },
    pair::PairPaths,
    signer_channels::SignerChannels,
};

/// Where credentials come from. Implemented by [`GrpcSigner`]; the
/// connect-loop tests implement it with a scripted signer.
pub trait SignerClient: Send + Sync + 'static {
    /// A fresh MQTT credential for this device.
    fn issue_mqtt_credential(
        &self,
    ) -> impl Future<Output = Result<IssuedCredential, SignerClientError>> + Send;

    /// The signed `combine.login` params for `sub`, which must be bound to
    /// this gateway.
    fn sign_sub_device_login(
        &self,
        sub: &SubDeviceConfig,
    ) -> impl Future<Output = Result<SignedSubDeviceLogin, SignerClientError>> + Send;

    /// The signed `combine.login.batch` params for `subs` (at most 200).
    fn sign_sub_device_login_batch(
        &self,
        subs: &[SubDeviceConfig],
    ) -> impl Future<Output = Result<SignedLoginBatch, SignerClientError>> + Send;

    /// Hands the device secret EnOS pushed after an activation login to
    /// the signer's custody; `Ok` once the signer has sealed it.
    fn complete_activation(
        &self,
        device_secret: &SecretString,
    ) -> impl Future<Output = Result<(), SignerClientError>> + Send;

    /// A new certificate for this device, for the key of `csr_der`, asked
    /// with the current certificate. A client that cannot renew answers
    /// `Unimplemented` (renewal is then reported as not offered).
    fn renew_certificate(
        &self,
        csr_der: Vec<u8>,
    ) -> impl Future<Output = Result<SignedCertificate, SignerClientError>> + Send {
        let _ = csr_der;
        async {
            Err(SignerClientError::Refused {
                endpoint: String::new(),
                code: Code::Unimplemented,
                message: "this signer client does not renew certificates".into(),
            })
        }
    }

    /// Proves that the signer accepts `candidate` (a pair written beside
    /// the current one): a handshake with it and one call.
    fn prove_candidate(
        &self,
        candidate: &PairPaths,
    ) -> impl Future<Output = Result<(), SignerClientError>> + Send {
        let _ = candidate;
        async {
            Err(SignerClientError::Refused {
                endpoint: String::new(),
                code: Code::Unimplemented,
                message: "this signer client cannot prove a candidate".into(),
            })
        }
    }

    /// The subject this device's EnOS CSR must carry (C, ST, L, O, OU,
    /// CN), from the signer's template.
    fn enos_certificate_subject(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String)>, SignerClientError>> + Send {
        async { Err(not_enos()) }
    }

    /// EnOS's certificate for the key of `csr_pem` (Apply), through the
    /// signer; `current_cert_sn`: Renew of that serial instead.
    fn enos_certificate(
        &self,
        csr_pem: String,
        current_cert_sn: Option<String>,
    ) -> impl Future<Output = Result<IssuedEnosCertificate, SignerClientError>> + Send {
        let _ = (csr_pem, current_cert_sn);
        async { Err(not_enos()) }
    }

    /// Revokes this device's superseded EnOS certificate `cert_sn`
    /// (SUPERSEDED); `Ok(true)` when EnOS had revoked it already.
    fn retire_enos_certificate(
        &self,
        cert_sn: String,
    ) -> impl Future<Output = Result<bool, SignerClientError>> + Send {
        let _ = cert_sn;
        async { Err(not_enos()) }
    }
}

/// What a signer client without EnOS certificates answers.
fn not_enos() -> SignerClientError {
    SignerClientError::Refused {
        endpoint: String::new(),
        code: Code::Unimplemented,
        message: "this signer client does not broker EnOS certificates".into(),
    }
}

/// An EnOS device certificate the signer obtained for this device.
#[derive(Debug, Clone)]
pub struct IssuedEnosCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its EnOS serial (`certSN`, decimal).
    pub cert_sn: String,
    /// The signer endpoint that answered, for logs.
    pub endpoint: String,
}

impl<T: SignerClient> SignerClient for std::sync::Arc<T> {
    fn issue_mqtt_credential(
        &self,
    ) -> impl Future<Output = Result<IssuedCredential, SignerClientError>> + Send {
        (**self).issue_mqtt_credential()
    }

    fn sign_sub_device_login(
        &self,
        sub: &SubDeviceConfig,
    ) -> impl Future<Output = Result<SignedSubDeviceLogin, SignerClientError>> + Send {
        (**self).sign_sub_device_login(sub)
    }

    fn sign_sub_device_login_batch(
        &self,
        subs: &[SubDeviceConfig],
    ) -> impl Future<Output = Result<SignedLoginBatch, SignerClientError>> + Send {
        (**self).sign_sub_device_login_batch(subs)
    }

    fn complete_activation(
        &self,
        device_secret: &SecretString,
    ) -> impl Future<Output = Result<(), SignerClientError>> + Send {
        (**self).complete_activation(device_secret)
    }

    fn renew_certificate(
        &self,
        csr_der: Vec<u8>,
    ) -> impl Future<Output = Result<SignedCertificate, SignerClientError>> + Send {
        (**self).renew_certificate(csr_der)
    }

    fn prove_candidate(
        &self,
        candidate: &PairPaths,
    ) -> impl Future<Output = Result<(), SignerClientError>> + Send {
        (**self).prove_candidate(candidate)
    }

    fn enos_certificate_subject(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String)>, SignerClientError>> + Send {
        (**self).enos_certificate_subject()
    }

    fn enos_certificate(
        &self,
        csr_pem: String,
        current_cert_sn: Option<String>,
    ) -> impl Future<Output = Result<IssuedEnosCertificate, SignerClientError>> + Send {
        (**self).enos_certificate(csr_pem, current_cert_sn)
    }

    fn retire_enos_certificate(
        &self,
        cert_sn: String,
    ) -> impl Future<Output = Result<bool, SignerClientError>> + Send {
        (**self).retire_enos_certificate(cert_sn)
    }
}

/// The gRPC signer client: mTLS with the device certificate, endpoints
/// tried in order starting with the last one that answered.
pub struct GrpcSigner {
    /// One lazily connected channel per endpoint, with its URL for logs;
    /// rebuilt when the certificate files change.
    channels: SignerChannels,
    /// The config the channels follow: a candidate pair is proven with a
    /// copy of it pointing at the candidate files.
    config: SignerClientConfig,
    /// Index of the endpoint that answered last; tried first.
    preferred: AtomicUsize,
    /// Repeated in requests (the signer checks it against the certificate).
    device: DeviceConfig,
}

impl fmt::Debug for GrpcSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.channels.urls().collect();
        f.debug_struct("GrpcSigner")
            .field("endpoints", &urls)
            .finish()
    }
}

impl GrpcSigner {
    /// Reads the mTLS material and prepares (without connecting) a channel
    /// per endpoint; the files are re-read before every call
    /// ([`SignerChannels`]).
    pub fn new(config: &SignerClientConfig, device: &DeviceConfig) -> Result<Self, AgentError> {
        Ok(GrpcSigner {
            channels: SignerChannels::new(config)?,
            config: config.clone(),
            preferred: AtomicUsize::new(0),
            device: device.clone(),
        })
    }

    /// Runs `call` against each endpoint in turn until one answers.
    async fn with_failover<T, F, Fut>(&self, call: F) -> Result<T, SignerClientError>
    where
        F: Fn(CredentialsClient<Channel>, String) -> Fut,
        Fut: Future<Output = Result<T, SignerClientError>>,
    {
        self.with_failover_on(|channel, url| call(CredentialsClient::new(channel), url))
            .await
    }

    /// Runs `call` with each endpoint's channel in turn until one answers.
    async fn with_failover_on<T, F, Fut>(&self, call: F) -> Result<T, SignerClientError>
    where
        F: Fn(Channel, String) -> Fut,
        Fut: Future<Output = Result<T, SignerClientError>>,
    {
        let built = self.channels.current();
        let n = built.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = SignerClientError::Unavailable {
            endpoint: String::new(),
            message: "no endpoint configured".into(),
        };
        for k in 0..n {
            let i = (first + k) % n;
            let (url, channel) = &built.endpoints[i];
            match call(channel.clone(), url.clone()).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.is_unavailable() => {
                    let e = crate::handshake::explain_unavailable(e, url, &self.config).await;
                    tracing::warn!(endpoint = %url, error = %e, "signer endpoint unavailable; trying the next");
                    last = e;
                }
                Err(e) => {
                    // The signer decided: another replica would decide the same.
                    self.preferred.store(i, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Err(last)
    }
}

/// Checks an [`v1::IssuedCertificate`] as far as the agent can: a leaf is
/// there. That it fits the key and reads as a certificate is checked
/// when the pair is written.
pub(crate) fn signed_certificate(
    reply: v1::IssuedCertificate,
    endpoint: String,
) -> Result<SignedCertificate, SignerClientError> {
    if reply.certificate_der.is_empty() {
        return Err(SignerClientError::BadResponse {
            endpoint,
            reason: "no certificate in the response".into(),
        });
    }
    Ok(SignedCertificate {
        certificate_der: reply.certificate_der,
        chain_der: reply.chain_der,
        serial: reply.serial,
        not_after_ms: reply.not_after_ms,
        endpoint,
    })
}

/// Maps a gRPC status to a [`SignerClientError`]: codes that mean "ask again
/// later" are unavailability, the rest are the signer's refusal.
pub(crate) fn classify(endpoint: String, status: tonic::Status) -> SignerClientError {
    classify_with(endpoint, status, None)
}

/// [`classify`], saying what a failed TLS handshake meant (the signer
/// refused our certificate, and why; or we refused its) with `config`'s
/// files instead of tonic's `operation was canceled`.
pub(crate) fn classify_with(
    endpoint: String,
    status: tonic::Status,
    config: Option<&SignerClientConfig>,
) -> SignerClientError {
    let message: String = crate::handshake::signer_failure(&status, config)
        .unwrap_or_else(|| status.message().chars().take(300).collect());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal => SignerClientError::Unavailable { endpoint, message },
        code => SignerClientError::Refused {
            endpoint,
            code,
            message,
        },
    }
}

impl SignerClient for GrpcSigner {
    async fn issue_mqtt_credential(&self) -> Result<IssuedCredential, SignerClientError> {
        let request = IssueMqttCredentialRequest {
            product_key: self.device.product_key.to_string(),
            device_key: self.device.device_key.to_string(),
            client_id: self
                .device
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            sign_method: v1::SignMethod::wire(self.device.sign_method),
        };
        let config = &self.config;
        self.with_failover(|mut client, endpoint| {
            let request = request.clone();
            async move {
                let mut reply = client
                    .issue_mqtt_credential(request)
                    .await
                    .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?
                    .into_inner();
                // Move the password out so that only the zeroizing copy remains.
                let password = std::mem::take(&mut reply.password);
                if password.is_empty()
                    || reply.mqtt_client_id.is_empty()
                    || reply.username.is_empty()
                {
                    return Err(SignerClientError::BadResponse {
                        endpoint,
                        reason: "empty client id, username or password".into(),
                    });
                }
                Ok(IssuedCredential::new(
                    reply.mqtt_client_id,
                    reply.username,
                    password,
                    reply.timestamp_ms,
                    (reply.expires_at_ms != 0).then_some(reply.expires_at_ms),
                    endpoint,
                ))
            }
        })
        .await
    }

    async fn sign_sub_device_login(
        &self,
        sub: &SubDeviceConfig,
    ) -> Result<SignedSubDeviceLogin, SignerClientError> {
        let request = SignSubDeviceLoginRequest {
            product_key: sub.product_key.to_string(),
            device_key: sub.device_key.to_string(),
            client_id: sub
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            sign_method: v1::SignMethod::wire(self.device.sign_method),
            clean_session: sub.clean_session,
        };
        let config = &self.config;
        self.with_failover(|mut client, endpoint| {
            let request = request.clone();
            async move {
                let mut reply = client
                    .sign_sub_device_login(request)
                    .await
                    .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?
                    .into_inner();
                let sign = std::mem::take(&mut reply.sign);
                if sign.is_empty() {
                    return Err(SignerClientError::BadResponse {
                        endpoint,
                        reason: "empty sign".into(),
                    });
                }
                Ok(SignedSubDeviceLogin::new(
                    reply.product_key,
                    reply.device_key,
                    reply.client_id,
                    reply.timestamp_ms,
                    reply.sign_method,
                    sign,
                    reply.secure_mode,
                    reply.clean_session,
                ))
            }
        })
        .await
    }

    async fn sign_sub_device_login_batch(
        &self,
        subs: &[SubDeviceConfig],
    ) -> Result<SignedLoginBatch, SignerClientError> {
        let request = SignSubDeviceLoginBatchRequest {
            sub_devices: subs
                .iter()
                .map(|s| v1::DeviceRef::new(s.product_key.as_str(), s.device_key.as_str()))
                .collect(),
            client_id: String::new(),
            sign_method: v1::SignMethod::wire(self.device.sign_method),
        };
        let config = &self.config;
        self.with_failover(|mut client, endpoint| {
            let request = request.clone();
            async move {
                let reply = client
                    .sign_sub_device_login_batch(request)
                    .await
                    .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?
                    .into_inner();
                let mut entries = Vec::with_capacity(reply.signed.len());
                for mut entry in reply.signed {
                    let sign = std::mem::take(&mut entry.sign);
                    if sign.is_empty() {
                        return Err(SignerClientError::BadResponse {
                            endpoint,
                            reason: "empty sign in a batch entry".into(),
                        });
                    }
                    entries.push(SignedBatchEntry::new(
                        entry.product_key,
                        entry.device_key,
                        sign,
                        entry.secure_mode,
                    ));
                }
                Ok(SignedLoginBatch {
                    client_id: reply.client_id,
                    timestamp_ms: reply.timestamp_ms,
                    sign_method: reply.sign_method,
                    entries,
                    refused: reply
                        .refused
                        .into_iter()
                        .map(|r| {
                            (
                                r.product_key,
                                r.device_key,
                                format!("{}: {}", r.code, r.message),
                            )
                        })
                        .collect(),
                })
            }
        })
        .await
    }

    async fn renew_certificate(
        &self,
        csr_der: Vec<u8>,
    ) -> Result<SignedCertificate, SignerClientError> {
        let request = RenewCertificateRequest { csr_der };
        let config = &self.config;
        self.with_failover_on(|channel, endpoint| {
            let request = request.clone();
            async move {
                let reply = CertificatesClient::new(channel)
                    .renew_certificate(request)
                    .await
                    .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?
                    .into_inner();
                signed_certificate(reply, endpoint)
            }
        })
        .await
    }

    async fn prove_candidate(&self, candidate: &PairPaths) -> Result<(), SignerClientError> {
        let mut config = self.config.clone();
        config.cert = candidate.cert.clone();
        config.key = candidate.key.clone();
        // Its own channels: a new handshake, with the candidate.
        let prover =
            GrpcSigner::new(&config, &self.device).map_err(|e| SignerClientError::BadResponse {
                endpoint: String::new(),
                reason: format!("the candidate pair is unusable: {e}"),
            })?;
        let first = self.preferred.load(Ordering::Relaxed);
        prover.preferred.store(first, Ordering::Relaxed);
        // The credential proves the call went through; it is not used.
        prover.issue_mqtt_credential().await.map(drop)
    }

    async fn enos_certificate_subject(&self) -> Result<Vec<(String, String)>, SignerClientError> {
        let config = &self.config;
        self.with_failover_on(|channel, endpoint| async move {
            let reply = EnosCertificatesClient::new(channel)
                .get_enos_certificate_subject(v1::GetEnosCertificateSubjectRequest {})
                .await
                .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?
                .into_inner();
            if reply.attributes.is_empty() {
                return Err(SignerClientError::BadResponse {
                    endpoint,
                    reason: "an empty EnOS certificate subject".into(),
                });
            }
            Ok(reply
                .attributes
                .into_iter()
                .map(|a| (a.name, a.value))
                .collect())
        })
        .await
    }

    async fn enos_certificate(
        &self,
        csr_pem: String,
        current_cert_sn: Option<String>,
    ) -> Result<IssuedEnosCertificate, SignerClientError> {
        let config = &self.config;
        self.with_failover_on(|channel, endpoint| {
            let (csr_pem, current) = (csr_pem.clone(), current_cert_sn.clone());
            async move {
                let mut client = EnosCertificatesClient::new(channel);
                let reply = match current {
                    None => {
                        client
                            .apply_enos_certificate(v1::ApplyEnosCertificateRequest { csr_pem })
                            .await
                    }
                    Some(current_cert_sn) => {
                        client
                            .renew_enos_certificate(v1::RenewEnosCertificateRequest {
                                csr_pem,
                                current_cert_sn,
                            })
                            .await
                    }
                }
                .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?
                .into_inner();
                if reply.cert_pem.is_empty() || reply.cert_sn.is_empty() {
                    return Err(SignerClientError::BadResponse {
                        endpoint,
                        reason: "no EnOS certificate or serial in the response".into(),
                    });
                }
                Ok(IssuedEnosCertificate {
                    cert_pem: reply.cert_pem,
                    cert_sn: reply.cert_sn,
                    endpoint,
                })
            }
        })
        .await
    }

    async fn retire_enos_certificate(&self, cert_sn: String) -> Result<bool, SignerClientError> {
        let config = &self.config;
        self.with_failover_on(|channel, endpoint| {
            let cert_sn = cert_sn.clone();
            async move {
                Ok(EnosCertificatesClient::new(channel)
                    .retire_enos_certificate(v1::RetireEnosCertificateRequest { cert_sn })
                    .await
                    .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?
                    .into_inner()
                    .already_done)
            }
        })
        .await
    }

    async fn complete_activation(
        &self,
        device_secret: &SecretString,
    ) -> Result<(), SignerClientError> {
        let config = &self.config;
        self.with_failover(|mut client, endpoint| {
            // The request's copy lives only as long as the call (prost
            // strings are not zeroized: see the crate docs).
            let request = CompleteActivationRequest {
                device_secret: device_secret.expose_secret().to_owned(),
            };
            async move {
                client
                    .complete_activation(request)
                    .await
                    .map_err(|s| classify_with(endpoint.clone(), s, Some(config)))?;
                Ok(())
            }
        })
        .await
    }
}

/// An error and its sources on one line (tonic's transport errors say
/// what failed only in their sources, e.g. the TLS alert).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // Some errors print their cause in their own message already.
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
