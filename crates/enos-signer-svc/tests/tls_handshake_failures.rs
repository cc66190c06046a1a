//! #29 item 1, the signer's side and its admin CLI: a refused TLS
//! handshake used to be invisible at `info` and counted nowhere, and the
//! admin CLI said `Cancelled: operation was canceled`. Now the signer
//! logs a rate-limited warning with the peer's address and the reason,
//! counts `enos_signer_tls_handshake_failures_total{reason}`, warns about
//! its own certificate near or past its end (and marks its expiry
//! metric); the CLI says what the handshake said.

mod common;

use std::{
    process::{Command, Output},
    sync::OnceLock,
    time::{Duration, Instant},
};

use common::{Fixture, capture::Capture, fixture};
use enos_signer_proto::v1::{IssueMqttCredentialRequest, credentials_client::CredentialsClient};
use enos_signer_svc::client;
use enos_testkit::{Identity, Pki, signer::client_identity};

const BIN: &str = env!("CARGO_BIN_EXE_enos-signer");

/// The one log capture of this test binary.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| Capture::install(tracing::Level::INFO))
}

/// One call with `identity`; the handshake refuses it.
async fn refused_call(f: &Fixture, identity: &Identity) -> tonic::Status {
    let channel = match client::connect_mtls(
        &f.signer.uri(),
        f.signer.ca_pem(),
        Some(client_identity(identity)),
    )
    .await
    {
        Ok(channel) => channel,
        Err(e) => return tonic::Status::unavailable(e.to_string()),
    };
    CredentialsClient::new(channel)
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect_err("the handshake refuses the certificate")
}

/// The metrics text, once `done` holds of it (bounded wait: the
/// server's side of a handshake may end just after the client's).
async fn metrics_when(f: &Fixture, done: impl Fn(&str) -> bool) -> String {
    let admin = f.signer.admin_identity().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = common::metrics_get(f, Some(&admin), "/metrics")
            .await
            .expect("scrape");
        let text = String::from_utf8_lossy(&body).into_owned();
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("enos_signer_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_29_1_refused_handshakes_are_logged_rate_limited_and_counted_by_reason() {
    let capture = capture();
    let f = fixture().await;
    // Not yet valid: no other test of this binary (they share the log
    // capture) makes a signer refuse one.
    let future = f
        .pki
        .device_valid("Pk1", "dev-new", 2090, 2099)
        .expect("cert");
    let other = Pki::new("not-trusted")
        .expect("pki")
        .device("Pk1", "dev-x")
        .expect("cert");

    // Every reason is a series from the start.
    let before = metrics_when(&f, |_| true).await;
    assert_eq!(count(&before, "not_yet_valid"), 0, "{before}");
    assert!(
        before.contains("enos_signer_tls_handshake_failures_total{reason=\"unknown_issuer\"} 0"),
        "{before}"
    );

    // Five refusals of one certificate from one address: each counted,
    // one line.
    for _ in 0..5 {
        let status = refused_call(&f, &future).await;
        assert!(common::refused_by_handshake(status.code()), "{status:?}");
    }
    // (A refused call may have cost tonic more than one handshake.)
    let metrics = metrics_when(&f, |m| count(m, "not_yet_valid") >= 5).await;
    assert!(count(&metrics, "not_yet_valid") >= 5, "{metrics}");
    let log = capture.text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed: client certificate not yet valid"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("peer=127.0.0.1:")
            && lines[0].contains("reason=\"not_yet_valid\"")
            && lines[0].contains("listener=\"grpc\""),
        "{}",
        lines[0]
    );

    // Another reason, counted apart (its line is rate-limited with the
    // address's others).
    refused_call(&f, &other).await;
    let metrics = metrics_when(&f, |m| count(m, "unknown_issuer") >= 1).await;
    assert!(count(&metrics, "unknown_issuer") >= 1, "{metrics}");
    // No certificate at all.
    if let Some(channel) = f.anonymous_channel().await {
        let _ = CredentialsClient::new(channel)
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await;
    }
    let metrics = metrics_when(&f, |m| count(m, "no_certificate") >= 1).await;
    assert!(count(&metrics, "no_certificate") >= 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_29_1_the_signer_warns_at_start_when_its_certificate_expires_within_7_days() {
    let capture = capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("expiring-signer").expect("pki");
    let expiring = pki
        .server_valid_until(std::time::SystemTime::now() + Duration::from_secs(2 * 86_400 + 3600))
        .expect("cert")
        .write(dir.path(), "expiring")
        .expect("write");
    let signer = enos_testkit::signer::TestSigner::start_with(&dir.path().join("s"), &pki, |c| {
        c.server.cert = expiring.cert.clone();
        c.server.key = expiring.key.clone();
    })
    .await
    .expect("starts");
    let log = capture.text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("the server certificate expires in 2 days")),
        "{log}"
    );
    let f = Fixture { pki, signer, dir };
    let metrics = metrics_when(&f, |_| true).await;
    assert!(
        metrics
            .contains("enos_signer_tls_server_cert_expiry_timestamp_seconds{state=\"expiring\"}"),
        "{metrics}"
    );
}

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .output()
            .expect("run enos-signer")
    })
    .await
    .expect("join")
}

/// The admin CLI said `Error: Cancelled: operation was canceled` for an
/// expired admin certificate and for a `--ca` that does not sign the
/// signer's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_29_1_the_admin_cli_says_what_the_handshake_said() {
    let _ = capture();
    let f = fixture().await;
    let dir = f.dir.path();
    let expired = f
        .pki
        .admin_valid("test-admin", 2020, 2021)
        .expect("cert")
        .write(dir, "expired-admin")
        .expect("write");
    let good = f
        .signer
        .admin_identity()
        .write(dir, "good-admin")
        .expect("write");
    let ca = dir.join("ca.pem");
    let wrong_ca = dir.join("wrong-ca.pem");
    std::fs::write(&wrong_ca, Pki::new("other").expect("pki").ca_pem()).expect("write");
    let args = |ca: &std::path::Path, files: &enos_testkit::IdentityFiles| {
        vec![
            "list".to_owned(),
            "--endpoint".into(),
            f.signer.uri(),
            "--ca".into(),
            ca.display().to_string(),
            "--cert".into(),
            files.cert.display().to_string(),
            "--key".into(),
            files.key.display().to_string(),
        ]
    };

    let out = run(args(&ca, &expired)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the signer refused our client certificate (--cert = {}) (certificate expired at 2021-01-01T00:00:00Z)",
            expired.cert.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("operation was canceled"), "{stderr}");

    let out = run(args(&wrong_ca, &good)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "unknown issuer: the signer's certificate is not signed by the CA in --ca ({})",
            wrong_ca.display()
        )),
        "{stderr}"
    );
}
