//! The `enos-agent` binary as systemd runs it: READY and WATCHDOG over
//! `NOTIFY_SOCKET`, the status file, SIGTERM → DISCONNECT → exit 0, and
//! no password in its output; and `enos-agent check`.

mod support;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enos_sign_core::ExposeSecret;
use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use support::{DeviceRow, init, signer::SignerFixture, write_devices};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");
const GW: (&str, &str) = ("pkGw", "gwBin");
const GW_SECRET: &str = "binarySecret01";

fn write_config(dir: &Path, signer: &SignerFixture, broker: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    let status = format!(
        "\n[status]\nfile = \"{}\"\n",
        dir.join("status.json").display()
    );
    std::fs::write(&path, signer.agent_toml(broker, &status)).expect("write config");
    path
}

fn read_status(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn wait_file_state(dir: &Path, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = read_status(dir) {
            if s["state"] == state {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "status file never said {state}: {:?}",
            read_status(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_under_systemd_and_disconnects_on_sigterm() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .start()
        .expect("sandbox");
    let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    let config = write_config(
        dir.path(),
        &signer,
        &format!("tcp://{}", sandbox.mqtt_addr()),
    );

    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // systemd sets WATCHDOG_PID to the service's pid: `exec` keeps the
    // shell's pid, so $$ is the agent's.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" run --config "$1""#)
        .arg(BIN)
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");

    let connected = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || wait_file_state(&dir, "connected")
    })
    .await
    .expect("join");
    assert_eq!(connected["connects"], 1);
    // The device certificate and its renewal, once the renewal loop read
    // it (the test PKI's certificates are valid for ages: scheduled).
    let deadline = Instant::now() + Duration::from_secs(15);
    let certificate = loop {
        let s = read_status(dir.path()).expect("status");
        if s["certificate"].is_object() {
            break s["certificate"].clone();
        }
        assert!(Instant::now() < deadline, "no certificate in {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(certificate["not_after_ms"].is_u64(), "{certificate}");
    assert!(certificate["next_renewal_ms"].is_u64(), "{certificate}");
    assert_eq!(certificate["renewal"], "scheduled", "{certificate}");
    assert_eq!(certificate["renewals"], 0, "{certificate}");
    assert!(certificate["last_renewal_error"].is_null(), "{certificate}");

    // READY, WATCHDOG (every 100 ms) and the connection state arrived.
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let watchdogs = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if messages.iter().any(|m| m.contains("READY=1"))
            && watchdogs >= 3
            && messages
                .iter()
                .any(|m| m.contains("STATUS=connected to EnOS"))
        {
            break;
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    assert!(
        messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("STATUS=connected to EnOS")),
        "{messages:?}"
    );

    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit on SIGTERM is clean: {:?}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("sent DISCONNECT to EnOS"), "{stderr}");
    let last = read_status(dir.path()).expect("final status");
    assert_eq!(last["state"], "stopped");
    let mut tail = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        tail.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(tail.iter().any(|m| m.contains("STOPPING=1")), "{tail:?}");

    // The password never reached the log: recompute it from the client id
    // the agent logged (its timestamp) and the secret.
    let ts: u64 = stderr
        .split("timestamp=")
        .nth(1)
        .and_then(|rest| rest.split('|').next())
        .and_then(|t| t.parse().ok())
        .expect("the connect log names the client id");
    let fields = enos_sign_core::SignedFields {
        client_id: enos_sign_core::ClientId::new(GW.1).expect("cid"),
        device_key: enos_sign_core::DeviceKey::new(GW.1).expect("dk"),
        product_key: enos_sign_core::ProductKey::new(GW.0).expect("pk"),
        timestamp: enos_sign_core::TimestampMs::from_millis(ts),
    };
    let secret = enos_sign_core::DeviceSecret::new(GW_SECRET.into()).expect("secret");
    let password = enos_sign_core::sign(&fields, enos_sign_core::SignMethod::HmacSha1, &secret);
    let password = password.expose_secret();
    assert!(
        !stderr.contains(password),
        "the password leaked into the log"
    );
    assert!(
        !stderr
            .to_ascii_lowercase()
            .contains(&password.to_ascii_lowercase())
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(password));
    assert!(
        !std::fs::read_to_string(dir.path().join("status.json"))
            .expect("status")
            .contains(password)
    );
    drop(sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_expiry_without_the_password() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    // `check` logs in to the broker too (#29 item 4).
    let devices = dir.path().join("devices.csv");
    write_devices(&devices, &[DeviceRow::new(GW.0, GW.1, GW_SECRET)]);
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox"), &devices)
        .start()
        .expect("sandbox");
    let config = write_config(
        dir.path(),
        &signer,
        &format!("tcp://{}", sandbox.mqtt_addr()),
    );
    let run = |config: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["check", "--config"])
                .arg(config)
                .output()
                .expect("run check")
        })
    };
    let out = run(config.clone()).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("expires at") && stdout.contains("in 5"),
        "{stdout}"
    );
    assert!(stdout.contains("the password is not shown"), "{stdout}");
    assert!(
        stdout.contains("the device certificate") && stdout.contains("is valid until"),
        "{stdout}"
    );
    // 40 upper-case hex digits would be a SHA-1 password.
    assert!(
        !stdout
            .split(|c: char| !c.is_ascii_hexdigit())
            .any(|w| w.len() >= 32),
        "{stdout}"
    );

    signer.signer.stop().await;
    let out = run(config).await.expect("join");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("signer"), "{stderr}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[device]\nproduct_key = \"p|k\"\n").expect("write");
    let out = run(bad).await.expect("join");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid config"));
    drop(sandbox);
}

/// #29 item 6: output to a reader that quit (`enos-agent … 2>&1 | head -1`)
/// used to panic the agent (exit 101); what it could not write is lost,
/// and the exit code is its own.
#[test]
fn a_closed_output_stream_is_not_a_panic() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agent.example.toml");
    let mut child = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&example)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn enos-agent check");
    // The reader quits before the agent writes a line.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert_ne!(status.code(), Some(101), "a panic: {status}");
    // The example's files do not exist here: check fails, by its own code.
    assert_eq!(status.code(), Some(1), "{status}");
}

/// #29 item 5: a missing file's cause used to be printed twice
/// (`No such file or directory (os error 2): No such file or directory (os error 2)`).
#[test]
fn a_missing_file_is_named_with_its_cause_once() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agent.example.toml");
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .expect("run enos-agent check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

/// #29 item 3: relative paths are the config file's directory's, as for
/// the signer and the sandbox (under systemd the working directory is
/// `/`), and an unreadable file is named by its key and resolved path.
#[test]
fn relative_paths_are_the_config_directorys_and_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agent.example.toml"),
    )
    .expect("example");
    let config = example.replace("/etc/enos-agent/signer-ca.pem", "signer-ca.pem");
    assert_ne!(config, example, "the example names the signer's CA");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).expect("write config");
    let output = Command::new(BIN)
        .current_dir("/")
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run enos-agent check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let resolved = dir
        .path()
        .canonicalize()
        .unwrap_or_else(|_| dir.path().to_owned())
        .join("signer-ca.pem");
    assert!(
        stderr.contains(&format!("signer.ca = {}", resolved.display()))
            || stderr.contains(&format!(
                "signer.ca = {}",
                dir.path().join("signer-ca.pem").display()
            )),
        "{stderr}"
    );
}

/// #29 items 9 and 11: without `[status]` the agent wrote no status file
/// (the docs said `cat /run/enos-agent/status.json`); `enos-agent status`
/// shows it. And one log variable: `ENOS_AGENT_LOG` is named as replaced
/// by `RUST_LOG` instead of being ignored; a redirected log has no colour
/// and no Rust `Some(…)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_status_section_the_status_is_in_the_runtime_directory() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = SignerFixture::start(dir.path(), GW, GW_SECRET, 600).await;
    // Nobody listens there: the agent keeps trying, and says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let broker = format!("tcp://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, signer.agent_toml(&broker, "")).expect("write config");
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).expect("runtime dir");
    let log = dir.path().join("agent.log");
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUNTIME_DIRECTORY", &runtime)
        .env("RUST_LOG", "info")
        .env("ENOS_AGENT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn agent");
    let status_file = runtime.join("status.json");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !status_file.exists() {
        assert!(
            Instant::now() < deadline,
            "no status file in {}",
            runtime.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = |json: bool| {
        let mut command = Command::new(BIN);
        command
            .args(["status", "--config"])
            .arg(&config)
            .env("RUNTIME_DIRECTORY", &runtime);
        if json {
            command.arg("--json");
        }
        command.output().expect("run enos-agent status")
    };
    let out = status(false);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("state: "), "{shown}");
    assert!(shown.contains(&format!("broker: {broker}")), "{shown}");
    assert!(
        shown.contains(&format!("(from {}", status_file.display())),
        "{shown}"
    );
    let out = status(true);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(json["broker"], broker.as_str());

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.status.success(), "{:?}", exit.status);
    let out = status(false);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("state: stopped"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("ENOS_AGENT_LOG is no longer read: set RUST_LOG instead"),
        "{log}"
    );
    assert!(
        log.contains(&format!("file={}", status_file.display())),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "an escape code in a redirected log:\n{log}"
    );
    assert!(!log.contains("Some("), "a Rust Option in the log:\n{log}");

    // No status file anywhere: named, with what to run.
    std::fs::remove_file(&status_file).expect("remove");
    let out = status(false);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        error.contains(&format!("no status file at {}", status_file.display()))
            && error.contains("enos-agent run --config"),
        "{error}"
    );
}
