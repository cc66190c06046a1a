//! [`Shared`]: what the session, the bridge and the sub-device logins
//! exchange.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{oneshot, watch};

use crate::{
    queue::BoundedQueue,
    status::AgentStatus,
    topics::{DeviceTopics, DownstreamMap, MessageIds},
};

/// One MQTT message on its way to a broker.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The QoS.
    pub qos: QoS,
}

/// A `combine/login_reply` (or any EnOS reply): `{id, code, message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnosReply {
    /// The request id it answers.
    pub id: String,
    /// 200 on success; see the EnOS reply codes.
    pub code: i64,
    /// EnOS's explanation, if any.
    pub message: String,
    /// The reply's `data` (`Null` when absent): `combine.login.batch`
    /// lists its logged-in and failed sub-devices there.
    pub data: serde_json::Value,
}

impl EnosReply {
    /// Parses a reply payload; `None` if it is not one.
    pub fn parse(payload: &[u8]) -> Option<EnosReply> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let id = match &v["id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        Some(EnosReply {
            id,
            code: v["code"].as_i64()?,
            message: v["message"].as_str().unwrap_or_default().to_owned(),
            data: v["data"].clone(),
        })
    }
}

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct Shared {
    /// Messages for EnOS: bridge data, local replies to service calls.
    pub upstream: BoundedQueue<Outbound>,
    /// Messages for the local broker: service calls, upstream `_reply`s.
    pub downstream: BoundedQueue<Outbound>,
    /// The status everybody updates.
    pub status: watch::Sender<AgentStatus>,
    /// `Some(n)` while the n-th EnOS connection is up, `None` while down;
    /// sub-device logins restart on every change.
    pub session: watch::Sender<Option<u64>>,
    /// Sub-device logins waiting for their reply, by request id.
    pub pending_logins: Mutex<HashMap<String, oneshot::Sender<EnosReply>>>,
    /// This device's EnOS topics.
    pub topics: DeviceTopics,
    /// Downstream topic mapping, when the bridge carries service calls.
    pub downstream_map: Option<DownstreamMap>,
    /// EnOS `_reply` topic → local topics the reply goes to.
    pub reply_routes: HashMap<String, Vec<String>>,
    /// Ids for envelopes this agent builds.
    pub ids: MessageIds,
    /// Upstream messages handed to the EnOS session.
    pub upstream_sent: AtomicU64,
    /// Downstream messages handed to the local broker.
    pub downstream_delivered: AtomicU64,
}

impl Shared {
    /// Copies the queue counters into the status.
    pub fn refresh_counters(&self) {
        self.status.send_modify(|s| {
            s.upstream_queued = self.upstream.len();
            s.upstream_dropped = self.upstream.dropped();
            s.upstream_sent = self.upstream_sent.load(Ordering::Relaxed);
            s.downstream_delivered = self.downstream_delivered.load(Ordering::Relaxed);
            s.downstream_dropped = self.downstream.dropped();
        });
    }

    /// Moves queued upstream messages into the EnOS client; `false` when
    /// its channel is full (the rest waits for the next poll).
    pub fn feed_upstream(&self, client: &AsyncClient) -> bool {
        self.feed(client, &self.upstream, &self.upstream_sent)
    }

    /// Moves queued downstream messages into the local client; `false`
    /// when its channel is full.
    pub fn feed_downstream(&self, client: &AsyncClient) -> bool {
        self.feed(client, &self.downstream, &self.downstream_delivered)
    }

    /// Moves messages from `queue` into `client`, counting each in
    /// `handed`, until the queue is empty (`true`) or the client's channel
    /// is full (`false`: the message goes back to the front).
    fn feed(
        &self,
        client: &AsyncClient,
        queue: &BoundedQueue<Outbound>,
        handed: &AtomicU64,
    ) -> bool {
        let mut moved = false;
        let mut room = true;
        while let Some(m) = queue.pop() {
            match client.try_publish(m.topic.clone(), m.qos, false, m.payload.clone()) {
                Ok(()) => {
                    moved = true;
                    handed.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    queue.push_front(m);
                    room = false;
                    break;
                }
            }
        }
        if moved {
            self.refresh_counters();
        }
        room
    }

    /// Hands a login reply to whoever waits for it.
    pub fn deliver_login_reply(&self, reply: EnosReply) {
        let waiter = self
            .pending_logins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&reply.id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(id = %reply.id, "login reply nobody waits for"),
        }
    }
}
