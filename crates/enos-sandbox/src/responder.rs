//! [`Responder`]: the EnOS side of request/reply topics, so that gateway
//! and device software can be tested against the sandbox.
//!
//! | request topic | method | reply codes |
//! |---|---|---|
//! | `/ext/session/{gwPk}/{gwDk}/combine/login` | `combine.login` | 200, 460 bad params, 705 unknown sub-device, 740 not a sub-device of this gateway, 742 sign check failed (or stale timestamp), 723 sub-device disabled |
//! | `/ext/session/{gwPk}/{gwDk}/combine/logout` | `combine.logout` | 200, 460, 705, 740 |
//! | `/sys/{pk}/{dk}/thing/measurepoint/post` | `thing.measurepoint.post` | 200, 460 bad JSON, 705 unknown device |
//!
//! The reply goes to the request topic with `_reply` appended:
//! `{"id": <request id>, "code": 200, "data": {...}, "message": "..."}`.
//! The checks of `combine.login` run in the order of the table, so a
//! disabled sub-device is reported only to a gateway that signed for it.

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
pub const REQUEST_FILTERS: [&str; 3] = [
    "/ext/session/+/+/combine/login",
    "/ext/session/+/+/combine/logout",
    "/sys/+/+/thing/measurepoint/post",
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
    /// `combine.logout` by this gateway.
    Logout(DeviceId),
    /// `thing.measurepoint.post` for this device.
    MeasurepointPost(DeviceId),
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
                Request::Logout(gateway) => self.logout(gateway, &body),
                Request::MeasurepointPost(device) => self.measurepoint_post(device, &body),
            },
        };
        let (what, device) = match &request {
            Request::Login(d) => ("combine.login", d),
            Request::Logout(d) => ("combine.logout", d),
            Request::MeasurepointPost(d) => ("thing.measurepoint.post", d),
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
        let sub = DeviceId::new(
            params.fields.product_key.clone(),
            params.fields.device_key.clone(),
        );
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
        if let Err(e) = self
            .auth
            .freshness_at(now)
            .check(params.fields.timestamp.millis())
        {
            return Outcome::fail(code::SIGN_CHECK_FAILED, e.to_string());
        }
        let Some(secret) = &device.secret else {
            return Outcome::fail(
                code::SIGN_CHECK_FAILED,
                format!("sub-device {sub} has no device secret yet (it awaits activation)"),
            );
        };
        if verify_sign(&params.fields, params.method, &params.sign, secret).is_err() {
            return Outcome::fail(code::SIGN_CHECK_FAILED, "sign check failed");
        }
        if !device.enabled {
            return Outcome::fail(
                code::DEVICE_DISABLED,
                format!("sub-device {sub} is disabled"),
            );
        }
        self.online.log_in(gateway, &sub);
        Outcome::ok(json!({
            "productKey": sub.product_key.as_str(),
            "deviceKey": sub.device_key.as_str(),
        }))
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
        self.online.log_out(gateway, &sub);
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
        // The SDKs send a string; a JSON number is signed as its shortest
        // decimal text (what Python and JavaScript print for it), and one
        // written with an exponent is refused by the grammar.
        let timestamp = match p.get("timestamp") {
            Some(Value::String(s)) => PresentedTimestamp::new(s),
            Some(Value::Number(n)) => PresentedTimestamp::new(&n.to_string()),
            _ => return Err("params.timestamp is missing".into()),
        }
        .map_err(|e| e.to_string())?;
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
        ["", "ext", "session", pk, dk, "combine", "logout"] => id(pk, dk).map(Request::Logout),
        ["", "sys", pk, dk, "thing", "measurepoint", "post"] => {
            id(pk, dk).map(Request::MeasurepointPost)
        }
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
    use crate::{config::FreshnessPolicy, devices::DeviceStore};

    const NOW: u64 = 1_700_000_000_000;

    fn responder() -> (tempfile::TempDir, Responder) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("devices.csv");
        std::fs::write(
            &path,
            "productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey\n\
             gwpk,gw1,gw-secret,,,\n\
             gwpk,gw2,gw-secret,,,\n\
             subpk,sub1,sub-secret,,gwpk,gw1\n\
             subpk,off,off-secret,false,gwpk,gw1\n",
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
        let gw1 = DeviceId::new(
            ProductKey::new("gwpk").expect("pk"),
            DeviceKey::new("gw1").expect("dk"),
        );
        let sub1 = DeviceId::new(
            ProductKey::new("subpk").expect("pk"),
            DeviceKey::new("sub1").expect("dk"),
        );
        assert!(r.is_online(&gw1, &sub1));

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
        let gw1 = DeviceId::new(
            ProductKey::new("gwpk").expect("pk"),
            DeviceKey::new("gw1").expect("dk"),
        );
        let sub1 = DeviceId::new(
            ProductKey::new("subpk").expect("pk"),
            DeviceKey::new("sub1").expect("dk"),
        );
        assert!(!r.is_online(&gw1, &sub1));
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
