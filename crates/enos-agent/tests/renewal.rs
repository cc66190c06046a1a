//! Renewal inside `enos-agent run`, the parts a signer without a CA can
//! show: a signer that does not renew leaves the pair alone and the
//! status says so; an expired certificate is reported with the command to
//! enroll again; the EnOS MQTTS connection takes a replaced pair at its
//! next connect, without dropping the live session. The renewal itself
//! against the signer's CA is in `enrollment.rs`.

mod support;

use std::{path::Path, time::Duration};

use enos_agent::{Agent, AgentStatus, ConnectionState, GrpcSigner, RenewalState, pair::PairPaths};
use enos_testkit::{
    Pki,
    sandbox::{Sandbox, SandboxBinary},
    signer::TestSigner,
};
use support::{
    CONSOLE, DeviceRow, SOON, ca::TestCa, config, console_password_file, init, wait_status,
    write_devices,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PK: &str = "pkRenew";
const DK: &str = "gw1";
const SECRET: &str = "renewalSecret01";

/// A signer (without a CA) that trusts the test's own CA for device
/// certificates, and the agent's pair issued by that CA.
struct World {
    dir: tempfile::TempDir,
    signer: TestSigner,
    ca: TestCa,
    /// The CA of the signer's server certificate, for the agent.
    server_ca: std::path::PathBuf,
    pair: PairPaths,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("renewal-server-ca").expect("pki");
        let ca = TestCa::new("renewal-device-ca");
        let client_ca =
            support::ca::bundle(dir.path(), "client-ca.pem", &[pki.ca_pem(), &ca.ca_pem()]);
        let signer = TestSigner::start_with(&dir.path().join("signer"), &pki, |c| {
            c.server.client_ca = client_ca;
        })
        .await
        .expect("signer starts");
        signer.put_device(PK, DK, SECRET).await.expect("put device");
        let server_ca = pki.write_ca(dir.path()).expect("ca");
        let pair = PairPaths {
            cert: dir.path().join("device.pem"),
            key: enos_agent::device_key::KeyLocation::File(dir.path().join("device.key")),
        };
        World {
            dir,
            signer,
            ca,
            server_ca,
            pair,
        }
    }

    /// An agent config; the broker is a closed port (renewal does not need
    /// EnOS).
    fn toml(&self, renewal: &str) -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        format!(
            "[device]\nproduct_key = \"{PK}\"\ndevice_key = \"{DK}\"\n\n\
             [signer]\nendpoints = [\"{}\"]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             connect_timeout = \"1s\"\nrequest_timeout = \"2s\"\n\n\
             [enos]\nbroker = \"tcp://127.0.0.1:{port}\"\nconnect_timeout = \"1s\"\n\n\
             [backoff]\nmin = \"50ms\"\nmax = \"500ms\"\n\n{renewal}\n",
            self.signer.uri(),
            self.server_ca.display(),
            self.pair.cert.display(),
            self.pair.key,
        )
    }

    fn files(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(&self.pair.cert).expect("cert"),
            std::fs::read(self.pair.key.file().expect("a key file")).expect("key"),
        )
    }

    fn only_the_pair_is_left(&self) {
        for path in [
            self.pair.candidate_cert(),
            self.pair.candidate_key_file().expect("a key file"),
        ] {
            assert!(!path.exists(), "{} was left behind", path.display());
        }
    }
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

    async fn stop(self) -> AgentStatus {
        self.shutdown.cancel();
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("agent stops in time")
            .expect("agent task")
            .expect("agent run");
        self.status.borrow().clone()
    }
}

fn renewal_is(state: RenewalState) -> impl Fn(&AgentStatus) -> bool {
    move |s| s.certificate.as_ref().is_some_and(|c| c.renewal == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_that_does_not_renew_keeps_the_pair_and_the_status_says_so() {
    init();
    let world = World::start().await;
    // Due at once: half of a lifetime that is half over.
    world.ca.install(&world.pair, PK, DK, -120, 120);
    let before = world.files();
    let mut agent = RunningAgent::start(&world.toml("[renewal]\nat = 0.5\njitter = 0.0\n"));
    let s = wait_status(
        &mut agent.status,
        "renewal not offered",
        renewal_is(RenewalState::NotOffered),
    )
    .await;
    let c = s.certificate.expect("certificate status");
    let error = c.last_renewal_error.expect("the reason");
    // A signer without [ca]: FailedPrecondition, "this signer is not a CA".
    assert!(
        error.contains("FailedPrecondition") && error.contains("not a CA"),
        "{error}"
    );
    assert_eq!(c.renewals, 0);
    // Asked again rarely: in about an hour.
    let next = c.next_renewal_ms.expect("a retry time");
    let in_ms = next.saturating_sub(enos_agent::now_ms());
    assert!(in_ms > 3_000_000, "retried in {in_ms} ms");
    assert!(c.not_after_ms > enos_agent::now_ms());
    assert_eq!(world.files(), before, "the pair is untouched");
    world.only_the_pair_is_left();
    agent.stop().await;
    let _ = &world.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_reported_with_the_command_to_enroll_again() {
    init();
    let world = World::start().await;
    world.ca.install(&world.pair, PK, DK, -600, -60);
    let before = world.files();
    let mut agent = RunningAgent::start(&world.toml(""));
    let s = wait_status(
        &mut agent.status,
        "certificate expired",
        renewal_is(RenewalState::Expired),
    )
    .await;
    let c = s.certificate.expect("certificate status");
    let error = c.last_renewal_error.expect("what to do");
    assert!(
        error.contains("cannot be renewed")
            && error.contains("enos-agent enroll --config")
            && error.contains("--token-file")
            && error.contains("enos-signer enroll-token"),
        "{error}"
    );
    assert_eq!(c.next_renewal_ms, None);
    assert!(c.not_after_ms < enos_agent::now_ms());
    assert_eq!(world.files(), before);
    world.only_the_pair_is_left();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_disabled_reports_the_certificate_and_never_asks() {
    init();
    let world = World::start().await;
    world.ca.install(&world.pair, PK, DK, -120, 120);
    let before = world.files();
    let mut agent = RunningAgent::start(&world.toml("[renewal]\nenabled = false\n"));
    let s = wait_status(
        &mut agent.status,
        "renewal disabled",
        renewal_is(RenewalState::Disabled),
    )
    .await;
    let c = s.certificate.expect("certificate status");
    assert_eq!(c.next_renewal_ms, None);
    assert_eq!(c.last_renewal_error, None);
    assert_eq!(world.files(), before);
    agent.stop().await;
}

/// Replaces a pair's files the way a renewal does (each renamed over).
fn replace(cert: &Path, key: &Path, identity: &enos_testkit::Identity) {
    let aside = key.with_extension("new");
    enos_testkit::write_private(&aside, identity.key_pem.as_bytes()).expect("key");
    std::fs::rename(&aside, key).expect("rename key");
    let aside = cert.with_extension("new");
    std::fs::write(&aside, &identity.cert_pem).expect("cert");
    std::fs::rename(&aside, cert).expect("rename cert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_takes_a_replaced_pair_at_its_next_connect_and_keeps_the_live_session() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(PK, DK, SECRET)]);
    let signer = support::signer::SignerFixture::start(dir.path(), (PK, DK), SECRET, 600).await;
    let broker = signer
        .pki
        .server(&[])
        .expect("server cert")
        .write(dir.path(), "broker")
        .expect("write");
    let mut sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox binary"), &devices)
        .tls(&signer.ca, &broker.cert, &broker.key)
        .console(CONSOLE.0, console_password_file(dir.path()))
        .start()
        .expect("sandbox with TLS starts");
    let tls_addr = sandbox.tls_addr().expect("TLS listener");
    // The MQTTS pair has files of its own, replaced below.
    let mqtt = signer
        .pki
        .device(PK, DK)
        .expect("cert")
        .write(dir.path(), "mqtt")
        .expect("write");
    let tls = format!(
        "[enos.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        signer.ca.display(),
        mqtt.cert.display(),
        mqtt.key.display()
    );
    let toml = signer
        .agent_toml(&format!("ssl://{tls_addr}"), "[renewal]\nenabled = false\n")
        .replace(
            "connect_timeout = \"2s\"\n",
            &format!("connect_timeout = \"2s\"\n\n{tls}"),
        );
    let mut agent = RunningAgent::start(&toml);
    wait_status(&mut agent.status, "connected over TLS", |s| s.connects == 1).await;

    // A pair from a CA the broker does not trust: the live session stays.
    let stranger = Pki::new("not-the-broker-ca").expect("pki");
    replace(
        &mqtt.cert,
        &mqtt.key,
        &stranger.device(PK, DK).expect("cert"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let s = agent.status.borrow();
        assert_eq!(s.state, ConnectionState::Connected, "{s:#?}");
        assert_eq!(s.connects, 1, "{s:#?}");
        assert_eq!(s.network_failures + s.refusals, 0, "{s:#?}");
    }

    // The next connect presents it, and the broker refuses it.
    sandbox.restart().expect("sandbox restarts");
    let s = wait_status(&mut agent.status, "reconnects refused", |s| {
        s.network_failures + s.refusals >= 3
    })
    .await;
    assert_eq!(s.connects, 1, "the untrusted pair never connected: {s:#?}");

    // A good pair again, still without a restart of the agent: connected.
    replace(
        &mqtt.cert,
        &mqtt.key,
        &signer.pki.device(PK, DK).expect("cert"),
    );
    wait_status(&mut agent.status, "reconnected with the new pair", |s| {
        s.connects == 2 && s.state == ConnectionState::Connected
    })
    .await;
    agent.stop().await;
}
