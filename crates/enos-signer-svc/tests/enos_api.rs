//! The signer's EnOS API client (issue 26, part 2) against the real
//! sandbox binary playing EnOS's certificate API over HTTPS: the
//! credential sealed by the software custody, the token method and signed
//! calls, apply / renew / revoke / list, and the failures a caller must
//! tell apart (EnOS refused: its code; unreachable: UNAVAILABLE), with the
//! secret in no error and no log.

use std::{num::NonZeroUsize, path::Path, sync::Arc, time::Duration};

use enos_signer_svc::{
    SignerError,
    config::EnosEnvironmentConfig,
    custody::SoftwareCustody,
    enos_api::{Authority, EnosApiClient, open_credential, seal_credential},
};
use enos_testkit::{
    Pki,
    sandbox::{Sandbox, SandboxBinary},
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use tokio::sync::Semaphore;

const ORG: &str = "o15724268424841";
const APP_KEY: &str = "app-key-signer-test";
const APP_SECRET: &str = "app-secret-5f2b9e41-never-logged";
const DEVICES: &str =
    "productKey,deviceKey,deviceSecret\ngwpk,gw1,secret-gw1-a83f1\ngwpk,gw2,secret-gw2-02bd7\n";

struct Fixture {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    ca: std::path::PathBuf,
    custody: SoftwareCustody,
}

fn write_private(path: &Path, text: &str) {
    enos_testkit::pki::write_private(path, text.as_bytes()).expect("write");
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let devices = dir.path().join("devices.csv");
    std::fs::write(&devices, DEVICES).expect("devices");
    let pki = Pki::new("EnOS API gateway test CA").expect("pki");
    let ca = pki.write_ca(dir.path()).expect("ca");
    let server = pki
        .server(&[])
        .expect("server")
        .write(dir.path(), "apigw")
        .expect("files");
    write_private(&dir.path().join("enos-app.secret"), APP_SECRET);
    let config = dir.path().join("sandbox.toml");
    std::fs::write(
        &config,
        format!(
            "[enos_api]\nlisten = \"127.0.0.1:0\"\norg_id = \"{ORG}\"\napp_key = \"{APP_KEY}\"\n\
             app_secret_file = \"enos-app.secret\"\nstate_dir = \"enos-ca\"\ncert = \"{}\"\nkey = \"{}\"\n",
            server.cert.display(),
            server.key.display()
        ),
    )
    .expect("config");
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox binary"), &devices)
        .config(&config)
        .enos_api()
        .start()
        .expect("sandbox starts");
    Fixture {
        dir,
        sandbox,
        ca,
        custody: SoftwareCustody::new(&[7u8; 32]),
    }
}

impl Fixture {
    fn environment(&self, url: String) -> EnosEnvironmentConfig {
        EnosEnvironmentConfig {
            gateway_url: url,
            org_id: ORG.into(),
            credential_file: self.dir.path().join("enos-api-test.sealed"),
            ca_file: Some(self.ca.clone()),
            products: vec!["*".into()],
        }
    }

    fn client_with(&self, url: String, secret: &str) -> EnosApiClient {
        let env = self.environment(url);
        seal_credential(&self.custody, "test", APP_KEY, secret, &env.credential_file)
            .expect("sealed");
        let credential =
            open_credential(&self.custody, "test", &env.credential_file).expect("opened");
        EnosApiClient::new(
            &env,
            credential,
            Arc::new(Semaphore::new(NonZeroUsize::MIN.get())),
            Duration::from_secs(5),
        )
        .expect("client")
    }

    fn client(&self) -> EnosApiClient {
        let addr = self.sandbox.enos_api_addr().expect("api");
        self.client_with(format!("https://{addr}"), APP_SECRET)
    }
}

fn csr(cn: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
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
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

#[tokio::test]
async fn apply_renew_revoke_and_list_through_the_sandbox_over_https() {
    let f = start();
    let client = f.client();
    let issued = client
        .apply("gwpk", "gw1", &csr("gw1"), 30, Authority::Ecc)
        .await
        .expect("applied");
    assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(issued.ca_cert_pem.contains("BEGIN CERTIFICATE"));
    let renewed = client
        .renew(
            "gwpk",
            "gw1",
            &issued.cert_sn,
            &csr("gw1"),
            30,
            Authority::Ecc,
        )
        .await
        .expect("renewed");
    assert_ne!(renewed.cert_sn, issued.cert_sn);
    client
        .revoke("gwpk", "gw1", &issued.cert_sn, 4)
        .await
        .expect("revoked SUPERSEDED");
    let listed = client.list("gwpk", "gw1").await.expect("listed");
    let statuses: Vec<(String, i64)> = listed
        .iter()
        .map(|c| (c.cert_sn.clone(), c.status))
        .collect();
    assert_eq!(
        statuses,
        [(issued.cert_sn.clone(), 1), (renewed.cert_sn.clone(), 0)]
    );
    assert!(listed[1].expire_ms > listed[1].sign_ms);

    // EnOS's refusals come back with EnOS's code and text.
    let again = client
        .revoke("gwpk", "gw1", &issued.cert_sn, 4)
        .await
        .expect_err("already revoked");
    assert!(
        matches!(&again, SignerError::EnosApi { code: 99400, message } if message.contains("already revoked")),
        "{again}"
    );
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    // RSA without the sandbox's RSA root: EnOS's internal error, worth a retry.
    let internal = client
        .apply("gwpk", "gw2", &csr("gw2"), 30, Authority::Rsa)
        .await
        .expect_err("no RSA root");
    assert!(
        matches!(internal, SignerError::EnosApi { code: 99500, .. }),
        "{internal}"
    );
    assert_eq!(internal.code(), tonic::Code::Unavailable);
    assert!(!f.sandbox.logs().contains(APP_SECRET));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_code_and_never_shown() {
    let f = start();
    let addr = f.sandbox.enos_api_addr().expect("api");
    let wrong = "wrong-secret-0c9d1e2f";
    let client = f.client_with(format!("https://{addr}"), wrong);
    let err = client.check_token().await.expect_err("refused");
    assert!(
        matches!(err, SignerError::EnosApi { code: 1003, .. }),
        "{err}"
    );
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(wrong) && !text.contains(APP_SECRET),
        "{text}"
    );
    // The credential file holds the secret sealed, not in clear.
    let file = std::fs::read_to_string(f.dir.path().join("enos-api-test.sealed")).expect("file");
    assert!(!file.contains(wrong), "{file}");
    assert!(file.contains(APP_KEY));
    // Another environment's name does not open it.
    let other = open_credential(
        &f.custody,
        "other",
        &f.dir.path().join("enos-api-test.sealed"),
    )
    .expect_err("bound to its environment");
    assert!(!other.to_string().contains(wrong));
    // Debug of the opened credential redacts the secret.
    let opened = open_credential(
        &f.custody,
        "test",
        &f.dir.path().join("enos-api-test.sealed"),
    )
    .expect("opens");
    assert!(!format!("{opened:?}").contains(wrong));
    assert!(!f.sandbox.logs().contains(wrong));
}

#[tokio::test]
async fn an_unreachable_gateway_or_untrusted_certificate_is_unavailable() {
    let f = start();
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let client = f.client_with(format!("http://127.0.0.1:{port}"), APP_SECRET);
    let err = client
        .apply("gwpk", "gw1", &csr("gw1"), 30, Authority::Ecc)
        .await
        .expect_err("unreachable");
    assert!(matches!(err, SignerError::EnosApiUnreachable(_)), "{err}");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    // HTTPS to the sandbox, trusting another CA: refused in TLS.
    let addr = f.sandbox.enos_api_addr().expect("api");
    let stranger = Pki::new("stranger").expect("pki");
    let stranger_dir = tempfile::tempdir().expect("dir");
    let stranger_ca = stranger.write_ca(stranger_dir.path()).expect("ca");
    let mut env = f.environment(format!("https://{addr}"));
    env.ca_file = Some(stranger_ca);
    seal_credential(
        &f.custody,
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    let client = EnosApiClient::new(
        &env,
        open_credential(&f.custody, "test", &env.credential_file).expect("opened"),
        Arc::new(Semaphore::new(1)),
        Duration::from_secs(5),
    )
    .expect("client");
    let err = client.check_token().await.expect_err("untrusted");
    assert!(
        matches!(&err, SignerError::EnosApiUnreachable(m) if m.contains("TLS")),
        "{err}"
    );
}
