//! [`MqttClient`]: a small rumqttc client that plays the EnOS console (on
//! the sandbox) or the gateway's local application (on the local broker).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS, TlsConfiguration,
    Transport,
};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::error::{E2eError, Result};

/// How a client logs in.
#[derive(Clone, Default)]
pub struct Login {
    /// The MQTT client id.
    pub client_id: String,
    /// Username and password, if any. Never printed.
    pub credentials: Option<(String, String)>,
    /// TLS (rustls config with the CA and, if any, a client certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| (u, "[REDACTED]")),
            )
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Something the client's event loop saw.
#[derive(Debug)]
enum Seen {
    /// A PUBLISH: topic and payload.
    Publish(String, Vec<u8>),
    /// A SUBACK.
    SubAck,
}

/// A connected client; its event loop runs in a task until drop.
#[derive(Debug)]
pub struct MqttClient {
    /// Sends requests to the event loop.
    client: AsyncClient,
    /// What the event loop saw.
    rx: mpsc::UnboundedReceiver<Seen>,
    /// The event loop.
    task: JoinHandle<()>,
}

fn options(addr: SocketAddr, login: &Login) -> MqttOptions {
    let mut options = MqttOptions::new(login.client_id.clone(), addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some((user, password)) = &login.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &login.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(tls),
        )));
    }
    options
}

/// Connects once and reports the broker's answer: `Ok(())` on CONNACK
/// accepted, `Err(error)` with rumqttc's error otherwise (a refusal with
/// a CONNACK code, or the connection closed before any CONNACK).
pub async fn try_connect(addr: SocketAddr, login: &Login, timeout: Duration) -> Result<(), String> {
    let (client, mut eventloop) = AsyncClient::new(options(addr, login), 10);
    eventloop
        .network_options
        .set_connection_timeout(timeout.as_secs().max(1));
    let first = tokio::time::timeout(timeout, eventloop.poll()).await;
    let result = match first {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => Ok(()),
        Ok(Ok(other)) => Err(format!("unexpected first event {other:?}")),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    if result.is_ok() {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    }
    result
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("CONNACK refused: {code:?}"),
        other => other.to_string(),
    }
}

impl MqttClient {
    /// Connects and waits for CONNACK (up to `timeout`).
    pub async fn connect(addr: SocketAddr, login: &Login, timeout: Duration) -> Result<Self> {
        let (client, eventloop) = AsyncClient::new(options(addr, login), 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(drive(eventloop, tx, ready_tx));
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(MqttClient { client, rx, task }),
            Ok(Ok(Err(reason))) => {
                task.abort();
                Err(E2eError::failed(format!(
                    "MQTT client {} could not connect to {addr}: {reason}",
                    login.client_id
                )))
            }
            _ => {
                task.abort();
                Err(E2eError::Timeout {
                    what: format!("CONNACK for {} from {addr}", login.client_id),
                    after: timeout,
                })
            }
        }
    }

    /// Subscribes and waits for the SUBACK, so that nothing published
    /// afterwards is missed.
    pub async fn subscribe(&mut self, filter: &str, timeout: Duration) -> Result<()> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| E2eError::failed(format!("subscribe {filter}: {e}")))?;
        tokio::time::timeout(timeout, async {
            while let Some(seen) = self.rx.recv().await {
                if matches!(seen, Seen::SubAck) {
                    return Ok(());
                }
            }
            Err(E2eError::failed("the MQTT client's connection ended"))
        })
        .await
        .map_err(|_| E2eError::Timeout {
            what: format!("SUBACK for {filter}"),
            after: timeout,
        })?
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .map_err(|e| E2eError::failed(format!("publish on {topic}: {e}")))
    }

    /// The next message on `topic` within `timeout` (others are skipped).
    pub async fn recv_on(&mut self, topic: &str, timeout: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(timeout, async {
            while let Some(seen) = self.rx.recv().await {
                if let Seen::Publish(t, payload) = seen {
                    if t == topic {
                        return Some(payload);
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Disconnects politely.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Seen>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let _ = tx.send(Seen::Publish(p.topic.clone(), p.payload.to_vec()));
            }
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                let _ = tx.send(Seen::SubAck);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(describe(&e)));
                    return;
                }
                // A client of the suite never outlives a broker restart
                // on purpose: end, and let its owner notice.
                return;
            }
        }
    }
}
