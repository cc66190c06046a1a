//! [`Responder`]: the EnOS side of request/reply topics, so that gateway
//! and device software can be tested against the sandbox.
//!
//! | request topic | method | reply codes |
//! |---|---|---|
//! | `/ext/session/{gwPk}/{gwDk}/combine/login` | `combine.login` | 200, 460 bad params, 705 unknown sub-device, 740 not a sub-device of this gateway, 742 sign check failed (or stale timestamp, or no secret yet), 723 sub-device disabled, 429 the gateway holds its limit of online sub-devices |
//! | `/ext/session/{gwPk}/{gwDk}/combine/login/batch` | `combine.login.batch` | 200 when well-formed (each entry judged as a `combine.login`, the failed ones listed), 460 bad params (nothing logged in) |
//! | `/ext/session/{gwPk}/{gwDk}/combine/logout` | `combine.logout` | 200, 460, 705, 740, 404 not online through this gateway |
//! | `/sys/{pk}/{dk}/thing/measurepoint/post` | `thing.measurepoint.post` | 200, 460 bad JSON, 705 unknown device |
//! | `/sys/{pk}/{dk}/thing/measurepoint/resume` | `thing.measurepoint.resume` | 200, 460 bad JSON or no `params.time` (the original timestamp), 705 unknown device, 460 an offline sub-device |
//! | `/sys/{pk}/{dk}/thing/measurepoint/resume/batch` | `thing.measurepoint.resume.batch` | 200, 460 `params` not a list of `{productKey?, deviceKey?, measurepoints, time}`, 705 an unknown device, 460 an offline sub-device unless `allowOfflineSubDevice: true` |
//!
//! Late data (resume) is EnOS's path for measurepoints that arrive after
//! an outage: stored at their original `time`, no real-time alerts. A
//! sub-device's data is refused while it is not logged in through its
//! gateway (`combine.login`); `resume.batch` takes it with
//! `allowOfflineSubDevice: true`.
//!
//! The reply goes to the request topic with `_reply` appended:
//! `{"id": <request id>, "code": 200, "data": {...}, "message": "..."}`.
//! The checks of `combine.login` run in the order of the table, so a
//! disabled sub-device is reported only to a gateway that signed for it.
//!
//! `combine.login.batch` params, as the official Java SDK sends them: one
//! `clientId`, `timestamp` (string or number) and `signMethod` for all,
//! and `subDevices: [{"productKey", "deviceKey", "secureMode", "sign"}]`,
//! each `sign` over that entry's keys with the shared clientId and
//! timestamp, with the sub-device's secret. The reply's `data` is
//! `{"loginedSubDevices": [{"productKey", "deviceKey", "assetId"}],
//! "failedSubDevices": [{"productKey", "deviceKey"}]}` in request order;
//! each failure is logged with its code and reason (`refused a sub-device
//! login`). The sandbox has no assets: its `assetId` is `{pk}/{dk}`.

use std::sync::Arc;

use enos_sign_core::{
    DeviceKey, PresentedClientId, PresentedFields, PresentedTimestamp, ProductKey, SignError,
    SignMethod, TimestampMs, verify_sign,
};
use serde_json::{Value, json};
use tracing::info;

use crate::sub_devices::SubDeviceSessions;

use crate::{auth::Authenticator, devices::DeviceId};

/// The topic filters the responder subscribes to.
pub const REQUEST_FILTERS: [&str; 6] = [
    "/ext/session/+/+/combine/login",
    "/ext/session/+/+/combine/login/batch",
    "/ext/session/+/+/combine/logout",
    "/sys/+/+/thing/measurepoint/post",
    "/sys/+/+/thing/measurepoint/resume",
    "/sys/+/+/thing/measurepoint/resume/batch",
];

/// EnOS reply codes the sandbox sends.
pub mod code {
    /// Success.
    pub const OK: u16 = 200;
    /// A parameter is missing or malformed.
    pub const BAD_PARAMETER: u16 = 460;
    /// The (sub-)device does not exist.
    pub const DEVICE_NOT_FOUND: u16 = 705;
    /// The sub-device is disabled.
    pub const DEVICE_DISABLED: u16 = 723;
    /// The device is not a sub-device of the gateway that asked.
    pub const NOT_A_SUB_DEVICE: u16 = 740;
    /// The sub-device's sign does not verify.
    pub const SIGN_CHECK_FAILED: u16 = 742;
    /// The gateway holds its limit of online sub-devices. EnOS documents
    /// no code of its own for this; its general "too many requests" is
    /// the closest: the login may succeed once a slot is free.
    pub const TOO_MANY_SUB_DEVICES: u16 = 429;
    /// `combine.logout` of a sub-device not online through this gateway.
    /// EnOS documents no code for it; "not found" (no such session), as
    /// its other general codes follow HTTP's.
    pub const NOT_ONLINE: u16 = 404;
}

/// A reply to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The request topic with `_reply` appended.
    pub topic: String,
    /// The reply JSON.
    pub payload: Vec<u8>,
}

/// What a request asked for, from its topic.
enum Request {
    /// `combine.login` by this gateway.
    Login(DeviceId),
    /// `combine.login.batch` by this gateway.
    LoginBatch(DeviceId),
    /// `combine.logout` by this gateway.
    Logout(DeviceId),
    /// `thing.measurepoint.post` for this device.
    MeasurepointPost(DeviceId),
    /// `thing.measurepoint.resume` for this device.
    MeasurepointResume(DeviceId),
    /// `thing.measurepoint.resume.batch` by this device (a gateway for
    /// itself and its sub-devices).
    MeasurepointResumeBatch(DeviceId),
}

/// An outcome: code, data and message.
struct Outcome {
    /// EnOS reply code.
    code: u16,
    /// `data` of the reply.
    data: Value,
    /// `message`: empty on success, the reason otherwise.
    message: String,
}

impl Outcome {
    fn ok(data: Value) -> Self {
        Outcome {
            code: code::OK,
            data,
            message: String::new(),
        }
    }

    fn fail(code: u16, message: impl Into<String>) -> Self {
        Outcome {
            code,
            data: json!({}),
            message: message.into(),
        }
    }
}

/// Answers session and measurepoint requests.
#[derive(Debug)]
pub struct Responder {
    /// Device lookups, freshness and MD5 policy: the same as for CONNECT.
    auth: Authenticator,
    /// Sub-devices logged in, by gateway; logout removes them. Shared
    /// with the front, which gives a gateway its sub-devices' topics.
    online: Arc<SubDeviceSessions>,
}

impl Responder {
    /// A responder checking against `auth`'s devices and policies.
    pub fn new(auth: Authenticator, online: Arc<SubDeviceSessions>) -> Self {
        Responder { auth, online }
    }

    /// Whether `sub` is logged in through `gateway`.
    pub fn is_online(&self, gateway: &DeviceId, sub: &DeviceId) -> bool {
        self.online.is_online(gateway, sub)
    }

    /// The reply to a message published on `topic`, or `None` when the
    /// topic is not a request the sandbox answers.
    pub fn respond(&mut self, topic: &str, payload: &[u8]) -> Option<Reply> {
        self.respond_at(topic, payload, crate::auth::now())
    }

    /// As [`Responder::respond`], with the clock passed in.
    pub fn respond_at(&mut self, topic: &str, payload: &[u8], now: TimestampMs) -> Option<Reply> {
        let request = parse_topic(topic)?;
        let body: Result<Value, _> = serde_json::from_slice(payload);
        let id = body
            .as_ref()
            .ok()
            .and_then(|b| b.get("id"))
            .cloned()
            .unwrap_or(Value::Null);
        let outcome = match body {
            Err(e) => Outcome::fail(code::BAD_PARAMETER, format!("the payload is not JSON: {e}")),
            Ok(body) => match &request {
                Request::Login(gateway) => self.login(gateway, &body, now),
                Request::LoginBatch(gateway) => self.login_batch(gateway, &body, now),
                Request::Logout(gateway) => self.logout(gateway, &body),
                Request::MeasurepointPost(device) => self.measurepoint_post(device, &body),
                Request::MeasurepointResume(device) => self.measurepoint_resume(device, &body),
                Request::MeasurepointResumeBatch(device) => {
                    self.measurepoint_resume_batch(device, &body)
                }
            },
        };
        let (what, device) = match &request {
            Request::Login(d) => ("combine.login", d),
            Request::LoginBatch(d) => ("combine.login.batch", d),
            Request::Logout(d) => ("combine.logout", d),
            Request::MeasurepointPost(d) => ("thing.measurepoint.post", d),
            Request::MeasurepointResume(d) => ("thing.measurepoint.resume", d),
            Request::MeasurepointResumeBatch(d) => ("thing.measurepoint.resume.batch", d),
        };
        info!(
            request = what,
            device = %device,
            code = outcome.code,
            message = %outcome.message,
            "answered request"
        );
        let reply = json!({
            "id": id,
            "code": outcome.code,
            "data": outcome.data,
            "message": outcome.message,
        });
        Some(Reply {
            topic: format!("{topic}_reply"),
            payload: reply.to_string().into_bytes(),
        })
    }

    fn login(&mut self, gateway: &DeviceId, body: &Value, now: TimestampMs) -> Outcome {
        if let Err(message) = expect_method(body, "combine.login") {
            return Outcome::fail(code::BAD_PARAMETER, message);
        }
        let params = match LoginParams::parse(body, self.auth.md5_policy()) {
            Ok(p) => p,
            Err(message) => return Outcome::fail(code::BAD_PARAMETER, message),
        };
        match self.log_in(gateway, &params, now) {
            Ok(sub) => Outcome::ok(json!({
                "productKey": sub.product_key.as_str(),
                "deviceKey": sub.device_key.as_str(),
            })),
            Err((code, message)) => Outcome::fail(code, message),
        }
    }

    /// Judges one sub-device login (the whole of `combine.login`, one
    /// entry of a batch) and logs the sub-device in.
    fn log_in(
        &self,
        gateway: &DeviceId,
        params: &LoginParams,
        now: TimestampMs,
    ) -> Result<DeviceId, (u16, String)> {
        let sub = DeviceId::new(
            params.fields.product_key.clone(),
            params.fields.device_key.clone(),
        );
        let registry = self.auth.store().current();
        let Some(device) = registry.get(&sub) else {
            return Err((
                code::DEVICE_NOT_FOUND,
                format!("sub-device {sub} not found"),
            ));
        };
        if device.gateway.as_ref() != Some(gateway) {
            return Err((
                code::NOT_A_SUB_DEVICE,
                format!("{sub} is not a sub-device of gateway {gateway}"),
            ));
        }
        if let Err(e) = self
            .auth
            .freshness_at(now)
            .check(params.fields.timestamp.millis())
        {
            return Err((code::SIGN_CHECK_FAILED, e.to_string()));
        }
        let Some(secret) = &device.secret else {
            return Err((
                code::SIGN_CHECK_FAILED,
                format!("sub-device {sub} has no device secret yet (it awaits activation)"),
            ));
        };
        if verify_sign(&params.fields, params.method, &params.sign, secret).is_err() {
            return Err((code::SIGN_CHECK_FAILED, "sign check failed".into()));
        }
        if !device.enabled {
            return Err((
                code::DEVICE_DISABLED,
                format!("sub-device {sub} is disabled"),
            ));
        }
        self.online
            .log_in(gateway, &sub)
            .map_err(|e| (code::TOO_MANY_SUB_DEVICES, format!("{sub}: {e}")))?;
        Ok(sub)
    }

    fn login_batch(&mut self, gateway: &DeviceId, body: &Value, now: TimestampMs) -> Outcome {
        if let Err(message) = expect_method(body, "combine.login.batch") {
            return Outcome::fail(code::BAD_PARAMETER, message);
        }
        // Every entry is read before any is judged: a malformed request
        // logs nobody in.
        let entries = match LoginParams::parse_batch(body, self.auth.md5_policy()) {
            Ok(entries) => entries,
            Err(message) => return Outcome::fail(code::BAD_PARAMETER, message),
        };
        let mut logged_in = Vec::new();
        let mut failed = Vec::new();
        for params in &entries {
            let keys = |pk: &ProductKey, dk: &DeviceKey| json!({"productKey": pk.as_str(), "deviceKey": dk.as_str()});
            match self.log_in(gateway, params, now) {
                Ok(sub) => {
                    let mut entry = keys(&sub.product_key, &sub.device_key);
                    entry["assetId"] = Value::String(sub.to_string());
                    logged_in.push(entry);
                }
                Err((code, message)) => {
                    let (pk, dk) = (&params.fields.product_key, &params.fields.device_key);
                    info!(
                        request = "combine.login.batch",
                        device = %gateway,
                        sub_device = %DeviceId::new(pk.clone(), dk.clone()),
                        code,
                        message = %message,
                        "refused a sub-device login"
                    );
                    failed.push(keys(pk, dk));
                }
            }
        }
        let message = if failed.is_empty() {
            String::new()
        } else {
            format!(
                "{} of {} sub-devices failed to log in",
                failed.len(),
                entries.len()
            )
        };
        Outcome {
            code: code::OK,
            data: json!({
                "loginedSubDevices": logged_in,
                "failedSubDevices": failed,
            }),
            message,
        }
    }

    fn logout(&mut self, gateway: &DeviceId, body: &Value) -> Outcome {
        if let Err(message) = expect_method(body, "combine.logout") {
            return Outcome::fail(code::BAD_PARAMETER, message);
        }
        let sub = match params(body).and_then(|p| {
            Ok(DeviceId::new(
                identity::<ProductKey>(p, "productKey")?,
                identity::<DeviceKey>(p, "deviceKey")?,
            ))
        }) {
            Ok(sub) => sub,
            Err(message) => return Outcome::fail(code::BAD_PARAMETER, message),
        };
        let registry = self.auth.store().current();
        let Some(device) = registry.get(&sub) else {
            return Outcome::fail(
                code::DEVICE_NOT_FOUND,
                format!("sub-device {sub} not found"),
            );
        };
        if device.gateway.as_ref() != Some(gateway) {
            return Outcome::fail(
                code::NOT_A_SUB_DEVICE,
                format!("{sub} is not a sub-device of gateway {gateway}"),
            );
        }
        if !self.online.log_out(gateway, &sub) {
            return Outcome::fail(
                code::NOT_ONLINE,
                format!("sub-device {sub} is not online through gateway {gateway}"),
            );
        }
        Outcome::ok(json!({
            "productKey": sub.product_key.as_str(),
            "deviceKey": sub.device_key.as_str(),
        }))
    }

    fn measurepoint_post(&self, device: &DeviceId, body: &Value) -> Outcome {
        if let Err(message) = expect_method(body, "thing.measurepoint.post") {
            return Outcome::fail(code::BAD_PARAMETER, message);
        }
        if let Err(message) = params(body) {
            return Outcome::fail(code::BAD_PARAMETER, message);
        }
        if self.auth.store().current().get(device).is_none() {
            return Outcome::fail(code::DEVICE_NOT_FOUND, format!("device {device} not found"));
        }
        Outcome::ok(json!({}))
    }
}

impl Responder {
    /// One device's late measurepoints: `measurepoints` and the original
    /// `time`; the device known and, for a sub-device, logged in through
    /// its gateway unless `allow_offline`.
    fn resumed_entry(
        &self,
        device: &DeviceId,
        entry: &serde_json::Map<String, Value>,
        allow_offline: bool,
    ) -> Result<(), Outcome> {
        if !entry.get("measurepoints").is_some_and(Value::is_object) {
            return Err(Outcome::fail(
                code::BAD_PARAMETER,
                "measurepoints must be an object",
            ));
        }
        if !entry.get("time").is_some_and(Value::is_u64) {
            return Err(Outcome::fail(
                code::BAD_PARAMETER,
                "time (the original timestamp, ms) is required to resume",
            ));
        }
        let store = self.auth.store().current();
        let Some(known) = store.get(device) else {
            return Err(Outcome::fail(
                code::DEVICE_NOT_FOUND,
                format!("device {device} not found"),
            ));
        };
        if let Some(gateway) = &known.gateway {
            if !allow_offline && !self.online.is_online(gateway, device) {
                return Err(Outcome::fail(
                    code::BAD_PARAMETER,
                    format!("sub-device {device} is offline"),
                ));
            }
        }
        Ok(())
    }

    fn measurepoint_resume(&self, device: &DeviceId, body: &Value) -> Outcome {
        if let Err(message) = expect_method(body, "thing.measurepoint.resume") {
            return Outcome::fail(code::BAD_PARAMETER, message);
        }
        let p = match params(body) {
            Ok(p) => p,
            Err(message) => return Outcome::fail(code::BAD_PARAMETER, message),
        };
        match self.resumed_entry(device, p, false) {
            Ok(()) => Outcome::ok(json!({})),
            Err(outcome) => outcome,
        }
    }

    fn measurepoint_resume_batch(&self, device: &DeviceId, body: &Value) -> Outcome {
        if let Err(message) = expect_method(body, "thing.measurepoint.resume.batch") {
            return Outcome::fail(code::BAD_PARAMETER, message);
        }
        let Some(entries) = body.get("params").and_then(Value::as_array) else {
            return Outcome::fail(code::BAD_PARAMETER, "params must be a list");
        };
        let flag = |name: &str| {
            body.get(name)
                .or_else(|| body.get("params").and_then(|p| p.get(name)))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let allow_offline = flag("allowOfflineSubDevice");
        for entry in entries {
            let Some(entry) = entry.as_object() else {
                return Outcome::fail(code::BAD_PARAMETER, "each entry must be an object");
            };
            let target = match (
                entry.get("productKey").and_then(Value::as_str),
                entry.get("deviceKey").and_then(Value::as_str),
            ) {
                (Some(pk), Some(dk)) => match (ProductKey::new(pk), DeviceKey::new(dk)) {
                    (Ok(pk), Ok(dk)) => DeviceId::new(pk, dk),
                    _ => {
                        return Outcome::fail(
                            code::BAD_PARAMETER,
                            "invalid productKey or deviceKey",
                        );
                    }
                },
                _ => device.clone(),
            };
            if &target != device {
                // Only the gateway's own sub-devices.
                let store = self.auth.store().current();
                if store.get(&target).and_then(|d| d.gateway.as_ref()) != Some(device)
                    && store.get(&target).is_some()
                {
                    return Outcome::fail(
                        code::NOT_A_SUB_DEVICE,
                        format!("{target} is not a sub-device of {device}"),
                    );
                }
            }
            if let Err(outcome) = self.resumed_entry(&target, entry, allow_offline) {
                return outcome;
            }
        }
        Outcome::ok(json!({}))
    }
}

/// `combine.login` params: the signed fields, the method and the sign.
/// `secureMode` and `cleanSession` are not signed and not checked.
struct LoginParams {
    /// What the sign covers, as the gateway sent it (as liberal as CONNECT).
    fields: PresentedFields,
    /// `signMethod`.
    method: SignMethod,
    /// `sign`, as presented.
    sign: String,
}

impl LoginParams {
    fn parse(body: &Value, md5: enos_sign_core::Md5Policy) -> Result<Self, String> {
        let p = params(body)?;
        let timestamp = timestamp(p)?;
        let method = SignMethod::parse(string(p, "signMethod")?, md5).map_err(|e| e.to_string())?;
        Ok(LoginParams {
            fields: PresentedFields {
                client_id: PresentedClientId::new(string(p, "clientId")?)
                    .map_err(|e| e.to_string())?,
                device_key: identity::<DeviceKey>(p, "deviceKey")?,
                product_key: identity::<ProductKey>(p, "productKey")?,
                timestamp,
            },
            method,
            sign: string(p, "sign")?.to_owned(),
        })
    }
}

impl LoginParams {
    /// The entries of a `combine.login.batch`, each with the shared
    /// `clientId`, `timestamp` and `signMethod`; an error names the first
    /// thing wrong (an entry by its index).
    fn parse_batch(body: &Value, md5: enos_sign_core::Md5Policy) -> Result<Vec<Self>, String> {
        let p = params(body)?;
        let client_id =
            PresentedClientId::new(string(p, "clientId")?).map_err(|e| e.to_string())?;
        let timestamp = timestamp(p)?;
        let method = SignMethod::parse(string(p, "signMethod")?, md5).map_err(|e| e.to_string())?;
        let entries = p
            .get("subDevices")
            .and_then(Value::as_array)
            .ok_or("params.subDevices must be an array")?;
        if entries.is_empty() {
            return Err("params.subDevices is empty".into());
        }
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let in_entry = |e: String| format!("params.subDevices[{i}]: {e}");
                let entry = entry
                    .as_object()
                    .ok_or_else(|| in_entry("must be an object".into()))?;
                Ok(LoginParams {
                    fields: PresentedFields {
                        client_id: client_id.clone(),
                        device_key: identity::<DeviceKey>(entry, "deviceKey").map_err(in_entry)?,
                        product_key: identity::<ProductKey>(entry, "productKey")
                            .map_err(in_entry)?,
                        timestamp: timestamp.clone(),
                    },
                    method,
                    sign: string(entry, "sign").map_err(in_entry)?.to_owned(),
                })
            })
            .collect()
    }
}

/// `params.timestamp`: the SDKs send a string; a JSON number is signed as
/// its shortest decimal text (what Python and JavaScript print for it),
/// and one written with an exponent is refused by the grammar.
fn timestamp(p: &serde_json::Map<String, Value>) -> Result<PresentedTimestamp, String> {
    match p.get("timestamp") {
        Some(Value::String(s)) => PresentedTimestamp::new(s),
        Some(Value::Number(n)) => PresentedTimestamp::new(&n.to_string()),
        _ => return Err("params.timestamp is missing".into()),
    }
    .map_err(|e| e.to_string())
}

fn expect_method(body: &Value, method: &str) -> Result<(), String> {
    match body.get("method").and_then(Value::as_str) {
        Some(m) if m == method => Ok(()),
        Some(_) => Err(format!("method must be {method} on this topic")),
        None => Err("method is missing".into()),
    }
}

fn params(body: &Value) -> Result<&serde_json::Map<String, Value>, String> {
    body.get("params")
        .and_then(Value::as_object)
        .ok_or_else(|| "params must be an object".to_owned())
}

fn string<'a>(p: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, String> {
    p.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("params.{name} must be a string"))
}

fn identity<T>(p: &serde_json::Map<String, Value>, name: &str) -> Result<T, String>
where
    T: for<'a> TryFrom<&'a str, Error = SignError>,
{
    T::try_from(string(p, name)?).map_err(|e| e.to_string())
}

/// `/ext/session/{pk}/{dk}/combine/login|logout` or
/// `/sys/{pk}/{dk}/thing/measurepoint/post`.
fn parse_topic(topic: &str) -> Option<Request> {
    let parts: Vec<&str> = topic.split('/').collect();
    let id = |pk: &str, dk: &str| {
        Some(DeviceId::new(
            ProductKey::new(pk).ok()?,
            DeviceKey::new(dk).ok()?,
        ))
    };
    match parts.as_slice() {
        ["", "ext", "session", pk, dk, "combine", "login"] => id(pk, dk).map(Request::Login),
        ["", "ext", "session", pk, dk, "combine", "login", "batch"] => {
            id(pk, dk).map(Request::LoginBatch)
        }
        ["", "ext", "session", pk, dk, "combine", "logout"] => id(pk, dk).map(Request::Logout),
        ["", "sys", pk, dk, "thing", "measurepoint", "post"] => {
            id(pk, dk).map(Request::MeasurepointPost)
        }
        ["", "sys", pk, dk, "thing", "measurepoint", "resume"] => {
            id(pk, dk).map(Request::MeasurepointResume)
        }
        [
            "",
            "sys",
            pk,
            dk,
            "thing",
            "measurepoint",
            "resume",
            "batch",
        ] => id(pk, dk).map(Request::MeasurepointResumeBatch),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use enos_sign_core::{
        ClientId, DeviceSecret, ExposeSecret, Md5Policy, SignedFields, SubDeviceLogin,
    };

    use super::*;
    use crate::sub_devices::SubDeviceSessions;
    use crate::{config::FreshnessPolicy, devices::DeviceStore};

    const NOW: u64 = 1_700_000_000_000;

    fn id(pk: &str, dk: &str) -> DeviceId {
        DeviceId::new(pk.parse().expect("pk"), dk.parse().expect("dk"))
    }

    fn responder() -> (tempfile::TempDir, Responder) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("devices.csv");
        std::fs::write(
            &path,
            "productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey\n\
             gwpk,gw1,gw-secret,,,\n\
             gwpk,gw2,gw-secret,,,\n\
             subpk,sub1,sub-secret,,gwpk,gw1\n\
             subpk,off,off-secret,false,gwpk,gw1\n\
             subpk,unset,,,gwpk,gw1\n",
        )
        .expect("write");
        let store = Arc::new(DeviceStore::open(&path).expect("valid"));
        let auth = Authenticator::new(
            store,
            FreshnessPolicy::Window(Duration::from_secs(600)),
            Md5Policy::Refuse,
        );
        (dir, Responder::new(auth, Arc::default()))
    }

    fn login_body(dk: &str, secret: &str, ts: u64) -> Vec<u8> {
        let fields = SignedFields {
            client_id: ClientId::new(dk).expect("id"),
            device_key: DeviceKey::new(dk).expect("dk"),
            product_key: ProductKey::new("subpk").expect("pk"),
            timestamp: TimestampMs::from_millis(ts),
        };
        let secret = DeviceSecret::new(secret.to_owned()).expect("secret");
        let login = SubDeviceLogin::sign(fields, SignMethod::HmacSha1, &secret, true);
        json!({
            "id": "42",
            "version": "1.0",
            "method": "combine.login",
            "params": {
                "productKey": login.product_key.as_str(),
                "deviceKey": login.device_key.as_str(),
                "clientId": login.client_id.as_str(),
                "timestamp": login.timestamp.to_string(),
                "signMethod": login.sign_method.as_str(),
                "sign": login.sign.expose_secret(),
                "cleanSession": "true",
            }
        })
        .to_string()
        .into_bytes()
    }

    fn reply(r: &mut Responder, topic: &str, body: &[u8]) -> Value {
        let reply = r
            .respond_at(topic, body, TimestampMs::from_millis(NOW))
            .expect("a request topic");
        assert_eq!(reply.topic, format!("{topic}_reply"));
        serde_json::from_slice(&reply.payload).expect("reply is JSON")
    }

    const GW1_LOGIN: &str = "/ext/session/gwpk/gw1/combine/login";

    #[test]
    fn login_codes() {
        let (_dir, mut r) = responder();
        let ok = reply(&mut r, GW1_LOGIN, &login_body("sub1", "sub-secret", NOW));
        assert_eq!(ok["code"], 200);
        assert_eq!(ok["id"], "42");
        assert_eq!(ok["data"]["deviceKey"], "sub1");
        assert!(r.is_online(&id("gwpk", "gw1"), &id("subpk", "sub1")));

        let cases = [
            (GW1_LOGIN, login_body("sub1", "wrong", NOW), 742),
            (
                GW1_LOGIN,
                login_body("sub1", "sub-secret", NOW - 601_000),
                742,
            ),
            (GW1_LOGIN, login_body("ghost", "sub-secret", NOW), 705),
            (
                "/ext/session/gwpk/gw2/combine/login",
                login_body("sub1", "sub-secret", NOW),
                740,
            ),
            (GW1_LOGIN, login_body("off", "off-secret", NOW), 723),
            // No secret yet (awaiting activation): nothing to check with.
            (GW1_LOGIN, login_body("unset", "any-secret", NOW), 742),
            (GW1_LOGIN, b"not json".to_vec(), 460),
            (
                GW1_LOGIN,
                br#"{"id":"1","method":"combine.login","params":{}}"#.to_vec(),
                460,
            ),
        ];
        for (topic, body, code) in cases {
            let got = reply(&mut r, topic, &body);
            assert_eq!(got["code"], code, "{got}");
            assert_ne!(got["message"], "", "failures say why: {got}");
        }
    }

    #[test]
    fn logout_codes() {
        let (_dir, mut r) = responder();
        reply(&mut r, GW1_LOGIN, &login_body("sub1", "sub-secret", NOW));
        let body = |dk: &str| {
            json!({"id": 7, "method": "combine.logout", "params": {"productKey": "subpk", "deviceKey": dk}})
                .to_string()
                .into_bytes()
        };
        let topic = "/ext/session/gwpk/gw1/combine/logout";
        let ok = reply(&mut r, topic, &body("sub1"));
        assert_eq!(
            (ok["code"].clone(), ok["id"].clone()),
            (json!(200), json!(7))
        );
        assert!(!r.is_online(&id("gwpk", "gw1"), &id("subpk", "sub1")));
        let again = reply(&mut r, topic, &body("sub1"));
        assert_eq!(again["code"], 404, "{again}");
        assert!(
            again["message"]
                .as_str()
                .is_some_and(|m| m.contains("not online"))
        );
        assert_eq!(reply(&mut r, topic, &body("ghost"))["code"], 705);
        assert_eq!(
            reply(
                &mut r,
                "/ext/session/gwpk/gw2/combine/logout",
                &body("sub1")
            )["code"],
            740
        );
    }

    fn batch_body(entries: &[(&str, &str)], ts: u64) -> Vec<u8> {
        let client_id = "gw-client";
        let sub_devices: Vec<Value> = entries
            .iter()
            .map(|(dk, secret)| {
                let fields = SignedFields {
                    client_id: ClientId::new(client_id).expect("id"),
                    device_key: DeviceKey::new(dk).expect("dk"),
                    product_key: ProductKey::new("subpk").expect("pk"),
                    timestamp: TimestampMs::from_millis(ts),
                };
                let secret = DeviceSecret::new((*secret).to_owned()).expect("secret");
                let sign = enos_sign_core::sign(&fields, SignMethod::HmacSha256, &secret);
                json!({"productKey": "subpk", "deviceKey": dk, "secureMode": "2",
                       "sign": sign.expose_secret()})
            })
            .collect();
        json!({"id": "b1", "version": "1.1", "method": "combine.login.batch", "params": {
            "clientId": client_id, "timestamp": ts, "signMethod": "sha256",
            "subDevices": sub_devices}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn batch_login_lists_each_entry() {
        let (_dir, mut r) = responder();
        let topic = "/ext/session/gwpk/gw1/combine/login/batch";
        let got = reply(
            &mut r,
            topic,
            &batch_body(
                &[
                    ("sub1", "sub-secret"),
                    ("ghost", "x"),
                    ("off", "off-secret"),
                ],
                NOW,
            ),
        );
        assert_eq!(got["code"], 200, "{got}");
        assert_eq!(got["id"], "b1");
        assert_eq!(
            got["data"]["loginedSubDevices"],
            json!([{"productKey": "subpk", "deviceKey": "sub1", "assetId": "subpk/sub1"}])
        );
        assert_eq!(
            got["data"]["failedSubDevices"],
            json!([{"productKey": "subpk", "deviceKey": "ghost"},
                   {"productKey": "subpk", "deviceKey": "off"}])
        );
        assert!(r.is_online(&id("gwpk", "gw1"), &id("subpk", "sub1")));

        for malformed in [
            br#"{"id":"2","method":"combine.login.batch","params":{"clientId":"c","timestamp":"1","signMethod":"sha256"}}"#.to_vec(),
            br#"{"id":"2","method":"combine.login.batch","params":{"clientId":"c","timestamp":"1","signMethod":"sha256","subDevices":[]}}"#.to_vec(),
            br#"{"id":"2","method":"combine.login.batch","params":{"clientId":"c","timestamp":"1","signMethod":"sha256","subDevices":[{"productKey":"subpk","deviceKey":"sub1"}]}}"#.to_vec(),
            br#"{"id":"2","method":"combine.login","params":{}}"#.to_vec(),
        ] {
            let got = reply(&mut r, topic, &malformed);
            assert_eq!(got["code"], 460, "{got}");
        }
    }

    #[test]
    fn the_gateway_limit_refuses_with_429() {
        let (dir, _) = responder();
        let path = dir.path().join("devices.csv");
        let store = Arc::new(DeviceStore::open(&path).expect("valid"));
        let auth = Authenticator::new(store, FreshnessPolicy::Any, Md5Policy::Refuse);
        let online = Arc::new(SubDeviceSessions::new(1));
        let mut r = Responder::new(auth, Arc::clone(&online));
        let gw1 = id("gwpk", "gw1");
        let other = id("subpk", "x");
        online.log_in(&gw1, &other).expect("room");
        let got = reply(&mut r, GW1_LOGIN, &login_body("sub1", "sub-secret", NOW));
        assert_eq!(got["code"], 429, "{got}");
        online.log_out(&gw1, &other);
        let got = reply(&mut r, GW1_LOGIN, &login_body("sub1", "sub-secret", NOW));
        assert_eq!(got["code"], 200, "{got}");
    }

    /// #28 item 5: the sandbox answers measurepoint resume and resume.batch as EnOS documents them, refusing data of offline sub-devices.
    #[test]
    fn measurepoint_resume_codes() {
        let (_dir, mut r) = responder();
        let one = br#"{"id":"7","version":"1.0","method":"thing.measurepoint.resume","params":{"measurepoints":{"temp":21.5},"time":1700000000000}}"#;
        assert_eq!(
            reply(&mut r, "/sys/gwpk/gw1/thing/measurepoint/resume", one),
            json!({"id": "7", "code": 200, "data": {}, "message": ""})
        );
        assert_eq!(
            reply(&mut r, "/sys/gwpk/nobody/thing/measurepoint/resume", one)["code"],
            705
        );
        let no_time = br#"{"id":"8","method":"thing.measurepoint.resume","params":{"measurepoints":{"temp":1}}}"#;
        assert_eq!(
            reply(&mut r, "/sys/gwpk/gw1/thing/measurepoint/resume", no_time)["code"],
            460
        );
        // A sub-device's data while it is offline: refused.
        assert_eq!(
            reply(&mut r, "/sys/subpk/sub1/thing/measurepoint/resume", one)["code"],
            460
        );
        let batch = |allow: bool| {
            json!({
                "id": "9", "version": "1.0", "method": "thing.measurepoint.resume.batch",
                "allowOfflineSubDevice": allow,
                "params": [
                    {"measurepoints": {"temp": 1}, "time": 1},
                    {"productKey": "subpk", "deviceKey": "sub1", "measurepoints": {"temp": 2}, "time": 2},
                ],
            })
            .to_string()
            .into_bytes()
        };
        let topic = "/sys/gwpk/gw1/thing/measurepoint/resume/batch";
        assert_eq!(reply(&mut r, topic, &batch(false))["code"], 460);
        assert_eq!(reply(&mut r, topic, &batch(true))["code"], 200);
        // Logged in: taken without the flag.
        assert_eq!(
            reply(&mut r, GW1_LOGIN, &login_body("sub1", "sub-secret", NOW))["code"],
            200
        );
        assert_eq!(reply(&mut r, topic, &batch(false))["code"], 200);
        assert_eq!(
            reply(&mut r, "/sys/subpk/sub1/thing/measurepoint/resume", one)["code"],
            200
        );
        // Another gateway's sub-device.
        assert_eq!(
            reply(
                &mut r,
                "/sys/gwpk/gw2/thing/measurepoint/resume/batch",
                &batch(true)
            )["code"],
            740
        );
    }

    #[test]
    fn measurepoint_post_codes() {
        let (_dir, mut r) = responder();
        let body = br#"{"id":"9","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"temp":21.5},"time":1700000000000}}"#;
        let ok = reply(&mut r, "/sys/gwpk/gw1/thing/measurepoint/post", body);
        assert_eq!(
            ok,
            json!({"id": "9", "code": 200, "data": {}, "message": ""})
        );
        assert_eq!(
            reply(&mut r, "/sys/gwpk/nobody/thing/measurepoint/post", body)["code"],
            705
        );
        assert_eq!(
            reply(&mut r, "/sys/gwpk/gw1/thing/measurepoint/post", b"{}")["code"],
            460
        );
    }

    #[test]
    fn other_topics_get_no_reply() {
        let (_dir, mut r) = responder();
        let now = TimestampMs::from_millis(NOW);
        for topic in [
            "/sys/gwpk/gw1/thing/measurepoint/post_reply",
            "/ext/session/gwpk/gw1/combine/login_reply",
            "/sys/gwpk/gw1/thing/event/alarm/post",
            "/ext/session/gw|pk/gw1/combine/login",
        ] {
            assert!(r.respond_at(topic, b"{}", now).is_none(), "{topic}");
        }
    }
}
