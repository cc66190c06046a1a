//! #29 items 1 and 4, driving the real `enos-agent` binary: a refused
//! certificate is said as the TLS handshake said it (not `operation was
//! canceled`); `check` reaches every endpoint the config names and
//! names what failed; `run` says when `tcp://` meets a TLS port (and
//! `ssl://` a plain one) and when EnOS closed the session because
//! another client of the device logged in.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use support::{DeviceRow, Mosquitto, init, signer::SignerFixture, write_devices};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const GW: (&str, &str) = ("pkGw", "gwDiag");
const GW_SECRET: &str = "diagnosticsSecret01";

/// Runs `enos-agent check --config path` to its end.
async fn check(config: &Path) -> Output {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(config)
            .output()
            .expect("run enos-agent check")
    })
    .await
    .expect("join")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `agent.toml` in `dir` against `broker`, with `extra` appended;
/// `edit` changes the text (file paths) first.
fn write_config(
    dir: &Path,
    signer: &SignerFixture,
    broker: &str,
    extra: &str,
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, edit(signer.agent_toml(broker, extra))).expect("write config");
    path
}

/// The `[enos.tls]` section with the gateway's own pair (the sandbox's
/// TLS listener trusts the fixture's CA).
fn enos_tls(signer: &SignerFixture) -> String {
    format!(
        "[enos.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        signer.ca.display(),
        signer.cert.display(),
        signer.key.display()
    )
}

/// `[enos.tls]` goes right under `[enos]`.
fn with_enos_tls(toml: String, tls: &str) -> String {
    toml.replace(
        "connect_timeout = \"2s\"\n",
        &format!("connect_timeout = \"2s\"\n\n{tls}"),
    )
}

/// A TCP port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// #29 item 1 (client side): an expired, a not yet valid, and an
/// other-CA device certificate, and a `signer.ca` that does not sign the
/// signer's certificate, each said as the handshake said it. Before: `no
/// signer endpoint answered; last was https://…: operation was canceled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_29_1_check_says_why_the_handshake_with_the_signer_failed() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    let other = enos_testkit::Pki::new("another-ca").expect("pki");
    let cases: Vec<(&str, enos_testkit::Identity, Vec<String>)> = vec![
        (
            "expired",
            signer
                .pki
                .device_valid(GW.0, GW.1, 2020, 2021)
                .expect("cert"),
            vec![
                "the signer refused our client certificate (signer.cert = ".into(),
                "(certificate expired at 2021-01-01T00:00:00Z)".into(),
            ],
        ),
        (
            "future",
            signer
                .pki
                .device_valid(GW.0, GW.1, 2090, 2099)
                .expect("cert"),
            vec![
                "the signer refused our client certificate (signer.cert = ".into(),
                "our certificate is not yet valid (valid from 2090-01-01T00:00:00Z)".into(),
            ],
        ),
        (
            "other-ca",
            other.device(GW.0, GW.1).expect("cert"),
            vec![
                "the signer refused our client certificate (signer.cert = ".into(),
                "(unknown issuer)".into(),
            ],
        ),
    ];
    for (name, identity, wanted) in cases {
        let files = identity.write(dir.path(), name).expect("write pair");
        let config = write_config(dir.path(), &signer, "tcp://127.0.0.1:1", "", |toml| {
            toml.replace(
                &signer.cert.display().to_string(),
                &files.cert.display().to_string(),
            )
            .replace(
                &signer.key.display().to_string(),
                &files.key.display().to_string(),
            )
        });
        let out = check(&config).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {all}");
        for w in &wanted {
            assert!(all.contains(w.as_str()), "{name}: wanted {w:?} in\n{all}");
        }
        assert!(!all.contains("operation was canceled"), "{name}: {all}");
        assert!(all.contains("check failed: signer"), "{name}: {all}");
    }

    // The signer's certificate is not signed by the CA in signer.ca.
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, other.ca_pem()).expect("write");
    let config = write_config(dir.path(), &signer, "tcp://127.0.0.1:1", "", |toml| {
        toml.replace(
            &format!("ca = \"{}\"", signer.ca.display()),
            &format!("ca = \"{}\"", wrong_ca.display()),
        )
    });
    let out = check(&config).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!(
            "unknown issuer: the signer's certificate is not signed by the CA in signer.ca ({})",
            wrong_ca.display()
        )),
        "{all}"
    );
}

/// The `[bridge]` section for a local broker at `addr`.
fn bridge(addr: &str) -> String {
    format!(
        "\n[bridge]\nlocal_broker = \"tcp://{addr}\"\nclient_id = \"diag-bridge\"\n\n[[bridge.upstream]]\nlocal = \"gw/data\"\ntarget = \"measurepoint-post\"\n"
    )
}

/// #29 item 4: `check` used to stop at the signer and print "is valid"
/// for a wrong EnOS or local-broker port. Now it reaches the EnOS broker
/// (TCP, TLS), logs in up to CONNACK with the issued credential, and
/// reaches the local broker; a failure is named and the exit code is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_29_4_check_reaches_every_endpoint_and_names_what_failed() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    let server = signer
        .pki
        .server(&[])
        .expect("server cert")
        .write(dir.path(), "broker")
        .expect("write");
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .tls(&signer.ca, &server.cert, &server.key)
        .start()
        .expect("sandbox");
    let plain = format!("tcp://{}", sandbox.mqtt_addr());
    let tls_addr = sandbox.tls_addr().expect("TLS listener");
    let local = Mosquitto::start();
    let local_ok = bridge(&local.addr.to_string());

    // Everything answers: exit 0, a line per endpoint.
    let config = write_config(dir.path(), &signer, &plain, &local_ok, |t| t);
    let out = check(&config).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for wanted in [
        "ok: signer ",
        &format!("ok: EnOS broker {plain}: TCP connection accepted"),
        &format!(
            "ok: EnOS broker {plain}: CONNACK accepted the login of {}/{}",
            GW.0, GW.1
        ),
        "EnOS keeps one session per device",
        &format!(
            "ok: local broker tcp://{}: CONNACK accepted client id diag-bridge-check",
            local.addr
        ),
    ] {
        assert!(all.contains(wanted), "wanted {wanted:?} in\n{all}");
    }

    // Over TLS with the device's certificate: the handshake and the login.
    let config = write_config(
        dir.path(),
        &signer,
        &format!("ssl://{tls_addr}"),
        &local_ok,
        |t| with_enos_tls(t, &enos_tls(&signer)),
    );
    let out = check(&config).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("TLS handshake done"), "{all}");

    // A wrong EnOS port: the broker and the login fail, named.
    let dead = closed_port();
    let config = write_config(
        dir.path(),
        &signer,
        &format!("tcp://127.0.0.1:{dead}"),
        &local_ok,
        |t| t,
    );
    let out = check(&config).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!(
            "FAILED: EnOS broker tcp://127.0.0.1:{dead}: TCP connection failed"
        )),
        "{all}"
    );
    assert!(
        all.contains("check failed: EnOS broker, EnOS login"),
        "{all}"
    );

    // A wrong local-broker port.
    let config = write_config(
        dir.path(),
        &signer,
        &plain,
        &bridge(&format!("127.0.0.1:{dead}")),
        |t| t,
    );
    let out = check(&config).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("FAILED: local broker tcp://127.0.0.1:{dead}")),
        "{all}"
    );
    assert!(all.contains("check failed: local broker"), "{all}");

    // tcp:// on the TLS port, and ssl:// on the plain one.
    let config = write_config(
        dir.path(),
        &signer,
        &format!("tcp://{tls_addr}"),
        &local_ok,
        |t| t,
    );
    let out = check(&config).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("the broker speaks TLS on"), "{all}");
    assert!(all.contains("use ssl://"), "{all}");
    assert!(!all.contains("Promised boundary crossed"), "{all}");
    let config = write_config(
        dir.path(),
        &signer,
        &format!("ssl://{}", sandbox.mqtt_addr()),
        &local_ok,
        |t| with_enos_tls(t, &enos_tls(&signer)),
    );
    let out = check(&config).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("the broker does not speak TLS on"), "{all}");
    assert!(all.contains("use tcp://"), "{all}");
    drop(sandbox);
}

/// A running `enos-agent run`, its stderr captured.
struct Running {
    child: enos_testkit::ChildProcess,
}

impl Running {
    fn start(config: &Path) -> Running {
        let child = enos_testkit::ChildProcess::spawn(
            "enos-agent",
            Path::new(BIN),
            ["run".as_ref(), "--config".as_ref(), config.as_os_str()],
            &[],
        )
        .expect("spawn enos-agent run");
        Running { child }
    }

    /// Waits for a log line holding `needle`.
    fn wait_for(&self, needle: &str) -> String {
        self.child
            .log()
            .wait_for(0, needle, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", self.child.log().text()))
    }
}

/// #29 item 4 (`run`): `tcp://` on a TLS port used to log `Mqtt
/// serialization/deserialization error: Promised boundary crossed: 768`;
/// two clients of one device each logged `Connection closed by peer
/// abruptly` every second. Now each is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_29_4_run_says_tls_mismatches_and_session_take_overs() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    let server = signer
        .pki
        .server(&[])
        .expect("server cert")
        .write(dir.path(), "broker")
        .expect("write");
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .tls(&signer.ca, &server.cert, &server.key)
        .start()
        .expect("sandbox");
    let tls_addr = sandbox.tls_addr().expect("TLS listener");

    // tcp:// on the TLS port.
    let config = write_config(dir.path(), &signer, &format!("tcp://{tls_addr}"), "", |t| t);
    let mut agent = Running::start(&config);
    let line = agent.wait_for("the broker speaks TLS on");
    assert!(line.contains("use ssl://"), "{line}");
    let _ = agent.child.terminate(Duration::from_secs(5));

    // ssl:// on the plain port.
    let config = write_config(
        dir.path(),
        &signer,
        &format!("ssl://{}", sandbox.mqtt_addr()),
        "",
        |t| with_enos_tls(t, &enos_tls(&signer)),
    );
    let mut agent = Running::start(&config);
    let line = agent.wait_for("the broker does not speak TLS on");
    assert!(line.contains("use tcp://"), "{line}");
    let _ = agent.child.terminate(Duration::from_secs(5));

    // A running agent, then another client of the same device (check).
    let config = write_config(
        dir.path(),
        &signer,
        &format!("tcp://{}", sandbox.mqtt_addr()),
        "",
        |t| t,
    );
    let mut agent = Running::start(&config);
    agent.wait_for("connected to EnOS");
    let out = check(&config).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let line = agent.wait_for("EnOS closed the session");
    assert!(
        line.contains("it keeps one session per device")
            && line.contains(&format!("{}/{}", GW.0, GW.1)),
        "{line}"
    );
    assert!(
        !line.contains("Connection closed by peer abruptly"),
        "{line}"
    );
    // It reconnects by itself.
    let log = agent.child.log().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.text().matches("connected to EnOS").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnect:\n{}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = agent.child.terminate(Duration::from_secs(5));
    drop(sandbox);
}
