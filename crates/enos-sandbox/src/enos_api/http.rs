//! The certificate API's listener ([`serve`]) and its answers
//! ([`EnosApi::handle`]): the token service, the four certificate actions
//! with EnOS's envelope `{code, msg, requestId, data}` and codes, the root
//! and the CRL.

use std::{sync::Arc, time::Duration};

use enos_sign_core::{DeviceKey, ProductKey};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};
use zeroize::Zeroizing;

use super::{
    EnosApiSettings,
    ca::{Authority, EnosCa},
    gateway::{ApiGateway, Refused, random_hex},
    store::{CertRecord, CertStatus, CertStore, Revocation, now_ms, time_of},
};
use crate::{
    devices::{DeviceId, DeviceStore},
    error::SandboxError,
};

/// The largest request body read.
const BODY_LIMIT: usize = 64 * 1024;
/// Bad parameter.
const BAD_PARAMETER: i64 = 99_400;
/// Permission denied.
const DENIED: i64 = 99_403;
/// Device not found.
const DEVICE_NOT_FOUND: i64 = 11_404;
/// The key is bound to another device.
const BOUND_ELSEWHERE: i64 = 11_833;
/// Internal error.
const INTERNAL: i64 = 99_500;
/// The RFC 5280 reasons EnOS's revoke accepts.
const REASONS: [u8; 7] = [0, 1, 3, 4, 5, 6, 9];

/// One answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
}

/// The certificate API: the gateway, the CA and the store.
#[derive(Debug)]
pub struct EnosApi {
    /// The settings it runs with.
    settings: EnosApiSettings,
    /// Tokens and signatures.
    gateway: ApiGateway,
    /// The roots.
    ca: EnosCa,
    /// The certificates issued.
    store: CertStore,
    /// The device file (a device must exist to get a certificate).
    devices: Arc<DeviceStore>,
}

/// A query string's pairs, percent-decoded (`+` as space, as OkHttp).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn request_id() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl EnosApi {
    /// Opens the CA and the store and reads the app secret.
    pub fn new(settings: EnosApiSettings, devices: Arc<DeviceStore>) -> Result<Self, SandboxError> {
        let secret = enos_domain::private_file::read(&settings.app_secret_file)
            .map_err(|e| SandboxError::Settings(format!("[enos_api] app_secret_file: {e}")))?;
        let secret = Zeroizing::new(
            String::from_utf8(secret.to_vec())
                .map_err(|_| {
                    SandboxError::Settings(format!(
                        "[enos_api] app_secret_file {} is not UTF-8",
                        settings.app_secret_file.display()
                    ))
                })?
                .trim()
                .to_owned(),
        );
        if secret.is_empty() {
            return Err(SandboxError::Settings(format!(
                "[enos_api] app_secret_file {} is empty",
                settings.app_secret_file.display()
            )));
        }
        let gateway = ApiGateway::new(
            settings.app_key.clone(),
            secret,
            settings.clock_skew,
            settings.token_lifetime,
        );
        let ca = EnosCa::open(
            settings.state_dir.as_deref(),
            settings.rsa_ca_key.as_deref(),
        )?;
        let store = CertStore::open(settings.state_dir.as_deref())?;
        Ok(EnosApi {
            settings,
            gateway,
            ca,
            store,
            devices,
        })
    }

    /// `Some(unreachable)` while `outage_file` exists.
    pub fn outage(&self) -> Option<bool> {
        let path = self.settings.outage_file.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        Some(text.trim() == "unreachable")
    }

    /// The roots the MQTTS listener trusts besides its own CA.
    pub fn root_ders(&self) -> Vec<Vec<u8>> {
        self.ca.root_ders()
    }

    /// For the MQTTS listener: `None` when `der` is not from the EnOS CA
    /// (the listener's own rule applies), else whether it may log in as
    /// `device`.
    pub fn check_mqtts(&self, der: &[u8], device: &DeviceId) -> Option<Result<(), String>> {
        self.ca.issued_by(der)?;
        Some(self.store.check_binding(der, device))
    }

    /// The rustls config of HTTPS, when a certificate is configured.
    pub fn tls_config(&self) -> Result<Option<Arc<ServerConfig>>, SandboxError> {
        let Some((cert, key)) = &self.settings.tls else {
            return Ok(None);
        };
        let bad = |what: &str, detail: String| {
            SandboxError::Settings(format!("[enos_api] {what}: {detail}"))
        };
        let pem = std::fs::read(cert).map_err(|e| SandboxError::Read {
            path: cert.clone(),
            cause: e,
        })?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("cert", e.to_string()))?;
        let key_pem =
            enos_domain::private_file::read(key).map_err(|e| bad("key", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| bad("key", "not a PEM private key".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad("cert", e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    fn envelope(&self, code: i64, msg: impl Into<String>, data: Value) -> Reply {
        let msg = msg.into();
        let status = if code == 0 || !self.settings.error_http_status {
            StatusCode::OK
        } else {
            match code {
                DENIED => StatusCode::FORBIDDEN,
                DEVICE_NOT_FOUND | 99_404 => StatusCode::NOT_FOUND,
                INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
                1003 | 1203 => StatusCode::UNAUTHORIZED,
                _ => StatusCode::BAD_REQUEST,
            }
        };
        Reply {
            status,
            body: json!({"code": code, "msg": msg, "requestId": request_id(), "data": data}),
        }
    }

    fn token_reply(&self, result: Result<super::gateway::Token, Refused>) -> Reply {
        match result {
            Ok(token) => Reply {
                status: StatusCode::OK,
                body: json!({"status": 0, "msg": "SUCCESS", "business": "apim-token-service",
                    "data": {"accessToken": token.access_token, "expire": token.expire_secs}}),
            },
            Err(refused) => Reply {
                status: if self.settings.error_http_status {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::OK
                },
                body: json!({"status": refused.code, "msg": refused.msg,
                    "business": "apim-token-service", "data": null}),
            },
        }
    }

    /// Answers one request: `path`, decoded `query` pairs, the three
    /// `apim-*` headers, the raw `body`.
    pub fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        headers: [Option<&str>; 3],
        body: &[u8],
    ) -> Reply {
        match path {
            "/apim-token-service/v2.0/token/get" | "/apim-token-service/v2.0/token/refresh" => {
                let Ok(request) = serde_json::from_slice::<Value>(body) else {
                    return self.token_reply(Err(Refused {
                        code: super::gateway::code::INVALID_PARAMETER,
                        msg: "invalid parameter: the body is not JSON".into(),
                    }));
                };
                let text = |name: &str| match request.get(name) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => String::new(),
                };
                let (app_key, timestamp, encryption) =
                    (text("appKey"), text("timestamp"), text("encryption"));
                let result = if path.ends_with("/get") {
                    self.gateway.get_token(&app_key, &timestamp, &encryption)
                } else {
                    self.gateway.refresh_token(
                        &app_key,
                        &timestamp,
                        &encryption,
                        &text("accessToken"),
                    )
                };
                if let Err(refused) = &result {
                    info!(code = refused.code, reason = %refused.msg, "EnOS API: token refused");
                }
                self.token_reply(result)
            }
            "/connect-service/v2.0/certificates" => {
                if self.outage().is_some() {
                    info!("EnOS API: outage_file present; answering 99500");
                    return self.envelope(99500, "Call ca error!outage simulated", Value::Null);
                }
                if let Err(refused) = self
                    .gateway
                    .check_call(headers[0], headers[1], headers[2], query, body)
                {
                    info!(code = refused.code, reason = %refused.msg, "EnOS API: call refused by the gateway");
                    return self.envelope(refused.code, refused.msg, Value::Null);
                }
                let reply = self.certificates(method, query, body);
                info!(
                    action = query.iter().find(|(n, _)| n == "action").map_or("", |(_, v)| v.as_str()),
                    code = %reply.body["code"],
                    msg = %reply.body["msg"].as_str().unwrap_or_default(),
                    "EnOS API: answered"
                );
                reply
            }
            _ => {
                if let Some(rest) = path.strip_prefix("/enos/CA/") {
                    let (what, authority) = rest.split_once('/').unwrap_or((rest, "RSA"));
                    if let Some(authority) = Authority::parse(authority) {
                        let text = match what {
                            "cacert" => self.ca.root_pem(authority),
                            "crl" => self.crl(authority),
                            _ => None,
                        };
                        if let Some(text) = text {
                            return Reply {
                                status: StatusCode::OK,
                                body: Value::String(text),
                            };
                        }
                    }
                }
                Reply {
                    status: StatusCode::NOT_FOUND,
                    body: json!({"code": 99404, "msg": format!("no such API: {path}"),
                        "requestId": request_id(), "data": null}),
                }
            }
        }
    }

    fn crl(&self, authority: Authority) -> Option<String> {
        let revoked: Vec<_> = self
            .store
            .records(|r| r.authority == authority && r.revoked.is_some())
            .into_iter()
            .filter_map(|r| {
                r.revoked
                    .map(|rev| (r.serial, time_of(rev.at_ms), rev.reason))
            })
            .collect();
        self.ca.crl(authority, &revoked)
    }

    fn crl_url(&self, authority: Authority) -> String {
        let scheme = if self.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!(
            "{scheme}://{}/enos/CA/crl/{}",
            self.settings.listen,
            authority.name()
        )
    }

    fn certificates(&self, method: &Method, query: &[(String, String)], body: &[u8]) -> Reply {
        let q = |name: &str| {
            query
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let bad = |msg: String| self.envelope(BAD_PARAMETER, msg, Value::Null);
        let action = q("action").unwrap_or_default();
        let expected_method = if action == "list" {
            Method::GET
        } else {
            Method::POST
        };
        if !["apply", "renew", "revoke", "list"].contains(&action) {
            return bad(format!(
                "Invalid Argument action: {action:?} is not apply, renew, revoke or list"
            ));
        }
        if *method != expected_method {
            return bad(format!(
                "Invalid Argument: action={action} takes {expected_method}"
            ));
        }
        match q("orgId") {
            None | Some("") => return bad("Invalid Argument orgId:orgId is missing".into()),
            Some(org) if org != self.settings.org_id => {
                return self.envelope(DENIED, format!("Denied resource: orgId {org}"), Value::Null);
            }
            Some(_) => {}
        }
        let (Some(pk), Some(dk)) = (q("productKey"), q("deviceKey")) else {
            return bad("invalid argument: The device identifier is invalid".into());
        };
        let (Ok(pk), Ok(dk)) = (ProductKey::new(pk), DeviceKey::new(dk)) else {
            return bad("invalid argument: The device identifier is invalid".into());
        };
        let device = DeviceId::new(pk, dk);
        if self.devices.current().get(&device).is_none() {
            return self.envelope(
                DEVICE_NOT_FOUND,
                format!("device not found: {device}"),
                Value::Null,
            );
        }
        let rules = self.settings.product(device.product_key.as_str());
        if !rules.bi_directional_auth {
            return bad(format!(
                "Invalid Argument: product {} does not enable bi-directional authentication",
                device.product_key
            ));
        }
        let request: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return bad("Invalid Argument: the body is not a JSON object".into()),
            }
        };
        let field = |name: &str| request.get(name).filter(|v| !v.is_null());
        let number = |name: &str| -> Result<Option<i64>, String> {
            match field(name).or(None) {
                None => match q(name) {
                    None => Ok(None),
                    Some(text) => text
                        .parse()
                        .map(Some)
                        .map_err(|_| format!("Invalid Argument {name}: not an integer")),
                },
                Some(Value::Number(n)) => n
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| format!("Invalid Argument {name}: not an integer")),
                Some(Value::String(s)) => s
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("Invalid Argument {name}: not an integer")),
                Some(_) => Err(format!("Invalid Argument {name}: not an integer")),
            }
        };
        let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
        match action {
            "list" => {
                let now = now_ms();
                let data: Vec<Value> = self
                    .store
                    .records(|r| r.is_for(pk, dk))
                    .iter()
                    .map(|r| list_entry(r, now))
                    .collect();
                self.envelope(0, "OK", Value::Array(data))
            }
            "revoke" => {
                let serial = match number("certSn") {
                    Ok(Some(s)) => s,
                    Ok(None) => return bad("Invalid Argument certSn:certSn is missing".into()),
                    Err(e) => return bad(e),
                };
                let reason = match number("reason") {
                    Ok(r) => r.unwrap_or(0),
                    Err(e) => return bad(e),
                };
                let Some(reason) = u8::try_from(reason).ok().filter(|r| REASONS.contains(r)) else {
                    return bad(format!(
                        "Revoke cert is failed!reason {reason} is not one of 0, 1, 3, 4, 5, 6, 9"
                    ));
                };
                let outcome = self.store.update(|state| {
                    let record = owned_record(state, serial, pk, dk, "Revoke")?;
                    match record.status(now_ms()) {
                        CertStatus::Revoked => {
                            Err("Revoke cert is failed!the certificate is already revoked".into())
                        }
                        CertStatus::Expired => {
                            Err("Revoke cert is failed!the certificate has expired".into())
                        }
                        CertStatus::Valid => {
                            record.revoked = Some(Revocation {
                                at_ms: now_ms(),
                                reason,
                                by: "IoT_Hub".into(),
                            });
                            Ok(())
                        }
                    }
                });
                match outcome {
                    Ok(Ok(())) => self.envelope(0, "OK", Value::Null),
                    Ok(Err(msg)) => bad(msg),
                    Err(msg) => self.envelope(INTERNAL, msg, Value::Null),
                }
            }
            "apply" | "renew" => {
                let renewing = action == "renew";
                let old_serial = if renewing {
                    match number("certSn") {
                        Ok(Some(s)) => Some(s),
                        Ok(None) => {
                            return bad("Invalid Argument certSn:certSn is missing".into());
                        }
                        Err(e) => return bad(e),
                    }
                } else {
                    None
                };
                let old = match old_serial {
                    None => None,
                    Some(serial) => {
                        let Some(record) = u64::try_from(serial)
                            .ok()
                            .and_then(|s| self.store.records(|r| r.serial == s).into_iter().next())
                        else {
                            return bad(format!(
                                "Renew cert is failed!certificate {serial} is not in the device's list"
                            ));
                        };
                        if !record.is_for(pk, dk) {
                            return bad(format!(
                                "Renew cert is failed!certificate {serial} is bound to another device"
                            ));
                        }
                        match record.status(now_ms()) {
                            CertStatus::Revoked => {
                                return bad(
                                    "Renew cert is failed!the original certificate is revoked"
                                        .into(),
                                );
                            }
                            CertStatus::Expired => {
                                return bad(
                                    "Renew cert is failed!the original certificate has expired"
                                        .into(),
                                );
                            }
                            CertStatus::Valid => Some(record),
                        }
                    }
                };
                let csr = match field("csr") {
                    Some(Value::String(csr)) if !csr.is_empty() => csr.clone(),
                    None if renewing => old.as_ref().map(|o| o.csr_pem.clone()).unwrap_or_default(),
                    _ => return bad("Invalid Argument csr:csr is missing".into()),
                };
                let authority = match field("issueAuthority") {
                    None => old.as_ref().map_or(Authority::Rsa, |o| o.authority),
                    Some(Value::String(s)) => match Authority::parse(s) {
                        Some(a) => a,
                        None => {
                            return bad(format!(
                                "Invalid Argument issueAuthority: {s:?} is not RSA or ECC"
                            ));
                        }
                    },
                    Some(_) => return bad("Invalid Argument issueAuthority: not a string".into()),
                };
                let valid_day = match number("validDay") {
                    Ok(v) => v.unwrap_or(i64::from(rules.default_valid_day)),
                    Err(e) => return bad(e),
                };
                if valid_day < 1 {
                    return bad(format!("Invalid Argument validDay: {valid_day} is below 1"));
                }
                if valid_day > i64::from(rules.max_valid_day) {
                    return bad(format!(
                        "Invalid Argument validDay: {valid_day} exceeds the product's maximum of {} days",
                        rules.max_valid_day
                    ));
                }
                if self.ca.root_pem(authority).is_none() {
                    return self.envelope(
                        INTERNAL,
                        format!(
                            "Call ca error!: Certificate service err info:, code: 500, message: the sandbox has no {} root (give [enos_api] rsa_ca_key)",
                            authority.name()
                        ),
                        Value::Null,
                    );
                }
                let checked =
                    match self
                        .ca
                        .check_csr(&csr, authority, self.settings.subject_must_match_root)
                    {
                        Ok(c) => c,
                        Err(detail) => {
                            return bad(format!("Invalid cert request!message: {detail}"));
                        }
                    };
                let key_hex = checked.key_hex.clone();
                let now = now_ms();
                let not_after = now.saturating_add(
                    (valid_day as u64).saturating_mul(self.settings.day.as_millis() as u64),
                );
                let crl_url = self.crl_url(authority);
                let renew_revokes = self.settings.renew_revokes_old;
                // The store's closure fails with a string: the code rides
                // in front of the message, split off below.
                let coded = |code: i64, msg: String| format!("{code}\u{0}{msg}");
                let outcome = self.store.update(|state| {
                    let excluded = old.as_ref().map(|o| o.serial);
                    let live = |r: &CertRecord| {
                        r.status(now) == CertStatus::Valid && Some(r.serial) != excluded
                    };
                    if let Some(other) = state
                        .certs
                        .values()
                        .find(|r| live(r) && r.common_name == checked.common_name)
                    {
                        return Err(coded(
                            BAD_PARAMETER,
                            format!(
                                "Duplicate subject by certificate request!message: CN={} is used by certificate {}",
                                checked.common_name, other.serial
                            ),
                        ));
                    }
                    if let Some(other) = state
                        .certs
                        .values()
                        .find(|r| r.public_key_hex == key_hex && !r.is_for(pk, dk))
                    {
                        return Err(coded(
                            BOUND_ELSEWHERE,
                            format!(
                                "the certificate request's key is bound to another device (certificate {}): replace the CSR",
                                other.serial
                            ),
                        ));
                    }
                    let serial = state.next_serial;
                    let cert_pem = self
                        .ca
                        .issue(&checked, authority, serial, time_of(now), time_of(not_after), &crl_url)
                        .map_err(|e| {
                            coded(
                                INTERNAL,
                                format!("Call ca error!: Certificate service err info:, code: 500, message: {e}"),
                            )
                        })?;
                    state.next_serial += 1;
                    let issuer = match authority {
                        Authority::Ecc => "CN=EnOS ECC CA, OU=Envision Digital, O=Envision, L=Shanghai, ST=Shanghai, C=CN",
                        Authority::Rsa => "EMAILADDRESS=ca@eniot.io, CN=EnOS CA, OU=EnOS CA, O=EnOS, L=Shanghai, ST=Shanghai, C=CN",
                    };
                    state.certs.insert(
                        serial,
                        CertRecord {
                            serial,
                            product_key: pk.to_owned(),
                            device_key: dk.to_owned(),
                            authority,
                            cert_pem: cert_pem.clone(),
                            csr_pem: csr.clone(),
                            common_name: checked.common_name.clone(),
                            subject: checked.subject_text.clone(),
                            issuer: issuer.to_owned(),
                            public_key_hex: key_hex.clone(),
                            sign_ms: now,
                            not_after_ms: not_after,
                            revoked: None,
                        },
                    );
                    if renew_revokes
                        && let Some(old) = &old
                        && let Some(record) = state.certs.get_mut(&old.serial)
                    {
                        record.revoked = Some(Revocation {
                            at_ms: now,
                            reason: 4,
                            by: "IoT_Hub".into(),
                        });
                    }
                    Ok((serial, cert_pem))
                });
                match outcome {
                    Ok(Ok((serial, cert_pem))) => self.envelope(
                        0,
                        "OK",
                        json!({
                            "cert": cert_pem,
                            "certSN": serial.to_string(),
                            "caCert": self.ca.root_pem(authority).unwrap_or_default(),
                            "certChainURL": format!("{}/enos/CA/cacert/{}",
                                crl_url.split("/enos/").next().unwrap_or_default(), authority.name()),
                            "issueAuthority": authority.name(),
                        }),
                    ),
                    Ok(Err(coded)) => {
                        let (code, msg) = coded.split_once('\u{0}').unwrap_or(("99500", &coded));
                        self.envelope(code.parse().unwrap_or(INTERNAL), msg, Value::Null)
                    }
                    Err(msg) => self.envelope(INTERNAL, msg, Value::Null),
                }
            }
            _ => bad("unreachable".into()),
        }
    }
}

/// The record `serial` if it is this device's.
fn owned_record<'a>(
    state: &'a mut super::store::StoreState,
    serial: i64,
    pk: &str,
    dk: &str,
    op: &str,
) -> Result<&'a mut CertRecord, String> {
    let record = u64::try_from(serial)
        .ok()
        .and_then(|s| state.certs.get_mut(&s))
        .ok_or_else(|| {
            format!("{op} cert is failed!certificate {serial} is not in the device's list")
        })?;
    if !record.is_for(pk, dk) {
        return Err(format!(
            "{op} cert is failed!certificate {serial} is bound to another device"
        ));
    }
    Ok(record)
}

/// One DeviceCertDetailInfo of List.
fn list_entry(r: &CertRecord, now: u64) -> Value {
    let reason = r.revoked.as_ref().map(|rev| match rev.reason {
        1 => "KEY COMPROMISE",
        3 => "AFFILIATION CHANGED",
        4 => "SUPERSEDED",
        5 => "CESSATION OF OPERATION",
        6 => "CERTIFICATE HOLD",
        9 => "PRIVILEGE WITHDRAWN",
        _ => "UNSPECIFIED",
    });
    json!({
        "certSN": r.serial.to_string(),
        "cert": r.serial.to_string(),
        "certStatus": r.status(now) as u8,
        "issuer": r.issuer,
        "subject": r.subject,
        "signDate": r.sign_ms,
        "effetiveDate": r.sign_ms,
        "expireDate": r.not_after_ms,
        "revoker": r.revoked.as_ref().map(|rev| rev.by.clone()),
        "revokerReason": reason,
        "issueAuthority": r.authority.name(),
        "isEnosCert": true,
    })
}

/// Serves the API on `listener` for ever (HTTPS when `tls` is given).
pub(crate) async fn serve(
    listener: TcpListener,
    api: Arc<EnosApi>,
    tls: Option<Arc<ServerConfig>>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "EnOS API: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // The reply's TLS records go out at once: with Nagle, the second
        // waited for the client's delayed ACK (~30 ms a call, measured by
        // enos-fleet's EnOS wave).
        let _ = stream.set_nodelay(true);
        let api = Arc::clone(&api);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let api = Arc::clone(&api);
                async move {
                    if api.outage() == Some(true)
                        && request.uri().path() == "/connect-service/v2.0/certificates"
                    {
                        info!("EnOS API: outage_file says unreachable; closing unanswered");
                        return Err(std::io::Error::other("simulated outage"));
                    }
                    Ok(answer(&api, request).await)
                }
            });
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                b
            };
            let result = match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), service).await,
                        _ => {
                            debug!(peer = %peer, "EnOS API: TLS handshake failed");
                            return;
                        }
                    }
                }
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                debug!(peer = %peer, error = %e, "EnOS API: connection ended with an error");
            }
        });
    }
}

async fn answer(api: &EnosApi, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return respond(&Reply {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                body: json!({"code": BAD_PARAMETER, "msg": format!("the body is larger than {BODY_LIMIT} bytes"), "data": null}),
            });
        }
    };
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let reply = api.handle(
        &parts.method,
        parts.uri.path(),
        &query,
        [
            header("apim-accesstoken"),
            header("apim-timestamp"),
            header("apim-signature"),
        ],
        &body,
    );
    respond(&reply)
}

fn respond(reply: &Reply) -> Response<Full<Bytes>> {
    let (content_type, bytes) = match &reply.body {
        Value::String(pem) => ("application/x-pem-file", pem.clone().into_bytes()),
        other => (
            "application/json;charset=UTF-8",
            other.to_string().into_bytes(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = reply.status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
}
