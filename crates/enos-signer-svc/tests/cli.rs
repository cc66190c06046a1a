//! The `enos-signer` binary: init, serve (SIGHUP reloads the TLS files, SIGTERM drains and exits), admin
//! subcommands and CSV import, against a real signer over mTLS.

mod common;

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{
    fixture,
    tls_probe::{serial_of, served_serial},
};
use enos_signer_proto::v1::IssueMqttCredentialRequest;

const BIN: &str = env!("CARGO_BIN_EXE_enos-signer");

/// Admin connection flags for the fixture's signer.
fn admin_flags(f: &common::Fixture) -> Vec<String> {
    let dir = f.dir.path();
    let files = f
        .signer
        .admin_identity()
        .write(dir, "cli-admin")
        .expect("write admin cert");
    vec![
        "--endpoint".into(),
        f.signer.uri(),
        "--ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        files.cert.display().to_string(),
        "--key".into(),
        files.key.display().to_string(),
    ]
}

async fn run(args: Vec<String>, stdin: Option<&str>) -> Output {
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enos-signer");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("wait")
    })
    .await
    .expect("join")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn csv_import_is_all_or_nothing_and_names_each_bad_row() {
    let f = fixture().await;
    let flags = admin_flags(&f);
    let bad = f.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "deviceName,productKey,deviceKey,deviceSecret\n\
         ok,Pk1,dev-1,SecretOne1\n\
         pipe,Pk1,dev|2,SecretTwo2\n\
         \n\
         spaced,Pk1,dev-3,Secret Three\n\
         dup,Pk1,dev-1,SecretDup9\n\
         ok,Pk1,dev-4,SecretFour4\n",
    )
    .expect("write csv");
    let mut args = vec!["import".to_owned(), bad.display().to_string()];
    args.extend(flags.clone());
    let out = run(args, None).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for line in ["bad.csv:3:", "bad.csv:5:", "bad.csv:6:"] {
        assert!(stderr.contains(line), "{line} missing in {stderr}");
    }
    assert!(
        !stderr.contains("bad.csv:2:") && !stderr.contains("bad.csv:7:"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert!(
        !stderr.contains("SecretDup9") && !stderr.contains("SecretTwo2"),
        "{stderr}"
    );
    let listed = f.signer.list_devices().await.expect("list");
    assert!(listed.is_empty(), "nothing half-written");

    let good = f.dir.path().join("good.csv");
    std::fs::write(
        &good,
        "productKey,deviceKey,deviceSecret,gatewayProductKey,gatewayDeviceKey\n\
         Pk1,gw,SecretGw1,,\n\
         Pk1,sub,SecretSub1,Pk1,gw\n",
    )
    .expect("write csv");
    let mut args = vec![
        "import".to_owned(),
        good.display().to_string(),
        "--dry-run".into(),
    ];
    args.extend(flags.clone());
    let out = run(args, None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("dry run"),
        "{}",
        text(&out.stdout)
    );
    let mut args = vec!["import".to_owned(), good.display().to_string()];
    args.extend(flags);
    let out = run(args, None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("imported 2 devices"));
    let listed = f.signer.list_devices().await.expect("list");
    assert_eq!(listed.len(), 2);
}

#[tokio::test]
async fn admin_subcommands_take_secrets_from_files_or_stdin_only() {
    let f = fixture().await;
    let flags = admin_flags(&f);
    let with = |mut args: Vec<&str>| {
        let mut v: Vec<String> = args.drain(..).map(str::to_owned).collect();
        v.extend(flags.clone());
        v
    };
    let out = run(
        with(vec!["put-device", "Pk1", "dev-1"]),
        Some("StdinSecret1\n"),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Pk1/dev-1 enabled=true secret_version=1"));
    let secret_file = f.dir.path().join("new-secret");
    std::fs::write(&secret_file, "FileSecret2\n").expect("write");
    let secret_path = secret_file.display().to_string();
    let out = run(
        with(vec![
            "rotate-secret",
            "Pk1",
            "dev-1",
            "--secret-file",
            &secret_path,
        ]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("secret_version=2"));
    let out = run(with(vec!["disable", "Pk1", "dev-1"]), None).await;
    assert!(text(&out.stdout).contains("enabled=false"));
    let out = run(with(vec!["list"]), None).await;
    let listed = text(&out.stdout);
    assert!(listed.contains("Pk1/dev-1"), "{listed}");
    assert!(!listed.contains("FileSecret2") && !listed.contains("StdinSecret1"));
    let out = run(with(vec!["get", "Pk1", "ghost"]), None).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("NotFound"),
        "{}",
        text(&out.stderr)
    );
    // There is no way to pass a secret on the command line.
    let out = run(with(vec!["put-device", "Pk1", "d", "--secret", "x"]), None).await;
    assert!(!out.status.success());

    // #29 item 7: two lines are refused from stdin (it used to take the
    // first) and from a file (it used to blame a trailing newline), and
    // nothing is written.
    let out = run(
        with(vec!["rotate-secret", "Pk1", "dev-1"]),
        Some("StdinSecret3\nStdinSecret4\n"),
    )
    .await;
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(error.contains("stdin holds more than one line"), "{error}");
    assert!(!error.contains("StdinSecret"), "{error}");
    std::fs::write(&secret_file, "FileSecret5\nFileSecret6\n").expect("write");
    let out = run(
        with(vec![
            "rotate-secret",
            "Pk1",
            "dev-1",
            "--secret-file",
            &secret_path,
        ]),
        None,
    )
    .await;
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(error.contains("holds more than one line"), "{error}");
    assert!(!error.contains("trailing newline read"), "{error}");
    let out = run(with(vec!["get", "Pk1", "dev-1"]), None).await;
    assert!(
        text(&out.stdout).contains("secret_version=2"),
        "no rotation happened"
    );
}

#[tokio::test]
async fn init_is_all_or_nothing_and_names_the_missing_directory() {
    // #29 item 2: a registry in a directory that does not exist used to
    // leave master.key and audit.key behind, and the second run refused.
    let state = tempfile::tempdir().expect("state dir");
    let config = write_config(state.path(), "127.0.0.1:0", state.path());
    let text_config = std::fs::read_to_string(&config).expect("config").replace(
        "path = \"registry.redb\"",
        "path = \"missing/registry.redb\"",
    );
    std::fs::write(&config, text_config).expect("config");
    let config_arg = config.display().to_string();
    let out = run(
        vec!["init".into(), "--config".into(), config_arg.clone()],
        None,
    )
    .await;
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("missing does not exist") && error.contains("install -d"),
        "{error}"
    );
    for key in ["master.key", "audit.key"] {
        assert!(
            !state.path().join(key).exists(),
            "{key} written by a failed init"
        );
    }
    std::fs::create_dir(state.path().join("missing")).expect("mkdir");
    let out = run(vec!["init".into(), "--config".into(), config_arg], None).await;
    assert!(out.status.success(), "after the fix: {}", text(&out.stderr));
    assert!(state.path().join("missing/registry.redb").exists());
}

fn write_config(dir: &Path, listen: &str, ca_dir: &Path) -> PathBuf {
    let config = format!(
        r#"
[server]
listen = "{listen}"
cert = "{ca}/server.pem"
key = "{ca}/server.key"
client_ca = "{ca}/ca.pem"
drain_timeout = "2s"
# No polling: only SIGHUP reloads the TLS files (tested below).
tls_reload_interval = "0s"
[registry]
kind = "redb"
path = "registry.redb"
[custody]
kind = "software"
master_key_file = "master.key"
[audit]
key_file = "audit.key"
[audit.sink]
kind = "file"
path = "audit.jsonl"
[logging]
format = "json"
filter = "trace"
"#,
        ca = ca_dir.display()
    );
    let path = dir.join("signer.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

#[tokio::test]
async fn init_then_serve_then_sigterm() {
    let f = fixture().await;
    // The fixture's certificates, a fresh state directory for the binary.
    let state = tempfile::tempdir().expect("tempdir");
    let port_holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = port_holder.local_addr().expect("addr");
    drop(port_holder);
    let config = write_config(state.path(), &addr.to_string(), f.dir.path());
    let config_arg = config.display().to_string();

    let out = run(
        vec!["init".into(), "--config".into(), config_arg.clone()],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for key in ["master.key", "audit.key"] {
        let mode = std::fs::metadata(state.path().join(key))
            .expect("key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let again = run(
        vec!["init".into(), "--config".into(), config_arg.clone()],
        None,
    )
    .await;
    assert!(!again.status.success(), "init never overwrites");
    assert!(text(&again.stderr).contains("already exists"));

    // Logs go to a file: a pipe nobody reads would fill and block the server.
    let log_path = state.path().join("serve.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", &config_arg])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn serve");
    let uri = format!("https://{addr}");
    let started = Instant::now();
    let admin_identity = enos_testkit::signer::client_identity(f.signer.admin_identity());
    let channel = loop {
        match enos_signer_svc::client::connect_mtls(
            &uri,
            f.signer.ca_pem(),
            Some(admin_identity.clone()),
        )
        .await
        {
            Ok(channel) => break channel,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the binary never listened: {e}"),
        }
    };
    let mut admin = enos_signer_proto::v1::admin_client::AdminClient::new(channel);
    admin
        .put_device(enos_signer_proto::v1::PutDeviceRequest {
            device: Some(enos_signer_proto::v1::DeviceRef {
                product_key: "Pk1".into(),
                device_key: "dev-1".into(),
            }),
            device_secret: "BinarySecret7".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect("put through the binary");
    let device = f.pki.device("Pk1", "dev-1").expect("cert");
    let credential = enos_signer_proto::v1::credentials_client::CredentialsClient::new(
        enos_signer_svc::client::connect_mtls(
            &uri,
            f.signer.ca_pem(),
            Some(enos_testkit::signer::client_identity(&device)),
        )
        .await
        .expect("device channel"),
    )
    .issue_mqtt_credential(IssueMqttCredentialRequest::default())
    .await
    .expect("issued by the binary")
    .into_inner();
    drop(admin);

    // SIGHUP reloads the TLS files (no polling in this config): a new
    // server certificate is served only after it.
    let probe = f.pki.device("Pk1", "dev-1").expect("probe cert");
    let first = served_serial(addr, f.signer.ca_pem(), &probe).await;
    let renewed = f.pki.server(&[]).expect("renewed server cert");
    let state_certs = f.dir.path();
    std::fs::write(state_certs.join("server.pem"), &renewed.cert_pem).expect("cert");
    enos_testkit::write_private(&state_certs.join("server.key"), renewed.key_pem.as_bytes())
        .expect("key");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served_serial(addr, f.signer.ca_pem(), &probe).await,
        first,
        "nothing reloads before SIGHUP"
    );
    let pid = child.id().to_string();
    let hup = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let new_serial = serial_of(&renewed.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(addr, f.signer.ca_pem(), &probe).await != new_serial {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (
                    status,
                    std::fs::read_to_string(&log_path).expect("read logs"),
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    let (status, logs) = output;
    assert!(status.success(), "exit {status:?}\n{logs}");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("SIGHUP received"), "{logs}");
    assert!(logs.contains("TLS material reloaded"), "{logs}");
    assert!(logs.contains("signer stopped"), "{logs}");
    // JSON lines, and (at trace level) no secret or password anywhere.
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    assert!(!logs.contains("BinarySecret7"));
    assert!(!logs.contains(&credential.password));
    assert!(!logs.contains(&credential.password.to_lowercase()));
}

/// #13 finding 7: half a gateway (one of the two columns, or one of the two
/// cells) is an error, never an unbound import.
#[tokio::test]
async fn csv_import_refuses_half_a_gateway() {
    let f = fixture().await;
    let flags = admin_flags(&f);
    let import = |name: &str, csv: &str| {
        let path = f.dir.path().join(name);
        std::fs::write(&path, csv).expect("write csv");
        let mut args = vec!["import".to_owned(), path.display().to_string()];
        args.extend(flags.clone());
        run(args, None)
    };
    for header in ["gatewayProductKey", "gatewayDeviceKey"] {
        let out = import(
            "column.csv",
            &format!("productKey,deviceKey,deviceSecret,{header}\nPk1,sub,SecretSub1,x\n"),
        )
        .await;
        assert!(!out.status.success(), "{header} alone was accepted");
        assert!(
            text(&out.stderr).contains("go together: one is missing"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = import(
        "cells.csv",
        "productKey,deviceKey,deviceSecret,gatewayProductKey,gatewayDeviceKey\n\
         Pk1,gw,SecretGw1,,\n\
         Pk1,sub1,SecretSub1,Pk1,\n\
         Pk1,sub2,SecretSub2,,gw\n",
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cells.csv:3: gateway deviceKey")
            && stderr.contains("cells.csv:4: gateway productKey"),
        "{stderr}"
    );
    assert!(stderr.contains("2 bad rows of 3"), "{stderr}");
    let listed = f.signer.list_devices().await.expect("list");
    assert!(listed.is_empty(), "nothing imported");
}

/// #23 finding 15, through the real binary.
#[tokio::test]
async fn csv_import_does_not_undo_a_rotation_and_prints_what_it_changes() {
    // #23 finding 15, as an operator meets it: rotate, then re-import the
    // console export taken before.
    let f = fixture().await;
    let flags = admin_flags(&f);
    let cli = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        v.extend(flags.clone());
        run(v, None)
    };
    let export = f.dir.path().join("export.csv");
    std::fs::write(
        &export,
        "productKey,deviceKey,deviceSecret,enabled\n\
         MeterPk,meter-001,OldSecret001,true\n\
         MeterPk,meter-002,Secret002,false\n\
         MeterPk,meter-003,Secret003,\n",
    )
    .expect("write csv");
    let file = export.display().to_string();
    let out = cli(&["import", &file]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 3 devices: 3 new, 0 unchanged"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["get", "MeterPk", "meter-002"]).await;
    assert!(
        text(&out.stdout).contains("enabled=false"),
        "enabled=false came in enabled: {}",
        text(&out.stdout)
    );

    let secret_file = f.dir.path().join("rotated");
    std::fs::write(&secret_file, "NewSecret001\n").expect("write");
    let secret_path = secret_file.display().to_string();
    let out = cli(&[
        "rotate-secret",
        "MeterPk",
        "meter-001",
        "--secret-file",
        &secret_path,
    ])
    .await;
    assert!(text(&out.stdout).contains("secret_version=2"));

    // The stale export: refused by line, in a dry run and for real.
    for dry in [true, false] {
        let mut args = vec!["import", file.as_str()];
        if dry {
            args.push("--dry-run");
        }
        let out = cli(&args).await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("export.csv:2: device MeterPk/meter-001 has another secret")
                && stderr.contains("--replace-secrets"),
            "{stderr}"
        );
        assert!(!stderr.contains("export.csv:3:") && !stderr.contains("export.csv:4:"));
        assert!(
            !stderr.contains("OldSecret001") && !stderr.contains("NewSecret001"),
            "{stderr}"
        );
    }
    let out = cli(&["get", "MeterPk", "meter-001"]).await;
    assert!(
        text(&out.stdout).contains("secret_version=2"),
        "the stale file undid the rotation: {}",
        text(&out.stdout)
    );

    // The dry run tells what --replace-secrets would change.
    let out = cli(&["import", &file, "--dry-run", "--replace-secrets"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "3 rows checked, all valid; the import would make 0 new, 2 unchanged, \
             1 changed secrets, 0 changed bindings, 0 changed enabled flags; nothing written"
        ),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["import", &file, "--replace-secrets"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 1 devices: 0 new, 2 unchanged, 1 changed secrets"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["get", "MeterPk", "meter-001"]).await;
    assert!(text(&out.stdout).contains("secret_version=3"));

    // enabled follows the sandbox's rule: true or false, else the line.
    let bad = f.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "productKey,deviceKey,deviceSecret,enabled\nMeterPk,meter-009,Secret009,yes\n",
    )
    .expect("write csv");
    let out = cli(&["import", &bad.display().to_string()]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "enabled=yes was accepted");
    assert!(
        stderr.contains("bad.csv:2: column enabled must be true or false"),
        "{stderr}"
    );
    let out = cli(&["get", "MeterPk", "meter-009"]).await;
    assert!(!out.status.success(), "nothing imported");
}

#[tokio::test]
async fn the_binary_names_itself_and_refuses_a_plain_http_endpoint() {
    // #29 item 10: `-V` printed the crate's name (enos-signer-svc); an
    // http:// endpoint failed later with "h2 protocol error".
    let out = run(vec!["-V".into()], None).await;
    assert!(
        text(&out.stdout).starts_with("enos-signer "),
        "{}",
        text(&out.stdout)
    );
    let f = fixture().await;
    let mut args: Vec<String> = vec!["list".into()];
    args.extend(admin_flags(&f));
    let endpoint = args
        .iter()
        .position(|a| a == "--endpoint")
        .expect("the admin flags name the endpoint");
    args[endpoint + 1] = f.signer.uri().replace("https://", "http://");
    let out = run(args, None).await;
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(error.contains("must be an https:// URL"), "{error}");
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // #29 item 6: `enos-signer init … | head -0` used to exit 101.
    let state = tempfile::tempdir().expect("state dir");
    let config = write_config(state.path(), "127.0.0.1:0", state.path());
    let mut child = Command::new(BIN)
        .args(["init", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "init succeeds, unread: {status}");
    assert!(state.path().join("master.key").exists());
}

#[tokio::test]
async fn a_missing_file_is_named_with_its_cause_once() {
    // #29 item 5: each cause printed once.
    let out = run(
        vec![
            "init".into(),
            "--config".into(),
            "/nonexistent/signer.toml".into(),
        ],
        None,
    )
    .await;
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(error.contains("/nonexistent/signer.toml"), "{error}");
    assert_eq!(
        error.matches("No such file or directory").count(),
        1,
        "{error}"
    );
}

#[test]
fn a_missing_admin_flag_names_its_environment_variable() {
    // #29 item 10: "the following required arguments were not provided:
    // --ca <CA> …" said nothing of ENOS_SIGNER_CA and its siblings.
    let out = Command::new(BIN)
        .args(["list"])
        .env_remove("ENOS_SIGNER_CA")
        .env_remove("ENOS_SIGNER_CERT")
        .env_remove("ENOS_SIGNER_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run enos-signer");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let error = text(&out.stderr);
    for named in [
        "--ca or ENOS_SIGNER_CA",
        "--cert or ENOS_SIGNER_CERT",
        "--key or ENOS_SIGNER_KEY",
    ] {
        assert!(error.contains(named), "{named} in {error}");
    }
    // Only the missing ones are named.
    let out = Command::new(BIN)
        .args(["list", "--ca", "ca.pem", "--cert", "admin.pem"])
        .env_remove("ENOS_SIGNER_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run enos-signer");
    let error = text(&out.stderr);
    assert!(error.contains("--key or ENOS_SIGNER_KEY"), "{error}");
    assert!(!error.contains("ENOS_SIGNER_CA"), "{error}");
}

#[tokio::test]
async fn a_redirected_log_has_no_colour_and_no_rust_debug_values() {
    // #29 item 9: `logging.format = "pretty"` wrote ANSI colours into a
    // redirected file and logged `addr: Some(127.0.0.1:9464)`.
    let f = fixture().await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = write_config(state.path(), "127.0.0.1:0", f.dir.path());
    let text_of = std::fs::read_to_string(&config).expect("config");
    let text_of = text_of.replace(
        "format = \"json\"\nfilter = \"trace\"",
        "format = \"pretty\"\nfilter = \"info\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[health]\nlisten = \"127.0.0.1:0\"",
    );
    assert!(text_of.contains("pretty"), "{text_of}");
    std::fs::write(&config, text_of).expect("write config");
    let config_arg = config.display().to_string();
    let out = run(
        vec!["init".into(), "--config".into(), config_arg.clone()],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let log_path = state.path().join("serve.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(BIN)
        .args(["serve", "--config", &config_arg])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).expect("log");
        if log.contains("metrics listening") && log.contains("health port listening") {
            break log;
        }
        assert!(Instant::now() < deadline, "never listened: {log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait")
        .status;
    assert!(status.success(), "{status:?}");
    let log = format!("{log}{}", std::fs::read_to_string(&log_path).expect("log"));
    assert!(
        !log.contains('\u{1b}'),
        "an escape code in a redirected log:\n{log}"
    );
    assert!(!log.contains("Some("), "a Rust Option in the log:\n{log}");
    assert!(log.contains("addr: 127.0.0.1:"), "{log}");
}

#[tokio::test]
async fn an_import_reports_progress_in_lines_when_stderr_is_not_a_terminal() {
    // #29 item 11: the progress bar promised by the docs never showed
    // when stderr was not a terminal, and nothing else did either.
    let f = fixture().await;
    let csv = f.dir.path().join("many.csv");
    let mut rows = String::from("productKey,deviceKey,deviceSecret\n");
    for i in 0..1_200 {
        rows.push_str(&format!("PkMany,dev-{i:04},SecretMany{i:04}\n"));
    }
    std::fs::write(&csv, rows).expect("write csv");
    let mut args = vec!["import".to_owned(), csv.display().to_string()];
    args.extend(admin_flags(&f));
    let out = run(args, None).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The first chunk and the last (one in between only every 2 s).
    assert!(
        stderr.contains("import: sent 500/1200 rows (41%)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("import: sent 1200/1200 rows (100%)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
    assert!(text(&out.stdout).contains("imported 1200 devices"));
}
