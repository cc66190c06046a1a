//! The plain health port: `grpc.health.v1.Health` without TLS, SERVING
//! while ready, NOT_SERVING while draining (liveness stays SERVING), and
//! every other service refused.

use std::{net::SocketAddr, time::Duration};

use enos_signer_proto::v1::{
    DeviceRef, ImportDevicesRequest, IssueMqttCredentialRequest, admin_client::AdminClient,
    credentials_client::CredentialsClient,
};
use enos_signer_svc::{
    client,
    config::{HealthConfig, ServerConfig},
    listener::readiness::LIVENESS_SERVICE,
    ops::init::{Existing, init},
    server::Signer,
};
use enos_testkit::{Pki, signer::state_in};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn status(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(reply.status())
}

async fn plain_channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("plain channel to the health port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_answers_health_only_and_turns_not_serving_while_draining() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().canonicalize().expect("canonical");
    let pki = Pki::new("health-port").expect("pki");
    let server = pki
        .server(&[])
        .expect("cert")
        .write(&dir, "server")
        .expect("write");
    let mut config = state_in(
        &dir,
        ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert: server.cert,
            key: server.key,
            client_ca: pki.write_ca(&dir).expect("ca"),
            drain_timeout: Duration::from_secs(20),
            worker_threads: None,
            tls_reload_interval: Duration::ZERO,
            limits: Default::default(),
            admin_ca: None,
            admin_names: Vec::new(),
            crls: Vec::new(),
            crl_expired: Default::default(),
        },
    );
    config.health = Some(HealthConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        check_interval: Duration::from_secs(1),
    });
    // The config the binary would read parses back with the section.
    let reparsed =
        enos_signer_svc::SignerConfig::from_toml(&config.to_toml().expect("toml")).expect("parses");
    assert_eq!(reparsed.health, config.health);
    init(&config, Existing::Keep).expect("init");

    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc_addr = grpc.local_addr().expect("addr");
    let health = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let health_addr = health.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let signer = Signer::open(&config)
        .expect("open")
        .with_health_listener(health);
    let served = tokio::spawn(signer.serve(grpc, None, stop.clone().cancelled_owned()));

    let plain = plain_channel(health_addr).await;
    for service in [
        "",
        LIVENESS_SERVICE,
        "enos.signer.v1.Credentials",
        "enos.signer.v1.Admin",
    ] {
        assert_eq!(
            status(&plain, service).await.expect("answered"),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = status(&plain, "enos.signer.v1.Nothing").await;
    assert_eq!(unknown.expect_err("unknown service").code(), Code::NotFound);

    // Nothing but health: the API services are not there.
    let issued = CredentialsClient::new(plain.clone())
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await;
    assert_eq!(
        issued.expect_err("no Credentials").code(),
        Code::Unimplemented
    );
    let got = AdminClient::new(plain.clone())
        .get_device(DeviceRef::default())
        .await;
    assert_eq!(got.expect_err("no Admin").code(), Code::Unimplemented);
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            plain.clone(),
        );
    let listed = reflection
        .server_reflection_info(futures::stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await;
    assert_eq!(
        listed.expect_err("no reflection").code(),
        Code::Unimplemented
    );

    // An import that stays open keeps the drain going.
    let admin = pki.admin("health-admin").expect("admin cert");
    let channel = client::connect_mtls(
        &format!("https://{grpc_addr}"),
        pki.ca_pem(),
        Some(enos_testkit::signer::client_identity(&admin)),
    )
    .await
    .expect("mTLS channel");
    let (rows, receiver) = tokio::sync::mpsc::channel::<ImportDevicesRequest>(1);
    let import = tokio::spawn(async move {
        AdminClient::new(channel)
            .import_devices(futures::stream::unfold(receiver, |mut r| async move {
                r.recv().await.map(|m| (m, r))
            }))
            .await
    });
    rows.send(ImportDevicesRequest {
        rows: Vec::new(),
        dry_run: true,
        ..Default::default()
    })
    .await
    .expect("first message");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status(&plain, "").await.expect("answered while draining") != ServingStatus::NotServing {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still SERVING after shutdown started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past a readiness check: draining wins over a healthy registry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for service in ["", "enos.signer.v1.Credentials", "enos.signer.v1.Admin"] {
        assert_eq!(
            status(&plain, service).await.expect("answered"),
            ServingStatus::NotServing,
            "{service:?} while draining"
        );
    }
    assert_eq!(
        status(&plain, LIVENESS_SERVICE).await.expect("answered"),
        ServingStatus::Serving,
        "liveness stays SERVING while draining"
    );
    assert!(!served.is_finished(), "the drain waits for the open import");

    drop(rows);
    let _ = import.await.expect("import task");
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serve returns once drained")
        .expect("serve task")
        .expect("served");
    // Gone with the process.
    assert!(
        tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
            .expect("endpoint")
            .connect()
            .await
            .is_err(),
        "the health port closes when the signer stops"
    );
}
