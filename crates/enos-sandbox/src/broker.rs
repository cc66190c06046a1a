//! [`RunningBroker`]: rumqttd started in this process with the sandbox's
//! checks, listeners and responder.
//!
//! rumqttd has no stop API: its listener threads run until the process
//! ends. Start this once per process (the `enos-sandbox` binary does);
//! tests use `enos_testkit::sandbox::Sandbox`, which runs the binary as a child.

use std::{
    collections::HashMap,
    future::{Ready, ready},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    thread,
    time::Duration,
};

use rumqttd::{
    Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings, TlsConfig,
    local::{LinkRx, LinkTx},
};
use tracing::{error, info};
use zeroize::Zeroizing;

use crate::{
    auth::Authenticator,
    config::{Settings, TlsSettings},
    devices::DeviceStore,
    error::SandboxError,
    ports::PortReservation,
    readiness::ListenWatch,
    responder::{REQUEST_FILTERS, Responder},
    sessions::SessionTracker,
};

/// rumqttd's name (and thread name) for the plain listener.
pub const MQTT_LISTENER: &str = "enos-mqtt";
/// rumqttd's name (and thread name) for the TLS listener.
pub const TLS_LISTENER: &str = "enos-mqtts";
/// The in-process client id of the responder. A device's client id always
/// holds `|…|`, so no device can take this one over.
const RESPONDER_CLIENT_ID: &str = "enos-sandbox-responder";
/// How long rumqttd may take to bind its listeners.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox broker, running in this process.
#[derive(Debug)]
pub struct RunningBroker {
    /// The actual plain listener address (port 0 resolved).
    mqtt_addr: SocketAddr,
    /// The actual TLS listener address, when configured.
    tls_addr: Option<SocketAddr>,
    /// The devices in force; reloads replace them.
    store: Arc<DeviceStore>,
    /// Who logged in as which device, so a reload can drop revoked sessions.
    sessions: Arc<SessionTracker>,
    /// Held for the life of the broker: rumqttd listens on these ports,
    /// and holding them costs nothing (see [`crate::ports`]).
    _reservations: Vec<PortReservation>,
}

impl RunningBroker {
    /// Loads the devices, starts rumqttd with both listeners and the
    /// responder, and returns once rumqttd listens (or fails with its
    /// reason). `watch` must be fed by a [`crate::ListenWatchLayer`] in
    /// the global `tracing` subscriber.
    pub fn start(settings: &Settings, watch: &ListenWatch) -> Result<Self, SandboxError> {
        let store = Arc::new(DeviceStore::open(&settings.devices)?);
        let auth = Authenticator::new(Arc::clone(&store), settings.freshness, settings.md5);
        let sessions = Arc::new(SessionTracker::new()?);
        if let Some(tls) = &settings.tls {
            check_tls_files(tls)?;
        }

        let mut reservations = vec![PortReservation::reserve(settings.mqtt_listen)?];
        let mqtt_addr = reservations[0].addr();
        let mut servers = HashMap::new();
        servers.insert(
            MQTT_LISTENER.to_owned(),
            server(MQTT_LISTENER, mqtt_addr, None, settings, &auth, &sessions),
        );
        let tls_addr = match &settings.tls {
            Some(tls) => {
                let reservation = PortReservation::reserve(tls.listen)?;
                let addr = reservation.addr();
                reservations.push(reservation);
                let rustls = TlsConfig::Rustls {
                    capath: Some(path_string(&tls.ca)?),
                    certpath: path_string(&tls.cert)?,
                    keypath: path_string(&tls.key)?,
                };
                servers.insert(
                    TLS_LISTENER.to_owned(),
                    server(TLS_LISTENER, addr, Some(rustls), settings, &auth, &sessions),
                );
                Some(addr)
            }
            None => None,
        };

        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_000,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024 * 1024,
                max_segment_count: 10,
                ..RouterConfig::default()
            },
            v4: Some(servers),
            ..Config::default()
        };
        let mut broker = Broker::new(config);
        let (mut link_tx, link_rx) = broker
            .link(RESPONDER_CLIENT_ID)
            .map_err(|e| SandboxError::Broker(format!("responder link: {e}")))?;
        for filter in REQUEST_FILTERS {
            link_tx
                .subscribe(filter)
                .map_err(|e| SandboxError::Broker(format!("responder subscribe {filter}: {e}")))?;
        }
        let responder = Responder::new(auth);
        spawn("enos-sandbox-responder", move || {
            respond_forever(responder, link_tx, link_rx)
        })?;
        spawn("enos-sandbox-broker", move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "rumqttd stopped");
            }
        })?;

        let listen = |name: &str, addr: SocketAddr| {
            watch
                .wait(name, LISTEN_TIMEOUT)
                .map_err(|reason| SandboxError::Listen { addr, reason })
        };
        listen(MQTT_LISTENER, mqtt_addr)?;
        if let Some(addr) = tls_addr {
            listen(TLS_LISTENER, addr)?;
        }
        Ok(RunningBroker {
            mqtt_addr,
            tls_addr,
            store,
            sessions,
            _reservations: reservations,
        })
    }

    /// Where plain MQTT clients connect.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Where TLS clients connect, if configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Re-reads the device file; on error the previous devices stay.
    /// New CONNECTs and logins see the new file at once; open sessions of
    /// devices that were removed, disabled or given another secret are
    /// dropped (see [`crate::sessions`]); other sessions stay. Blocks for
    /// the take-overs: a few milliseconds each on the loopback interface.
    pub fn reload_devices(&self) -> Result<ReloadOutcome, SandboxError> {
        let old = self.store.current();
        let devices = self.store.reload()?;
        let new = self.store.current();
        let dropped_sessions = self.sessions.drop_revoked(self.mqtt_addr, &old, &new);
        Ok(ReloadOutcome {
            devices,
            dropped_sessions,
        })
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Devices in the new file.
    pub devices: usize,
    /// Open sessions the new file no longer allows, now closed.
    pub dropped_sessions: usize,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), SandboxError> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
        .map_err(|e| SandboxError::Broker(format!("cannot start thread {name}: {e}")))
}

/// One rumqttd listener with the sandbox's auth handler.
fn server(
    name: &'static str,
    listen: SocketAddr,
    tls: Option<TlsConfig>,
    settings: &Settings,
    auth: &Authenticator,
    sessions: &Arc<SessionTracker>,
) -> ServerSettings {
    let tls_is_none = tls.is_none();
    let mut server = ServerSettings {
        name: name.to_owned(),
        listen,
        tls,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: settings.connect_timeout_ms,
            max_payload_size: settings.max_payload_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    // Take-overs come in on the plain listener only.
    let takeover = tls_is_none;
    server.set_auth_handler(auth_handler(
        name,
        auth.clone(),
        Arc::clone(sessions),
        takeover,
    ));
    server
}

/// rumqttd's auth hook: check, log the outcome (never the password), and
/// answer. A `false` makes rumqttd close the connection without a CONNACK.
fn auth_handler(
    listener: &'static str,
    auth: Authenticator,
    sessions: Arc<SessionTracker>,
    allow_takeover: bool,
) -> impl Fn(String, String, String) -> Ready<bool> + Send + Sync + 'static {
    move |client_id, username, password| {
        let password = Zeroizing::new(password);
        if allow_takeover && sessions.is_takeover(&username, &password) {
            return ready(true);
        }
        let accepted = match auth.check(&client_id, &username, &password) {
            Ok(device) => {
                sessions.record(&device, &client_id);
                info!(
                    listener,
                    device = %device,
                    client_id = ?shorten(&client_id),
                    "accepted MQTT CONNECT"
                );
                true
            }
            Err(refusal) => {
                info!(
                    listener,
                    client_id = ?shorten(&client_id),
                    username = ?shorten(&username),
                    reason = %refusal,
                    "refused MQTT CONNECT"
                );
                false
            }
        };
        ready(accepted)
    }
}

/// At most 160 characters of an untrusted value, for logs; `?` formatting
/// escapes control characters.
fn shorten(value: &str) -> &str {
    match value.char_indices().nth(160) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

fn respond_forever(mut responder: Responder, mut link_tx: LinkTx, mut link_rx: LinkRx) {
    loop {
        match link_rx.recv() {
            Ok(Some(Notification::Forward(forward))) => {
                let Ok(topic) = std::str::from_utf8(&forward.publish.topic) else {
                    continue;
                };
                if let Some(reply) = responder.respond(topic, &forward.publish.payload)
                    && let Err(e) = link_tx.publish(reply.topic, reply.payload)
                {
                    error!(error = %e, "cannot publish a reply; the responder stops");
                    return;
                }
            }
            // The router parks a link whose queue filled; ask to go on.
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = link_rx.ready() {
                    error!(error = %e, "responder link closed");
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "responder link closed");
                return;
            }
        }
    }
}

/// rumqttd reads the TLS files on every connection and only logs when they
/// are wrong; check them once up front so that a bad path fails at start.
fn check_tls_files(tls: &TlsSettings) -> Result<(), SandboxError> {
    let check = |what: &str, path: &Path, marker: &str| {
        let text = std::fs::read_to_string(path).map_err(|source| SandboxError::Read {
            path: path.to_owned(),
            source,
        })?;
        if text.contains(marker) {
            Ok(())
        } else {
            Err(SandboxError::Settings(format!(
                "the TLS {what} file {} holds no PEM block ending in {marker:?}",
                path.display()
            )))
        }
    };
    check("CA", &tls.ca, "CERTIFICATE-----")?;
    check("certificate", &tls.cert, "CERTIFICATE-----")?;
    check("key", &tls.key, "PRIVATE KEY-----")
}

fn path_string(path: &Path) -> Result<String, SandboxError> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        SandboxError::Settings(format!("path {} is not valid UTF-8", path.display()))
    })
}
