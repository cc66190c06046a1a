//! Issue 26, the gateway's side: the EnOS device certificate brokered by
//! the signer (`[enos.tls] source = "signer"`). Real parts only: the
//! signer (TestSigner over mTLS, with `[enos_api]`), the sandbox binary
//! playing EnOS (its certificate API with `day` shortened to a second,
//! its MQTTS listener binding each EnOS certificate to its device by
//! serial), and the agent (the `enos-agent` binary, or `Agent` in process
//! where the test reads its status as it changes).

mod support;

use std::{
    num::NonZeroUsize,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enos_agent::{Agent, AgentStatus, ConnectionState, GrpcSigner};
use enos_signer_svc::{
    config::{EnosApiConfig, EnosEnvironmentConfig, SubjectTemplate},
    enos_api::seal_credential,
};
use enos_testkit::{
    Pki,
    sandbox::{Sandbox, SandboxBinary},
    signer::TestSigner,
};
use support::{CONSOLE, DeviceRow, config, console_password_file, init, write_devices};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PK: &str = "pkEnosCert";
const DK: &str = "gw1";
const SECRET: &str = "enosCertSecret01";
const ORG: &str = "o15724268424841";
const APP_KEY: &str = "app-key-agent-test";
const APP_SECRET: &str = "app-secret-41d9c2e7-never-logged";
const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");

/// Long enough for a renewal with a few retries on a loaded machine.
const LONG: Duration = Duration::from_secs(60);

/// The sandbox as EnOS (MQTTS and the certificate API), and the signer
/// as its API client.
struct World {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    signer: TestSigner,
    /// The CA of the broker's and the signer's server certificates.
    ca: PathBuf,
    /// The gateway's signer certificate and key (mTLS to the signer).
    gw_cert: PathBuf,
    gw_key: PathBuf,
    /// The sandbox's `outage_file`.
    outage: PathBuf,
}

impl World {
    /// `valid_day` days of one second each.
    async fn start(valid_day: u32) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices = dir.path().join("devices.csv");
        write_devices(&devices, &[DeviceRow::new(PK, DK, SECRET)]);
        let pki = Pki::new("enos-cert-test-ca").expect("pki");
        let ca = pki.write_ca(dir.path()).expect("ca");
        let broker = pki
            .server(&[])
            .expect("server cert")
            .write(dir.path(), "broker")
            .expect("write");
        enos_testkit::write_private(&dir.path().join("enos-app.secret"), APP_SECRET.as_bytes())
            .expect("secret");
        let sandbox_config = dir.path().join("sandbox.toml");
        std::fs::write(
            &sandbox_config,
            format!(
                "[enos_api]\nlisten = \"127.0.0.1:0\"\norg_id = \"{ORG}\"\napp_key = \"{APP_KEY}\"\n\
                 app_secret_file = \"enos-app.secret\"\nstate_dir = \"enos-ca\"\nday = \"1s\"\n\
                 outage_file = \"outage\"\n"
            ),
        )
        .expect("sandbox config");
        let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox binary"), &devices)
            .config(&sandbox_config)
            .enos_api()
            .tls(&ca, &broker.cert, &broker.key)
            .console(CONSOLE.0, console_password_file(dir.path()))
            .start()
            .expect("sandbox starts");
        let api = sandbox.enos_api_addr().expect("the API listens");
        let credential_file = dir.path().join("signer-enos-api.sealed");
        let environment = EnosEnvironmentConfig {
            gateway_url: format!("http://{api}"),
            org_id: ORG.into(),
            credential_file: credential_file.clone(),
            ca_file: None,
            products: vec!["*".into()],
        };
        let signer = TestSigner::start_with(&dir.path().join("signer"), &pki, |c| {
            c.enos_api = Some(EnosApiConfig {
                concurrency: NonZeroUsize::MIN,
                timeout: Duration::from_secs(5),
                valid_day,
                environments: [("test".to_owned(), environment)].into(),
                subject: SubjectTemplate::default(),
                product_subjects: Default::default(),
            });
        })
        .await
        .expect("signer starts");
        let custody = enos_signer_svc::custody::build(&signer.config().custody)
            .expect("custody")
            .into_custody();
        seal_credential(
            custody.as_ref(),
            "test",
            APP_KEY,
            APP_SECRET,
            &credential_file,
        )
        .expect("sealed");
        signer
            .put_device(PK, DK, SECRET)
            .await
            .expect("put gateway");
        let gw = pki
            .device(PK, DK)
            .expect("device cert")
            .write(dir.path(), "gateway")
            .expect("write");
        let outage = dir.path().join("outage");
        World {
            dir,
            sandbox,
            signer,
            ca,
            gw_cert: gw.cert,
            gw_key: gw.key,
            outage,
        }
    }

    fn enos_cert(&self) -> PathBuf {
        self.dir.path().join("enos-device.pem")
    }

    fn enos_key(&self) -> PathBuf {
        self.dir.path().join("enos-device.key")
    }

    /// The agent's config: MQTTS with the EnOS certificate brokered by
    /// the signer; `extra` appended.
    fn agent_toml(&self, extra: &str) -> String {
        format!(
            "[device]\nproduct_key = \"{PK}\"\ndevice_key = \"{DK}\"\n\n\
             [signer]\nendpoints = [\"{signer}\"]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             connect_timeout = \"1s\"\nrequest_timeout = \"10s\"\n\n\
             [enos]\nbroker = \"ssl://{broker}\"\nkeepalive = \"5s\"\nconnect_timeout = \"2s\"\n\n\
             [enos.tls]\nca = \"{ca}\"\ncert = \"{enos_cert}\"\nkey = \"{enos_key}\"\nsource = \"signer\"\n\n\
             [backoff]\nmin = \"50ms\"\nmax = \"500ms\"\njitter = 1.0\nrefusal_factor = 4\nreset_after = \"1s\"\n\n\
             {extra}\n",
            signer = self.signer.uri(),
            ca = self.ca.display(),
            cert = self.gw_cert.display(),
            key = self.gw_key.display(),
            broker = self.sandbox.tls_addr().expect("the MQTTS listener"),
            enos_cert = self.enos_cert().display(),
            enos_key = self.enos_key().display(),
        )
    }

    /// The sandbox's record of `serial`: (device, revocation reason).
    fn record(&self, serial: &str) -> Option<(String, Option<u64>)> {
        let text =
            std::fs::read_to_string(self.dir.path().join("enos-ca/certificates.json")).ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).ok()?;
        let record = &state["certs"][serial];
        if record.is_null() {
            return None;
        }
        Some((
            format!(
                "{}/{}",
                record["product_key"].as_str().unwrap_or("?"),
                record["device_key"].as_str().unwrap_or("?")
            ),
            record["revoked"]["reason"].as_u64(),
        ))
    }

    /// Every text the secret must never be in: the sandbox's log, the
    /// signer's audit trail, and `more`.
    fn assert_secret_nowhere(&self, more: &str) {
        assert!(!more.contains(APP_SECRET), "the API secret leaked: {more}");
        let logs = self.sandbox.logs();
        assert!(!logs.contains(APP_SECRET), "the sandbox logged the secret");
        let audit =
            std::fs::read_to_string(self.dir.path().join("signer/audit.jsonl")).expect("audit");
        assert!(
            !audit.contains(APP_SECRET),
            "the audit trail holds the secret"
        );
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("signer/audit.jsonl")).expect("audit")
    }
}

fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `enos-agent run` binary, its log in a file.
struct AgentProcess {
    child: Child,
    log: PathBuf,
    status: PathBuf,
}

impl AgentProcess {
    fn start(world: &World, extra: &str) -> AgentProcess {
        let status = world.dir.path().join("status.json");
        let config = world.dir.path().join("agent.toml");
        std::fs::write(
            &config,
            world.agent_toml(&format!(
                "{extra}\n[status]\nfile = \"{}\"\n",
                status.display()
            )),
        )
        .expect("agent config");
        let log = world.dir.path().join("agent.log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("enos-agent runs");
        AgentProcess { child, log, status }
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(&self.status).ok()?).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Apply → MQTTS connect → renewal at half of a 16 s lifetime, proven by
/// one reconnect → the old serial revoked SUPERSEDED; the API secret in no
/// log and no audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_applies_connects_renews_with_one_reconnect_and_retires_the_old_certificate() {
    init();
    let world = World::start(16).await;
    assert!(!world.enos_cert().exists());
    let agent = AgentProcess::start(&world, "[renewal]\nat = 0.5\njitter = 0.05\n");

    // Applied through the signer, then connected over MQTTS with it.
    let first = wait_until("connected with an EnOS certificate", LONG, || {
        let s = agent.status()?;
        (s["state"] == "connected" && s["enos_certificate"]["serial"].is_string()).then_some(s)
    });
    let old_serial = first["enos_certificate"]["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    assert_eq!(first["connects"], 1, "{first:#}");
    assert_eq!(
        world.record(&old_serial),
        Some((format!("{PK}/{DK}"), None)),
        "issued by EnOS for this gateway, valid"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(world.enos_key())
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Renewed: a new serial, proven by one reconnect, the old one retired.
    let renewed = wait_until("the renewal", LONG, || {
        let s = agent.status()?;
        (s["enos_certificate"]["renewals"].as_u64() >= Some(1) && s["state"] == "connected")
            .then_some(s)
    });
    let new_serial = renewed["enos_certificate"]["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    assert_ne!(new_serial, old_serial);
    wait_until("the old serial revoked", LONG, || {
        (world.record(&old_serial)?.1 == Some(4)).then_some(())
    });
    let s = agent.status().expect("status");
    assert_eq!(
        s["connects"], 2,
        "one reconnect for the renewal, no more: {s:#}"
    );
    assert_eq!(s["network_failures"], 0, "{s:#}");
    assert_eq!(s["refusals"], 0, "{s:#}");
    assert_eq!(world.record(&new_serial).map(|r| r.1), Some(None));
    // `enos-agent status` shows the certificate in use.
    let shown = Command::new(BIN)
        .args(["status", "--config"])
        .arg(world.dir.path().join("agent.toml"))
        .output()
        .expect("enos-agent status runs");
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("EnOS certificate: certSN ") && shown.contains("renewed since start"),
        "{shown}"
    );
    let log = agent.log();
    assert!(
        log.contains("EnOS device certificate applied for through the signer"),
        "{log}"
    );
    assert!(
        log.contains("retired the superseded EnOS certificate"),
        "{log}"
    );
    let audit = world.audit();
    for event in [
        "apply_enos_certificate",
        "renew_enos_certificate",
        "retire_enos_certificate",
    ] {
        assert!(audit.contains(event), "{event}: {audit}");
    }
    world.assert_secret_nowhere(&log);
}

struct RunningAgent {
    status: watch::Receiver<AgentStatus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), enos_agent::AgentError>>,
}

impl RunningAgent {
    fn start(toml: &str) -> RunningAgent {
        let config = config(toml);
        let signer = GrpcSigner::new(&config.signer, &config.device).expect("signer client");
        let agent = Agent::new(config, signer);
        let status = agent.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        RunningAgent {
            status,
            shutdown,
            task,
        }
    }

    async fn wait(&mut self, what: &str, pred: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let found = tokio::time::timeout(LONG, self.status.wait_for(|s| pred(s)))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|s| s.clone());
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}; status: {:#?}",
                *self.status.borrow()
            )
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(LONG, self.task).await;
    }
}

fn serial(s: &AgentStatus) -> Option<&str> {
    s.enos_certificate.as_ref().map(|c| c.serial.as_str())
}

/// EnOS answering 99500, then unreachable: the renewal fails, the agent
/// keeps its certificate and its session and retries with backoff; once
/// EnOS is back, the renewal goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enos_outage_keeps_the_current_certificate_and_retries_with_backoff() {
    init();
    let world = World::start(40).await;
    let mut agent = RunningAgent::start(&world.agent_toml("[renewal]\nat = 0.2\njitter = 0.0\n"));
    let connected = agent
        .wait("connected", |s| {
            s.state == ConnectionState::Connected && serial(s).is_some()
        })
        .await;
    let current = serial(&connected).expect("serial").to_owned();
    let files = (
        std::fs::read(world.enos_cert()).expect("cert"),
        std::fs::read(world.enos_key()).expect("key"),
    );

    // The signer answers UNAVAILABLE for both, saying it is EnOS (EnOS's
    // reason stays in its log and audit); the sandbox's log tells the two
    // apart.
    for mode in ["99500", "unreachable"] {
        std::fs::write(&world.outage, mode).expect("outage on");
        let mark = world.sandbox.log_mark();
        let s = agent
            .wait(&format!("a renewal failing with {mode}"), |s| {
                s.enos_certificate
                    .as_ref()
                    .and_then(|c| c.last_error.as_deref())
                    .is_some_and(|e| e.contains("EnOS's certificate API is unavailable"))
            })
            .await;
        // Retried: more attempts reach the API.
        let what = if mode == "99500" {
            "answering 99500"
        } else {
            "closing unanswered"
        };
        world
            .sandbox
            .wait_for_log_since(mark, what, LONG)
            .expect("an attempt");
        let attempts = |logs: &str| logs.matches(what).count();
        let before = attempts(&world.sandbox.logs());
        wait_until("a retry", LONG, || {
            (attempts(&world.sandbox.logs()) > before).then_some(())
        });
        assert_eq!(serial(&s), Some(current.as_str()), "{s:#?}");
        assert_eq!(s.connects, 1, "the session stays: {s:#?}");
        assert_eq!(s.state, ConnectionState::Connected, "{s:#?}");
        assert_eq!(
            (
                std::fs::read(world.enos_cert()).expect("cert"),
                std::fs::read(world.enos_key()).expect("key"),
            ),
            files,
            "the current pair is kept"
        );
        assert!(!world.enos_cert().with_extension("pem.candidate").exists());
    }

    std::fs::remove_file(&world.outage).expect("outage off");
    let s = agent
        .wait("the renewal once EnOS is back", |s| {
            s.enos_certificate.as_ref().is_some_and(|c| c.renewals >= 1)
                && s.state == ConnectionState::Connected
        })
        .await;
    assert_ne!(serial(&s), Some(current.as_str()));
    let last = s
        .enos_certificate
        .as_ref()
        .and_then(|c| c.last_error.clone());
    assert_eq!(last, None);
    agent.stop().await;
    world.assert_secret_nowhere("");
}

/// A certificate revoked through the signer's EnOS client (what
/// `enos-signer enos-cert revoke` runs) is refused at the next CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_enos_certificate_is_refused_at_the_next_connect() {
    init();
    let mut world = World::start(400).await;
    let mut agent = RunningAgent::start(&world.agent_toml("[renewal]\nenabled = false\n"));
    let connected = agent
        .wait("connected", |s| {
            s.state == ConnectionState::Connected && serial(s).is_some()
        })
        .await;
    let current = serial(&connected).expect("serial").to_owned();

    let custody = enos_signer_svc::custody::build(&world.signer.config().custody)
        .expect("custody")
        .into_custody();
    let api = enos_signer_svc::enos_api::EnosApi::new(
        world.signer.config().enos_api.clone().expect("[enos_api]"),
        custody,
    );
    api.client_for(PK)
        .expect("client")
        .revoke(PK, DK, &current, 1)
        .await
        .expect("revoked");
    assert_eq!(world.record(&current).and_then(|r| r.1), Some(1));

    // The live session stays until it reconnects (the sandbox's choice);
    // the next CONNECT with the revoked certificate is refused.
    let mark = world.sandbox.log_mark();
    world.sandbox.restart().expect("sandbox restarts");
    agent
        .wait("refused after the revocation", |s| s.refusals >= 1)
        .await;
    world
        .sandbox
        .wait_for_log_since(mark, "is revoked", LONG)
        .expect("the sandbox says why");
    let s = agent.status.borrow().clone();
    assert_eq!(s.connects, 1, "never connected again: {s:#?}");
    agent.stop().await;
    world.assert_secret_nowhere("");
}

/// The EnOS key in a PKCS#11 token (SoftHSM2): applied for and renewed
/// with pairs made in the token (the CSRs signed there), no key file
/// written, the MQTTS handshakes signed in the token, the old pair removed
/// once its successor is promoted, and the old serial retired.
#[test]
fn an_enos_key_in_a_pkcs11_token_applies_renews_and_retires() {
    enos_custody_pkcs11::softhsm::isolated(
        "an_enos_key_in_a_pkcs11_token_applies_renews_and_retires",
        "gateway",
        "",
        |hsm| {
            init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let uri = hsm.device_key_uri("enos-device");
            runtime.block_on(async {
                let world = World::start(16).await;
                let toml = world
                    .agent_toml("[renewal]\nat = 0.5\njitter = 0.05\n")
                    .replace(
                        &format!("key = \"{}\"\nsource", world.enos_key().display()),
                        &format!("key = \"{uri}\"\nsource"),
                    );
                assert!(toml.contains("pkcs11:"), "{toml}");
                let mut agent = RunningAgent::start(&toml);
                let first = agent
                    .wait("connected", |s| {
                        s.state == ConnectionState::Connected && serial(s).is_some()
                    })
                    .await;
                let old = serial(&first).expect("serial").to_owned();
                let renewed = agent
                    .wait("renewed", |s| {
                        s.enos_certificate.as_ref().is_some_and(|c| c.renewals >= 1)
                            && s.state == ConnectionState::Connected
                    })
                    .await;
                assert_ne!(serial(&renewed), Some(old.as_str()));
                wait_until("the old serial revoked", LONG, || {
                    (world.record(&old)?.1 == Some(4)).then_some(())
                });
                let s = agent.status.borrow().clone();
                assert_eq!(s.connects, 2, "one reconnect for the renewal: {s:#?}");
                assert!(!world.enos_key().exists(), "no key file is written");
                let location =
                    enos_agent::device_key::KeyLocation::parse(&uri).expect("a pkcs11 URI");
                let enos_agent::device_key::KeyLocation::Token(token_uri) = &location else {
                    panic!("a token key")
                };
                let token = enos_agent::device_key::token(token_uri).expect("the token");
                assert_eq!(
                    token.pair_count().expect("count"),
                    1,
                    "the old pair is removed once the new certificate is promoted"
                );
                enos_agent::pair::check_pair(&enos_agent::pair::PairPaths {
                    cert: world.enos_cert(),
                    key: location.clone(),
                })
                .expect("the certificate's key is in the token");
                agent.stop().await;
            });
        },
    );
}

/// Crash safety of the retire step: the superseded serial is noted
/// (`{cert}.superseded`) before the promotion. A note left by a crash that
/// names the certificate still in use (its successor was never promoted)
/// is dropped, never retired; a note naming an old serial revoked already
/// is done at the next start. A restart with a pair in place applies for
/// nothing; a gateway that lost a certificate still valid at EnOS gets a
/// new one once the operator revoked the lost one (EnOS refuses a second
/// valid certificate with the same CN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_note_left_by_a_crash_never_retires_the_current_certificate() {
    init();
    let world = World::start(400).await;
    let toml = world.agent_toml("[renewal]\nenabled = false\n");
    let note = {
        let mut name = world.enos_cert().into_os_string();
        name.push(".superseded");
        PathBuf::from(name)
    };
    let connected = |s: &AgentStatus| s.state == ConnectionState::Connected && serial(s).is_some();

    let mut agent = RunningAgent::start(&toml);
    let first = agent.wait("connected", connected).await;
    let current = serial(&first).expect("serial").to_owned();
    agent.stop().await;

    // A note naming the certificate in use: dropped, nothing revoked.
    std::fs::write(&note, &current).expect("note");
    let mut agent = RunningAgent::start(&toml);
    let again = agent.wait("connected again", connected).await;
    assert_eq!(serial(&again), Some(current.as_str()), "no new Apply");
    wait_until("the note dropped", LONG, || (!note.exists()).then_some(()));
    assert_eq!(
        world.record(&current).map(|r| r.1),
        Some(None),
        "still valid"
    );
    agent.stop().await;

    // The gateway loses its certificate while it is still valid at EnOS:
    // EnOS refuses a second valid certificate with the same CN (99400
    // Duplicate subject), so the operator revokes the lost one (what
    // `enos-signer enos-cert revoke` does), and the agent applies anew.
    let custody = enos_signer_svc::custody::build(&world.signer.config().custody)
        .expect("custody")
        .into_custody();
    let api = enos_signer_svc::enos_api::EnosApi::new(
        world.signer.config().enos_api.clone().expect("[enos_api]"),
        custody,
    );
    api.client_for(PK)
        .expect("client")
        .revoke(PK, DK, &current, 0)
        .await
        .expect("revoked");
    std::fs::remove_file(world.enos_cert()).expect("rm");
    let mut agent = RunningAgent::start(&toml);
    let newer = agent.wait("a new Apply", connected).await;
    let newer_serial = serial(&newer).expect("serial").to_owned();
    assert_ne!(newer_serial, current);
    agent.stop().await;

    // A note naming that old serial, revoked already: done, not revoked
    // again; the certificate in use stays valid.
    std::fs::write(&note, &current).expect("note");
    let mut agent = RunningAgent::start(&toml);
    agent.wait("connected", connected).await;
    wait_until("the note done", LONG, || (!note.exists()).then_some(()));
    assert_eq!(world.record(&current).map(|r| r.1), Some(Some(0)));
    assert_eq!(
        world.record(&newer_serial).map(|r| r.1),
        Some(None),
        "the one in use stays valid"
    );
    agent.stop().await;
}
