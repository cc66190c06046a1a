//! The binary run by hand: `--config FILE.toml` with port 0, the status
//! line with the actual port, and a clear error for a bad device file.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
};

use enos_sandbox::StatusLine;
use enos_sign_core::SignMethod;

use crate::common::{Fixture, connect, dev1_now, dev1_signed, now_ms};

/// Kills the child even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn runs_from_a_config_file_on_port_zero() {
    let fixture = Fixture::new();
    let config = fixture.dir.path().join("sandbox.toml");
    std::fs::write(
        &config,
        "devices = \"devices.csv\"\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\
         [tls]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [checks]\nfreshness_window = \"2m\"\n",
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("runs");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        line
    })
    .await
    .expect("reader");
    let Some(StatusLine::Listening {
        mqtt,
        tls: Some(tls),
    }) = StatusLine::parse(&line)
    else {
        panic!("not a listening line: {line:?}");
    };
    assert_ne!(mqtt.port(), 0);
    assert_ne!(tls.port(), 0);
    let addr: SocketAddr = mqtt;
    let dev1 = dev1_now();
    connect(addr, &dev1, None).await.expect("connects");
    let stale = dev1_signed(SignMethod::HmacSha1, now_ms() - 180_000);
    assert!(
        connect(addr, &stale, None).await.is_err(),
        "the config's 120 s window applies"
    );
}

#[test]
fn a_bad_device_file_is_a_clear_error() {
    let fixture = Fixture::new();
    std::fs::write(
        &fixture.devices,
        "productKey,deviceKey,deviceSecret\npkA,dev1,has space\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .arg("--devices")
        .arg(&fixture.devices)
        .args(["--mqtt-addr", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("deviceSecret"),
        "{stderr}"
    );
    assert!(!stderr.contains("has space"), "{stderr}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let fixture = Fixture::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let output = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .arg("--devices")
        .arg(&fixture.devices)
        .args(["--mqtt-addr", &addr.to_string()])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn a_secret_readable_by_others_is_refused_at_start() {
    // #29 item 10: the TLS key and the console password used to be read
    // whatever their mode; like every secret of the project, now only
    // when their owner alone can read them, the error naming the file
    // and its mode as the signer and the agent write it (0644).
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::new();
    let password = fixture.dir.path().join("console.secret");
    std::fs::write(&password, "console-password\n").expect("write");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .arg("--devices")
        .arg(&fixture.devices)
        .args(["--mqtt-addr", "127.0.0.1:0", "--console-user", "console"])
        .arg("--console-password-file")
        .arg(&password)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("console.secret has mode 0644") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains("console-password"), "{stderr}");

    std::fs::set_permissions(&fixture.server.key, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let output = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .arg("--devices")
        .arg(&fixture.devices)
        .args(["--mqtt-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0"])
        .arg("--ca")
        .arg(&fixture.ca)
        .arg("--cert")
        .arg(&fixture.server.cert)
        .arg("--key")
        .arg(&fixture.server.key)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has mode 0644"), "{stderr}");
}

#[test]
fn a_missing_file_is_named_with_its_cause_once() {
    // #29 item 5: each cause printed once.
    let output = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .args([
            "--devices",
            "/nonexistent/devices.csv",
            "--mqtt-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/devices.csv"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

/// #29 item 8: `connect_timeout_ms = 5000` and `--freshness-window-secs N`
/// became durations with their unit; the old key and the old flag are
/// refused naming the new ones, by the binary.
#[test]
fn an_old_duration_key_or_flag_names_the_new_one() {
    let fixture = Fixture::new();
    let config = fixture.dir.path().join("old.toml");
    std::fs::write(
        &config,
        "devices = \"devices.csv\"\n[limits]\nconnect_timeout_ms = 2000\n",
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`connect_timeout_ms` was renamed: write `connect_timeout = \"2000ms\"`"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_enos-sandbox"))
        .arg("--devices")
        .arg(&fixture.devices)
        .args(["--freshness-window-secs", "300"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--freshness-window-secs was renamed: pass --freshness-window 300s"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}
