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
    audit::{AuditRecord, identity_name},
    convert::{self, device_message},
    error::{Result, SignerError},
    import,
    metrics::outcome_name,
    registry::{DeviceId, DeviceRecord, Write},
    state::SignerState,
};
use enos_domain::now_ms;

/// The Admin service.
pub struct AdminService {
    /// Shared state.
    state: Arc<SignerState>,
}

impl AdminService {
    /// The service over `state`.
    pub fn new(state: Arc<SignerState>) -> Self {
        AdminService { state }
    }

    /// The caller (if the certificate names one) and whether it may call:
    /// Unauthenticated, PermissionDenied (not an admin) or
    /// ResourceExhausted otherwise.
    fn authorize<T>(&self, request: &Request<T>) -> (Option<PeerIdentity>, Result<()>) {
        match self.state.identity(request) {
            Err(e) => (None, Err(e)),
            Ok(identity) => {
                let allowed = if matches!(identity, PeerIdentity::Admin { .. }) {
                    self.state.limiter.check(&identity)
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
        if change {
            self.state
                .audit_best_effort(&AuditRecord::new(rpc, identity, device, outcome));
        }
        if let Err(e) = &result {
            tracing::info!(rpc, identity = %identity_name(identity), code = ?e.code(), error = %e, "admin call refused");
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
        Ok(v1::DeleteDeviceResponse {})
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
                        )));
                    }
                    match &record.gateway {
                        Some(g) if *g != gateway => {
                            return Err(SignerError::FailedPrecondition(format!(
                                "{sub} is bound to gateway {g}; unbind it first"
                            )));
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
    async fn call<Req, T, F>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        change: bool,
        device_of: impl FnOnce(&Req) -> Option<String>,
        handler: impl FnOnce(Req, Option<PeerIdentity>) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T>>,
    {
        let (identity, allowed) = self.authorize(&request);
        let request = request.into_inner();
        let device = device_of(&request);
        let result = match allowed {
            Ok(()) => handler(request, identity.clone()).await,
            Err(e) => Err(e),
        };
        self.finish(rpc, identity.as_ref(), device, change, result)
    }
}

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
        self.call("put_device", request, true, device_of, |r, _| {
            self.put_device(r)
        })
        .await
    }

    async fn rotate_secret(
        &self,
        request: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::RotateSecretRequest| shown(r.device.as_ref());
        self.call("rotate_secret", request, true, device_of, |r, _| {
            self.rotate_secret(r)
        })
        .await
    }

    async fn set_enabled(
        &self,
        request: Request<v1::SetEnabledRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::SetEnabledRequest| shown(r.device.as_ref());
        self.call("set_enabled", request, true, device_of, |r, _| {
            self.set_enabled(r)
        })
        .await
    }

    async fn delete_device(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::DeleteDeviceResponse>, Status> {
        let device_of = |r: &v1::DeviceRef| shown(Some(r));
        self.call("delete_device", request, true, device_of, |r, _| {
            self.delete_device(r)
        })
        .await
    }

    async fn get_device(
        &self,
        request: Request<v1::DeviceRef>,
    ) -> Result<Response<v1::Device>, Status> {
        self.call("get_device", request, false, no_device, |r, _| {
            self.get_device(r)
        })
        .await
    }

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        self.call("list_devices", request, false, no_device, |r, _| {
            self.list_devices(r)
        })
        .await
    }

    async fn bind_sub_device(
        &self,
        request: Request<v1::BindSubDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::BindSubDeviceRequest| shown(r.sub_device.as_ref());
        self.call("bind_sub_device", request, true, device_of, |r, _| {
            self.bind(r)
        })
        .await
    }

    async fn unbind_sub_device(
        &self,
        request: Request<v1::UnbindSubDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        let device_of = |r: &v1::UnbindSubDeviceRequest| shown(r.sub_device.as_ref());
        self.call("unbind_sub_device", request, true, device_of, |r, _| {
            self.unbind(r)
        })
        .await
    }

    async fn import_devices(
        &self,
        request: Request<Streaming<v1::ImportDevicesRequest>>,
    ) -> Result<Response<v1::ImportDevicesResponse>, Status> {
        self.call("import_devices", request, true, no_device, |stream, identity| async move {
            import::run(&self.state, identity.as_ref(), stream).await
        })
        .await
    }
}
