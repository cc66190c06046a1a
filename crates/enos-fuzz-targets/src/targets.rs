//! One function per fuzz target. Each must never panic, whatever the
//! bytes; the `assert!`s are invariants a fuzzer can break.

use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use enos_agent::{
    EnosReply,
    config::DownstreamConfig,
    topics::{DeviceTopics, DownstreamMap},
};
use enos_sandbox::{Authenticator, DeviceStore, FreshnessPolicy, Responder};
use enos_sign_core::{DeviceSecret, Freshness, Md5Policy, PresentedLogin, TimestampMs};
use enos_signer_proto::identity::PeerIdentity;

/// The input as text, as a network peer or a file would hand it over.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The input cut at the first `n - 1` newlines into `n` parts (missing
/// parts are empty).
fn parts<const N: usize>(data: &str) -> [&str; N] {
    let mut out = [""; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
        } else if let Some((head, tail)) = rest.split_once('\n') {
            *slot = head;
            rest = tail;
        } else {
            *slot = rest;
            rest = "";
        }
    }
    out
}

/// `client id \n username \n password`: parse as a broker, then verify.
pub fn mqtt_login(data: &[u8]) {
    let data = text(data);
    let [client_id, username, password] = parts::<3>(&data);
    let Ok(login) = PresentedLogin::parse(client_id, username, Md5Policy::Allow) else {
        return;
    };
    // What is signed is exactly what was sent.
    let sent_client_id = client_id.split('|').next().unwrap_or_default();
    assert_eq!(login.fields.client_id.as_str(), sent_client_id);
    assert!(client_id.contains(login.fields.timestamp.as_str()));
    let secret = DeviceSecret::new("fuzz-secret".to_owned()).expect("a valid secret");
    let outcome = login.verify(password, &secret, Freshness::Any);
    // A password the fuzzer made up matches only by a digest collision.
    assert!(outcome.is_err() || password.len() >= 32);
    let window = Freshness::Within {
        now: TimestampMs::from_millis(1_700_000_000_000),
        window_ms: 600_000,
    };
    let _ = login.verify(password, &secret, window);
}

/// A URI SAN: whatever parses must print back to the same identity.
pub fn certificate_identity(data: &[u8]) {
    if let Ok(identity) = PeerIdentity::from_uri(&text(data)) {
        let again = PeerIdentity::from_uri(&identity.to_uri()).expect("its own URI parses");
        assert_eq!(again, identity);
    }
}

/// A device CSV file.
pub fn device_file(data: &[u8]) {
    if let Ok(file) = enos_domain::device_file::read(data) {
        // Rows are numbered as an editor shows them, the header being 1.
        for row in &file.rows {
            let line = match row {
                Ok(row) => {
                    // A product secret is absent or not empty, never "".
                    assert!(row.product_secret.as_ref().is_none_or(|s| {
                        !enos_sign_core::ExposeSecret::expose_secret(s).is_empty()
                    }));
                    row.line
                }
                Err(bad) => bad.line,
            };
            assert!(line >= 2, "line {line}");
        }
    }
}

/// The signer's TOML configuration.
pub fn signer_config(data: &[u8]) {
    let _ = enos_signer_svc::config::SignerConfig::from_toml(&text(data));
}

/// The agent's TOML configuration (parsed and validated).
pub fn agent_config(data: &[u8]) {
    let _ = enos_agent::Config::parse(&text(data), Path::new("/fuzz/agent.toml"));
}

/// The sandbox's TOML configuration.
pub fn sandbox_config(data: &[u8]) {
    let _ = enos_sandbox::ConfigFile::parse(Path::new("/fuzz/sandbox.toml"), &text(data));
}

/// The `[custody]` section of kind `pkcs11`, parsed and resolved.
pub fn pkcs11_config(data: &[u8]) {
    if let Ok(config) = enos_toml::from_str::<enos_custody_pkcs11::Pkcs11Config>(&text(data)) {
        let _ = config.resolve();
    }
}

/// A PKCS#11 URI (RFC 7512), resolved as the custody config would.
pub fn pkcs11_uri(data: &[u8]) {
    let config = enos_custody_pkcs11::Pkcs11Config {
        uri: Some(text(data).into_owned()),
        ..enos_custody_pkcs11::Pkcs11Config::default()
    };
    let _ = config.resolve();
}

/// The sandbox's responder, over a small device file made once.
fn responder() -> &'static std::sync::Mutex<Responder> {
    static RESPONDER: OnceLock<std::sync::Mutex<Responder>> = OnceLock::new();
    RESPONDER.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("enos-fuzz-devices-{}.csv", std::process::id()));
        std::fs::write(
            &path,
            "productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey\n\
             gwpk,gw1,secret-gw1,,,\n\
             subpk,sub1,secret-sub1,,gwpk,gw1\n\
             pkA,dev1,secret-dev1,,,\n",
        )
        .expect("write the fuzz device file");
        let store = Arc::new(DeviceStore::open(&path).expect("the fuzz device file loads"));
        let auth = Authenticator::new(store, FreshnessPolicy::Any, Md5Policy::Allow);
        std::sync::Mutex::new(Responder::new(auth, Arc::default()))
    })
}

/// `topic \n payload` published to the sandbox: every request topic
/// gets a reply on `{topic}_reply`, other topics none.
pub fn sandbox_requests(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let topic = text(&data[..split]);
    let payload = data.get(split + 1..).unwrap_or_default();
    let mut responder = responder()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(reply) = responder.respond_at(&topic, payload, TimestampMs::from_millis(0)) {
        assert_eq!(reply.topic, format!("{topic}_reply"));
        let body: serde_json::Value =
            serde_json::from_slice(&reply.payload).expect("replies are JSON");
        assert!(body["code"].is_i64());
    }
}

/// `topic \n payload` as EnOS sends them to a gateway: service calls are
/// routed to local topics, replies parsed.
pub fn agent_downstream(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let topic = text(&data[..split]);
    let payload = data.get(split + 1..).unwrap_or_default();
    let topics = DeviceTopics::new("pkGw", "gw1");
    let map = DownstreamMap::new(&DownstreamConfig {
        local_prefix: "gw/svc".into(),
        local_reply_prefix: "gw/svc-reply".into(),
    });
    if let Some(rest) = topics.service_rest(&topic) {
        let local = map.local_topic(rest);
        assert!(local.starts_with("gw/svc/"));
        // A local reply on the mirrored topic goes back to the service.
        let reply_local = format!("gw/svc-reply/{rest}");
        assert_eq!(map.reply_rest(&reply_local), Some(rest));
        assert_eq!(topics.service_reply(rest), format!("{topic}_reply"));
    }
    let _ = EnosReply::parse(payload);
    // The activation push: only this device's, never an empty secret.
    if let Ok(push) = enos_agent::activation::ActivationPush::parse(payload, "pkGw", "gw1") {
        assert!(!secrecy::ExposeSecret::expose_secret(&push.device_secret).is_empty());
    }
}
