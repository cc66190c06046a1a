//! [`TestSigner`]: a real signer on `127.0.0.1` with real mTLS, for tests
//! and the demo.
//!
//! It generates its server certificate and an admin certificate from the
//! caller's [`Pki`], creates keys and a registry in a directory, and serves
//! on a port chosen by the OS. The server runs on its own Tokio runtime,
//! so that [`TestSigner::kill`] can drop every connection at once, as a
//! crash would.
//!
//! ```no_run
//! # async fn demo() -> enos_testkit::Result<()> {
//! use enos_testkit::signer::TestSigner;
//! let dir = tempfile::tempdir()?;
//! let pki = enos_testkit::Pki::new("test")?;
//! let signer = TestSigner::start(dir.path(), &pki).await?;
//! signer.put_device("Pk1", "dev-1", "secret-1").await?;
//! // A device connects with pki.device("Pk1", "dev-1") and
//! // enos_signer_svc::client::connect_mtls(&signer.uri(), signer.ca_pem(),
//! // Some(enos_testkit::signer::client_identity(&identity))).
//! # Ok(()) }
//! ```

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use enos_signer_proto::v1::{self, admin_client::AdminClient};
use enos_signer_svc::{
    client,
    config::{
        AuditConfig, AuditSinkConfig, CustodyConfig, LoggingConfig, MetricsConfig, PolicyConfig,
        RegistryConfig, ServerConfig, SignerConfig,
    },
    ops::init::{Existing, init},
    server::Signer,
};
use tokio::{net::TcpSocket, runtime::Runtime, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Identity, Pki, Result};

/// A tonic client identity (for [`client::connect_mtls`]) from a test
/// [`Identity`].
pub fn client_identity(identity: &Identity) -> tonic::transport::Identity {
    tonic::transport::Identity::from_pem(&identity.cert_pem, &identity.key_pem)
}

/// A running (or stopped) signer for tests.
pub struct TestSigner {
    /// The gRPC address; kept across stop/restart.
    addr: SocketAddr,
    /// The metrics address of the current run.
    metrics_addr: Option<SocketAddr>,
    /// The enrollment address (with `[ca] enroll_listen`); kept across
    /// stop/restart.
    enroll_addr: Option<SocketAddr>,
    /// The CA that signed the server certificate (and clients).
    ca_pem: String,
    /// The config the server runs with (absolute paths).
    config: SignerConfig,
    /// Where that config is written, for the `enos-signer` binary.
    config_path: PathBuf,
    /// The admin certificate [`TestSigner::admin`] presents.
    admin_identity: Identity,
    /// The server while running.
    running: Option<Running>,
    /// While stopped: a socket bound to `addr` (not listening), so that no
    /// other test is given the port before the restart.
    placeholder: Option<TcpSocket>,
}

/// A config whose state all lives in `dir`: redb registry, software
/// custody, a fail-closed audit trail in `audit.jsonl`; default policy, no
/// rate limit, no metrics listener. Tests adjust the rest.
pub fn state_in(dir: &Path, server: ServerConfig) -> SignerConfig {
    SignerConfig {
        server,
        registry: RegistryConfig::Redb {
            path: dir.join("registry.redb"),
        },
        custody: CustodyConfig::Software {
            master_key_file: dir.join("master.key"),
        },
        audit: AuditConfig {
            key_file: dir.join("audit.key"),
            sink: AuditSinkConfig::File {
                path: dir.join("audit.jsonl"),
            },
            fail_closed: true,
        },
        rate_limit: None,
        policy: PolicyConfig::default(),
        metrics: None,
        logging: LoggingConfig::default(),
        health: None,
        ca: None,
        enos_api: None,
    }
}

/// A server on `listen` with these TLS files (`client_ca` verifies the
/// devices' certificates): drains for 5 s, reloads TLS files every 5 s,
/// default limits, no admin CA or names, no CRL. Tests adjust the rest.
pub fn server_config(
    listen: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
) -> ServerConfig {
    ServerConfig {
        listen,
        cert,
        key,
        client_ca,
        drain_timeout: Duration::from_secs(5),
        worker_threads: None,
        tls_reload_interval: Duration::from_secs(5),
        limits: Default::default(),
        admin_ca: None,
        admin_names: Vec::new(),
        crls: Vec::new(),
        crl_expired: Default::default(),
    }
}

/// A runtime that may be dropped anywhere: dropping a Tokio runtime
/// inside async code panics, so this one shuts down in the background.
struct ServerRuntime(Option<Runtime>);

impl ServerRuntime {
    /// The runtime `config` asks for; two workers unless it names a count
    /// (tests share the machine).
    fn new(config: &ServerConfig) -> std::io::Result<Self> {
        let mut config = config.clone();
        config.worker_threads = config.worker_threads.or(NonZeroUsize::new(2));
        Ok(ServerRuntime(Some(config.runtime("test-signer")?)))
    }

    fn get(&self) -> std::io::Result<&Runtime> {
        self.0
            .as_ref()
            .ok_or_else(|| std::io::Error::other("runtime already shut down"))
    }

    /// Shuts down now, waiting up to `timeout` for tasks to be dropped.
    /// Runs on a plain thread: that is allowed even from async code.
    fn shutdown_now(mut self, timeout: Duration) {
        if let Some(runtime) = self.0.take() {
            let _ = std::thread::spawn(move || runtime.shutdown_timeout(timeout)).join();
        }
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A server on its own runtime.
struct Running {
    /// Shut down to kill every task and connection at once.
    runtime: ServerRuntime,
    /// Cancelled for a graceful stop.
    stop: CancellationToken,
    /// The serve task.
    task: JoinHandle<enos_signer_svc::error::Result<()>>,
}

impl TestSigner {
    /// Initialises keys and a registry in `dir`, takes a server certificate
    /// from `pki`, and listens on `127.0.0.1:0`.
    pub async fn start(dir: &Path, pki: &Pki) -> Result<TestSigner> {
        Self::start_with(dir, pki, |_| {}).await
    }

    /// As [`TestSigner::start`], with a hook to adjust the config (TTL,
    /// rate limit, policy, audit) before the server starts. `listen` is
    /// replaced by the chosen address.
    pub async fn start_with(
        dir: &Path,
        pki: &Pki,
        adjust: impl FnOnce(&mut SignerConfig),
    ) -> Result<TestSigner> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let server = pki.server(&[])?.write(&dir, "server")?;
        let ca = pki.write_ca(&dir)?;
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = state_in(&dir, server_config(listen, server.cert, server.key, ca));
        config.metrics = Some(MetricsConfig::on(SocketAddr::from(([127, 0, 0, 1], 0))));
        adjust(&mut config);
        init(&config, Existing::Keep)?;
        // With `[ca]`, the signer is its devices' CA from the start: a
        // self-signed root made by the same code as `ca init`.
        if config.ca.is_some() && !enos_signer_svc::ops::ca::exists(&config).await? {
            enos_signer_svc::ops::ca::init(
                &config,
                enos_signer_svc::ops::ca::CaKind::Root {
                    common_name: "test device CA".into(),
                    validity: Duration::from_secs(86_400),
                },
                false,
            )
            .await?;
        }

        let runtime = ServerRuntime::new(&config.server)?;
        let listener = {
            let _enter = runtime.get()?.enter();
            let socket = reusable_socket(config.server.listen)?;
            socket.listen(1024)?
        };
        let addr = listener.local_addr()?;
        config.server.listen = addr;
        let enroll_addr = match config.ca.as_mut().and_then(|ca| ca.enroll_listen.as_mut()) {
            Some(enroll) => {
                // Bound once here to learn the port; `launch` binds it again
                // (SO_REUSEADDR) for each run.
                let _enter = runtime.get()?.enter();
                let socket = reusable_socket(*enroll)?;
                *enroll = socket.local_addr()?;
                Some(*enroll)
            }
            None => None,
        };
        let config_path = dir.join("signer.toml");
        std::fs::write(&config_path, config.to_toml()?)?;

        let mut signer = TestSigner {
            addr,
            metrics_addr: None,
            enroll_addr,
            ca_pem: pki.ca_pem().to_owned(),
            config,
            config_path,
            admin_identity: pki.admin("test-admin")?,
            running: None,
            placeholder: None,
        };
        signer.launch(runtime, listener)?;
        Ok(signer)
    }

    /// Opens the state and spawns the server on `runtime`.
    fn launch(&mut self, runtime: ServerRuntime, listener: tokio::net::TcpListener) -> Result<()> {
        let mut signer = Signer::open(&self.config)?;
        if let Some(enroll) = self.enroll_addr {
            let _enter = runtime.get()?.enter();
            signer = signer.with_enroll_listener(reusable_socket(enroll)?.listen(128)?);
        }
        let metrics_listener = match &self.config.metrics {
            Some(m) => {
                let _enter = runtime.get()?.enter();
                let socket = reusable_socket(m.listen)?;
                Some(socket.listen(128)?)
            }
            None => None,
        };
        self.metrics_addr = metrics_listener
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()?;
        let stop = CancellationToken::new();
        let serve = signer.serve(listener, metrics_listener, stop.clone().cancelled_owned());
        let task = runtime.get()?.spawn(serve);
        self.running = Some(Running {
            runtime,
            stop,
            task,
        });
        // The old placeholder may go now that the listener holds the port.
        self.placeholder = None;
        Ok(())
    }

    /// The gRPC endpoint.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The enrollment endpoint as a URI (with `[ca] enroll_listen`).
    pub fn enroll_uri(&self) -> Option<String> {
        self.enroll_addr.map(|addr| format!("https://{addr}"))
    }

    /// The endpoint as a URI, `https://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The Prometheus endpoint of the current run (`https://…/metrics`,
    /// mTLS), when metrics are configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The CA that signed the server certificate (the `Pki`'s).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A TOML config usable by the `enos-signer` binary (absolute paths,
    /// `listen` = [`TestSigner::addr`]).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config the server runs with.
    pub fn config(&self) -> &SignerConfig {
        &self.config
    }

    /// The admin certificate [`TestSigner::admin`] presents.
    pub fn admin_identity(&self) -> &Identity {
        &self.admin_identity
    }

    /// An mTLS client of the Admin service, presenting the admin
    /// certificate. The connection is made on first use, so this never
    /// fails; a call to a stopped signer fails with Unavailable.
    pub async fn admin(&self) -> AdminClient<Channel> {
        let endpoint = client::mtls_endpoint(
            &self.uri(),
            &self.ca_pem,
            Some(client_identity(&self.admin_identity)),
        )
        // The URI and the PEM are this struct's own, known to be valid.
        .expect("TestSigner's own endpoint and CA are valid");
        AdminClient::new(endpoint.connect_lazy())
    }

    /// The registry's devices (the first page, as Admin's ListDevices
    /// gives it by default).
    pub async fn list_devices(&self) -> Result<Vec<v1::Device>> {
        let page = self
            .admin()
            .await
            .list_devices(v1::ListDevicesRequest::default())
            .await?
            .into_inner();
        Ok(page.devices)
    }

    /// Imports `rows` in one all-or-nothing Admin import (one request,
    /// not a dry run); the response says what was taken.
    pub async fn import(&self, rows: Vec<v1::ImportRow>) -> Result<v1::ImportDevicesResponse> {
        let request = v1::ImportDevicesRequest {
            rows,
            ..Default::default()
        };
        Ok(self
            .admin()
            .await
            .import_devices(futures::stream::iter([request]))
            .await?
            .into_inner())
    }

    /// Puts an enabled device with `secret`.
    pub async fn put_device(&self, pk: &str, dk: &str, secret: &str) -> Result<v1::Device> {
        let device = self
            .admin()
            .await
            .put_device(v1::PutDeviceRequest {
                device: Some(device_ref(pk, dk)),
                device_secret: secret.to_owned(),
                enabled: true,
                awaiting_activation: false,
            })
            .await?
            .into_inner();
        Ok(device)
    }

    /// Binds sub-device `sub` (pk, dk) to gateway `gw` (pk, dk).
    pub async fn bind_sub_device(&self, gw: (&str, &str), sub: (&str, &str)) -> Result<v1::Device> {
        let device = self
            .admin()
            .await
            .bind_sub_device(v1::BindSubDeviceRequest {
                gateway: Some(device_ref(gw.0, gw.1)),
                sub_device: Some(device_ref(sub.0, sub.1)),
            })
            .await?
            .into_inner();
        Ok(device)
    }

    /// Enables or disables a device.
    pub async fn set_enabled(&self, pk: &str, dk: &str, enabled: bool) -> Result<v1::Device> {
        let device = self
            .admin()
            .await
            .set_enabled(v1::SetEnabledRequest {
                device: Some(device_ref(pk, dk)),
                enabled,
            })
            .await?
            .into_inner();
        Ok(device)
    }

    /// Rotates a device's secret.
    pub async fn rotate_secret(&self, pk: &str, dk: &str, new_secret: &str) -> Result<v1::Device> {
        let device = self
            .admin()
            .await
            .rotate_secret(v1::RotateSecretRequest {
                device: Some(device_ref(pk, dk)),
                new_device_secret: new_secret.to_owned(),
            })
            .await?
            .into_inner();
        Ok(device)
    }

    /// Stops gracefully (NOT_SERVING, drain). The port stays reserved for
    /// [`TestSigner::restart`]: connections to it are refused meanwhile.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
            running.runtime.shutdown_now(Duration::from_secs(5));
            self.reserve_port();
        }
    }

    /// Starts again on the same address with the same registry and keys.
    pub async fn restart(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Err("the signer is running; stop or kill it first".into());
        }
        let runtime = ServerRuntime::new(&self.config.server)?;
        let listener = {
            let _enter = runtime.get()?.enter();
            reusable_socket(self.addr)?.listen(1024)?
        };
        self.launch(runtime, listener)
    }

    /// Stops abruptly: every task and connection is dropped at once, as
    /// if the process died. The port stays reserved for a restart.
    pub fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            // Joining the shutdown makes the kill synchronous: when this
            // returns, every connection and the registry are closed.
            running.runtime.shutdown_now(Duration::from_secs(5));
            self.reserve_port();
        }
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn reserve_port(&mut self) {
        self.placeholder = TcpSocket::new_v4()
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(self.addr)?;
                Ok(s)
            })
            .ok();
    }
}

fn device_ref(pk: &str, dk: &str) -> v1::DeviceRef {
    v1::DeviceRef::new(pk, dk)
}

/// A socket with SO_REUSEADDR bound to `addr` (not yet listening).
fn reusable_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}
