//! Shared test helpers: a signer, device clients, and status assertions.
#![allow(dead_code, unreachable_pub)]

pub mod capture;
pub mod tls_probe;

use enos_sign_core::{DeviceSecret, Freshness, Md5Policy, PresentedLogin};
use enos_signer_proto::v1::{admin_client::AdminClient, credentials_client::CredentialsClient};
use enos_signer_svc::client;
use enos_testkit::signer::{TestSigner, client_identity};
use enos_testkit::{Identity, Pki};
use tonic::{Code, transport::Channel};

/// A PKI, a running signer, and the directory they live in.
pub struct Fixture {
    pub pki: Pki,
    pub signer: TestSigner,
    pub dir: tempfile::TempDir,
}

/// `[enos_api]` serving every product through the one environment
/// `test`: one EnOS call at a time, 5 s per call, 30-day certificates, the
/// default subject template.
pub fn enos_api_config(
    environment: enos_signer_svc::config::EnosEnvironmentConfig,
) -> enos_signer_svc::config::EnosApiConfig {
    enos_signer_svc::config::EnosApiConfig {
        concurrency: std::num::NonZeroUsize::MIN,
        timeout: std::time::Duration::from_secs(5),
        valid_day: 30,
        environments: [("test".to_owned(), environment)].into(),
        subject: enos_signer_svc::config::SubjectTemplate::default(),
        product_subjects: Default::default(),
    }
}

pub async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

pub async fn fixture_with(adjust: impl FnOnce(&mut enos_signer_svc::SignerConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("signer-test").expect("pki");
    let signer = TestSigner::start_with(dir.path(), &pki, adjust)
        .await
        .expect("signer starts");
    Fixture { pki, signer, dir }
}

impl Fixture {
    pub async fn channel(&self, identity: Option<&Identity>) -> Channel {
        client::connect_mtls(
            &self.signer.uri(),
            self.signer.ca_pem(),
            identity.map(client_identity),
        )
        .await
        .expect("mTLS channel")
    }

    /// A channel without a client certificate, if the connection comes up
    /// at all: the handshake refuses it (#23), which a TLS 1.3 client may
    /// only learn on its first call.
    pub async fn anonymous_channel(&self) -> Option<Channel> {
        client::connect_mtls(&self.signer.uri(), self.signer.ca_pem(), None)
            .await
            .ok()
    }

    pub async fn device(&self, pk: &str, dk: &str) -> CredentialsClient<Channel> {
        let identity = self.pki.device(pk, dk).expect("device cert");
        CredentialsClient::new(self.channel(Some(&identity)).await)
    }

    pub async fn admin_as_device(&self, pk: &str, dk: &str) -> AdminClient<Channel> {
        let identity = self.pki.device(pk, dk).expect("device cert");
        AdminClient::new(self.channel(Some(&identity)).await)
    }
}

/// Whether `code` is the transport's refusal of a connection (the
/// handshake refused it), never a service's answer.
pub fn refused_by_handshake(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Cancelled | Code::Unknown)
}

pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(v) => panic!("expected an error status, got {v:?}"),
        Err(status) => status.code(),
    }
}

pub fn status<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Status {
    result.expect_err("expected an error status")
}

/// Whether `credential` verifies against `secret` as a broker checks it.
pub fn verify(credential: &enos_signer_proto::v1::MqttCredential, secret: &str) -> bool {
    let presented = PresentedLogin::parse(
        &credential.mqtt_client_id,
        &credential.username,
        Md5Policy::Refuse,
    )
    .expect("EnOS shape");
    let secret = DeviceSecret::new(secret.into()).expect("secret");
    presented
        .verify(&credential.password, &secret, Freshness::Any)
        .is_ok()
}

impl Fixture {
    /// The audit trail's records (the file sink's JSON lines).
    pub fn audit_trail(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.signer.config().audit_file().expect("file sink"))
            .expect("audit trail")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The audit trail's records of `event`.
    pub fn audited(&self, event: &str) -> Vec<serde_json::Value> {
        self.audit_trail()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

/// GET `path` on the metrics listener over mTLS with `identity` (a raw
/// HTTP/1.1 request): the whole response, head and body.
pub async fn metrics_get(
    f: &Fixture,
    identity: Option<&Identity>,
    path: &str,
) -> std::io::Result<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(f.signer.ca_pem().as_bytes()).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let addr = f.signer.metrics_addr().expect("metrics configured");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(server_name, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = Vec::new();
    tls.read_to_end(&mut body).await?;
    Ok(body)
}

/// The signer's `/metrics` text (head and body), scraped over mTLS with a
/// device certificate of the test PKI.
pub async fn scrape_metrics(f: &Fixture) -> String {
    let scraper = f.pki.device("Pk0", "prometheus").expect("cert");
    let body = metrics_get(f, Some(&scraper), "/metrics")
        .await
        .expect("scrape");
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the sample `series` (name and labels exactly as exposed,
/// e.g. `enos_signer_ready` or `x_total{listener="grpc"}`) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
