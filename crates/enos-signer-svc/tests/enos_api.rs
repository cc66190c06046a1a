//! The signer's EnOS API client (issue 26, part 2) against the real
//! sandbox binary playing EnOS's certificate API over HTTPS: the
//! credential sealed by the software custody, the token method and signed
//! calls, apply / renew / revoke / list, and the failures a caller must
//! tell apart (EnOS refused: its code; unreachable: UNAVAILABLE), with the
//! secret in no error and no log.

mod common;

use std::{num::NonZeroUsize, path::Path, sync::Arc, time::Duration};

use enos_signer_proto::v1::{
    ApplyEnosCertificateRequest, RenewEnosCertificateRequest,
    enos_certificates_client::EnosCertificatesClient,
};

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
    custody: Arc<SoftwareCustody>,
}

fn write_private(path: &Path, text: &str) {
    enos_testkit::pki::write_private(path, text.as_bytes()).expect("write");
}

fn start() -> Fixture {
    start_with("")
}

/// [`start`], with `extra` appended to the sandbox's `[enos_api]`.
fn start_with(extra: &str) -> Fixture {
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
             app_secret_file = \"enos-app.secret\"\nstate_dir = \"enos-ca\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
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
        custody: Arc::new(SoftwareCustody::new(&[7u8; 32])),
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
        seal_credential(
            self.custody.as_ref(),
            "test",
            APP_KEY,
            secret,
            &env.credential_file,
        )
        .expect("sealed");
        let credential =
            open_credential(self.custody.clone(), "test", &env.credential_file).expect("opened");
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
    csr_with(
        &KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key"),
        cn,
    )
}

fn csr_with(key: &KeyPair, cn: &str) -> String {
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
        f.custody.clone(),
        "other",
        &f.dir.path().join("enos-api-test.sealed"),
    )
    .expect_err("bound to its environment");
    assert!(!other.to_string().contains(wrong));
    // Debug of the opened credential redacts the secret.
    let opened = open_credential(
        f.custody.clone(),
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
        f.custody.as_ref(),
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    let client = EnosApiClient::new(
        &env,
        open_credential(f.custody.clone(), "test", &env.credential_file).expect("opened"),
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

/// Issue 26, part 3: a gateway gets its EnOS certificate through the
/// signer (TestSigner over mTLS, the real sandbox as EnOS): the device is
/// the caller's own; a weak key or a wrong subject is refused before EnOS
/// is called; renewing another device's certificate is refused by EnOS and
/// nothing is issued; every outcome is audited with serials, never the
/// secret.
#[tokio::test]
async fn a_gateway_gets_its_enos_certificate_through_the_signer() {
    let enos = start();
    let addr = enos.sandbox.enos_api_addr().expect("api");
    let mut env = enos.environment(format!("https://{addr}"));
    // The signer's own file (the test's direct client writes the other).
    env.credential_file = enos.dir.path().join("signer-enos-api.sealed");
    let configured = env.clone();
    let f = common::fixture_with(move |c| {
        c.enos_api = Some(common::enos_api_config(configured));
    })
    .await;
    let custody = enos_signer_svc::custody::build(&f.signer.config().custody)
        .expect("custody")
        .into_custody();
    let gw1 = f.pki.device("gwpk", "gw1").expect("device cert");
    let mut client = EnosCertificatesClient::new(f.channel(Some(&gw1)).await);

    // Before the credential is sealed: a clear precondition, not a crash.
    let missing = client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
        })
        .await
        .expect_err("no credential yet");
    assert_eq!(
        missing.code(),
        tonic::Code::FailedPrecondition,
        "{missing:?}"
    );
    assert!(missing.message().contains("set-credential"), "{missing:?}");
    seal_credential(
        custody.as_ref(),
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    open_credential(custody.clone(), "test", &env.credential_file)
        .expect("the signer's custody opens it");

    // Refused before EnOS is called: a P-384 key, another device's CN.
    let p384 = csr_with(
        &KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key"),
        "gwpk.gw1",
    );
    for (csr_pem, needle) in [
        (p384, "P-256"),
        (csr("gwpk.gw2"), "CN=gwpk.gw1"),
        ("not a csr".to_owned(), "not PEM"),
    ] {
        let refused = client
            .apply_enos_certificate(ApplyEnosCertificateRequest { csr_pem })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(needle), "{needle}: {refused:?}");
    }
    let enos_view = enos.client();
    assert!(
        enos_view
            .list("gwpk", "gw1")
            .await
            .expect("list")
            .is_empty(),
        "EnOS never called"
    );

    let issued = client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
        })
        .await
        .expect("applied")
        .into_inner();
    assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
    let listed = enos_view.list("gwpk", "gw1").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].cert_sn, issued.cert_sn,
        "bound to the caller's own device"
    );
    assert!(
        listed[0].subject.starts_with("CN=gwpk.gw1,"),
        "{}",
        listed[0].subject
    );

    let renewed = client
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
            current_cert_sn: issued.cert_sn.clone(),
        })
        .await
        .expect("renewed")
        .into_inner();
    assert_ne!(renewed.cert_sn, issued.cert_sn);

    // gw2 naming gw1's certificate: not recorded as gw2's, refused before
    // EnOS is called (PERMISSION_DENIED); nothing issued.
    let gw2 = f.pki.device("gwpk", "gw2").expect("device cert");
    let mut other = EnosCertificatesClient::new(f.channel(Some(&gw2)).await);
    let theft = other
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr("gwpk.gw2"),
            current_cert_sn: renewed.cert_sn.clone(),
        })
        .await
        .expect_err("not gw2's");
    assert_eq!(theft.code(), tonic::Code::PermissionDenied, "{theft:?}");
    assert!(
        enos_view
            .list("gwpk", "gw2")
            .await
            .expect("list")
            .is_empty()
    );

    // Audited with serials; the secret nowhere.
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit.contains(&issued.cert_sn) && audit.contains(&renewed.cert_sn),
        "{audit}"
    );
    assert!(audit.contains("apply_enos_certificate") && audit.contains("renew_enos_certificate"));
    assert!(!audit.contains(APP_SECRET));

    // The admin CLI: list, then revoke the valid ones (audited), then list.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_enos-signer"))
            .args(args)
            .arg("--config")
            .arg(f.signer.config_path())
            .output()
            .expect("enos-signer runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(APP_SECRET), "{text}");
        (out.status.success(), text)
    };
    let (ok, listed) = cli(&["enos-cert", "list", "gwpk", "gw1"]);
    assert!(ok, "{listed}");
    assert!(
        listed.contains(&format!("certSN={} status=valid", issued.cert_sn)),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("certSN={} status=valid", renewed.cert_sn)),
        "{listed}"
    );
    let (ok, revoked) = cli(&[
        "enos-cert",
        "revoke",
        "gwpk",
        "gw1",
        "--reason",
        "cessation-of-operation",
    ]);
    assert!(ok, "{revoked}");
    assert!(
        revoked.contains(&format!("revoked EnOS certificate {}", renewed.cert_sn)),
        "{revoked}"
    );
    let (_, listed) = cli(&["enos-cert", "list", "gwpk", "gw1"]);
    assert!(!listed.contains("status=valid"), "{listed}");
    let (ok, none) = cli(&[
        "enos-cert",
        "revoke",
        "gwpk",
        "gw1",
        "--cert-sn",
        &issued.cert_sn,
    ]);
    assert!(!ok && none.contains("already revoked"), "{none}");
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).expect("audit");
    assert!(audit.contains("revoke_enos_certificate"), "{audit}");
    assert!(!audit.contains(APP_SECRET));
    assert!(!enos.sandbox.logs().contains(APP_SECRET));
}

/// Deleting a device revokes its EnOS certificates (CESSATION_OF_OPERATION),
/// audited.
#[tokio::test]
async fn deleting_a_device_revokes_its_enos_certificates() {
    use enos_signer_proto::v1::{DeviceRef, PutDeviceRequest, admin_client::AdminClient};
    let enos = start();
    let addr = enos.sandbox.enos_api_addr().expect("api");
    let mut env = enos.environment(format!("https://{addr}"));
    env.credential_file = enos.dir.path().join("signer-enos-api.sealed");
    let configured = env.clone();
    let f = common::fixture_with(move |c| {
        c.enos_api = Some(common::enos_api_config(configured));
    })
    .await;
    let custody = enos_signer_svc::custody::build(&f.signer.config().custody)
        .expect("custody")
        .into_custody();
    seal_credential(
        custody.as_ref(),
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    let admin = f.pki.admin("ops").expect("admin cert");
    let mut admin = AdminClient::new(f.channel(Some(&admin)).await);
    let device = DeviceRef {
        product_key: "gwpk".into(),
        device_key: "gw2".into(),
    };
    admin
        .put_device(PutDeviceRequest {
            device: Some(device.clone()),
            device_secret: "secret-gw2-02bd7".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect("put");
    let gw2 = f.pki.device("gwpk", "gw2").expect("device cert");
    let mut client = EnosCertificatesClient::new(f.channel(Some(&gw2)).await);
    let issued = client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw2"),
        })
        .await
        .expect("applied")
        .into_inner();
    admin.delete_device(device).await.expect("deleted");
    let listed = enos.client().list("gwpk", "gw2").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].cert_sn.as_str(), listed[0].status),
        (issued.cert_sn.as_str(), 1)
    );
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).expect("audit");
    let line = audit
        .lines()
        .find(|l| l.contains("revoke_enos_certificate"))
        .expect("the revocation is audited");
    assert!(
        line.contains(&issued.cert_sn) && line.contains("device deleted"),
        "{line}"
    );
    assert!(!audit.contains(APP_SECRET));
}

/// The sandbox's switches for what EnOS leaves undocumented: errors with
/// an HTTP 4xx/5xx status besides the envelope's code, and a renewal that
/// revokes the old certificate itself. The client reads the envelope
/// either way.
#[tokio::test]
async fn the_client_reads_enos_codes_behind_http_errors_and_a_renewal_that_revoked_already() {
    let f = start_with("error_http_status = true\nrenew_revokes_old = true\n");
    let client = f.client();
    let issued = client
        .apply("gwpk", "gw1", &csr("gw1"), 30, Authority::Ecc)
        .await
        .expect("applied");
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
    let listed = client.list("gwpk", "gw1").await.expect("listed");
    let statuses: Vec<(String, i64)> = listed
        .iter()
        .map(|c| (c.cert_sn.clone(), c.status))
        .collect();
    assert_eq!(
        statuses,
        [(issued.cert_sn.clone(), 1), (renewed.cert_sn.clone(), 0)]
    );
    // Behind HTTP 400, the envelope's code and text.
    let again = client
        .revoke("gwpk", "gw1", &issued.cert_sn, 4)
        .await
        .expect_err("EnOS revoked it with the renewal");
    assert!(
        matches!(&again, SignerError::EnosApi { code: 99400, message } if message.contains("already revoked")),
        "{again}"
    );
    let too_long = client
        .apply("gwpk", "gw2", &csr("gw2"), 5000, Authority::Ecc)
        .await
        .expect_err("validDay above the maximum");
    assert!(
        matches!(too_long, SignerError::EnosApi { code: 99400, .. }),
        "{too_long}"
    );
}

/// Issue 26, the gateway's two extra calls: `GetEnosCertificateSubject`
/// renders the template for the caller (C, ST, L, O, OU, CN in order);
/// `RetireEnosCertificate` revokes one of the caller's own serials with
/// SUPERSEDED, takes "already revoked" as done, refuses another device's
/// serial (NOT_FOUND, nothing revoked), and is audited.
#[tokio::test]
async fn a_gateway_reads_its_subject_and_retires_only_its_own_superseded_certificate() {
    use enos_signer_proto::v1::{GetEnosCertificateSubjectRequest, RetireEnosCertificateRequest};
    let enos = start();
    let addr = enos.sandbox.enos_api_addr().expect("api");
    let mut env = enos.environment(format!("https://{addr}"));
    env.credential_file = enos.dir.path().join("signer-enos-api.sealed");
    let configured = env.clone();
    let f = common::fixture_with(move |c| {
        c.enos_api = Some(common::enos_api_config(configured));
    })
    .await;
    let custody = enos_signer_svc::custody::build(&f.signer.config().custody)
        .expect("custody")
        .into_custody();
    seal_credential(
        custody.as_ref(),
        "test",
        APP_KEY,
        APP_SECRET,
        &env.credential_file,
    )
    .expect("sealed");
    let gw1 = f.pki.device("gwpk", "gw1").expect("device cert");
    let mut client = EnosCertificatesClient::new(f.channel(Some(&gw1)).await);

    let subject = client
        .get_enos_certificate_subject(GetEnosCertificateSubjectRequest {})
        .await
        .expect("subject")
        .into_inner();
    let pairs: Vec<(String, String)> = subject
        .attributes
        .iter()
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("C", "CN"),
            ("ST", "Shanghai"),
            ("L", "Shanghai"),
            ("O", "EnOS"),
            ("OU", "gateways"),
            ("CN", "gwpk.gw1"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert_eq!(subject.valid_day, 30);

    let old = client
        .apply_enos_certificate(ApplyEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
        })
        .await
        .expect("applied")
        .into_inner();
    let new = client
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr("gwpk.gw1"),
            current_cert_sn: old.cert_sn.clone(),
        })
        .await
        .expect("renewed")
        .into_inner();

    // Another gateway naming gw1's serial: not its own, nothing revoked.
    let gw2 = f.pki.device("gwpk", "gw2").expect("device cert");
    let mut other = EnosCertificatesClient::new(f.channel(Some(&gw2)).await);
    let theft = other
        .retire_enos_certificate(RetireEnosCertificateRequest {
            cert_sn: old.cert_sn.clone(),
        })
        .await
        .expect_err("not gw2's");
    assert_eq!(theft.code(), tonic::Code::NotFound, "{theft:?}");
    let status_of = |listed: &[enos_signer_svc::enos_api::ListedEnosCert], sn: &str| {
        listed
            .iter()
            .find(|c| c.cert_sn == sn)
            .map(|c| c.status)
            .expect("listed")
    };
    let enos_view = enos.client();
    let listed = enos_view.list("gwpk", "gw1").await.expect("list");
    assert_eq!(status_of(&listed, &old.cert_sn), 0, "still valid");

    // The owner retires it; again is done already; a bad serial is refused.
    let retired = client
        .retire_enos_certificate(RetireEnosCertificateRequest {
            cert_sn: old.cert_sn.clone(),
        })
        .await
        .expect("retired")
        .into_inner();
    assert!(!retired.already_done);
    let listed = enos_view.list("gwpk", "gw1").await.expect("list");
    assert_eq!(status_of(&listed, &old.cert_sn), 1, "revoked");
    assert_eq!(status_of(&listed, &new.cert_sn), 0, "the new one untouched");
    let again = client
        .retire_enos_certificate(RetireEnosCertificateRequest {
            cert_sn: old.cert_sn.clone(),
        })
        .await
        .expect("already done")
        .into_inner();
    assert!(again.already_done);
    let bad = client
        .retire_enos_certificate(RetireEnosCertificateRequest {
            cert_sn: "12a".into(),
        })
        .await
        .expect_err("not decimal");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    // The certificate the registry records as current is the one the
    // gateway connects with: never retired (a stale note after a crash).
    let current = client
        .retire_enos_certificate(RetireEnosCertificateRequest {
            cert_sn: new.cert_sn.clone(),
        })
        .await
        .expect_err("the current certificate");
    assert_eq!(
        current.code(),
        tonic::Code::FailedPrecondition,
        "{current:?}"
    );
    let listed = enos_view.list("gwpk", "gw1").await.expect("list");
    assert_eq!(
        status_of(&listed, &new.cert_sn),
        0,
        "the current one untouched"
    );

    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).expect("audit");
    let retire_lines: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("retire_enos_certificate"))
        .collect();
    assert!(
        retire_lines
            .iter()
            .any(|l| l.contains(&old.cert_sn) && l.contains("revoked SUPERSEDED")),
        "{audit}"
    );
    assert!(
        retire_lines
            .iter()
            .any(|l| l.contains("NotFound") || l.contains("not_found")),
        "the refusal is audited too: {audit}"
    );
    assert!(!audit.contains(APP_SECRET));
}

/// HSM custody holds the EnOS API credential as it holds device secrets:
/// the SecretKey is sealed by the token's key, and the token request's and
/// every call's signature are computed in the token (`C_DigestKey`), so
/// an HSM signer applies for a gateway's certificate without ever holding
/// the SecretKey.
#[test]
fn an_hsm_signer_signs_enos_api_calls_in_the_token() {
    enos_custody_pkcs11::softhsm::isolated(
        "an_hsm_signer_signs_enos_api_calls_in_the_token",
        "enos-api",
        "",
        |hsm| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    enos_custody_pkcs11::generate_kek(&hsm.config()).expect("the token's keys");
                    let enos = start();
                    let addr = enos.sandbox.enos_api_addr().expect("api");
                    let env = enos.environment(format!("https://{addr}"));
                    {
                        let custody = enos_custody_pkcs11::Pkcs11Custody::connect(&hsm.config())
                            .expect("connect");
                        seal_credential(
                            &custody,
                            "test",
                            APP_KEY,
                            APP_SECRET,
                            &env.credential_file,
                        )
                        .expect("sealed in the token");
                    }
                    let file = std::fs::read_to_string(&env.credential_file).expect("file");
                    assert!(file.contains(enos_custody_pkcs11::SCHEME), "{file}");
                    assert!(!file.contains(APP_SECRET));
                    let configured = env.clone();
                    let token = hsm.config();
                    let f = common::fixture_with(move |c| {
                        c.custody = enos_signer_svc::config::CustodyConfig::Pkcs11(token);
                        c.enos_api = Some(common::enos_api_config(configured));
                    })
                    .await;
                    let gw1 = f.pki.device("gwpk", "gw1").expect("device cert");
                    let mut client = EnosCertificatesClient::new(f.channel(Some(&gw1)).await);
                    let issued = client
                        .apply_enos_certificate(ApplyEnosCertificateRequest {
                            csr_pem: csr("gwpk.gw1"),
                        })
                        .await
                        .expect("applied with signatures made in the token")
                        .into_inner();
                    let listed = enos.client().list("gwpk", "gw1").await.expect("list");
                    assert_eq!(listed.len(), 1);
                    assert_eq!(listed[0].cert_sn, issued.cert_sn);
                    assert!(!enos.sandbox.logs().contains(APP_SECRET));
                });
        },
    );
}
