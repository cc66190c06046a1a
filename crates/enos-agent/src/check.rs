//! `enos-agent check`'s reach: every endpoint the config names, one
//! step each, so that a wrong port fails `check` instead of `run`.
//!
//! 1. [`enos_broker`]: a TCP connection to `[enos] broker`, and with
//!    `ssl://` a TLS handshake with `[enos.tls]`.
//! 2. [`enos_login`]: a real CONNECT with the credential the signer just
//!    issued, up to CONNACK, then DISCONNECT. EnOS keeps one session per
//!    device: this login takes over the session of an agent running for
//!    the same device, which loses its connection once and reconnects
//!    (its backoff); the step's line says so.
//! 3. [`local_broker`]: with `[bridge]`, a CONNECT to the local broker
//!    with its username and password, then DISCONNECT; under the bridge's
//!    client id with `-check` appended, so that a running bridge keeps its
//!    session.
//!
//! Each step answers `Ok(what worked)` or `Err(what failed and why)`,
//! the failures said as `run` would say them ([`crate::refusal::classify_for`]).

use std::{sync::Arc, time::Duration};

use rumqttc::{Event, EventLoop, Incoming, Outgoing};

use crate::{
    config::{BridgeConfig, Config},
    issued::IssuedCredential,
    refusal::{Phase, classify_for},
};

/// How long a DISCONNECT may take before the check moves on.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);

/// Step 1: the EnOS broker accepts a TCP connection and, with `ssl://`,
/// a TLS handshake with `[enos.tls]`'s certificate.
pub async fn enos_broker(config: &Config) -> Result<String, String> {
    let broker = &config.enos.broker;
    let timeout = config.enos.connect_timeout;
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((broker.host.as_str(), broker.port)),
    )
    .await
    .map_err(|_| {
        format!(
            "EnOS broker {broker}: no TCP connection within {} (enos.connect_timeout)",
            humantime::format_duration(timeout)
        )
    })?
    .map_err(|e| format!("EnOS broker {broker}: TCP connection failed: {e}"))?;
    if !broker.tls {
        return Ok(format!("EnOS broker {broker}: TCP connection accepted"));
    }
    let Some(tls) = &config.enos.tls else {
        return Err(format!("EnOS broker {broker}: ssl:// needs [enos.tls]"));
    };
    let client_config =
        crate::tls::mqtt_client_config(tls).map_err(|e| format!("EnOS broker {broker}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(broker.host.clone())
        .map_err(|e| format!("EnOS broker {broker}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&client_config));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(_)) => Ok(format!(
            "EnOS broker {broker}: TLS handshake done with {}",
            tls.cert.display()
        )),
        Ok(Err(e)) => {
            let tls_error = rumqttc::TlsError::Io(e);
            let failure = classify_for(
                &rumqttc::ConnectionError::Tls(tls_error),
                Phase::Connecting,
                config,
            );
            Err(format!("EnOS broker {broker}: {}", failure.reason))
        }
        Err(_) => Err(format!(
            "EnOS broker {broker}: no TLS handshake within {} (enos.connect_timeout)",
            humantime::format_duration(timeout)
        )),
    }
}

/// Polls `eventloop` for its first event (connect, CONNECT, CONNACK)
/// within `timeout`.
async fn first_event(
    eventloop: &mut EventLoop,
    timeout: Duration,
) -> Result<Result<Event, rumqttc::ConnectionError>, ()> {
    tokio::time::timeout(timeout, eventloop.poll())
        .await
        .map_err(|_| ())
}

/// Sends DISCONNECT and drives the event loop until it is out (bounded).
async fn disconnect(client: &rumqttc::AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Step 2: EnOS answers CONNECT with `credential` with an accepting
/// CONNACK; then DISCONNECT at once.
pub async fn enos_login(config: &Config, credential: &IssuedCredential) -> Result<String, String> {
    let broker = &config.enos.broker;
    let (client, mut eventloop) =
        crate::session::enos_client(config).map_err(|e| format!("EnOS login: {e}"))?;
    eventloop
        .mqtt_options
        .set_client_id(credential.mqtt_client_id.clone())
        .set_credentials(credential.username.clone(), credential.password());
    let wait = config.enos.connect_timeout + Duration::from_secs(5);
    let first = first_event(&mut eventloop, wait).await;
    // The password has been sent: do not keep it in the options.
    eventloop
        .mqtt_options
        .set_credentials(credential.username.clone(), "");
    match first {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
            disconnect(&client, &mut eventloop).await;
            Ok(format!(
                "EnOS broker {broker}: CONNACK accepted the login of {} (client id {}); disconnected at once. EnOS keeps one session per device: an agent running for {} lost its connection to this check and reconnects by itself",
                config.device.id(),
                credential.mqtt_client_id,
                config.device.id()
            ))
        }
        Ok(Ok(_)) => Err(format!(
            "EnOS broker {broker}: CONNECT answered with another packet than CONNACK: is this an MQTT broker?"
        )),
        Ok(Err(e)) => Err(format!(
            "EnOS broker {broker}: {}",
            classify_for(&e, Phase::Connecting, config).reason
        )),
        Err(()) => Err(format!(
            "EnOS broker {broker}: no CONNACK within {}",
            humantime::format_duration(wait)
        )),
    }
}

/// Step 3: the local broker accepts the bridge's login; then DISCONNECT.
pub async fn local_broker(bridge: &BridgeConfig) -> Result<String, String> {
    let url = &bridge.local_broker;
    let (client, mut eventloop) =
        crate::bridge::local_client(bridge).map_err(|e| format!("local broker {url}: {e}"))?;
    let client_id = format!("{}-check", bridge.client_id);
    eventloop.mqtt_options.set_client_id(client_id.clone());
    let wait = Duration::from_secs(10);
    match first_event(&mut eventloop, wait).await {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
            disconnect(&client, &mut eventloop).await;
            Ok(format!(
                "local broker {url}: CONNACK accepted client id {client_id}{}",
                bridge
                    .username
                    .as_ref()
                    .map_or(String::new(), |u| format!(" as user {u}"))
            ))
        }
        Ok(Ok(_)) => Err(format!(
            "local broker {url}: CONNECT answered with another packet than CONNACK: is this an MQTT broker?"
        )),
        Ok(Err(e)) => Err(format!(
            "local broker {url}: {}",
            crate::refusal::classify(&e, Phase::Connecting).reason
        )),
        Err(()) => Err(format!(
            "local broker {url}: no CONNACK within {}",
            humantime::format_duration(wait)
        )),
    }
}
