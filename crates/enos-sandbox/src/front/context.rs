//! What a front connection is handed: the [`FrontContext`] all of them
//! share and the [`Listener`] it came in on. A file of its own so that the
//! listeners (`front`, which build these) and the connection (which reads
//! them) each import it and not each other.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::session_state::SessionStore;
use crate::{
    auth::Authenticator, certificate::CertificateRule, console::ConsoleLogin, enos_api::EnosApi,
    sessions::SessionTracker, sub_devices::SubDeviceSessions,
};

/// The front's plain listener, in log lines.
pub const MQTT_LISTENER: &str = "enos-mqtt";
/// The front's TLS listener, in log lines.
pub const TLS_LISTENER: &str = "enos-mqtts";

/// What every front connection needs; shared by all of them.
pub(crate) struct FrontContext {
    /// Checks device logins against the device file.
    pub(crate) auth: Authenticator,
    /// Records which client ids logged in as which device (for reloads),
    /// and holds the token of the internal listener.
    pub(crate) sessions: Arc<SessionTracker>,
    /// Which sub-devices are online through which gateway.
    pub(crate) sub_devices: Arc<SubDeviceSessions>,
    /// The console login, when configured.
    pub(crate) console: Option<ConsoleLogin>,
    /// rumqttd's internal listener.
    pub(crate) upstream: SocketAddr,
    /// The largest packet accepted from a client.
    pub(crate) max_packet: usize,
    /// A client must send CONNECT within this.
    pub(crate) connect_timeout: Duration,
    /// Which device a TLS client certificate belongs to.
    pub(crate) certificate_rule: CertificateRule,
    /// The devices' sessions: their own filters, kept across reconnects.
    pub(crate) session_store: SessionStore,
    /// Filters one session may hold.
    pub(crate) max_filters: usize,
    /// EnOS's certificate API: a certificate of its CA is bound to a
    /// device by its serial instead of the certificate rule.
    pub(crate) enos_api: Option<Arc<EnosApi>>,
    /// `--record`: every device PUBLISH is written there first.
    pub(crate) record: Option<Arc<crate::record::Record>>,
}

/// Which public listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// EnOS's 11883.
    Plain,
    /// EnOS's 18883, two-way TLS.
    Tls,
}

impl Listener {
    /// The name in log lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Listener::Plain => MQTT_LISTENER,
            Listener::Tls => TLS_LISTENER,
        }
    }
}
