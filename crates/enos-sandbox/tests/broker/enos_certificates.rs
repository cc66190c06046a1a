//! EnOS's certificate API played by the sandbox (issue 26, part 1): the
//! token method and per-call signature verified, apply / renew / revoke /
//! list with EnOS's envelope and codes, certificates of the sandbox's EnOS
//! CA with EnOS's profile, and the MQTTS listener binding each one to its
//! device by serial. A plain-HTTP client over std sockets plays the
//! signer's side (the signer's own client is tested against the same
//! binary in enos-signer-svc).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
};

use enos_sign_core::SignMethod;
use enos_testkit::Identity;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use rumqttc::ConnectReturnCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use crate::common::{Fixture, WAIT, assert_refused, connect, credential, now_ms, tls_client};

const ORG: &str = "o15724268424841";
const APP_KEY: &str = "app-key-sandbox-test";
const APP_SECRET: &str = "app-secret-9c1e77d0-never-logged";

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the app secret (owner-only) and a config with `[enos_api]`
/// (plain HTTP, the CA kept in `enos-ca/`), `extra` appended to the section.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let secret = dir.join("enos-app.secret");
    std::fs::write(&secret, APP_SECRET).expect("secret");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = dir.join("sandbox.toml");
    std::fs::write(
        &config,
        format!(
            "[enos_api]\nlisten = \"127.0.0.1:0\"\norg_id = \"{ORG}\"\napp_key = \"{APP_KEY}\"\n\
             app_secret_file = \"enos-app.secret\"\nstate_dir = \"enos-ca\"\n{extra}"
        ),
    )
    .expect("config");
    config
}

/// Now in ms, never the same twice: the gateway refuses a reused
/// `token/get` timestamp as a replay (1001), as EnOS does.
fn fresh_ts() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let previous = LAST.fetch_max(now, Ordering::SeqCst);
    if previous >= now {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    }
}

/// One HTTP/1.1 exchange (Connection: close): status and JSON body.
fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connect to the API");
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status, body)
}

/// The signer's side of the API, minimal.
struct Client {
    addr: SocketAddr,
    token: String,
}

impl Client {
    fn token_request(addr: SocketAddr, secret: &str, ts: u64) -> Value {
        let body = json!({
            "appKey": APP_KEY,
            "encryption": sha256_hex(&format!("{APP_KEY}{ts}{secret}")),
            "timestamp": ts,
        });
        http(
            addr,
            "POST",
            "/apim-token-service/v2.0/token/get",
            &[],
            &body.to_string(),
        )
        .1
    }

    fn new(addr: SocketAddr) -> Self {
        let reply = Client::token_request(addr, APP_SECRET, fresh_ts());
        assert_eq!(reply["status"], 0, "{reply}");
        Client {
            addr,
            token: reply["data"]["accessToken"]
                .as_str()
                .expect("token")
                .to_owned(),
        }
    }

    /// A signed call of `action` for `pk/dk`; `secret` signs.
    fn call_signed_with(
        &self,
        secret: &str,
        action: &str,
        pk: &str,
        dk: &str,
        body: &Value,
    ) -> Value {
        let mut query = [
            ("action", action),
            ("deviceKey", dk),
            ("orgId", ORG),
            ("productKey", pk),
        ];
        query.sort();
        let body = if action == "list" {
            String::new()
        } else {
            body.to_string()
        };
        let ts = now_ms().to_string();
        let params: String = query.iter().map(|(n, v)| format!("{n}{v}")).collect();
        let signature = sha256_hex(&format!("{}{params}{body}{ts}{secret}", self.token));
        let target = format!(
            "/connect-service/v2.0/certificates?{}",
            query
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        let method = if action == "list" { "GET" } else { "POST" };
        let (status, reply) = http(
            self.addr,
            method,
            &target,
            &[
                ("apim-accesstoken", self.token.clone()),
                ("apim-timestamp", ts),
                ("apim-signature", signature),
            ],
            &body,
        );
        assert_eq!(status, 200, "{reply}");
        reply
    }

    fn call(&self, action: &str, pk: &str, dk: &str, body: &Value) -> Value {
        self.call_signed_with(APP_SECRET, action, pk, dk, body)
    }
}

/// A P-256 key and a CSR for it with EnOS's subject fields, CN `cn`.
fn csr(cn: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = csr_for(&key, cn);
    (key, csr)
}

fn csr_for(key: &KeyPair, cn: &str) -> String {
    let mut params = CertificateParams::default();
    // rcgen's default holds a CN of its own, first.
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (ty, value) in [
        (DnType::CountryName, "CN"),
        (DnType::StateOrProvinceName, "Shanghai"),
        (DnType::LocalityName, "Shanghai"),
        (DnType::OrganizationName, "EnOS"),
        (DnType::OrganizationalUnitName, "gateways"),
        (DnType::CommonName, cn),
    ] {
        params.distinguished_name.push(ty, value);
    }
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn identity(key: &KeyPair, cert_pem: &str) -> Identity {
    Identity {
        cert_pem: cert_pem.to_owned(),
        key_pem: key.serialize_pem(),
        serial: Vec::new(),
    }
}

fn gw1_login() -> enos_sign_core::MqttCredential {
    credential(
        "gwpk",
        "gw1",
        "secret-gw1-a83f1",
        SignMethod::HmacSha256,
        now_ms(),
    )
}

#[tokio::test]
async fn apply_issues_an_enos_profile_certificate_that_logs_in_only_as_its_device() {
    let fixture = Fixture::new();
    let config = write_config(fixture.dir.path(), "day = \"1m\"\n");
    let sandbox = fixture
        .sandbox()
        .config(&config)
        .enos_api()
        .start()
        .expect("starts");
    let api = Client::new(sandbox.enos_api_addr().expect("api"));

    let (key, csr) = csr("gw1");
    let reply = api.call(
        "apply",
        "gwpk",
        "gw1",
        &json!({"csr": csr, "validDay": 3, "issueAuthority": "ecc", "timestamp": 1}),
    );
    assert_eq!(reply["code"], 0, "{reply}");
    assert_eq!(reply["msg"], "OK");
    let data = &reply["data"];
    let serial: u64 = data["certSN"]
        .as_str()
        .expect("certSN is a string")
        .parse()
        .expect("decimal");
    assert_eq!(data["issueAuthority"], "ECC");
    assert!(
        data["caCert"]
            .as_str()
            .expect("root")
            .contains("BEGIN CERTIFICATE")
    );
    let cert_pem = data["cert"].as_str().expect("cert").to_owned();

    // EnOS's profile: serial = certSN, notAfter = notBefore + validDay,
    // the CSR's subject, no SAN / key usage / EKU, CA:FALSE, the Netscape
    // comment, issued by the ECC root.
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("pem");
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&pem.contents).expect("der");
    assert_eq!(u64::try_from(cert.serial.clone()).expect("u64"), serial);
    let validity = cert.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        3 * 60
    );
    assert!(
        cert.issuer().to_string().contains("CN=EnOS ECC CA"),
        "{}",
        cert.issuer()
    );
    assert!(
        cert.subject().to_string().contains("CN=gw1"),
        "{}",
        cert.subject()
    );
    assert!(cert.subject_alternative_name().expect("ok").is_none());
    assert!(cert.key_usage().expect("ok").is_none());
    assert!(cert.extended_key_usage().expect("ok").is_none());
    assert!(!cert.is_ca());
    let comment = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.16.840.1.113730.1.13")
        .expect("Netscape comment");
    assert!(String::from_utf8_lossy(comment.value).contains("Enos Generated Certificate"));

    // MQTTS: the certificate logs in as its device, not as another.
    let tls_addr = sandbox.tls_addr().expect("tls");
    let client_tls = tls_client(&fixture.pki, Some(&identity(&key, &cert_pem)));
    connect(tls_addr, &gw1_login(), Some(client_tls.clone()))
        .await
        .expect("accepted with its EnOS certificate");
    assert_refused(
        &sandbox,
        tls_addr,
        &credential(
            "gwpk",
            "gw2",
            "secret-gw2-02bd7",
            SignMethod::HmacSha256,
            now_ms(),
        ),
        Some(client_tls),
        ConnectReturnCode::NotAuthorized,
        &format!("EnOS certificate {serial} is bound to gwpk/gw1, not gwpk/gw2"),
    )
    .await;

    // List shows it, valid, with Java-style names and dates.
    let list = api.call("list", "gwpk", "gw1", &Value::Null);
    assert_eq!(list["code"], 0, "{list}");
    let entry = &list["data"][0];
    assert_eq!(entry["certSN"], serial.to_string());
    assert_eq!(entry["certStatus"], 0);
    assert_eq!(
        entry["subject"],
        "CN=gw1, OU=gateways, O=EnOS, L=Shanghai, ST=Shanghai, C=CN"
    );
    assert!(entry["expireDate"].as_u64().expect("ms") > entry["signDate"].as_u64().expect("ms"));

    // The public root and CRL.
    let (status, root) = http(api.addr, "GET", "/enos/CA/cacert/ECC", &[], "");
    assert_eq!(status, 200);
    assert_eq!(
        root.as_str().expect("pem"),
        data["caCert"].as_str().expect("pem")
    );
    // The secret never reaches the log.
    assert!(!sandbox.logs().contains(APP_SECRET));
}

#[tokio::test]
async fn the_gateway_refuses_bad_tokens_signatures_and_replays() {
    let fixture = Fixture::new();
    let config = write_config(fixture.dir.path(), "");
    let sandbox = fixture
        .sandbox()
        .config(&config)
        .enos_api()
        .start()
        .expect("starts");
    let addr = sandbox.enos_api_addr().expect("api");

    let ts = fresh_ts();
    assert_eq!(
        Client::token_request(addr, "wrong-secret", ts)["status"],
        1003
    );
    let first = Client::token_request(addr, APP_SECRET, ts);
    assert_eq!(first["status"], 0, "{first}");
    assert_eq!(first["data"]["expire"], 7200);
    assert_eq!(
        Client::token_request(addr, APP_SECRET, ts)["status"],
        1001,
        "a reused timestamp is a replay"
    );
    let stale = Client::token_request(addr, APP_SECRET, ts - 3_600_000);
    assert_eq!(stale["status"], 1004, "{stale}");
    // A string timestamp (the Go client's) works too; the same token.
    let ts2 = fresh_ts();
    let body = json!({"appKey": APP_KEY, "timestamp": ts2.to_string(),
        "encryption": sha256_hex(&format!("{APP_KEY}{ts2}{APP_SECRET}"))});
    let (_, again) = http(
        addr,
        "POST",
        "/apim-token-service/v2.0/token/get",
        &[],
        &body.to_string(),
    );
    assert_eq!(again["data"]["accessToken"], first["data"]["accessToken"]);

    let api = Client::new(addr);
    let (_, csr) = csr("gw1");
    let forged = api.call_signed_with("wrong-secret", "apply", "gwpk", "gw1", &json!({"csr": csr}));
    assert_eq!(forged["code"], 1003, "{forged}");
    assert!(forged["data"].is_null());
    let unsigned = http(addr, "GET", &format!("/connect-service/v2.0/certificates?action=list&orgId={ORG}&productKey=gwpk&deviceKey=gw1"), &[], "").1;
    assert_eq!(unsigned["code"], 1202, "{unsigned}");
    // Nothing was issued by the refused calls.
    assert_eq!(
        api.call("list", "gwpk", "gw1", &Value::Null)["data"],
        json!([])
    );
    let other_org = {
        // orgId is part of what is signed: sign the other one properly.
        let mut query = [
            ("action", "list"),
            ("deviceKey", "gw1"),
            ("orgId", "o-other"),
            ("productKey", "gwpk"),
        ];
        query.sort();
        let ts = now_ms().to_string();
        let params: String = query.iter().map(|(n, v)| format!("{n}{v}")).collect();
        let sig = sha256_hex(&format!("{}{params}{ts}{APP_SECRET}", api.token));
        http(addr, "GET", "/connect-service/v2.0/certificates?action=list&orgId=o-other&productKey=gwpk&deviceKey=gw1",
            &[("apim-accesstoken", api.token.clone()), ("apim-timestamp", ts), ("apim-signature", sig)], "").1
    };
    assert_eq!(other_org["code"], 99403, "{other_org}");
    assert!(!sandbox.logs().contains(APP_SECRET));
}

#[tokio::test]
async fn bad_requests_get_enos_codes_and_nothing_is_issued() {
    let fixture = Fixture::new();
    let config = write_config(
        fixture.dir.path(),
        "[enos_api.products.pkA]\nbi_directional_auth = false\n[enos_api.products.gwpk]\nmax_valid_day = 100\n",
    );
    let sandbox = fixture
        .sandbox()
        .config(&config)
        .enos_api()
        .start()
        .expect("starts");
    let api = Client::new(sandbox.enos_api_addr().expect("api"));
    let (good_key, good) = csr("gw1");
    let p384 = {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
        csr_for(&key, "gw1")
    };
    let no_ou = {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "gw1");
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    };
    for (pk, dk, body, code, needle) in [
        ("gwpk", "gw1", json!({}), 99400, "csr:csr is missing"),
        (
            "gwpk",
            "gw1",
            json!({"csr": p384, "issueAuthority": "ECC"}),
            99400,
            "needs a P-256 key",
        ),
        (
            "gwpk",
            "gw1",
            json!({"csr": no_ou, "issueAuthority": "ECC"}),
            99400,
            "the subject has no C",
        ),
        (
            "gwpk",
            "gw1",
            json!({"csr": good, "issueAuthority": "DSA"}),
            99400,
            "not RSA or ECC",
        ),
        (
            "gwpk",
            "gw1",
            json!({"csr": good, "issueAuthority": "ECC", "validDay": 101}),
            99400,
            "maximum of 100",
        ),
        ("gwpk", "gw1", json!({"csr": good}), 99500, "no RSA root"),
        (
            "gwpk",
            "nope",
            json!({"csr": good, "issueAuthority": "ECC"}),
            11404,
            "device not found",
        ),
        (
            "pkA",
            "dev1",
            json!({"csr": good, "issueAuthority": "ECC"}),
            99400,
            "bi-directional",
        ),
        (
            "gwpk",
            "gw1",
            json!({"certSn": 1}),
            99400,
            "not in the device's list",
        ),
    ] {
        let action = if body.get("certSn").is_some() {
            "renew"
        } else {
            "apply"
        };
        let reply = api.call(action, pk, dk, &body);
        assert_eq!(reply["code"], code, "{reply}");
        assert!(
            reply["msg"].as_str().expect("msg").contains(needle),
            "{needle}: {reply}"
        );
        assert!(reply["requestId"].is_string());
    }
    assert_eq!(
        api.call("list", "gwpk", "gw1", &Value::Null)["data"],
        json!([])
    );

    // CN unique: gw2 may not take gw1's subject.
    let first = api.call(
        "apply",
        "gwpk",
        "gw1",
        &json!({"csr": good, "issueAuthority": "ECC"}),
    );
    assert_eq!(first["code"], 0, "{first}");
    let (_, same_cn) = csr("gw1");
    let dup = api.call(
        "apply",
        "gwpk",
        "gw2",
        &json!({"csr": same_cn, "issueAuthority": "ECC"}),
    );
    assert_eq!(dup["code"], 99400);
    assert!(
        dup["msg"]
            .as_str()
            .expect("msg")
            .starts_with("Duplicate subject"),
        "{dup}"
    );
    // One key, one device: gw2 re-using gw1's key is 11833.
    let reused = api.call(
        "apply",
        "gwpk",
        "gw2",
        &json!({"csr": csr_for(&good_key, "gw2"), "issueAuthority": "ECC"}),
    );
    assert_eq!(reused["code"], 11833, "{reused}");
}

#[tokio::test]
async fn renew_then_revoke_superseded_refuses_the_old_certificate_at_the_next_handshake_and_survives_a_restart()
 {
    let fixture = Fixture::new();
    let config = write_config(fixture.dir.path(), "");
    let mut sandbox = fixture
        .sandbox()
        .config(&config)
        .enos_api()
        .start()
        .expect("starts");
    let api = Client::new(sandbox.enos_api_addr().expect("api"));
    let tls_addr = sandbox.tls_addr().expect("tls");

    let (old_key, old_csr) = csr("gw1");
    let applied = api.call(
        "apply",
        "gwpk",
        "gw1",
        &json!({"csr": old_csr, "issueAuthority": "ECC"}),
    );
    assert_eq!(applied["code"], 0, "{applied}");
    let old_serial: u64 = applied["data"]["certSN"]
        .as_str()
        .expect("sn")
        .parse()
        .expect("n");
    let old_pem = applied["data"]["cert"].as_str().expect("cert").to_owned();

    // Renew with a new key and the same CN (a renewal may reuse it).
    let new_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let renewed = api.call(
        "renew",
        "gwpk",
        "gw1",
        &json!({"certSn": old_serial, "csr": csr_for(&new_key, "gw1"), "issueAuthority": "ECC"}),
    );
    assert_eq!(renewed["code"], 0, "{renewed}");
    let new_serial: u64 = renewed["data"]["certSN"]
        .as_str()
        .expect("sn")
        .parse()
        .expect("n");
    assert_eq!(new_serial, old_serial + 1);
    let new_pem = renewed["data"]["cert"].as_str().expect("cert").to_owned();

    // By default renew leaves the old one valid: the client revokes it.
    let old_tls = tls_client(&fixture.pki, Some(&identity(&old_key, &old_pem)));
    connect(tls_addr, &gw1_login(), Some(old_tls.clone()))
        .await
        .expect("old still valid");
    let revoked = api.call(
        "revoke",
        "gwpk",
        "gw1",
        &json!({"certSn": old_serial, "reason": 4}),
    );
    assert_eq!(revoked["code"], 0, "{revoked}");
    assert!(revoked["data"].is_null());
    let again = api.call(
        "revoke",
        "gwpk",
        "gw1",
        &json!({"certSn": old_serial, "reason": 4}),
    );
    assert!(
        again["msg"]
            .as_str()
            .expect("msg")
            .contains("already revoked"),
        "{again}"
    );
    let bad_reason = api.call(
        "revoke",
        "gwpk",
        "gw1",
        &json!({"certSn": new_serial, "reason": 2}),
    );
    assert_eq!(bad_reason["code"], 99400, "{bad_reason}");
    assert_refused(
        &sandbox,
        tls_addr,
        &gw1_login(),
        Some(old_tls.clone()),
        ConnectReturnCode::NotAuthorized,
        &format!("EnOS certificate {old_serial} is revoked"),
    )
    .await;
    let renew_revoked = api.call("renew", "gwpk", "gw1", &json!({"certSn": old_serial}));
    assert!(
        renew_revoked["msg"]
            .as_str()
            .expect("msg")
            .contains("revoked"),
        "{renew_revoked}"
    );

    let list = api.call("list", "gwpk", "gw1", &Value::Null);
    let statuses: Vec<(String, i64, Value)> = list["data"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["certSN"].as_str().expect("sn").to_owned(),
                e["certStatus"].as_i64().expect("st"),
                e["revokerReason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (old_serial.to_string(), 1, json!("SUPERSEDED")),
            (new_serial.to_string(), 0, Value::Null)
        ]
    );
    let (_, crl) = http(api.addr, "GET", "/enos/CA/crl/ECC", &[], "");
    let crl = crl.as_str().expect("pem").to_owned();
    let (_, crl_pem) = x509_parser::pem::parse_x509_pem(crl.as_bytes()).expect("crl pem");
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl_pem.contents)
            .expect("crl");
    let listed: Vec<u64> = crl
        .iter_revoked_certificates()
        .map(|r| u64::try_from(r.user_certificate.clone()).expect("u64"))
        .collect();
    assert_eq!(listed, [old_serial]);

    // A restart keeps the CA and the records.
    sandbox.restart().expect("restart");
    let new_tls = tls_client(&fixture.pki, Some(&identity(&new_key, &new_pem)));
    connect(tls_addr, &gw1_login(), Some(new_tls))
        .await
        .expect("new accepted after a restart");
    assert_refused(
        &sandbox,
        tls_addr,
        &gw1_login(),
        Some(old_tls),
        ConnectReturnCode::NotAuthorized,
        "is revoked",
    )
    .await;
    let _ = WAIT;
}
