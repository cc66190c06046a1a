//! The `Credentials` service: short-lived MQTT credentials for the calling
//! device, and `combine.login` signatures for its bound sub-devices.
//!
//! Order of checks: identity (Unauthenticated), role (PermissionDenied),
//! rate limit (ResourceExhausted), fields (InvalidArgument), authorisation
//! (PermissionDenied), registry (NotFound, FailedPrecondition), sign, then
//! audit: with `audit.fail_closed`, no password leaves without a record.

use std::{sync::Arc, time::Instant};

use enos_sign_core::{
    ExposeSecret, Password, SecureMode, SignMethod, SignedFields, TimestampMs, mqtt_client_id,
    mqtt_username,
};
use enos_signer_proto::{
    identity::PeerIdentity,
    v1::{self, credentials_server::Credentials},
};
use tonic::{Request, Response, Status};

use crate::{
    audit::{AuditRecord, identity_name},
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    services::activation,
    services::caller::caller_device,
    services::convert,
    state::SignerState,
};
use enos_domain::now_ms;
use enos_registry::{DeviceId, DeviceRecord};

/// The Credentials service.
pub struct CredentialsService {
    /// Shared state.
    state: Arc<SignerState>,
}

impl CredentialsService {
    /// The service over `state`.
    pub fn new(state: Arc<SignerState>) -> Self {
        CredentialsService { state }
    }
}

/// What an issuance signed, for the audit record.
struct Issued {
    /// The device the password is for.
    device: DeviceId,
    /// The signed clientId: with the timestamp, what an investigator
    /// needs to recompute and match a leaked password.
    client_id: String,
    /// The method.
    method: SignMethod,
    /// Whose secret signed: the device's (2) or, for an activation, its
    /// product's (3).
    secure_mode: SecureMode,
    /// The signed timestamp.
    timestamp_ms: u64,
    /// When the credential expires.
    expires_at_ms: u64,
    /// The password (or sign), to HMAC for the audit trail.
    password: Password,
}

/// Why an admin certificate gets no credential.
const DEVICES_ONLY: &str = "only device certificates may request credentials";

impl CredentialsService {
    async fn issue(
        &self,
        identity: &PeerIdentity,
        request: v1::IssueMqttCredentialRequest,
    ) -> Result<(v1::MqttCredential, Issued)> {
        // The limit first: every refusal after it is bounded by it.
        self.state.limiter.check(identity)?;
        let caller = caller_device(identity, DEVICES_ONLY)?;
        let product_key = if request.product_key.is_empty() {
            caller.product_key.clone()
        } else {
            convert::product_key("product_key", &request.product_key)?
        };
        let device_key = if request.device_key.is_empty() {
            caller.device_key.clone()
        } else {
            convert::device_key("device_key", &request.device_key)?
        };
        let client_id = if request.client_id.is_empty() {
            convert::client_id("client_id", device_key.as_str())?
        } else {
            convert::client_id("client_id", &request.client_id)?
        };
        let device = DeviceId::new(product_key, device_key);
        if device != caller {
            return Err(SignerError::PermissionDenied(
                "a device may request credentials only for itself".into(),
            ));
        }
        let method = self
            .state
            .policy
            .method(&device.product_key, request.sign_method)?;
        let record = self.enabled_record(&device).await?;
        let policy = self.state.policy.for_product(&device.product_key);
        let timestamp_ms = now_ms();
        let expires_at_ms = timestamp_ms + policy.ttl.as_millis() as u64;
        let fields = SignedFields {
            client_id,
            device_key: device.device_key.clone(),
            product_key: device.product_key.clone(),
            timestamp: TimestampMs::from_millis(timestamp_ms),
        };
        // Its own secret, or (awaiting activation) its product's.
        let (fields, password, secure_mode) =
            activation::sign_login(&self.state, record, fields, method).await?;
        let credential = v1::MqttCredential {
            mqtt_client_id: mqtt_client_id(
                &fields.client_id,
                secure_mode,
                method,
                fields.timestamp,
            ),
            username: mqtt_username(&fields.device_key, &fields.product_key),
            password: password.expose_secret().to_owned(),
            timestamp_ms,
            expires_at_ms,
            sign_method: v1::SignMethod::from(method).into(),
            secure_mode: u32::from(secure_mode.as_u8()),
            broker_urls: policy.broker_urls.clone(),
            client_id: fields.client_id.to_string(),
        };
        Ok((
            credential,
            Issued {
                device,
                client_id: fields.client_id.to_string(),
                method,
                secure_mode,
                timestamp_ms,
                expires_at_ms,
                password,
            },
        ))
    }

    async fn sign_sub_device(
        &self,
        identity: &PeerIdentity,
        request: v1::SignSubDeviceLoginRequest,
    ) -> Result<(v1::SubDeviceLogin, Issued)> {
        self.state.limiter.check(identity)?;
        let gateway = caller_device(identity, DEVICES_ONLY)?;
        let sub = DeviceId::new(
            convert::product_key("product_key", &request.product_key)?,
            convert::device_key("device_key", &request.device_key)?,
        );
        let client_id = if request.client_id.is_empty() {
            convert::client_id("client_id", sub.device_key.as_str())?
        } else {
            convert::client_id("client_id", &request.client_id)?
        };
        let method = self
            .state
            .policy
            .method(&sub.product_key, request.sign_method)?;
        // Unknown and not bound answer alike: a device learns nothing
        // about devices that are not its own.
        let record = match self.state.registry.get(&sub).await? {
            Some(record) if record.gateway.as_ref() == Some(&gateway) => record,
            _ => {
                return Err(SignerError::PermissionDenied(format!(
                    "{sub} is not a sub-device of the calling gateway"
                )));
            }
        };
        // The gateway itself must be known and enabled to sign for others.
        self.enabled_record(&gateway).await?;
        if !record.enabled {
            return Err(SignerError::FailedPrecondition(format!(
                "device {sub} is disabled"
            )));
        }
        let ttl = self.state.policy.for_product(&sub.product_key).ttl;
        let timestamp_ms = now_ms();
        let expires_at_ms = timestamp_ms + ttl.as_millis() as u64;
        let fields = SignedFields {
            client_id,
            device_key: sub.device_key.clone(),
            product_key: sub.product_key.clone(),
            timestamp: TimestampMs::from_millis(timestamp_ms),
        };
        let (fields, sign) = self.state.custody.sign(record, fields, method).await?;
        let login = v1::SubDeviceLogin {
            product_key: fields.product_key.to_string(),
            device_key: fields.device_key.to_string(),
            client_id: fields.client_id.to_string(),
            timestamp_ms,
            sign_method: method.as_str().to_owned(),
            sign: sign.expose_secret().to_owned(),
            secure_mode: u32::from(SecureMode::DeviceSecret.as_u8()),
            clean_session: request.clean_session,
            expires_at_ms,
        };
        Ok((
            login,
            Issued {
                device: sub,
                client_id: fields.client_id.to_string(),
                method,
                secure_mode: SecureMode::DeviceSecret,
                timestamp_ms,
                expires_at_ms,
                password: sign,
            },
        ))
    }

    /// The record of `device`, which must exist and be enabled.
    async fn enabled_record(&self, device: &DeviceId) -> Result<DeviceRecord> {
        let record = self
            .state
            .registry
            .get(device)
            .await?
            .ok_or_else(|| SignerError::NotFound(format!("device {device}")))?;
        if !record.enabled {
            return Err(SignerError::FailedPrecondition(format!(
                "device {device} is disabled"
            )));
        }
        Ok(record)
    }

    /// Audits and counts a finished call. With a fail-closed trail a
    /// successful issuance whose record cannot be written becomes
    /// Unavailable, and the password is dropped unsent.
    async fn finish<T>(
        &self,
        rpc: &'static str,
        started: Instant,
        identity: Option<&PeerIdentity>,
        requested_device: Option<String>,
        result: Result<(T, Issued)>,
    ) -> Result<T> {
        let mut record = AuditRecord::new(rpc, identity, requested_device, String::new());
        let result = match result {
            Ok((response, issued)) => {
                record.device = Some(issued.device.to_string());
                record.client_id = Some(issued.client_id);
                record.sign_method = Some(issued.method.as_str());
                record.secure_mode = Some(issued.secure_mode.as_u8());
                record.timestamp_ms = Some(issued.timestamp_ms);
                record.expires_at_ms = Some(issued.expires_at_ms);
                record.outcome = "ok".into();
                record.password_hmac = Some(
                    self.state
                        .audit
                        .password_hmac(issued.password.expose_secret()),
                );
                self.state.audit.record(&record).await.map(|()| response).inspect_err(|e| {
                    // Fail-closed: the password is dropped unsent.
                    tracing::info!(rpc, identity = %identity_name(identity), code = ?e.code(), error = %e, "refused");
                })
            }
            Err(e) => {
                record.outcome = outcome_name(Some(e.code())).into();
                self.state.refused(rpc, identity, &e, Some(&record));
                Err(e)
            }
        };
        let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
        self.state.metrics.issuance(rpc, outcome, started.elapsed());
        result
    }
}

/// `pk/dk` as asked, for the audit record of a refusal.
fn asked(product_key: &str, device_key: &str) -> Option<String> {
    (!product_key.is_empty() || !device_key.is_empty()).then(|| {
        // Only the validated character set reaches the trail.
        let clean = |s: &str| -> String {
            s.chars()
                .take(64)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect()
        };
        format!("{}/{}", clean(product_key), clean(device_key))
    })
}

impl CredentialsService {
    /// The frame both RPCs share: identify the caller, run `handler`, then
    /// audit, count and answer through [`CredentialsService::finish`].
    async fn call<Req, T>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        requested_of: impl FnOnce(&Req) -> Option<String>,
        handler: impl AsyncFnOnce(&PeerIdentity, Req) -> Result<(T, Issued)>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let identity = self
            .state
            .identify(&request)
            .await
            .map(|(identity, _)| identity);
        let request = request.into_inner();
        let requested = requested_of(&request);
        let result = match identity {
            Err(e) => self.finish(rpc, started, None, requested, Err(e)).await,
            Ok(id) => {
                let result = handler(&id, request).await;
                self.finish(rpc, started, Some(&id), requested, result)
                    .await
            }
        };
        Ok(Response::new(result?))
    }
}

#[tonic::async_trait]
impl Credentials for CredentialsService {
    async fn issue_mqtt_credential(
        &self,
        request: Request<v1::IssueMqttCredentialRequest>,
    ) -> Result<Response<v1::MqttCredential>, Status> {
        let requested_of =
            |r: &v1::IssueMqttCredentialRequest| asked(&r.product_key, &r.device_key);
        self.call(
            "issue_mqtt_credential",
            request,
            requested_of,
            async |id, r| self.issue(id, r).await,
        )
        .await
    }

    async fn sign_sub_device_login(
        &self,
        request: Request<v1::SignSubDeviceLoginRequest>,
    ) -> Result<Response<v1::SubDeviceLogin>, Status> {
        let requested_of = |r: &v1::SignSubDeviceLoginRequest| asked(&r.product_key, &r.device_key);
        self.call(
            "sign_sub_device_login",
            request,
            requested_of,
            async |id, r| self.sign_sub_device(id, r).await,
        )
        .await
    }

    async fn sign_sub_device_login_batch(
        &self,
        request: Request<v1::SignSubDeviceLoginBatchRequest>,
    ) -> Result<Response<v1::SubDeviceLoginBatch>, Status> {
        crate::services::batch_login::sign(Arc::clone(&self.state), request).await
    }

    async fn complete_activation(
        &self,
        request: Request<v1::CompleteActivationRequest>,
    ) -> Result<Response<v1::CompleteActivationResponse>, Status> {
        activation::complete(Arc::clone(&self.state), request).await
    }
}
