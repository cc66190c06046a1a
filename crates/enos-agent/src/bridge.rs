//! The bridge to the gateway's local MQTT broker.
//!
//! Upstream: messages on the configured local filters become EnOS
//! measurepoint or event posts (wrapped in the EnOS envelope where
//! configured) and wait in the bounded upstream queue; replies a local
//! application publishes under `local_reply_prefix` go to the EnOS
//! `_reply` topic. Downstream: the session pushes service calls and
//! upstream `_reply`s into the downstream queue; this task publishes them
//! on the local broker.

use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Publish, QoS, SubscribeFilter,
};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, FailureKind},
    config::{BackoffConfig, BridgeConfig, UpstreamRoute, UpstreamTarget},
    error::AgentError,
    shared::{Outbound, Shared},
    topics::envelope,
};

/// The local connection's pacing: the local broker is on the same host, so
/// retries are quick and capped low.
fn local_backoff(config: &BackoffConfig) -> BackoffConfig {
    BackoffConfig {
        min: config.min.min(Duration::from_millis(500)),
        max: config.max.min(Duration::from_secs(10)),
        jitter: config.jitter,
        refusal_factor: 1,
        reset_after: Duration::ZERO,
    }
}

/// Reads the local broker's password file: a private file (the
/// workspace's one rule, [`enos_domain::private_file::read`]), read into
/// a buffer wiped on drop; one trailing line end is not part of it. The
/// returned copy is the one rumqttc keeps in its options for reconnects
/// (it takes a `String` and cannot wipe it).
fn local_password(path: &std::path::Path) -> Result<String, AgentError> {
    let field = "bridge.password_file";
    let bytes = enos_domain::private_file::read(path)
        .map_err(|e| AgentError::config(field, e.to_string()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| AgentError::config(field, format!("{} is not UTF-8 text", path.display())))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Builds the rumqttc client for the local broker.
pub fn local_client(bridge: &BridgeConfig) -> Result<(AsyncClient, EventLoop), AgentError> {
    let url = &bridge.local_broker;
    let mut options = MqttOptions::new(bridge.client_id.clone(), url.host.clone(), url.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        // A persistent session under a stable client id: what the local
        // broker holds for the agent while it restarts is delivered when
        // it is back, and what it delivered but the agent did not
        // acknowledge is delivered again.
        .set_clean_session(false)
        // A local publish is acknowledged once it is in the spool, on disk
        // per the policy (or, without a spool, in the memory queue).
        .set_manual_acks(true)
        .set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(username) = &bridge.username {
        let password = match &bridge.password_file {
            Some(path) => local_password(path)?,
            None => String::new(),
        };
        options.set_credentials(username.clone(), password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    eventloop.network_options.set_connection_timeout(5);
    Ok((client, eventloop))
}

/// The local filters the bridge subscribes to.
fn local_filters(bridge: &BridgeConfig, shared: &Shared) -> Vec<SubscribeFilter> {
    let mut filters: Vec<SubscribeFilter> = bridge
        .upstream
        .iter()
        .map(|r| SubscribeFilter::new(r.local.clone(), QoS::AtLeastOnce))
        .collect();
    if let Some(map) = &shared.downstream_map {
        filters.push(SubscribeFilter::new(
            map.local_reply_filter(),
            QoS::AtLeastOnce,
        ));
    }
    filters
}

/// Runs the local side until `shutdown`.
pub async fn run(
    bridge: &BridgeConfig,
    backoff: &BackoffConfig,
    client: AsyncClient,
    mut eventloop: EventLoop,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(local_backoff(backoff));
    let filters = local_filters(bridge, shared);
    let mut connected = false;
    let mut client_full = false;
    // Local publishes spooled but not yet synced: acknowledged after the
    // sync that covers them.
    let mut held: std::collections::VecDeque<(u64, Publish)> = Default::default();
    loop {
        if let Some(spool) = &shared.spool {
            release_acks(&client, &mut held, spool.synced_upto());
        }
        if connected {
            client_full |= !shared.feed_downstream(&client);
        }
        tokio::select! {
            polled = eventloop.poll() => {
                client_full = false;
                match polled {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        connected = true;
                        backoff.reset();
                        tracing::info!(broker = %bridge.local_broker, "connected to the local broker");
                        if filters.is_empty() {
                            shared.status.send_modify(|s| s.local_broker_connected = Some(true));
                        } else if let Err(e) = client.try_subscribe_many(filters.clone()) {
                            tracing::error!(error = %e, "could not queue the local subscriptions");
                        }
                    }
                    // Reported connected only once the local subscriptions
                    // hold: a local publish before SUBACK would be lost.
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        shared.status.send_modify(|s| s.local_broker_connected = Some(true));
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        match from_local(&p, bridge, shared) {
                            Some(seq) => held.push_back((seq, p)),
                            None => {
                                if let Err(e) = client.try_ack(&p) {
                                    tracing::debug!(error = %e, "local acknowledgement not queued; the broker sends it again");
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        connected = false;
                        // The broker sends them again on the next connection.
                        held.clear();
                        shared.status.send_modify(|s| s.local_broker_connected = Some(false));
                        let delay = backoff.next_delay(FailureKind::Network);
                        tracing::warn!(broker = %bridge.local_broker, error = %e, delay_ms = delay.delay.as_millis() as u64, "local broker unavailable");
                        tokio::select! {
                            () = tokio::time::sleep(delay.delay) => {}
                            () = shutdown.cancelled() => break,
                        }
                    }
                }
            }
            () = shared.downstream.wait_pushed(), if connected && !client_full => {}
            () = async { if let Some(spool) = &shared.spool { spool.wait_synced().await } }, if !held.is_empty() => {}
            () = shutdown.cancelled() => {
                if connected && client.try_disconnect().is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Ok(ev) = eventloop.poll().await {
                            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                                break;
                            }
                        }
                    }).await;
                }
                break;
            }
        }
    }
    shared
        .status
        .send_modify(|s| s.local_broker_connected = Some(false));
}

/// Acknowledges the held local publishes the spool has synced.
fn release_acks(
    client: &AsyncClient,
    held: &mut std::collections::VecDeque<(u64, Publish)>,
    synced: u64,
) {
    while let Some((seq, p)) = held.front() {
        if *seq > synced {
            break;
        }
        if client.try_ack(p).is_err() {
            // The channel is full: the next turn of the loop tries again.
            break;
        }
        held.pop_front();
    }
}

/// Turns a local message into an upstream one; `Some(seq)` when it went
/// to the spool (acknowledge once synced that far), `None` when it may be
/// acknowledged now (in memory, or dropped for good).
fn from_local(p: &Publish, bridge: &BridgeConfig, shared: &Shared) -> Option<u64> {
    let topic = p.topic.as_str();
    if let Some(map) = &shared.downstream_map {
        if let Some(rest) = map.reply_rest(topic) {
            return enqueue(
                shared,
                Outbound {
                    topic: shared.topics.service_reply(rest),
                    payload: p.payload.to_vec(),
                    qos: QoS::AtMostOnce,
                },
            );
        }
    }
    let Some(route) = bridge
        .upstream
        .iter()
        .find(|r| crate::topics::filter_matches(topic, &r.local))
    else {
        tracing::debug!(topic, "local message with no route");
        return None;
    };
    match upstream_message(route, &p.payload, shared) {
        Ok(m) => enqueue(shared, m),
        Err(reason) => {
            tracing::warn!(topic, reason, "local message dropped");
            None
        }
    }
}

/// The EnOS message for a local payload on `route`.
pub fn upstream_message(
    route: &UpstreamRoute,
    payload: &[u8],
    shared: &Shared,
) -> Result<Outbound, &'static str> {
    let (topic, method) = shared.topics.upstream_target(route);
    let qos = if route.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let payload = match (route.wrap, method, route.target) {
        (true, Some(method), t) if t != UpstreamTarget::Raw => {
            let params: serde_json::Value = serde_json::from_slice(payload)
                .map_err(|_| "payload is not JSON, so it cannot be wrapped")?;
            envelope(&shared.ids.next(), &method, params)
        }
        _ => payload.to_vec(),
    };
    Ok(Outbound {
        topic,
        payload,
        qos,
    })
}

fn enqueue(shared: &Shared, m: Outbound) -> Option<u64> {
    shared.enqueue_upstream(m)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::BrokerUrl;

    fn bridge(password_file: &std::path::Path) -> BridgeConfig {
        BridgeConfig {
            local_broker: BrokerUrl::try_from("tcp://127.0.0.1:1883".to_owned()).expect("url"),
            client_id: "bridge".into(),
            username: Some("local".into()),
            password_file: Some(password_file.to_owned()),
            upstream: Vec::new(),
            downstream: None,
        }
    }

    /// #23 finding 14: the bridge's local-broker password file is a private file, read once and wiped.
    #[tokio::test]
    async fn the_local_password_file_must_be_private() {
        // #23 finding 14: the bridge read its password file whatever its
        // mode (and into a plain String).
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("local-password");
        std::fs::write(&path, "LocalBrokerPw9\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = local_client(&bridge(&path))
            .map(|_| ())
            .expect_err("a world-readable password file is refused");
        let text = err.to_string();
        assert!(
            text.contains("bridge.password_file") && text.contains("chmod 600"),
            "{text}"
        );
        assert!(!text.contains("LocalBrokerPw9"), "{text}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(local_password(&path).expect("private"), "LocalBrokerPw9");
        local_client(&bridge(&path)).expect("a private password file is read");
    }
}
