//! Shared set-up: a device file, a PKI, a sandbox child, rumqttc clients
//! with credentials signed by enos-sign-core, and a gateway's signed
//! sub-device logins.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, MqttCredential, ProductKey, SignMethod,
    SignedFields, TimestampMs,
};
use enos_testkit::sandbox::{Sandbox, SandboxBinary, SandboxBuilder};
use enos_testkit::{Identity, Pki};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use serde_json::{Value, json};

/// Every wait in these tests; the expected path takes milliseconds.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// The device file every test starts from. The last column is ignored.
pub(crate) const DEVICES: &str = "\
productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey,comment
pkA,dev1,secret-dev1-7f3a9,true,,,a plain device
pkA,dev2,secret-dev2-51c2e,,,,
pkA,off1,secret-off1-9b0d4,false,,,disabled
gwpk,gw1,secret-gw1-a83f1,,,,gateway
gwpk,gw2,secret-gw2-02bd7,,,,another gateway
subpk,sub1,secret-sub1-c4e88,,gwpk,gw1,
subpk,sub2,secret-sub2-6d1f0,,gwpk,gw2,
subpk,suboff,secret-suboff-3a7b2,false,gwpk,gw1,
";

/// Every secret in [`DEVICES`], for leak checks.
pub(crate) const SECRETS: [&str; 8] = [
    "secret-dev1-7f3a9",
    "secret-dev2-51c2e",
    "secret-off1-9b0d4",
    "secret-gw1-a83f1",
    "secret-gw2-02bd7",
    "secret-sub1-c4e88",
    "secret-sub2-6d1f0",
    "secret-suboff-3a7b2",
];

/// A temporary directory with the device file and a PKI written out.
pub(crate) struct Fixture {
    /// Holds the files until the test ends.
    pub(crate) dir: tempfile::TempDir,
    /// The device CSV file.
    pub(crate) devices: PathBuf,
    /// The CA of the TLS listener's client certificates (and server cert).
    pub(crate) pki: Pki,
    /// The CA file.
    pub(crate) ca: PathBuf,
    /// The server certificate and key files.
    pub(crate) server: enos_testkit::IdentityFiles,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Fixture::with_devices(DEVICES)
    }

    /// A fixture whose device file is `csv` instead of [`DEVICES`].
    pub(crate) fn with_devices(csv: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let devices = dir.path().join("devices.csv");
        std::fs::write(&devices, csv).expect("write devices");
        let pki = Pki::new("sandbox test CA").expect("pki");
        let ca = pki.write_ca(dir.path()).expect("write ca");
        let server = pki
            .server(&[])
            .expect("server cert")
            .write(dir.path(), "server")
            .expect("write server cert");
        Fixture {
            dir,
            devices,
            pki,
            ca,
            server,
        }
    }

    /// A builder for a sandbox on this fixture's devices, with TLS.
    pub(crate) fn sandbox(&self) -> SandboxBuilder {
        Sandbox::builder(binary(), &self.devices).tls(&self.ca, &self.server.cert, &self.server.key)
    }

    /// Starts the default sandbox.
    pub(crate) fn start(&self) -> Sandbox {
        self.sandbox().start().expect("sandbox starts")
    }
}

pub(crate) fn binary() -> SandboxBinary {
    SandboxBinary::at(env!("CARGO_BIN_EXE_enos-sandbox"))
}

pub(crate) use enos_domain::now_ms;

/// A credential for `pk/dk` with the device key as client id.
pub(crate) fn credential(
    pk: &str,
    dk: &str,
    secret: &str,
    method: SignMethod,
    ts: u64,
) -> MqttCredential {
    enos_testkit::device_login(pk, dk, secret, method, ts)
}

/// A credential of `pkA/dev1`, the plain device of [`DEVICES`], signed
/// with `method` at `ts`.
pub(crate) fn dev1_signed(method: SignMethod, ts: u64) -> MqttCredential {
    credential("pkA", "dev1", "secret-dev1-7f3a9", method, ts)
}

/// A fresh credential of `pkA/dev1` signed with SHA-1 now: what most
/// tests connect with.
pub(crate) fn dev1_now() -> MqttCredential {
    dev1_signed(SignMethod::HmacSha1, now_ms())
}

/// The raw CONNECT fields, for cases a valid credential cannot express.
pub(crate) struct Login {
    pub(crate) client_id: String,
    pub(crate) username: String,
    pub(crate) password: String,
}

impl From<&MqttCredential> for Login {
    fn from(c: &MqttCredential) -> Self {
        Login {
            client_id: c.mqtt_client_id.clone(),
            username: c.username.clone(),
            password: c.password.expose_secret().to_owned(),
        }
    }
}

/// A rustls client config on ring, trusting the fixture CA, with an
/// optional client certificate.
pub(crate) fn tls_client(pki: &Pki, identity: Option<&Identity>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let config = match identity {
        Some(id) => {
            let certs = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key pem");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// An MQTT connection that got its CONNACK.
pub(crate) struct Connected {
    pub(crate) client: AsyncClient,
    pub(crate) eventloop: EventLoop,
}

/// Connects and waits for the CONNACK. `Err` holds what the client saw
/// instead: the sandbox refuses by closing the connection without one.
pub(crate) async fn connect(
    addr: SocketAddr,
    login: impl Into<Login>,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Connected, String> {
    connect_with(addr, login, tls, |_| {}).await
}

/// [`connect`], with the options changed by `configure` (clean session,
/// will, keepalive, manual acknowledgements) before connecting.
pub(crate) async fn connect_with(
    addr: SocketAddr,
    login: impl Into<Login>,
    tls: Option<Arc<ClientConfig>>,
    configure: impl FnOnce(&mut MqttOptions),
) -> Result<Connected, String> {
    let login = login.into();
    let mut options = MqttOptions::new(login.client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(login.username, login.password);
    options.set_keep_alive(Duration::from_secs(5));
    // A batch login of 200 sub-devices and its reply are larger than
    // rumqttc's default 10 KiB.
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(config) = tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    configure(&mut options);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    match tokio::time::timeout(WAIT, eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
            Ok(Connected { client, eventloop })
        }
        Ok(Ok(other)) => Err(format!("not a CONNACK: {other:?}")),
        Ok(Err(e)) => Err(format!("connection error: {e}")),
        Err(_) => Err("no answer within the wait".into()),
    }
}

/// Asserts a refusal: CONNACK with `code` (4 bad user name or password,
/// 5 not authorised), as EnOS answers, and the sandbox logs the refusal
/// with `reason`.
pub(crate) async fn assert_refused(
    sandbox: &Sandbox,
    addr: SocketAddr,
    login: impl Into<Login>,
    tls: Option<Arc<ClientConfig>>,
    code: ConnectReturnCode,
    reason: &str,
) {
    let outcome = connect(addr, login, tls).await;
    let error = outcome.err().expect("the sandbox must refuse");
    assert_eq!(
        error,
        format!("connection error: Connection refused, return code: `{code:?}`")
    );
    sandbox
        .wait_for_log(reason, WAIT)
        .expect("the refusal reason is logged");
}

/// [`assert_refused`] on the plain listener with CONNACK 4 (bad user name
/// or password): how most logins are refused.
pub(crate) async fn assert_bad_login(sandbox: &Sandbox, login: impl Into<Login>, reason: &str) {
    assert_refused(
        sandbox,
        sandbox.mqtt_addr(),
        login,
        None,
        ConnectReturnCode::BadUserNamePassword,
        reason,
    )
    .await;
}

impl Connected {
    /// Publishes `payload` on `topic` and returns the JSON published on
    /// `{topic}_reply`.
    pub(crate) async fn request(&mut self, topic: &str, payload: &Value) -> Value {
        let reply_topic = format!("{topic}_reply");
        self.client
            .subscribe(&reply_topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .expect("publish");
        let wait = async {
            loop {
                match self.eventloop.poll().await.expect("connection stays up") {
                    Event::Incoming(Packet::Publish(p)) if p.topic == reply_topic => {
                        return serde_json::from_slice::<Value>(&p.payload).expect("reply JSON");
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("a reply within the wait")
    }
}

/// Nothing secret reached the log.
pub(crate) fn assert_no_secrets_logged(sandbox: &Sandbox, passwords: &[&str]) {
    let logs = sandbox.logs();
    assert!(!logs.is_empty());
    for secret in SECRETS.iter().chain(passwords) {
        assert!(!logs.contains(secret), "{secret:?} leaked into the log");
        let lower = secret.to_ascii_lowercase();
        assert!(!logs.contains(&lower), "{secret:?} leaked into the log");
    }
}

/// The sign of sub-device `subpk/{dk}` with its `secret` over `client_id`
/// and `ts` (HMAC-SHA256).
pub(crate) fn sub_device_sign(client_id: &str, ts: u64, dk: &str, secret: &str) -> String {
    let fields = SignedFields {
        client_id: ClientId::new(client_id).expect("client id"),
        device_key: DeviceKey::new(dk).expect("device key"),
        product_key: ProductKey::new("subpk").expect("product key"),
        timestamp: TimestampMs::from_millis(ts),
    };
    let secret = DeviceSecret::new(secret.to_owned()).expect("secret");
    enos_sign_core::sign(&fields, SignMethod::HmacSha256, &secret)
        .expose_secret()
        .to_owned()
}

/// A `combine.login` of sub-device `subpk/{dk}` signed with `secret` now,
/// its device key as client id, as the Java SDK sends it.
pub(crate) fn combine_login(id: &str, dk: &str, secret: &str) -> Value {
    let ts = now_ms();
    json!({"id": id, "version": "1.0", "method": "combine.login", "params": {
        "productKey": "subpk", "deviceKey": dk, "clientId": dk, "timestamp": ts.to_string(),
        "signMethod": "sha256", "sign": sub_device_sign(dk, ts, dk, secret), "secureMode": "2",
        "cleanSession": "true"}})
}
