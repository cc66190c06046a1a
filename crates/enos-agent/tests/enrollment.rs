//! `enos-agent enroll` and renewal against the signer's CA, the binary as
//! an operator runs it.
//!
//! The first tests need no CA: `enroll` refuses before it reaches any
//! signer. The others run against the signer's `Enrollment` and
//! `Certificates` services: a signer with `[ca]` and its enrollment
//! listener ([`ca_signer`]).

mod support;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use enos_agent::{
    Agent, AgentStatus, GrpcSigner, SignerClient, certificate::CertificateInfo, pair::PairPaths,
};
use enos_signer_proto::v1;
use enos_testkit::{
    Pki,
    sandbox::{Sandbox, SandboxBinary},
    signer::TestSigner,
};
use support::{
    CONSOLE, DeviceRow, SOON, ca::TestCa, config, console_password_file, init, wait_status,
    write_devices,
};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const PK: &str = "pkEnroll";
const DK: &str = "gw1";
const SECRET: &str = "enrollSecret01";
/// Shaped like a token; never sent anywhere by the tests that use it.
const FAKE_TOKEN: &str = "enr1_Zm9yZ2VkLXRva2VuLW5ldmVyLXNlbnQtYW55d2hlcmU";

/// An agent config for `pk/dk` with its pair in `dir`.
fn write_config(dir: &Path, endpoint: &str, ca: &Path, extra: &str) -> (PathBuf, PairPaths) {
    let key = dir.join("device.key").display().to_string();
    write_config_with_key(dir, endpoint, ca, &key, extra)
}

/// [`write_config`] with `[signer] key` = `key` (a file or a `pkcs11:` URI).
fn write_config_with_key(
    dir: &Path,
    endpoint: &str,
    ca: &Path,
    key: &str,
    extra: &str,
) -> (PathBuf, PairPaths) {
    let pair = PairPaths {
        cert: dir.join("device.pem"),
        key: enos_agent::device_key::KeyLocation::parse(key).expect("a key location"),
    };
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[device]\nproduct_key = \"{PK}\"\ndevice_key = \"{DK}\"\n\n\
             [signer]\nendpoints = [\"{endpoint}\"]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{key}\"\n\
             connect_timeout = \"1s\"\nrequest_timeout = \"3s\"\n\n\
             [enos]\nbroker = \"tcp://127.0.0.1:1\"\n\n\
             [backoff]\nmin = \"50ms\"\nmax = \"500ms\"\n\n{extra}",
            ca.display(),
            pair.cert.display(),
        ),
    )
    .expect("write config");
    (path, pair)
}

fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let path = dir.join("enroll.token");
    std::fs::write(&path, format!("{token}\n")).expect("token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// Runs `enos-agent enroll` and returns its output.
fn enroll(config: &Path, signer: &str, ca: &Path, token: &Path, force: bool) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("enroll")
        .arg("--config")
        .arg(config)
        .arg("--signer")
        .arg(signer)
        .arg("--ca")
        .arg(ca)
        .arg("--token-file")
        .arg(token);
    if force {
        command.arg("--force");
    }
    command.output().expect("enos-agent runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn files(pair: &PairPaths) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(&pair.cert).expect("cert"),
        std::fs::read(pair.key.file().expect("a key file")).expect("key"),
    )
}

#[test]
fn enroll_refuses_to_replace_a_valid_pair_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("enroll-refusal").expect("pki");
    let ca = pki.write_ca(dir.path()).expect("ca");
    // Nothing listens here: a refusal must come before any connection.
    let signer = "https://127.0.0.1:1";
    let (config, pair) = write_config(dir.path(), signer, &ca, "");
    TestCa::new("device-ca").install(&pair, PK, DK, -60, 3600);
    let before = files(&pair);
    let token = token_file(dir.path(), FAKE_TOKEN, 0o600);

    let out = enroll(&config, signer, &ca, &token, false);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("already hold a valid certificate") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(files(&pair), before);

    // --force goes on: to the (absent) signer, and fails there, writing
    // nothing.
    let out = enroll(&config, signer, &ca, &token, true);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    // Said once (the error's cause is not repeated after it).
    assert_eq!(
        stderr.matches("no signer endpoint answered").count(),
        1,
        "{stderr}"
    );
    assert_eq!(files(&pair), before, "a failed enrollment writes nothing");
    assert!(
        !pair.candidate_key_file().expect("a key file").exists() && !pair.candidate_cert().exists()
    );
    for output in [stdout, stderr] {
        assert!(
            !output.contains(&FAKE_TOKEN[5..]),
            "the token leaked: {output}"
        );
    }
}

#[test]
fn enroll_takes_the_token_from_a_private_file_only_and_never_shows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("enroll-token-file").expect("pki");
    let ca = pki.write_ca(dir.path()).expect("ca");
    let signer = "https://127.0.0.1:1";
    let (config, pair) = write_config(dir.path(), signer, &ca, "");
    let token = token_file(dir.path(), FAKE_TOKEN, 0o644);
    let out = enroll(&config, signer, &ca, &token, false);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains(&FAKE_TOKEN[5..]), "{stderr}");
    assert!(!pair.key.file().expect("a key file").exists() && !pair.cert.exists());

    // Not a token at all: said so, its content not echoed.
    let token = token_file(dir.path(), "enr1_not-quite-a-token", 0o600);
    let out = enroll(&config, signer, &ca, &token, false);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not hold an enrollment token"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-quite"), "{stderr}");
    // The token is never an argument.
    let out = Command::new(BIN)
        .args(["enroll", "--config"])
        .arg(&config)
        .args(["--signer", signer, "--ca"])
        .arg(&ca)
        .args(["--token", FAKE_TOKEN])
        .output()
        .expect("runs");
    assert!(!out.status.success());
}

#[test]
fn enroll_fails_before_reaching_the_signer_when_the_key_cannot_be_written() {
    // The key is written before the token is sent: a directory that
    // cannot take it must not cost the token.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("enroll-unwritable").expect("pki");
    let ca = pki.write_ca(dir.path()).expect("ca");
    let signer = "https://127.0.0.1:1";
    let (config, pair) = write_config(dir.path(), signer, &ca, "");
    let text_of = std::fs::read_to_string(&config).expect("config");
    let missing = dir.path().join("missing");
    std::fs::write(
        &config,
        text_of.replace(
            &pair.key.to_string(),
            &missing.join("device.key").display().to_string(),
        ),
    )
    .expect("config");
    let token = token_file(dir.path(), FAKE_TOKEN, 0o600);
    let out = enroll(&config, signer, &ca, &token, false);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("cannot write") && stderr.contains("missing/device.key"),
        "{stderr}"
    );
    assert!(!stderr.contains("no signer endpoint answered"), "{stderr}");
    assert!(!pair.cert.exists() && !pair.candidate_cert().exists());
}

// ---- Against the signer's CA (#25 piece S) ----

/// A signer that is a CA: its mTLS endpoint, its enrollment listener,
/// and what an agent needs to reach them.
struct CaSigner {
    signer: TestSigner,
    /// The CA of the signer's server certificates, for the agent.
    server_ca: PathBuf,
    /// The enrollment listener, `https://127.0.0.1:port`.
    enroll_uri: String,
}

/// Starts a signer with `[ca]` (a self-signed root made by `ca init`)
/// issuing certificates valid `lifetime`, with the device registered.
async fn ca_signer(dir: &Path, lifetime: Duration) -> CaSigner {
    let pki = Pki::new("enroll-server-ca").expect("pki");
    let signer = TestSigner::start_with(dir, &pki, |c| {
        let mut ca = c.ca.take().unwrap_or_default();
        ca.enroll_listen = Some(([127, 0, 0, 1], 0).into());
        ca.lifetime = lifetime;
        c.ca = Some(ca);
    })
    .await
    .expect("signer with [ca] starts");
    signer.put_device(PK, DK, SECRET).await.expect("device");
    let server_ca = pki.write_ca(dir).expect("ca");
    let enroll_uri = signer.enroll_uri().expect("enrollment listener");
    CaSigner {
        signer,
        server_ca,
        enroll_uri,
    }
}

impl CaSigner {
    /// A one-time token for the device, as `enos-signer enroll-token`
    /// prints it.
    async fn token(&self, pk: &str, dk: &str) -> String {
        self.signer
            .admin()
            .await
            .create_enroll_token(v1::CreateEnrollTokenRequest {
                device: Some(v1::DeviceRef::new(pk, dk)),
                ttl_secs: 0,
            })
            .await
            .expect("token")
            .into_inner()
            .token
    }
}

/// The leaf's fingerprint and the public key it certifies (the key's
/// identity for file and token keys alike).
fn serial_of(pair: &PairPaths) -> (u64, Vec<u8>) {
    let info = CertificateInfo::read(&pair.cert).expect("certificate");
    let pem = std::fs::read(&pair.cert).expect("cert");
    let leaf = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .expect("a certificate")
        .expect("PEM");
    let spki = enos_agent::certificate::subject_public_key_info(&leaf).expect("a public key");
    (info.fingerprint, spki.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_writes_a_private_key_and_the_chain_and_the_signer_accepts_them() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca_signer(&dir.path().join("signer"), Duration::from_secs(3600)).await;
    let (config, pair) = write_config(dir.path(), &ca.signer.uri(), &ca.server_ca, "");
    let token = ca.token(PK, DK).await;
    let token_path = token_file(dir.path(), &token, 0o600);

    let out = enroll(&config, &ca.enroll_uri, &ca.server_ca, &token_path, false);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("enrolled {PK}/{DK}"))
            && stdout.contains("valid until")
            && stdout.contains("mode 0600"),
        "{stdout}"
    );
    for output in [&stdout, &stderr] {
        assert!(!output.contains(&token), "the token leaked: {output}");
    }
    let mode = std::fs::metadata(pair.key.file().expect("a key file"))
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let chain = std::fs::read(&pair.cert).expect("cert");
    let certs = rustls_pemfile::certs(&mut &chain[..]).count();
    assert!(certs >= 2, "the leaf and the CA: {certs}");

    // From then on the pair is the device's identity.
    let config = enos_agent::Config::load(&config).expect("config");
    let client = GrpcSigner::new(&config.signer, &config.device).expect("client");
    client
        .issue_mqtt_credential()
        .await
        .expect("the signer accepts the enrolled pair");

    // The token is spent: the second use is refused and writes nothing.
    let before = files(&pair);
    let out = enroll(
        &config_path(dir.path()),
        &ca.enroll_uri,
        &ca.server_ca,
        &token_path,
        true,
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains(&token), "{stderr}");
    assert_eq!(files(&pair), before);
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("agent.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_device_is_refused_and_nothing_is_written() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca_signer(&dir.path().join("signer"), Duration::from_secs(3600)).await;
    ca.signer
        .put_device(PK, "gw2", SECRET)
        .await
        .expect("other device");
    let (config, pair) = write_config(dir.path(), &ca.signer.uri(), &ca.server_ca, "");
    let token = ca.token(PK, "gw2").await;
    let token_path = token_file(dir.path(), &token, 0o600);
    let out = enroll(&config, &ca.enroll_uri, &ca.server_ca, &token_path, false);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains(&token));
    assert!(!pair.key.file().expect("a key file").exists() && !pair.cert.exists());
    assert!(
        !pair.candidate_key_file().expect("a key file").exists() && !pair.candidate_cert().exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_renews_before_expiry_and_both_connections_use_the_new_pair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("device.key").display().to_string();
    enroll_then_renew_under_mqtts(dir.path(), &key, |enrolled, pair| {
        assert!(enrolled.contains("mode 0600"), "{enrolled}");
        assert!(!pair.candidate_key_file().expect("a key file").exists());
    })
    .await;
}

/// Enrolls with `[signer] key` = `key`, runs the agent over MQTTS (the
/// broker trusting the signer's device CA) with the same pair, and
/// checks: a renewal of the 12 s certificate under the live session (one
/// connect), a new certificate for a new key, the signer channel on the
/// new pair, and — past the first certificate's expiry — a restarted
/// broker accepting the renewed one. `after_renewal` adds the checks of
/// one key kind (given `enroll`'s output and the pair).
async fn enroll_then_renew_under_mqtts(
    dir: &Path,
    key: &str,
    after_renewal: impl FnOnce(&str, &PairPaths),
) {
    init();
    // Short-lived certificates: renewed at 50 % ± 10 % of 12 s.
    let ca = ca_signer(&dir.join("signer"), Duration::from_secs(12)).await;
    let (config_file, pair) = write_config_with_key(
        dir,
        &ca.signer.uri(),
        &ca.server_ca,
        key,
        "[renewal]\nat = 0.5\njitter = 0.1\n",
    );
    let token = ca.token(PK, DK).await;
    let out = enroll(
        &config_file,
        &ca.enroll_uri,
        &ca.server_ca,
        &token_file(dir, &token, 0o600),
        false,
    );
    let (enrolled, stderr) = text(&out);
    assert!(out.status.success(), "{enrolled}{stderr}");
    let first = serial_of(&pair);

    // EnOS over MQTTS with the same pair: the broker trusts the signer's CA.
    let chain = std::fs::read_to_string(&pair.cert).expect("chain");
    let device_ca = chain
        .rfind("-----BEGIN CERTIFICATE-----")
        .map(|i| chain[i..].to_owned())
        .expect("the CA in the chain");
    let server_ca_pem = std::fs::read_to_string(&ca.server_ca).expect("server ca");
    let broker_clients =
        support::ca::bundle(dir, "broker-clients.pem", &[&server_ca_pem, &device_ca]);
    let devices = dir.join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(PK, DK, SECRET)]);
    let broker_pki = Pki::new("broker").expect("pki");
    let broker = broker_pki
        .server(&[])
        .expect("broker cert")
        .write(dir, "broker")
        .expect("write");
    let mut sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .tls(&broker_clients, &broker.cert, &broker.key)
        .console(CONSOLE.0, console_password_file(dir))
        .start()
        .expect("sandbox");
    let broker_ca_dir = dir.join("broker-ca");
    std::fs::create_dir_all(&broker_ca_dir).expect("dir");
    let broker_ca = broker_pki.write_ca(&broker_ca_dir).expect("ca");
    let toml = std::fs::read_to_string(&config_file)
        .expect("config")
        .replace(
            "broker = \"tcp://127.0.0.1:1\"\n",
            &format!(
                "broker = \"ssl://{}\"\nconnect_timeout = \"2s\"\n\n[enos.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{key}\"\n",
                sandbox.tls_addr().expect("tls"),
                broker_ca.display(),
                pair.cert.display(),
            ),
        );
    let config = config(&toml);
    let signer = GrpcSigner::new(&config.signer, &config.device).expect("client");
    let agent = Agent::new(config.clone(), signer);
    let mut status = agent.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    wait_status(&mut status, "connected", |s| s.connects == 1).await;

    let renewed = |s: &AgentStatus| s.certificate.as_ref().is_some_and(|c| c.renewals >= 1);
    let s = tokio::time::timeout(Duration::from_secs(20), status.wait_for(renewed))
        .await
        .expect("renewed in time")
        .expect("status")
        .clone();
    let c = s.certificate.clone().expect("certificate");
    assert_eq!(c.last_renewal_error, None, "{c:#?}");
    let second = serial_of(&pair);
    assert_ne!(second.0, first.0, "a new certificate");
    assert_ne!(second.1, first.1, "for a new key");
    assert!(!pair.candidate_cert().exists());
    // The live MQTT session was not dropped for it.
    assert_eq!(s.connects, 1, "{s:#?}");
    assert_eq!(s.network_failures + s.refusals, 0, "{s:#?}");
    after_renewal(&enrolled, &pair);

    // The signer channel uses the new pair at its next call.
    let client = GrpcSigner::new(&config.signer, &config.device).expect("client");
    client
        .issue_mqtt_credential()
        .await
        .expect("the new pair works");

    // Past the first certificate's expiry, a new MQTTS connection works:
    // it presents the renewed pair.
    tokio::time::sleep(Duration::from_secs(7)).await;
    sandbox.restart().expect("restart");
    wait_status(&mut status, "reconnected with the renewed pair", |s| {
        s.connects == 2
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(SOON, task)
        .await
        .expect("stops")
        .expect("task")
        .expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_does_not_renew_and_the_current_pair_stays() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca_signer(&dir.path().join("signer"), Duration::from_secs(30)).await;
    let (config_file, pair) = write_config(
        dir.path(),
        &ca.signer.uri(),
        &ca.server_ca,
        "[renewal]\nat = 0.2\njitter = 0.0\n",
    );
    let token = ca.token(PK, DK).await;
    let out = enroll(
        &config_file,
        &ca.enroll_uri,
        &ca.server_ca,
        &token_file(dir.path(), &token, 0o600),
        false,
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let before = files(&pair);
    ca.signer
        .admin()
        .await
        .revoke_certificate(v1::RevokeCertificateRequest {
            target: Some(v1::revoke_certificate_request::Target::Device(
                v1::DeviceRef::new(PK, DK),
            )),
            reason: "key compromise".into(),
        })
        .await
        .expect("revoked");
    let config = enos_agent::Config::load(&config_file).expect("config");
    let signer = GrpcSigner::new(&config.signer, &config.device).expect("client");
    let agent = Agent::new(config, signer);
    let mut status = agent.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    let s = tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| {
            s.certificate
                .as_ref()
                .is_some_and(|c| c.last_renewal_error.is_some())
        }),
    )
    .await
    .expect("a renewal was tried in time")
    .expect("status")
    .clone();
    let c = s.certificate.expect("certificate");
    assert_eq!(c.renewals, 0, "{c:#?}");
    assert_eq!(files(&pair), before, "the current pair stays");
    assert!(
        !pair.candidate_key_file().expect("a key file").exists() && !pair.candidate_cert().exists()
    );
    shutdown.cancel();
    tokio::time::timeout(SOON, task)
        .await
        .expect("stops")
        .expect("task")
        .expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_while_the_signer_is_down_keeps_the_pair_and_retries_until_it_is_back() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ca = ca_signer(&dir.path().join("signer"), Duration::from_secs(30)).await;
    // Due 6 s after enrollment (20 % of 30 s).
    let (config_file, pair) = write_config(
        dir.path(),
        &ca.signer.uri(),
        &ca.server_ca,
        "[renewal]\nat = 0.2\njitter = 0.0\n",
    );
    let token = ca.token(PK, DK).await;
    let out = enroll(
        &config_file,
        &ca.enroll_uri,
        &ca.server_ca,
        &token_file(dir.path(), &token, 0o600),
        false,
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let before = files(&pair);
    ca.signer.stop().await;

    let config = enos_agent::Config::load(&config_file).expect("config");
    let signer = GrpcSigner::new(&config.signer, &config.device).expect("client");
    let agent = Agent::new(config, signer);
    let mut status = agent.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    let failed = |s: &AgentStatus| {
        s.certificate
            .as_ref()
            .is_some_and(|c| c.last_renewal_error.is_some())
    };
    let s = tokio::time::timeout(Duration::from_secs(20), status.wait_for(failed))
        .await
        .expect("a renewal was tried in time")
        .expect("status")
        .clone();
    let c = s.certificate.expect("certificate");
    assert_eq!(c.renewals, 0, "{c:#?}");
    assert_eq!(c.renewal, enos_agent::RenewalState::Scheduled, "{c:#?}");
    assert!(
        c.next_renewal_ms.expect("a retry") <= enos_agent::now_ms() + 2_000,
        "retried with the [backoff] schedule: {c:#?}"
    );
    assert_eq!(files(&pair), before, "the current pair stays");
    assert!(
        !pair.candidate_key_file().expect("a key file").exists() && !pair.candidate_cert().exists()
    );

    ca.signer.restart().await.expect("signer back");
    let renewed = |s: &AgentStatus| {
        s.certificate
            .as_ref()
            .is_some_and(|c| c.renewals >= 1 && c.last_renewal_error.is_none())
    };
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(renewed))
        .await
        .expect("renewed once the signer is back")
        .expect("status");
    assert_ne!(files(&pair), before);
    pair_fits(&pair);
    shutdown.cancel();
    tokio::time::timeout(SOON, task)
        .await
        .expect("stops")
        .expect("task")
        .expect("run");
}

fn pair_fits(pair: &PairPaths) {
    enos_agent::pair::check_pair(pair).expect("the key fits the certificate");
}

/// #25: the gateway's key in a PKCS#11 token (SoftHSM2 here; a TPM
/// through tpm2-pkcs11 in the field). `enroll` makes the pair in the
/// token and writes no key file; the signer channel and EnOS's MQTTS
/// handshake are signed in the token; a renewal makes a second pair,
/// proves it, switches by the certificate's rename and removes the old
/// pair; a restarted MQTTS connection presents the renewed certificate.
#[test]
fn a_gateway_key_in_a_pkcs11_token_enrolls_renews_and_signs_both_connections() {
    enos_custody_pkcs11::softhsm::isolated(
        "a_gateway_key_in_a_pkcs11_token_enrolls_renews_and_signs_both_connections",
        "gateway",
        "",
        |hsm| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let dir = tempfile::tempdir().expect("tempdir");
            let key = hsm.device_key_uri("enos-device");
            runtime.block_on(enroll_then_renew_under_mqtts(
                dir.path(),
                &key,
                |enrolled, pair| {
                    assert!(
                        enrolled.contains("made a new P-256 key in token \"gateway\""),
                        "{enrolled}"
                    );
                    assert!(
                        !dir.path().join("device.key").exists(),
                        "no key file is written"
                    );
                    let enos_agent::device_key::KeyLocation::Token(uri) = &pair.key else {
                        panic!("a token key")
                    };
                    let token = enos_agent::device_key::token(uri).expect("the agent's token");
                    assert_eq!(
                        token.pair_count().expect("count"),
                        1,
                        "the old pair is removed once the new certificate is promoted"
                    );
                    enos_agent::pair::check_pair(pair)
                        .expect("the certificate's key is in the token");
                },
            ));
        },
    );
}
