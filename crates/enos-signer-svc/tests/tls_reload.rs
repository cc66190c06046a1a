//! Certificate hot reload under load: 16 mTLS clients issue continuously
//! while the server certificate (new serial) and the client CA bundle
//! (old + new CA) are replaced the way a Kubernetes Secret volume replaces
//! them (one symlink swap to a new directory). No RPC fails, new
//! handshakes present the new serial, a client of the new CA is then
//! accepted, and a corrupt replacement is refused, logged, and changes
//! nothing.

mod common;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    capture::Capture,
    tls_probe::{serial_of, served_serial},
};
use enos_signer_proto::v1::{IssueMqttCredentialRequest, credentials_client::CredentialsClient};
use enos_signer_svc::client;
use enos_testkit::signer::TestSigner;
use enos_testkit::{Identity, Pki};
use tonic::transport::Channel;

const CLIENTS: usize = 16;
const PRODUCT: &str = "PkReload";

/// The TLS files live in `dir/gen-N/`; the config names `dir/tls/…`, and
/// `dir/tls` is a symlink swapped atomically to the next generation, as
/// the kubelet does with `..data`.
struct TlsFiles {
    dir: PathBuf,
    generation: u32,
}

impl TlsFiles {
    fn link(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// Writes a generation and points `tls` at it.
    fn publish(&mut self, cert: &str, key: &str, client_ca: &str) {
        self.generation += 1;
        let name = format!("gen-{}", self.generation);
        let gen_dir = self.dir.join(&name);
        std::fs::create_dir(&gen_dir).expect("generation dir");
        std::fs::write(gen_dir.join("server.pem"), cert).expect("cert");
        enos_testkit::write_private(&gen_dir.join("server.key"), key.as_bytes()).expect("key");
        std::fs::write(gen_dir.join("clients-ca.pem"), client_ca).expect("ca");
        let next = self.dir.join("tls.next");
        let _ = std::fs::remove_file(&next);
        std::os::unix::fs::symlink(&name, &next).expect("symlink");
        std::fs::rename(&next, self.link()).expect("swap");
    }
}

async fn channel(uri: &str, ca_pem: &str, identity: &Identity) -> Channel {
    client::connect_mtls(
        uri,
        ca_pem,
        Some(enos_testkit::signer::client_identity(identity)),
    )
    .await
    .expect("mTLS channel")
}

fn request(dk: &str) -> IssueMqttCredentialRequest {
    IssueMqttCredentialRequest {
        product_key: PRODUCT.into(),
        device_key: dk.into(),
        ..Default::default()
    }
}

/// Waits (up to 15 s) until a new handshake is given `serial`.
async fn wait_for_serial(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: &Identity,
    serial: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        if served_serial(addr, ca_pem, client).await == serial {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "new handshakes still get the old certificate after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_under_load_without_a_failed_rpc() {
    let capture = Capture::install(tracing::Level::INFO);

    let pki = Pki::new("reload-old-ca").expect("pki");
    let new_ca = Pki::new("reload-new-ca").expect("new pki");
    let first_server = pki.server(&[]).expect("server cert");
    let files = Arc::new(Mutex::new(None::<TlsFiles>));
    let state_dir = tempfile::tempdir().expect("tempdir");
    let signer = {
        let files = Arc::clone(&files);
        let first_server = first_server.clone();
        let ca_pem = pki.ca_pem().to_owned();
        TestSigner::start_with(state_dir.path(), &pki, move |c| {
            let dir = c.server.cert.parent().expect("dir").to_owned();
            let mut tls_files = TlsFiles { dir, generation: 0 };
            tls_files.publish(&first_server.cert_pem, &first_server.key_pem, &ca_pem);
            let link = tls_files.link();
            c.server.cert = link.join("server.pem");
            c.server.key = link.join("server.key");
            c.server.client_ca = link.join("clients-ca.pem");
            c.server.tls_reload_interval = Duration::from_secs(1);
            *files.lock().expect("lock") = Some(tls_files);
        })
        .await
        .expect("signer starts")
    };
    let mut files = files.lock().expect("lock").take().expect("files set");
    let uri = signer.uri();
    let addr = signer.addr();
    let ca_pem = signer.ca_pem().to_owned();

    let probe = pki.device(PRODUCT, "dev-0").expect("probe cert");
    assert_eq!(
        served_serial(addr, &ca_pem, &probe).await,
        serial_of(&first_server.cert_pem)
    );

    let mut identities = Vec::new();
    for i in 0..CLIENTS {
        let dk = format!("dev-{i}");
        signer
            .put_device(PRODUCT, &dk, &format!("Secret{i:02}"))
            .await
            .expect("put device");
        identities.push((dk.clone(), pki.device(PRODUCT, &dk).expect("device cert")));
    }

    // A client of the new CA is refused before the bundle names it.
    let newcomer = new_ca.device(PRODUCT, "dev-0").expect("new-CA cert");
    let refused = client::connect_mtls(
        &uri,
        &ca_pem,
        Some(enos_testkit::signer::client_identity(&newcomer)),
    )
    .await;
    let refused = match refused {
        Err(e) => Err(e.to_string()),
        Ok(ch) => CredentialsClient::new(ch)
            .issue_mqtt_credential(request("dev-0"))
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
    };
    assert!(
        refused.is_err(),
        "a certificate of an unknown CA is refused"
    );

    // 16 clients: the even ones keep one connection for the whole test
    // (established connections must survive), the odd ones reconnect
    // every 10 calls (new handshakes must succeed throughout).
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for (i, (dk, identity)) in identities.into_iter().enumerate() {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (uri, ca_pem) = (uri.clone(), ca_pem.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = CredentialsClient::new(channel(&uri, &ca_pem, &identity).await);
            let mut calls = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if i % 2 == 1 && calls % 10 == 9 {
                    client = CredentialsClient::new(channel(&uri, &ca_pem, &identity).await);
                }
                match client.issue_mqtt_credential(request(&dk)).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(s) => {
                        failed.lock().expect("lock").push(format!("{dk}: {s}"));
                        0
                    }
                };
                calls += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_reload = ok.load(Ordering::Relaxed);
    assert!(before_reload > 0, "the load is running");

    // Replace the certificate (new serial) and the CA bundle (old + new).
    let second_server = pki.server(&[]).expect("second server cert");
    let bundle = format!("{}{}", pki.ca_pem(), new_ca.ca_pem());
    files.publish(&second_server.cert_pem, &second_server.key_pem, &bundle);
    let new_serial = serial_of(&second_server.cert_pem);
    assert_ne!(new_serial, serial_of(&first_server.cert_pem));
    let took = wait_for_serial(addr, &ca_pem, &probe, &new_serial).await;
    // The metrics listener serves the same material.
    let metrics_addr = signer.metrics_addr().expect("metrics listener");
    assert_eq!(
        served_serial(metrics_addr, &ca_pem, &probe).await,
        new_serial
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new CA's client is accepted now.
    let mut newcomer_client = CredentialsClient::new(channel(&uri, &ca_pem, &newcomer).await);
    newcomer_client
        .issue_mqtt_credential(request("dev-0"))
        .await
        .expect("a client of the new CA is accepted after the reload");

    // A corrupt replacement: refused and logged, the new material stays.
    let at_corruption = ok.load(Ordering::Relaxed);
    files.publish(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        &second_server.key_pem,
        &bundle,
    );
    let start = Instant::now();
    while !capture.text().contains("TLS reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the corrupt replacement was not refused in the log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_serial(addr, &ca_pem, &probe).await, new_serial);
    newcomer_client
        .issue_mqtt_credential(request("dev-0"))
        .await
        .expect("service continues after a refused reload");

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    let total = ok.load(Ordering::Relaxed);
    let failures = failed.lock().expect("lock").clone();
    eprintln!(
        "RPCs: {total} ok, {} failed; {before_reload} before the reload, \
         {at_corruption} at the corrupt replacement; new serial seen after {took:?}",
        failures.len()
    );
    assert!(failures.is_empty(), "failed RPCs: {failures:?}");
    assert!(
        total > at_corruption && at_corruption > before_reload,
        "issuing continued through both replacements"
    );
    let logs = capture.text();
    assert!(logs.contains("TLS material reloaded"), "{logs}");
    let refusal = logs
        .lines()
        .find(|l| l.contains("TLS reload refused"))
        .expect("refusal line");
    assert!(refusal.contains("server certificate"), "{refusal}");
    assert!(!logs.contains("PRIVATE KEY"), "no key material in the log");
}
