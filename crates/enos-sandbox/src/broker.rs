//! [`RunningBroker`]: rumqttd started in this process behind the sandbox's
//! front ([`crate::front`]: the public listeners, the checks and topic
//! rules), with the responder.
//!
//! rumqttd has no stop API: its listener threads run until the process
//! ends. Start this once per process (the `enos-sandbox` binary does);
//! tests use `enos_testkit::sandbox::Sandbox`, which runs the binary as a child.

use std::{
    collections::HashMap,
    future::ready,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    thread,
    time::Duration,
};

use rumqttd::{
    Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings,
    local::{LinkRx, LinkTx},
};
use tracing::error;
use zeroize::Zeroizing;

use crate::{
    auth::Authenticator,
    config::Settings,
    console::ConsoleLogin,
    devices::DeviceStore,
    enos_api::EnosApi,
    error::SandboxError,
    front::{self, FrontContext},
    ports::PortReservation,
    readiness::ListenWatch,
    responder::{REQUEST_FILTERS, Responder},
    sessions::SessionTracker,
    sub_devices::SubDeviceSessions,
};

/// rumqttd's name (and thread name) for its internal listener.
const INTERNAL_LISTENER: &str = "enos-internal";
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
    /// The actual EnOS certificate API address, when configured.
    enos_api_addr: Option<SocketAddr>,
    /// rumqttd's own listener, behind the front: take-overs go there.
    internal_addr: SocketAddr,
    /// The devices in force; reloads replace them.
    store: Arc<DeviceStore>,
    /// Who logged in as which device, so a reload can drop revoked sessions.
    sessions: Arc<SessionTracker>,
    /// Held for the life of the broker: rumqttd listens on these ports,
    /// and holding them costs nothing (see [`crate::ports`]).
    _reservations: Vec<PortReservation>,
}

impl RunningBroker {
    /// Loads the devices, starts rumqttd on its internal listener with the
    /// responder, then the front's public listeners, and returns once all
    /// listen (or fails with the reason). `watch` must be fed by a
    /// [`crate::ListenWatchLayer`] in the global `tracing` subscriber.
    /// Must be called inside a tokio runtime: the front runs on it.
    pub fn start(settings: &Settings, watch: &ListenWatch) -> Result<Self, SandboxError> {
        let store = Arc::new(DeviceStore::open(&settings.devices)?);
        let auth = Authenticator::new(Arc::clone(&store), settings.freshness, settings.md5);
        let sessions = Arc::new(SessionTracker::new()?);
        let sub_devices = Arc::new(SubDeviceSessions::new(settings.max_sub_devices_per_gateway));
        let console = settings
            .console
            .as_ref()
            .map(|c| ConsoleLogin::load(&c.user, &c.password_file))
            .transpose()?;
        let enos_api = settings
            .enos_api
            .clone()
            .map(|api| EnosApi::new(api, Arc::clone(&store)).map(Arc::new))
            .transpose()?;
        let enos_roots = enos_api.as_ref().map(|a| a.root_ders()).unwrap_or_default();
        let tls_config = settings
            .tls
            .as_ref()
            .map(|tls| front::tls_config(tls, &enos_roots))
            .transpose()?;

        // rumqttd routes; only the front (and take-overs) reach it.
        let internal = PortReservation::reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let internal_addr = internal.addr();
        let mut servers = HashMap::new();
        servers.insert(
            INTERNAL_LISTENER.to_owned(),
            internal_server(internal_addr, settings, &sessions),
        );
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
        let responder = Responder::new(auth.clone(), Arc::clone(&sub_devices));
        spawn("enos-sandbox-responder", move || {
            respond_forever(responder, link_tx, link_rx)
        })?;
        spawn("enos-sandbox-broker", move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "rumqttd stopped");
            }
        })?;
        watch
            .wait(INTERNAL_LISTENER, LISTEN_TIMEOUT)
            .map_err(|reason| SandboxError::Listen {
                addr: internal_addr,
                reason,
            })?;

        // The front: the public listeners.
        let mut reservations = vec![internal, PortReservation::reserve(settings.mqtt_listen)?];
        let mqtt_addr = reservations[1].addr();
        let plain = front::bind(mqtt_addr)?;
        let tls = match (&settings.tls, tls_config) {
            (Some(tls), Some(config)) => {
                let reservation = PortReservation::reserve(tls.listen)?;
                let addr = reservation.addr();
                reservations.push(reservation);
                Some((addr, front::bind(addr)?, tls.clone(), config))
            }
            _ => None,
        };
        let context = Arc::new(FrontContext {
            auth,
            sessions: Arc::clone(&sessions),
            sub_devices,
            console,
            upstream: internal_addr,
            max_packet: settings.max_payload_bytes.saturating_add(1024),
            connect_timeout: settings.connect_timeout,
            certificate_rule: settings
                .tls
                .as_ref()
                .map(|t| t.device_identity.clone())
                .unwrap_or_default(),
            session_store: front::SessionStore::default(),
            max_filters: settings.max_filters_per_session,
            enos_api: enos_api.clone(),
            record: settings
                .record
                .as_deref()
                .map(crate::record::Record::open)
                .transpose()?
                .map(Arc::new),
        });
        let tokio_listener = |addr: SocketAddr, listener: std::net::TcpListener| {
            tokio::net::TcpListener::from_std(listener).map_err(|e| SandboxError::Listen {
                addr,
                reason: e.to_string(),
            })
        };
        tokio::spawn(front::serve_plain(
            tokio_listener(mqtt_addr, plain)?,
            Arc::clone(&context),
        ));
        let tls_addr = match tls {
            Some((addr, listener, tls, config)) => {
                tokio::spawn(front::serve_tls(
                    tokio_listener(addr, listener)?,
                    tls,
                    enos_roots,
                    config,
                    context,
                ));
                Some(addr)
            }
            None => None,
        };
        let enos_api_addr = match (&settings.enos_api, enos_api) {
            (Some(api_settings), Some(api)) => {
                let reservation = PortReservation::reserve(api_settings.listen)?;
                let addr = reservation.addr();
                reservations.push(reservation);
                let listener = tokio_listener(addr, front::bind(addr)?)?;
                let https = api.tls_config()?;
                tokio::spawn(crate::enos_api::serve(listener, api, https));
                Some(addr)
            }
            _ => None,
        };
        Ok(RunningBroker {
            mqtt_addr,
            tls_addr,
            enos_api_addr,
            internal_addr,
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

    /// Where EnOS's certificate API listens, if configured.
    pub fn enos_api_addr(&self) -> Option<SocketAddr> {
        self.enos_api_addr
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
        let dropped_sessions = self.sessions.drop_revoked(self.internal_addr, &old, &new);
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

/// rumqttd's internal listener: it accepts only the process's own
/// connections (the front's and take-overs), by the token.
fn internal_server(
    listen: SocketAddr,
    settings: &Settings,
    sessions: &Arc<SessionTracker>,
) -> ServerSettings {
    let mut server = ServerSettings {
        name: INTERNAL_LISTENER.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            // Checked by `Settings::resolve`: at most u16::MAX ms.
            connection_timeout_ms: u16::try_from(settings.connect_timeout.as_millis())
                .unwrap_or(u16::MAX),
            max_payload_size: settings.max_payload_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let sessions = Arc::clone(sessions);
    server.set_auth_handler(
        move |_client_id: String, username: String, password: String| {
            let password = Zeroizing::new(password);
            ready(sessions.is_internal(&username, &password))
        },
    );
    server
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
