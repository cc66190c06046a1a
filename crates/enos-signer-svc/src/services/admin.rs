//! The `Admin` service: the device registry, for admin certificates only.
//!
//! Every change is one registry transaction and one audit record. No
//! response carries a secret.

use std::{future::Future, sync::Arc};

use enos_sign_core::DeviceSecret;
use enos_signer_proto::{
    identity::PeerIdentity,
    v1::{self, admin_server::Admin},
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    audit::AuditRecord,
    error::{Result, SignerError},
    listener::metrics::outcome_name,
    services::convert::{self, device_message},
    services::import,
    state::SignerState,
};
use enos_domain::now_ms;
use enos_registry::{DeviceId, DeviceRecord, Write};

/// The Admin service. Cloning is cheap (the state is shared): a change
/// runs in a task of its own, which holds a clone.
#[derive(Clone)]
pub struct AdminService {
    /// Shared state.
    state: Arc<SignerState>,
}

impl AdminService {
    /// The service over `state`.
    pub fn new(state: Arc<SignerState>) -> Self {
        AdminService { state }
    }

    /// The shared state (for the RPCs that live in their own modules).
    pub(crate) fn state(&self) -> &SignerState {
        &self.state
    }

    /// The caller (if the certificate names one) and whether it may call:
    /// Unauthenticated, PermissionDenied (not an admin) or
    /// ResourceExhausted otherwise.
    fn authorize<T>(&self, request: &Request<T>) -> (Option<PeerIdentity>, Result<()>) {
        match self.state.identity(request) {
            Err(e) => (None, Err(e)),
            Ok(identity) => {
                let allowed = if let PeerIdentity::Admin { name } = &identity {
                    self.state
                        .limiter
                        .check(&identity)
                        .and_then(|()| self.state.admit_admin(request, name))
                } else {
                    Err(SignerError::PermissionDenied(
                        "the Admin service needs an admin certificate".into(),
                    ))
                };
                (Some(identity), allowed)
            }
        }
    }

    /// Counts, audits (changes only) and converts a finished call.
    fn finish<T>(
        &self,
        rpc: &'static str,
        identity: Option<&PeerIdentity>,
        device: Option<String>,
        change: bool,
        result: Result<T>,
    ) -> Result<Response<T>, Status> {
        let outcome = outcome_name(result.as_ref().err().map(SignerError::code));
        self.state.metrics.admin_call(rpc, outcome);
        let record = change.then(|| AuditRecord::new(rpc, identity, device, outcome));
        match (&result, &record) {
            (Err(e), record) => self.state.refused(rpc, identity, e, record.as_ref()),
            (Ok(_), Some(record)) => self.state.audit_best_effort(record),
            (Ok(_), None) => {}
        }
        Ok(Response::new(result?))
    }
}

fn dref(prefix: &'static str, value: Option<&v1::DeviceRef>) -> Result<DeviceId> {
    let fields = match prefix {
        "gateway" => ("gateway.product_key", "gateway.device_key"),
        "sub_device" => ("sub_device.product_key", "sub_device.device_key"),
        _ => ("device.product_key", "device.device_key"),
    };
    convert::device_ref(prefix, fields, value)
}

/// `pk/dk` of a possibly invalid ref, for the audit trail of a refusal.
fn shown(value: Option<&v1::DeviceRef>) -> Option<String> {
    value.map(|d| {
        let clean = |s: &str| -> String {
            s.chars()
                .take(64)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect()
        };
        format!("{}/{}", clean(&d.product_key), clean(&d.device_key))
    })
}

fn not_found(id: &DeviceId) -> SignerError {
    SignerError::NotFound(format!("device {id}"))
}

fn put_record(writes: &[Write]) -> Result<v1::Device> {
    match writes.first() {
        Some(Write::Put(record)) => Ok(device_message(record)),
        _ => Err(SignerError::Registry("expected one written record".into())),
    }
}

impl AdminService {
    async fn put_device(&self, request: v1::PutDeviceRequest) -> Result<v1::Device> {
        let id = dref("device", request.device.as_ref())?;
        if request.awaiting_activation {
            return self.put_awaiting_activation(id, request).await;
        }
        let secret = DeviceSecret::new(request.device_secret)
            .map_err(|e| SignerError::invalid("device_secret", e))?;
        let custody = self.state.custody.clone();
        let enabled = request.enabled;
        let writes = self
            .state
            .registry
            .modify(
                vec![id.clone()],
                Box::new(move |current| {
                    let existing = current.into_iter().next().flatten();
                    let mut record =
                        DeviceRecord::with_new_secret(id, existing.as_ref(), now_ms(), |id, v| {
                            custody.seal(id, v, secret)
                        })?;
                    record.enabled = enabled;
                    Ok(vec![Write::Put(record)])
                }),
            )
            .await?;
        put_record(&writes)
    }

    /// Registers `id` without a secret: it awaits dynamic activation (a
    /// device that had a secret loses it, and activates again).
    async fn put_awaiting_activation(
        &self,
        id: DeviceId,
        request: v1::PutDeviceRequest,
    ) -> Result<v1::Device> {
        if !request.device_secret.is_empty() {
            return Err(SignerError::invalid(
                "device_secret",
                "must be empty for a device awaiting activation",
            ));
        }
        let enabled = request.enabled;
        let writes = self
            .state
            .registry
            .modify(
                vec![id.clone()],
                Box::new(move |current| {
                    let existing = current.into_iter().next().flatten();
                    let mut record =
                        DeviceRecord::awaiting_activation(id, existing.as_ref(), now_ms());
                    record.enabled = enabled;
                    Ok(vec![Write::Put(record)])
                }),
            )
            .await?;
        put_record(&writes)
    }

    async fn rotate_secret(&self, request: v1::RotateSecretRequest) -> Result<v1::Device> {
        let id = dref("device", request.device.as_ref())?;
        let secret = DeviceSecret::new(request.new_device_secret)
            .map_err(|e| SignerError::invalid("new_device_secret", e))?;
        let custody = self.state.custody.clone();
        let writes = self
            .state
            .registry
            .modify(
                vec![id.clone()],
                Box::new(move |current| {
                    let existing = current
                        .into_iter()
                        .next()
                        .flatten()
                        .ok_or_else(|| not_found(&id))?;
                    let record =
                        DeviceRecord::with_new_secret(id, Some(&existing), now_ms(), |id, v| {
                            custody.seal(id, v, secret)
                        })?;
                    Ok(vec![Write::Put(record)])
                }),
            )
            .await?;
        put_record(&writes)
    }

    async fn set_enabled(&self, request: v1::SetEnabledRequest) -> Result<v1::Device> {
        let id = dref("device", request.device.as_ref())?;
        let enabled = request.enabled;
        let writes = self
            .state
            .registry
            .modify(
                vec![id.clone()],
                Box::new(move |current| {
                    let mut record = current
                        .into_iter()
                        .next()
                        .flatten()
                        .ok_or_else(|| not_found(&id))?;
                    record.enabled = enabled;
                    record.updated_at_ms = now_ms();
                    Ok(vec![Write::Put(record)])
                }),
            )
            .await?;
        put_record(&writes)
    }

    async fn delete_device(&self, request: v1::DeviceRef) -> Result<v1::DeleteDeviceResponse> {
        let id = dref("device", Some(&request))?;
        let deleted = id.clone();
        self.state
            .registry
            .modify(
                vec![id.clone()],
                Box::new(move |current| {
                    current
                        .into_iter()
                        .next()
                        .flatten()
                        .ok_or_else(|| not_found(&id))?;
                    Ok(vec![Write::Delete(id)])
                }),
            )
            .await?;
        self.revoke_enos_certificates(&deleted).await;
        Ok(v1::DeleteDeviceResponse {})
    }

    /// After a deletion: revokes the device's valid EnOS certificates
    /// (CESSATION_OF_OPERATION) when `[enos_api]` serves its product. Best
    /// effort: the deletion stands; each attempt is audited and a failure
    /// logged (`enos-signer enos-cert revoke` finishes the job). Each
    /// revocation audited is marked in the registry's EnOS records.
    async fn revoke_enos_certificates(&self, id: &enos_registry::DeviceId) {
        let Some(api) = &self.state.enos_api else {
            return;
        };
        let (pk, dk) = (id.product_key.as_str(), id.device_key.as_str());
        if api.config.environment_of(pk).is_none() {
            return;
        }
        let outcome = async {
            let client = api.client_for(pk)?;
            let mut results = Vec::new();
            let listed = client.list(pk, dk).await?;
            // Revoked at EnOS already (on renew): recorded so.
            if let Err(e) = super::enos_records::learn_revocations(
                self.state.registry.as_ref(),
                &self.state.audit,
                id,
                &listed,
            )
            .await
            {
                tracing::warn!(device = %id, error = %e, "could not record the EnOS revocations a listing showed");
            }
            for cert in listed {
                if cert.status == 0 {
                    let result = client.revoke(pk, dk, &cert.cert_sn, 5).await;
                    results.push((cert.cert_sn, result));
                }
            }
            Ok::<_, SignerError>(results)
        }
        .await;
        let audit = |serial: Option<String>, outcome: &str, detail: String| {
            let mut record = crate::audit::AuditRecord::new(
                "revoke_enos_certificate",
                None,
                Some(id.to_string()),
                outcome,
            );
            record.serial = serial;
            record.detail = Some(detail);
            self.state.audit_best_effort(&record);
        };
        match outcome {
            Ok(results) => {
                for (serial, result) in results {
                    match result {
                        Ok(()) => {
                            // Audited, then recorded in the registry: a
                            // revocation the audit misses is not recorded
                            // (EnOS's stands; the registry never shows a
                            // revocation the trail lacks).
                            let mut record = crate::audit::AuditRecord::new(
                                "revoke_enos_certificate",
                                None,
                                Some(id.to_string()),
                                "ok",
                            );
                            record.serial = Some(serial.clone());
                            record.detail = Some("device deleted".into());
                            match self.state.audit.record(&record).await {
                                Ok(()) => {
                                    super::enos_records::mark_revoked(
                                        self.state.registry.as_ref(),
                                        id,
                                        &serial,
                                        super::enos_records::REASON_DEVICE_DELETED,
                                    )
                                    .await
                                }
                                Err(e) => {
                                    tracing::warn!(device = %id, cert_sn = %serial, error = %e, "the revocation of a deleted device's EnOS certificate could not be audited; not recorded in the registry")
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(device = %id, cert_sn = %serial, error = %e, "could not revoke the deleted device's EnOS certificate");
                            audit(Some(serial), "refused", format!("device deleted: {e}"));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "could not list the deleted device's EnOS certificates");
                audit(None, "refused", format!("device deleted: {e}"));
            }
        }
    }

    async fn get_device(&self, request: v1::DeviceRef) -> Result<v1::Device> {
        let id = dref("device", Some(&request))?;
        let record = self
            .state
            .registry
            .get(&id)
            .await?
            .ok_or_else(|| not_found(&id))?;
        Ok(device_message(&record))
    }

    async fn list_devices(
        &self,
        request: v1::ListDevicesRequest,
    ) -> Result<v1::ListDevicesResponse> {
        let product = if request.product_key.is_empty() {
            None
        } else {
            Some(convert::product_key("product_key", &request.product_key)?)
        };
        let page_size = match request.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            _ => return Err(SignerError::invalid("page_size", "at most 1000")),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            let bad = || SignerError::invalid("page_token", "not a token from a previous page");
            let (pk, dk) = request.page_token.split_once('/').ok_or_else(bad)?;
            Some(DeviceId::new(
                convert::product_key("page_token", pk).map_err(|_| bad())?,
                convert::device_key("page_token", dk).map_err(|_| bad())?,
            ))
        };
        // One more than a page tells whether another page follows.
        let mut records = self
            .state
            .registry
            .list(product.as_ref(), after.as_ref(), page_size + 1)
            .await?;
        let next_page_token = if records.len() > page_size {
            records.truncate(page_size);
            records.last().map(|r| r.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(v1::ListDevicesResponse {
            devices: records.iter().map(device_message).collect(),
            next_page_token,
        })
    }

    async fn bind(&self, request: v1::BindSubDeviceRequest) -> Result<v1::Device> {
        let gateway = dref("gateway", request.gateway.as_ref())?;
        let sub = dref("sub_device", request.sub_device.as_ref())?;
        if gateway == sub {
            return Err(SignerError::invalid(
                "sub_device",
                "a device cannot be its own gateway",
            ));
        }
        let writes = self
            .state
            .registry
            .modify(
                vec![gateway.clone(), sub.clone()],
                Box::new(move |current| {
                    let mut current = current.into_iter();
                    let gw = current
                        .next()
                        .flatten()
                        .ok_or_else(|| not_found(&gateway))?;
                    let mut record = current.next().flatten().ok_or_else(|| not_found(&sub))?;
                    if gw.gateway.is_some() {
                        return Err(SignerError::FailedPrecondition(format!(
                            "{gateway} is itself a sub-device and cannot be a gateway"
                        ))
                        .into());
                    }
                    match &record.gateway {
                        Some(g) if *g != gateway => {
                            return Err(SignerError::FailedPrecondition(format!(
                                "{sub} is bound to gateway {g}; unbind it first"
                            ))
                            .into());
                        }
                        _ => {}
                    }
                    record.gateway = Some(gateway);
                    record.updated_at_ms = now_ms();
                    Ok(vec![Write::Put(record)])
                }),
            )
            .await?;
        put_record(&writes)
    }

    async fn unbind(&self, request: v1::UnbindSubDeviceRequest) -> Result<v1::Device> {
        let sub = dref("sub_device", request.sub_device.as_ref())?;
        let writes = self
            .state
            .registry
            .modify(
                vec![sub.clone()],
                Box::new(move |current| {
                    let mut record = current
                        .into_iter()
                        .next()
                        .flatten()
                        .ok_or_else(|| not_found(&sub))?;
                    record.gateway = None;
                    record.updated_at_ms = now_ms();
                    Ok(vec![Write::Put(record)])
                }),
            )
            .await?;
        put_record(&writes)
    }
}

impl AdminService {
    /// The frame every Admin RPC shares: authorise, run `handler` when
    /// allowed, then count, audit (`change` only) and answer.
    ///
    /// A change is audited as part of itself: an intent record
    /// (`outcome = "started"`) is written before anything changes — with
    /// a fail-closed trail a failed write refuses the change as
    /// Unavailable — and the change, its metrics and its outcome record run
    /// in a task of their own, which a cancelled call (client deadline,
    /// disconnect, server timeout) does not stop. Reads have a deadline of
    /// [`READ_TIMEOUT`]; changes run to the end (an import may take
    /// minutes; the server's timeout is [`crate::server::REQUEST_TIMEOUT`]).
    async fn call<Req, T, F>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        change: bool,
        device_of: impl FnOnce(&Req) -> Option<String>,
        handler: impl FnOnce(AdminService, Req, Option<PeerIdentity>) -> F + Send + 'static,
    ) -> Result<Response<T>, Status>
    where
        Req: Send + 'static,
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (identity, allowed) = self.authorize(&request);
        let request = request.into_inner();
        let device = device_of(&request);
        if let Err(e) = allowed {
            return self.finish(rpc, identity.as_ref(), device, change, Err(e));
        }
        if change {
            let intent = AuditRecord::new(rpc, identity.as_ref(), device.clone(), "started");
            if let Err(e) = self.state.audit.record(&intent).await {
                tracing::error!(rpc, error = %e, "admin change refused: its audit record cannot be written");
                self.state
                    .metrics
                    .admin_call(rpc, outcome_name(Some(e.code())));
                return Err(e.into());
            }
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = handler(this.clone(), request, identity.clone()).await;
            this.finish(rpc, identity.as_ref(), device, change, result)
        });
        let joined = if change {
            task.await
        } else {
            match tokio::time::timeout(READ_TIMEOUT, task).await {
                Ok(joined) => joined,
                Err(_) => return Err(Status::deadline_exceeded(format!("{rpc} took too long"))),
            }
        };
        joined.unwrap_or_else(|e| {
            tracing::error!(rpc, error = %e, "admin call task failed");
            Err(Status::internal("the call failed"))
        })
    }
}

impl AdminService {
    /// Put (`rotate` false) or rotate a product secret, in the frame of
    /// every change.
    async fn product_secret_call(
        &self,
        rpc: &'static str,
        request: Request<v1::PutProductSecretRequest>,
        rotate: bool,
    ) -> Result<Response<v1::Product>, Status> {
        let product_of =
            |r: &v1::PutProductSecretRequest| convert::shown_product(r.product.as_ref());
        self.call(
            rpc,
            request,
            true,
            product_of,
            move |this, r, _| async move { this.put_product_secret(r, rotate).await },
        )
        .await
    }
}

/// How long a read (get, list) may take.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// For RPCs whose audit record names no single device.
fn no_device<Req>(_: &Req) -> Option<String> {
    None
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn put_device(
        &self,
        request: Request<v1::PutDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::PutDeviceRequest| shown(r.device.as_ref());
        self.call(
            "put_device",
            request,
            true,
            device_of,
            |this, r, _| async move { this.put_device(r).await },
        )
        .await
    }

    async fn rotate_secret(
        &self,
        request: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::RotateSecretRequest| shown(r.device.as_ref());
        self.call(
            "rotate_secret",
            request,
            true,
            device_of,
            |this, r, _| async move { this.rotate_secret(r).await },
        )
        .await
    }

    async fn set_enabled(
        &self,
        request: Request<v1::SetEnabledRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::SetEnabledRequest| shown(r.device.as_ref());
        self.call(
            "set_enabled",
            request,
            true,
            device_of,
            |this, r, _| async move { this.set_enabled(r).await },
        )
        .await
    }

    async fn delete_device(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::DeleteDeviceResponse>, Status> {
        let device_of = |r: &v1::DeviceRef| shown(Some(r));
        self.call(
            "delete_device",
            request,
            true,
            device_of,
            |this, r, _| async move { this.delete_device(r).await },
        )
        .await
    }

    async fn get_device(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::Device>, Status> {
        self.call(
            "get_device",
            request,
            false,
            no_device,
            |this, r, _| async move { this.get_device(r).await },
        )
        .await
    }

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        self.call(
            "list_devices",
            request,
            false,
            no_device,
            |this, r, _| async move { this.list_devices(r).await },
        )
        .await
    }

    async fn bind_sub_device(
        &self,
        request: Request<v1::BindSubDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::BindSubDeviceRequest| shown(r.sub_device.as_ref());
        self.call(
            "bind_sub_device",
            request,
            true,
            device_of,
            |this, r, _| async move { this.bind(r).await },
        )
        .await
    }

    async fn unbind_sub_device(
        &self,
        request: Request<v1::UnbindSubDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::UnbindSubDeviceRequest| shown(r.sub_device.as_ref());
        self.call(
            "unbind_sub_device",
            request,
            true,
            device_of,
            |this, r, _| async move { this.unbind(r).await },
        )
        .await
    }

    async fn import_devices(
        &self,
        request: Request<Streaming<v1::ImportDevicesRequest>>,
    ) -> Result<Response<v1::ImportDevicesResponse>, Status> {
        self.call(
            "import_devices",
            request,
            true,
            no_device,
            |this, stream, identity| async move {
                import::run(&this.state, identity.as_ref(), stream).await
            },
        )
        .await
    }

    async fn put_product_secret(
        &self,
        request: Request<v1::PutProductSecretRequest>,
    ) -> Result<Response<v1::Product>, Status> {
        self.product_secret_call("put_product_secret", request, false)
            .await
    }

    async fn rotate_product_secret(
        &self,
        request: Request<v1::PutProductSecretRequest>,
    ) -> Result<Response<v1::Product>, Status> {
        self.product_secret_call("rotate_product_secret", request, true)
            .await
    }

    async fn delete_product_secret(
        &self,
        request: Request<v1::ProductRef>,
    ) -> Result<Response<v1::DeleteProductSecretResponse>, Status> {
        let product_of = |r: &v1::ProductRef| convert::shown_product(Some(r));
        self.call(
            "delete_product_secret",
            request,
            true,
            product_of,
            |this, r, _| async move { this.delete_product_secret(r).await },
        )
        .await
    }

    async fn get_product(
        &self,
        request: Request<v1::ProductRef>,
    ) -> Result<Response<v1::Product>, Status> {
        self.call(
            "get_product",
            request,
            false,
            no_device,
            |this, r, _| async move { this.get_product(r).await },
        )
        .await
    }

    async fn create_enroll_token(
        &self,
        request: Request<v1::CreateEnrollTokenRequest>,
    ) -> Result<Response<v1::EnrollToken>, Status> {
        let device_of = |r: &v1::CreateEnrollTokenRequest| shown(r.device.as_ref());
        self.call(
            "create_enroll_token",
            request,
            true,
            device_of,
            |this, r, _| async move { this.create_enroll_token(r).await },
        )
        .await
    }

    async fn create_enroll_tokens(
        &self,
        request: Request<v1::CreateEnrollTokensRequest>,
    ) -> Result<Response<v1::EnrollTokens>, Status> {
        let count_of =
            |r: &v1::CreateEnrollTokensRequest| Some(format!("{} devices", r.devices.len()));
        self.call(
            "create_enroll_tokens",
            request,
            true,
            count_of,
            |this, r, _| async move { this.create_enroll_tokens(r).await },
        )
        .await
    }

    async fn revoke_enroll_tokens(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::RevokeEnrollTokensResponse>, Status> {
        let device_of = |r: &v1::DeviceRef| shown(Some(r));
        self.call(
            "revoke_enroll_tokens",
            request,
            true,
            device_of,
            |this, r, _| async move { this.revoke_enroll_tokens(r).await },
        )
        .await
    }

    async fn revoke_certificate(
        &self,
        request: Request<v1::RevokeCertificateRequest>,
    ) -> Result<Response<v1::RevokeCertificateResponse>, Status> {
        // The trail names what was revoked: the device, or the serial.
        let target_of = |r: &v1::RevokeCertificateRequest| match &r.target {
            Some(v1::revoke_certificate_request::Target::Device(d)) => shown(Some(d)),
            Some(v1::revoke_certificate_request::Target::Serial(s)) => Some(format!(
                "serial {}",
                s.chars()
                    .take(64)
                    .filter(char::is_ascii_hexdigit)
                    .collect::<String>()
            )),
            None => None,
        };
        self.call(
            "revoke_certificate",
            request,
            true,
            target_of,
            |this, r, _| async move { this.revoke_certificate(r).await },
        )
        .await
    }

    async fn list_certificates(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::ListCertificatesResponse>, Status> {
        self.call(
            "list_certificates",
            request,
            false,
            no_device,
            |this, r, _| async move { this.list_certificates(r).await },
        )
        .await
    }
}
