//! Shared test support: real brokers (the EnOS sandbox, Mosquitto as the
//! gateway's local broker), MQTT test clients, and status waits.
#![allow(dead_code, unreachable_pub)]

pub mod ca;
pub mod signer;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use enos_agent::{AgentStatus, Config};
use enos_sign_core::{MqttCredential, SignMethod};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Generous bound for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(15);

/// Installs ring once per test process.
pub fn init() {
    enos_agent::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENOS_AGENT_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A device row of the sandbox's CSV.
#[derive(Clone)]
pub struct DeviceRow {
    pub product_key: String,
    pub device_key: String,
    pub secret: String,
    pub enabled: bool,
    pub gateway: Option<(String, String)>,
}

impl DeviceRow {
    pub fn new(pk: &str, dk: &str, secret: &str) -> Self {
        DeviceRow {
            product_key: pk.into(),
            device_key: dk.into(),
            secret: secret.into(),
            enabled: true,
            gateway: None,
        }
    }

    pub fn sub_of(mut self, gw: (&str, &str)) -> Self {
        self.gateway = Some((gw.0.into(), gw.1.into()));
        self
    }
}

/// Writes the sandbox's device CSV.
pub fn write_devices(path: &Path, rows: &[DeviceRow]) {
    let mut csv = String::from(
        "productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey\n",
    );
    for r in rows {
        let (gpk, gdk) = r.gateway.clone().unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.product_key, r.device_key, r.secret, r.enabled, gpk, gdk
        ));
    }
    std::fs::write(path, csv).expect("write devices.csv");
}

/// The sandbox's console login, which tests use to play the cloud side
/// (devices may only use their own topics): user and password.
pub const CONSOLE: (&str, &str) = ("console", "console-password-8c2f1");

/// Writes the console's password file in `dir` and returns its path.
pub fn console_password_file(dir: &Path) -> PathBuf {
    let path = dir.join("console.secret");
    // A secret: owner-only, or the sandbox refuses it.
    enos_testkit::write_private(&path, CONSOLE.1.as_bytes())
        .expect("write the console password file");
    path
}

/// Signs a login for `pk/dk` with `secret`, as a device SDK would.
pub fn sign_login(pk: &str, dk: &str, secret: &str) -> MqttCredential {
    enos_testkit::device_login(pk, dk, secret, SignMethod::HmacSha1, enos_agent::now_ms())
}

/// An MQTT client for tests: every received publish arrives on `rx`.
pub struct TestClient {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    /// Connects (and waits for CONNACK) with optional credentials.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> TestClient {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = login {
            options.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(SOON, ready_rx)
            .await
            .expect("test client connects in time")
            .expect("connack");
        TestClient { client, rx, task }
    }

    /// Connects to the sandbox as its console: the cloud's side.
    pub async fn observer(addr: SocketAddr) -> TestClient {
        TestClient::connect(addr, "the-console", Some(CONSOLE)).await
    }

    /// Subscribes and waits until the broker has surely processed it.
    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    /// The next message on `topic`, skipping others.
    pub async fn recv_on(&mut self, topic: &str) -> Vec<u8> {
        tokio::time::timeout(SOON, async {
            loop {
                let (t, p) = self.rx.recv().await.expect("client task alive");
                if t == topic {
                    return p;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing on {topic} in time"))
    }

    /// Everything on `topic` that arrives within `window`.
    pub async fn collect_on(&mut self, topic: &str, window: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(window, async {
            loop {
                let (t, p) = self.rx.recv().await.expect("client task alive");
                if t == topic {
                    out.push(p);
                }
            }
        })
        .await;
        out
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Mosquitto as the gateway's local broker: anonymous, on 127.0.0.1.
pub struct Mosquitto {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn mosquitto_binary() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    PathBuf::from("mosquitto")
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // Mosquitto cannot listen on port 0 and report it: take a free port
        // from the OS and hand it over (the window is a few milliseconds).
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n"
            ),
        )
        .expect("write conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto; cargo xtask test does it)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the status satisfies `pred`; panics with the last status.
pub async fn wait_status(
    rx: &mut watch::Receiver<AgentStatus>,
    what: &str,
    pred: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let result = tokio::time::timeout(SOON, async {
        rx.wait_for(|s| pred(s)).await.map(|s| s.clone())
    })
    .await;
    match result {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}; status: {:#?}", *rx.borrow()),
    }
}

/// Parses a config written in a test.
pub fn config(text: &str) -> Config {
    Config::parse(text, Path::new("test.toml")).expect("test config is valid")
}
