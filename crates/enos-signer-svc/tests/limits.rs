//! `[server.limits]` and the metrics listener's timeouts against the real
//! server (#13 finding 10): each cap is reached and seen to hold, and to
//! let go when the load goes.

mod common;

use std::{sync::Arc, time::Duration};

use common::{fixture_with, status};
use enos_signer_proto::v1::{
    ImportDevicesRequest, ImportRow, ListDevicesRequest, admin_client::AdminClient,
};
use futures::{SinkExt, channel::mpsc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, transport::Channel};

fn row(line: u32, dk: &str) -> ImportRow {
    ImportRow {
        line,
        product_key: "PkLim".into(),
        device_key: dk.into(),
        device_secret: format!("s3cret-{dk}"),
        gateway: None,
        awaiting_activation: false,
        ..Default::default()
    }
}

/// An import whose stream stays open (one message sent) until the sender
/// is dropped: a call in flight for as long as the test wants.
async fn held_import(
    channel: Channel,
) -> (
    mpsc::Sender<ImportDevicesRequest>,
    tokio::task::JoinHandle<
        Result<tonic::Response<enos_signer_proto::v1::ImportDevicesResponse>, tonic::Status>,
    >,
) {
    let (mut sender, receiver) = mpsc::channel(1);
    sender
        .send(ImportDevicesRequest {
            rows: vec![row(2, "held")],
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("first message");
    let call =
        tokio::spawn(async move { AdminClient::new(channel).import_devices(receiver).await });
    (sender, call)
}

async fn list(channel: Channel) -> Result<(), tonic::Status> {
    AdminClient::new(channel)
        .list_devices(ListDevicesRequest::default())
        .await
        .map(drop)
}

/// Waits until `check` holds (10 ms polls, at most 5 s).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn calls_in_flight_over_all_connections_are_capped_and_shed_at_once() {
    let f = fixture_with(|c| c.server.limits.max_concurrent_requests = 2).await;
    let admin = f.signer.admin_identity().clone();
    let connect = || f.channel(Some(&admin));
    let (first, first_call) = held_import(connect().await).await;
    let (second, second_call) = held_import(connect().await).await;
    // Both imports are in the server (their first message has arrived
    // when a third call is shed, not queued).
    let third = connect().await;
    eventually(
        "the third call is shed",
        async || matches!(list(third.clone()).await, Err(s) if s.code() == Code::ResourceExhausted),
    )
    .await;
    let shed = tokio::time::timeout(Duration::from_secs(2), list(third.clone()))
        .await
        .expect("answered at once, not queued");
    let shed = status(shed.map(|()| "listed"));
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("Too many active requests"),
        "{shed:?}"
    );
    // Each shed call counts once in enos_signer_requests_shed_total (issue
    // 29 item 12): it never reaches a service, so no other counter sees it.
    const SHED: &str = r#"enos_signer_requests_shed_total{listener="grpc"}"#;
    let before = common::sample(&common::scrape_metrics(&f).await, SHED).expect(SHED);
    assert!(before >= 2.0, "the sheds so far are counted: {before}");
    let again = list(third.clone()).await;
    assert_eq!(
        again.map_err(|s| s.code()),
        Err(Code::ResourceExhausted),
        "shed again"
    );
    let after = common::sample(&common::scrape_metrics(&f).await, SHED).expect(SHED);
    assert_eq!(after, before + 1.0, "one more shed, counted once");
    drop((first, second));
    first_call
        .await
        .expect("join")
        .expect("first import answers");
    second_call
        .await
        .expect("join")
        .expect("second import answers");
    list(third).await.expect("served once the load is gone");
}

#[tokio::test]
async fn streams_per_connection_are_capped() {
    let f = fixture_with(|c| c.server.limits.max_concurrent_streams = 1).await;
    let admin = f.signer.admin_identity().clone();
    let shared = f.channel(Some(&admin)).await;
    let (held, held_call) = held_import(shared.clone()).await;
    // The one stream of that connection is taken: its next call waits for
    // it, while a call on another connection is served.
    let other = f.channel(Some(&admin)).await;
    list(other).await.expect("another connection is served");
    let waiting = tokio::spawn(list(shared.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second stream on a one-stream connection"
    );
    drop(held);
    held_call.await.expect("join").expect("import answers");
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the stream is free")
        .expect("join")
        .expect("listed");
}

#[tokio::test]
async fn connections_are_capped_at_accept() {
    let f = fixture_with(|c| c.server.limits.max_connections = 2).await;
    let admin = f.signer.admin_identity().clone();
    let first = f.channel(Some(&admin)).await;
    let second = f.channel(Some(&admin)).await;
    list(first.clone()).await.expect("first");
    list(second.clone()).await.expect("second");
    // A third connection is closed at accept: the call fails, the two
    // open ones are still served.
    let third = enos_signer_svc::client::connect_mtls(
        &f.signer.uri(),
        f.signer.ca_pem(),
        Some(enos_testkit::signer::client_identity(&admin)),
    )
    .await;
    match third {
        Err(_) => {}
        Ok(channel) => {
            let refused = list(channel)
                .await
                .expect_err("a third connection is served");
            assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        }
    }
    list(first.clone()).await.expect("first still served");
    // The two open connections, and the scrape's own on the metrics
    // listener, in enos_signer_connections_open (issue 29 item 12).
    let scrape = common::scrape_metrics(&f).await;
    assert_eq!(
        common::sample(&scrape, r#"enos_signer_connections_open{listener="grpc"}"#),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(
        common::sample(
            &scrape,
            r#"enos_signer_connections_open{listener="metrics"}"#
        ),
        Some(1.0),
        "{scrape}"
    );
    assert!(
        common::sample(
            &scrape,
            r#"enos_signer_connections_refused_total{listener="grpc",reason="limit"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{scrape}"
    );
    drop(second);
    eventually("a slot frees when a connection closes", async || {
        match enos_signer_svc::client::connect_mtls(
            &f.signer.uri(),
            f.signer.ca_pem(),
            Some(enos_testkit::signer::client_identity(&admin)),
        )
        .await
        {
            Ok(channel) => list(channel).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    drop(first);
    // Closed connections leave the gauge: only the scrape's own remains.
    eventually("the gauge follows closed connections", async || {
        let scrape = common::scrape_metrics(&f).await;
        common::sample(&scrape, r#"enos_signer_connections_open{listener="grpc"}"#) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn an_import_over_its_byte_cap_is_refused_as_its_messages_arrive() {
    let f = fixture_with(|c| c.server.limits.import_max_bytes = 4_000).await;
    let admin = f.signer.admin_identity().clone();
    let (mut sender, receiver) = mpsc::channel(4);
    let channel = f.channel(Some(&admin)).await;
    let call =
        tokio::spawn(async move { AdminClient::new(channel).import_devices(receiver).await });
    // 200 rows of ~40 bytes: over 4000 in the first message. The stream
    // is left open: the refusal must not wait for its end.
    sender
        .send(ImportDevicesRequest {
            rows: (0..200)
                .map(|i| row(i + 2, &format!("dev-{i:04}")))
                .collect(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect("send");
    let refused = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("refused before the stream ends")
        .expect("join")
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("import_max_bytes") && !refused.message().contains("s3cret"),
        "{}",
        refused.message()
    );
    drop(sender);
    let listed = f.signer.list_devices().await.expect("list");
    assert!(listed.is_empty(), "nothing written");
}

/// A TLS connection to the metrics listener, with a client certificate.
async fn metrics_connection(
    f: &common::Fixture,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let id = f.pki.device("Pk0", "prometheus").expect("cert");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(f.signer.ca_pem().as_bytes()).expect("ca"))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).expect("cert")],
        PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key"),
    )
    .expect("client auth");
    let tcp = tokio::net::TcpStream::connect(f.signer.metrics_addr().expect("metrics"))
        .await
        .expect("tcp");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("handshake")
}

/// Reads until the server closes; how long that took.
async fn closed_within(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    limit: Duration,
) -> Duration {
    let started = tokio::time::Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut sink))
        .await
        .expect("the server closed the connection");
    started.elapsed()
}

#[tokio::test]
async fn the_metrics_listener_closes_slow_headers_and_idle_connections() {
    let f = fixture_with(|c| {
        let metrics = c.metrics.as_mut().expect("metrics");
        metrics.header_timeout = Duration::from_secs(1);
        metrics.connection_lifetime = Duration::from_secs(2);
    })
    .await;
    // Half a header, then nothing: closed at the header timeout.
    let mut slow = metrics_connection(&f).await;
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    let took = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // A kept-alive connection served once, then idle: closed at its
    // lifetime.
    let mut idle = metrics_connection(&f).await;
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.expect("response");
    assert_eq!(&first, b"HTTP/1.1 200");
    closed_within(&mut idle, Duration::from_secs(6)).await;
}

#[tokio::test]
async fn new_connections_per_peer_address_are_throttled_before_any_tls() {
    let f = fixture_with(|c| {
        c.server.limits.connections_per_ip_per_second = 1;
        c.server.limits.connection_burst_per_ip = 2;
    })
    .await;
    let admin = f.signer.admin_identity().clone();
    let connect = || async {
        match enos_signer_svc::client::connect_mtls(
            &f.signer.uri(),
            f.signer.ca_pem(),
            Some(enos_testkit::signer::client_identity(&admin)),
        )
        .await
        {
            Ok(channel) => list(channel).await.map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    connect().await.expect("first");
    connect().await.expect("second: the burst");
    connect().await.expect_err("third at once: over 1/s");
    // The budget refills at 1 a second.
    eventually("a connection a second later", async || {
        connect().await.is_ok()
    })
    .await;
    // The refusals are counted, not logged one by one.
    let mut scrape = metrics_connection(&f).await;
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    scrape.read_to_string(&mut text).await.expect("read");
    assert!(
        text.contains(
            r#"enos_signer_connections_refused_total{listener="grpc",reason="throttled"}"#
        ),
        "{text}"
    );
}
