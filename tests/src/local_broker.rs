//! [`LocalBroker`]: the gateway's local MQTT broker for the demo: rumqttd
//! in this process, anonymous, on a free port of 127.0.0.1.
//!
//! The demo must run on a machine with nothing but the Rust toolchain, so
//! it cannot count on Mosquitto (the suite uses Mosquitto, which the test
//! set-up installs). rumqttd has no stop API: its threads end with the
//! process, which is fine for the demo's one broker per run.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use enos_sandbox::PortReservation;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::error::{E2eError, Result};

/// A running local broker.
#[derive(Debug)]
pub struct LocalBroker {
    /// Holds the port (rumqttd binds it with `SO_REUSEADDR`).
    reservation: PortReservation,
}

impl LocalBroker {
    /// Starts rumqttd on a free port and returns once it accepts
    /// connections.
    pub fn start() -> Result<Self> {
        let reservation = PortReservation::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = reservation.addr();
        let server = ServerSettings {
            name: "local".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 5000,
                max_payload_size: 256 * 1024,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024 * 1024,
                max_segment_count: 10,
                ..RouterConfig::default()
            },
            v4: Some(HashMap::from([("local".to_owned(), server)])),
            ..Config::default()
        };
        let mut broker = Broker::new(config);
        std::thread::Builder::new()
            .name("local-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "the local broker stopped");
                }
            })
            .map_err(E2eError::io("starting the local broker's thread"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(E2eError::failed(format!(
                    "the local broker did not listen on {addr} within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(LocalBroker { reservation })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.reservation.addr()
    }
}
