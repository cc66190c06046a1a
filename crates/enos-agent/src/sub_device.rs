//! Sub-device logins: after every (re)connect, the configured sub-devices
//! are logged in through the gateway in one `combine.login.batch` the
//! signer signed (one RPC, one publish); those the batch did not bring
//! online are then logged in one by one with `combine.login`, whose reply
//! gives each its reason. The gateway never sees a sub-device secret.
//!
//! A sub-device the signer refuses to sign for in the batch (not bound to
//! this gateway, unknown, disabled) is refused at once.
//!
//! | outcome | what happens |
//! |---|---|
//! | 200 | online |
//! | signer refuses (not bound to this gateway, unknown, disabled) | logged, given up on this connection |
//! | 742 sign check failed | retried with a fresh sign (a rotation may have raced) |
//! | 429, 5xx, no reply in time, signer unreachable | retried with backoff |
//! | 705, 723, 740, 746, 770, 771, other | logged with the reason, given up on this connection |

use rumqttc::{AsyncClient, QoS};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, FailureKind},
    config::{Config, SubDeviceConfig},
    error::SignerClientError,
    shared::{EnosReply, Shared},
    signer::SignerClient,
    status::{SubDeviceState, SubDeviceStatus},
    topics::envelope,
};

/// What a reply code means for the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// Logged in.
    Online,
    /// Worth another attempt after a pause.
    Retry,
    /// Another attempt on this connection would get the same answer.
    GiveUp,
}

/// Classifies a `combine.login_reply` code.
pub fn verdict(code: i64) -> ReplyVerdict {
    match code {
        200 => ReplyVerdict::Online,
        742 | 429 | 500..=599 => ReplyVerdict::Retry,
        _ => ReplyVerdict::GiveUp,
    }
}

/// What an EnOS code means, for the log.
pub fn describe(code: i64) -> &'static str {
    match code {
        200 => "ok",
        401 => "authentication failed",
        402 => "device does not exist",
        429 => "too many requests",
        460 => "bad parameter",
        705 => "sub-device not found",
        723 => "sub-device disabled",
        740 => "not a sub-device of this gateway",
        742 => "sign check failed",
        746 => "sub-device must log in over TLS",
        770 => "dynamic activation not allowed",
        771 => "sub-device may not connect directly",
        _ => "unknown code",
    }
}

/// Logs in the sub-devices after every connect, until `shutdown`.
pub async fn run<S: SignerClient>(
    config: &Config,
    signer: &S,
    client: AsyncClient,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    if config.sub_devices.is_empty() {
        return;
    }
    shared.status.send_modify(|s| {
        s.sub_devices = config
            .sub_devices
            .iter()
            .map(|d| SubDeviceStatus {
                product_key: d.product_key.to_string(),
                device_key: d.device_key.to_string(),
                state: SubDeviceState::Pending,
                connection: 0,
            })
            .collect();
    });
    let mut session = shared.session.subscribe();
    let mut last = 0u64;
    loop {
        let generation = tokio::select! {
            r = session.wait_for(|g| g.is_some_and(|g| g != last)) => match r {
                Ok(g) => g.unwrap_or_default(),
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        last = generation;
        set_all(shared, SubDeviceState::Pending, generation);
        let logins = async {
            let set = |index: usize, state: SubDeviceState| {
                shared.status.send_modify(|s| {
                    s.sub_devices[index].state = state;
                    s.sub_devices[index].connection = generation;
                });
            };
            let rest = login_batch(config, signer, &client, shared, &set).await;
            for index in rest {
                let state =
                    login(config, signer, &client, shared, &config.sub_devices[index]).await;
                set(index, state);
            }
        };
        tokio::select! {
            () = logins => {}
            // Disconnected or reconnected: start over on the next connection.
            _ = session.wait_for(|g| *g != Some(generation)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

fn set_all(shared: &Shared, state: SubDeviceState, connection: u64) {
    shared.status.send_modify(|s| {
        for d in &mut s.sub_devices {
            d.state = state.clone();
            d.connection = connection;
        }
    });
}

/// Logs in every sub-device with one `combine.login.batch`; returns the
/// indexes of those it did not settle (not online, not refused by the
/// signer), for single logins.
async fn login_batch<S: SignerClient>(
    config: &Config,
    signer: &S,
    client: &AsyncClient,
    shared: &Shared,
    set: &impl Fn(usize, SubDeviceState),
) -> Vec<usize> {
    let all: Vec<usize> = (0..config.sub_devices.len()).collect();
    let index_of = |pk: &str, dk: &str| {
        config
            .sub_devices
            .iter()
            .position(|s| s.product_key.as_str() == pk && s.device_key.as_str() == dk)
    };
    let batch = match signer
        .sign_sub_device_login_batch(&config.sub_devices)
        .await
    {
        Ok(batch) => batch,
        Err(e) => {
            tracing::warn!(error = %e, "no batch login from the signer; logging sub-devices in one by one");
            return all;
        }
    };
    for (pk, dk, reason) in &batch.refused {
        tracing::error!(sub_device = %format!("{pk}/{dk}"), reason = %reason, "signer refused to sign the sub-device login");
        if let Some(index) = index_of(pk, dk) {
            set(
                index,
                SubDeviceState::Refused {
                    reason: format!("signer: {reason}"),
                },
            );
        }
    }
    let signed: Vec<usize> = batch
        .entries
        .iter()
        .filter_map(|e| index_of(&e.product_key, &e.device_key))
        .collect();
    if signed.is_empty() {
        return Vec::new();
    }
    let params = batch.params_json();
    drop(batch);
    let reply = request(
        client,
        shared,
        shared.topics.combine_login_batch(),
        "combine.login.batch",
        params,
        config.sub_device_login.reply_timeout,
    )
    .await;
    let Some(reply) = reply.filter(|r| r.code == 200) else {
        tracing::warn!("the batch login got no 200 in time; logging sub-devices in one by one");
        return signed;
    };
    let mut online = vec![false; config.sub_devices.len()];
    if let Some(logged_in) = reply.data["loginedSubDevices"].as_array() {
        for entry in logged_in {
            let pk = entry["productKey"].as_str().unwrap_or_default();
            let dk = entry["deviceKey"].as_str().unwrap_or_default();
            if let Some(index) = index_of(pk, dk) {
                online[index] = true;
                set(index, SubDeviceState::Online);
            }
        }
    }
    let online_count = online.iter().filter(|o| **o).count();
    tracing::info!(
        online = online_count,
        signed = signed.len(),
        "sub-devices logged in by batch"
    );
    // The rest (failed in the batch, or not mentioned) one by one: each
    // single reply says why.
    signed.into_iter().filter(|i| !online[*i]).collect()
}

/// Publishes one `method` request on `topic` and waits up to `timeout`
/// for its reply (routed back by id); `None` when none came.
async fn request(
    client: &AsyncClient,
    shared: &Shared,
    topic: String,
    method: &str,
    params: serde_json::Value,
    timeout: std::time::Duration,
) -> Option<EnosReply> {
    let id = shared.ids.next();
    let (tx, rx) = oneshot::channel();
    shared
        .pending_logins
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), tx);
    // The params carry signs: they go to the broker and nowhere else.
    let payload = envelope(&id, method, params);
    // Through `publish_other`, which keeps the spool's acknowledgement
    // order; the client's channel is small, so a full one is waited out.
    let mut queued = shared.publish_other(client, topic.clone(), QoS::AtLeastOnce, payload.clone());
    for _ in 0..50 {
        if !matches!(queued, Err(rumqttc::ClientError::TryRequest(_))) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        queued = shared.publish_other(client, topic.clone(), QoS::AtLeastOnce, payload.clone());
    }
    if let Err(e) = queued {
        tracing::warn!(method, error = %e, "could not queue the request");
    }
    let reply = tokio::time::timeout(timeout, rx)
        .await
        .ok()
        .and_then(Result::ok);
    shared
        .pending_logins
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    reply
}

/// One sub-device's login on the current connection.
async fn login<S: SignerClient>(
    config: &Config,
    signer: &S,
    client: &AsyncClient,
    shared: &Shared,
    sub: &SubDeviceConfig,
) -> SubDeviceState {
    let settings = &config.sub_device_login;
    let mut backoff = Backoff::new(config.backoff.clone());
    let who = sub.id().to_string();
    let mut last_failure = String::new();
    for attempt in 1..=settings.max_attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff.next_delay(FailureKind::Network).delay).await;
        }
        let signed = match signer.sign_sub_device_login(sub).await {
            Ok(s) => s,
            Err(e @ SignerClientError::Refused { .. }) => {
                tracing::error!(sub_device = %who, error = %e, "signer refused to sign the sub-device login");
                return SubDeviceState::Refused {
                    reason: format!("signer: {e}"),
                };
            }
            Err(e) => {
                tracing::warn!(sub_device = %who, error = %e, attempt, "signer unavailable for the sub-device login");
                last_failure = format!("signer: {e}");
                continue;
            }
        };
        let params = signed.params_json();
        drop(signed);
        let reply = request(
            client,
            shared,
            shared.topics.combine_login(),
            "combine.login",
            params,
            settings.reply_timeout,
        )
        .await;
        let Some(reply) = reply else {
            tracing::warn!(sub_device = %who, attempt, "no combine.login reply in time");
            last_failure = format!("no reply within {:?}", settings.reply_timeout);
            continue;
        };
        let reason = format!(
            "{} {} ({})",
            reply.code,
            describe(reply.code),
            reply.message.chars().take(200).collect::<String>()
        );
        match verdict(reply.code) {
            ReplyVerdict::Online => {
                tracing::info!(sub_device = %who, "sub-device logged in");
                return SubDeviceState::Online;
            }
            ReplyVerdict::GiveUp => {
                tracing::error!(sub_device = %who, reason = %reason, "EnOS refused the sub-device login");
                return SubDeviceState::Refused { reason };
            }
            ReplyVerdict::Retry => {
                tracing::warn!(sub_device = %who, reason = %reason, attempt, "sub-device login failed; retrying");
                last_failure = reason;
            }
        }
    }
    SubDeviceState::Failed {
        reason: last_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_are_classified() {
        assert_eq!(verdict(200), ReplyVerdict::Online);
        for retry in [742, 429, 500, 503] {
            assert_eq!(verdict(retry), ReplyVerdict::Retry, "{retry}");
        }
        for give_up in [705, 723, 740, 746, 770, 771, 401, 460] {
            assert_eq!(verdict(give_up), ReplyVerdict::GiveUp, "{give_up}");
        }
        assert_eq!(describe(740), "not a sub-device of this gateway");
    }
}
