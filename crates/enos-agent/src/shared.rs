//! [`Shared`]: what the session, the bridge and the sub-device logins
//! exchange.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rumqttc::{AsyncClient, ClientError, QoS};
use tokio::sync::{oneshot, watch};

use crate::{
    queue::BoundedQueue,
    spool::Spool,
    status::{AgentStatus, SpoolStatus},
    topics::{DeviceTopics, DownstreamMap, MessageIds},
};

/// Eviction warnings are logged at most this often (each names the count
/// since the last one and the total).
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Which publish on the EnOS client an `Outgoing::Publish` event is: the
/// events come in the order the publishes entered the client's channel.
#[derive(Debug, Clone, Copy)]
enum Tag {
    /// Not spooled (a sub-device login, the activation reply).
    Other,
    /// Spooled message `seq`, at this QoS.
    Spooled(u64, QoS),
}

/// What maps EnOS's acknowledgements back to spooled messages.
#[derive(Debug, Default)]
pub struct Acks {
    /// Publishes in the client's channel, oldest first.
    order: VecDeque<Tag>,
    /// Packet id → spooled sequence number, awaiting its PUBACK.
    awaiting: HashMap<u16, u64>,
}

/// An EnOS flow-control notice in force.
#[derive(Debug, Clone, Copy)]
pub struct TrafficLimit {
    /// Messages per second allowed; 0 pauses upstream.
    pub rate: f64,
    /// When the notice lapses.
    pub until: Instant,
    /// Its token bucket: (last refill, tokens).
    pub bucket: (Instant, f64),
}

/// The eviction warning's rate limit.
#[derive(Debug, Default)]
pub struct EvictionLog {
    /// When the last warning went out.
    last: Option<Instant>,
    /// Evictions since then.
    unlogged: u64,
}

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
    /// The disk spool, when `[spool]` is configured: upstream messages
    /// wait there instead of in `upstream`.
    pub spool: Option<Spool>,
    /// Maps `Outgoing::Publish` / PUBACK events back to spooled messages;
    /// every publish on the EnOS client goes through it while a spool is
    /// on, so that the order holds.
    pub acks: Mutex<Acks>,
    /// Rate-limits the eviction warning.
    pub eviction_log: Mutex<EvictionLog>,
    /// The replay's pace: no spooled message goes before this instant
    /// (the replay rate, or a sub-device not logged in yet).
    pub paced_until: Mutex<Option<Instant>>,
    /// The replay rate's token bucket: (last refill, tokens).
    pub replay_bucket: Mutex<Option<(Instant, f64)>>,
    /// EnOS's flow-control notice in force (`traffic/control`).
    pub traffic: Mutex<Option<TrafficLimit>>,
    /// Late measurepoints sent through `resume`.
    pub resumed: AtomicU64,
    /// `resume` replies other than 200.
    pub resume_refused: AtomicU64,
    /// The configured sub-devices' `/sys/{pk}/{dk}/` prefixes: their
    /// spooled data waits until their login on this connection settled.
    pub sub_device_prefixes: Vec<(String, String, String)>,
    /// A renewed EnOS certificate waiting to be proven by the session's
    /// next connect (`[enos.tls] source = "signer"`): put by the renewal,
    /// taken by the session.
    pub enos_candidate: Mutex<Option<crate::enos_cert::CandidateProof>>,
    /// Wakes a connected session to reconnect with `enos_candidate`.
    pub enos_candidate_ready: tokio::sync::Notify,
}

impl Shared {
    /// The candidate slot (a poisoned lock is still usable: it holds an
    /// `Option`).
    pub(crate) fn enos_candidate_slot(
        &self,
    ) -> MutexGuard<'_, Option<crate::enos_cert::CandidateProof>> {
        self.enos_candidate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the queue counters into the status.
    pub fn refresh_counters(&self) {
        let spool = self.spool.as_ref().map(|spool| {
            let st = spool.stats();
            SpoolStatus {
                path: spool.path().display().to_string(),
                messages: st.messages,
                bytes: st.bytes,
                evicted: st.evicted,
                appended: st.appended,
                delivered: st.delivered,
                resent: st.resent,
                resumed: self.resumed.load(Ordering::Relaxed),
                resume_refused: self.resume_refused.load(Ordering::Relaxed),
            }
        });
        self.status.send_modify(|s| {
            s.upstream_queued = self.upstream.len()
                + spool
                    .as_ref()
                    .map_or(0, |sp| usize::try_from(sp.messages).unwrap_or(usize::MAX));
            s.upstream_dropped =
                self.upstream.dropped() + spool.as_ref().map_or(0, |sp| sp.evicted);
            s.spool = spool;
            s.upstream_sent = self.upstream_sent.load(Ordering::Relaxed);
            s.downstream_delivered = self.downstream_delivered.load(Ordering::Relaxed);
            s.downstream_dropped = self.downstream.dropped();
        });
    }

    /// Takes an upstream message: into the spool when there is one (into
    /// the memory queue if the spool cannot be written: kept while the
    /// process lives), else into the memory queue. Counts and reports
    /// evictions. Returns the spool's sequence number when the message
    /// went there: its local acknowledgement waits until the spool is
    /// synced that far.
    pub fn enqueue_upstream(&self, m: Outbound) -> Option<u64> {
        let mut spooled = None;
        let evicted = match &self.spool {
            Some(spool) => match spool.append(&m, enos_domain::now_ms()) {
                Ok((seq, evicted)) => {
                    spooled = Some(seq);
                    evicted
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the spool; this message waits in memory");
                    u64::from(self.upstream.push(m))
                }
            },
            None => u64::from(self.upstream.push(m)),
        };
        if evicted > 0 {
            self.report_evictions(evicted);
        }
        self.refresh_counters();
        spooled
    }

    /// Logs evictions at most every [`EVICTION_LOG_INTERVAL`].
    pub fn report_evictions(&self, evicted: u64) {
        let mut log = self.eviction_log.lock().unwrap_or_else(|e| e.into_inner());
        log.unlogged += evicted;
        if log
            .last
            .is_some_and(|t| t.elapsed() < EVICTION_LOG_INTERVAL)
        {
            return;
        }
        let total = self.spool.as_ref().map_or(0, |s| s.stats().evicted) + self.upstream.dropped();
        match &self.spool {
            Some(_) => tracing::warn!(
                evicted = log.unlogged,
                total,
                "upstream spool full (max_bytes or max_age); evicted the oldest messages"
            ),
            None => tracing::warn!(
                dropped = log.unlogged,
                total,
                "upstream queue full; dropped the oldest message"
            ),
        }
        log.last = Some(Instant::now());
        log.unlogged = 0;
    }

    /// Whether upstream messages wait (spool or memory).
    pub fn upstream_waiting(&self) -> bool {
        !self.upstream.is_empty() || self.spool.as_ref().is_some_and(|s| !s.is_drained())
    }

    /// Resolves once an upstream message waits.
    pub async fn wait_upstream(&self) {
        let paced = *self.paced_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = paced {
            tokio::time::sleep_until(until.into()).await;
            return;
        }
        match &self.spool {
            Some(spool) => tokio::select! {
                () = spool.wait_pushed() => {}
                () = self.upstream.wait_pushed() => {}
            },
            None => self.upstream.wait_pushed().await,
        }
    }

    fn acks(&self) -> MutexGuard<'_, Acks> {
        // Plain maps: usable after a panic.
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes something that is not spooled on the EnOS client (a
    /// sub-device login, the activation reply), keeping the acknowledgement
    /// order of spooled messages.
    pub fn publish_other(
        &self,
        client: &AsyncClient,
        topic: String,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        let mut acks = self.acks();
        client.try_publish(topic, qos, false, payload)?;
        if self.spool.is_some() {
            acks.order.push_back(Tag::Other);
        }
        Ok(())
    }

    /// rumqttc wrote a publish with packet id `pkid` (0 at QoS 0).
    pub fn on_outgoing_publish(&self, pkid: u16) {
        let Some(spool) = &self.spool else { return };
        let mut acks = self.acks();
        match acks.order.pop_front() {
            Some(Tag::Spooled(seq, QoS::AtMostOnce)) => {
                drop(acks);
                spool.acknowledged(seq);
            }
            Some(Tag::Spooled(seq, _)) => {
                acks.awaiting.insert(pkid, seq);
            }
            Some(Tag::Other) | None => {}
        }
    }

    /// EnOS acknowledged packet `pkid`.
    pub fn on_puback(&self, pkid: u16) {
        let Some(spool) = &self.spool else { return };
        let seq = self.acks().awaiting.remove(&pkid);
        if let Some(seq) = seq {
            spool.acknowledged(seq);
            self.refresh_counters();
        }
    }

    /// The EnOS connection ended: what rumqttc held is gone (a clean
    /// session), so every spooled message not acknowledged goes again.
    pub fn on_connection_lost(&self) {
        let Some(spool) = &self.spool else { return };
        let mut acks = self.acks();
        acks.order.clear();
        acks.awaiting.clear();
        spool.rewind();
    }

    /// How long the next spooled message on `topic` must wait: a
    /// sub-device's data until its login on this connection settled (EnOS
    /// refuses data of an offline sub-device); a late message until the
    /// replay rate allows it. `None`: it may go.
    fn pace(&self, topic: &str, late: bool, rate: u32) -> Option<Duration> {
        if let Some((_, pk, dk)) = self
            .sub_device_prefixes
            .iter()
            .find(|(prefix, _, _)| topic.starts_with(prefix.as_str()))
        {
            let generation = *self.session.borrow();
            let settled = self.status.borrow().sub_devices.iter().any(|d| {
                d.product_key == *pk
                    && d.device_key == *dk
                    && Some(d.connection) == generation
                    && d.state != crate::status::SubDeviceState::Pending
            });
            if !settled {
                return Some(Duration::from_millis(50));
            }
        }
        if let Some(wait) = self.traffic_wait() {
            return Some(wait);
        }
        if late && rate > 0 {
            let mut bucket = self.replay_bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let (last, tokens) = bucket.get_or_insert((now, 1.0));
            let rate = f64::from(rate);
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate.max(1.0));
            *last = now;
            if *tokens < 1.0 {
                return Some(Duration::from_secs_f64((1.0 - *tokens) / rate));
            }
            *tokens -= 1.0;
        }
        None
    }

    /// How long EnOS's flow control holds the next message back.
    fn traffic_wait(&self) -> Option<Duration> {
        let mut traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        let limit = traffic.as_mut()?;
        let now = Instant::now();
        if now >= limit.until {
            *traffic = None;
            drop(traffic);
            tracing::info!("EnOS flow control lapsed; upstream at full pace again");
            self.status.send_modify(|s| s.traffic_limited = false);
            return None;
        }
        if limit.rate <= 0.0 {
            return Some((limit.until - now).min(Duration::from_millis(100)));
        }
        let (last, tokens) = &mut limit.bucket;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * limit.rate)
            .min(limit.rate.max(1.0));
        *last = now;
        if *tokens < 1.0 {
            return Some(Duration::from_secs_f64((1.0 - *tokens) / limit.rate));
        }
        *tokens -= 1.0;
        None
    }

    /// EnOS's `traffic/control` notice: `params.rate` messages per second
    /// (0 pauses upstream) for `params.duration` seconds (60 when absent).
    /// Returns the request id to answer, `None` when unparsable.
    pub fn on_traffic_control(&self, payload: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let id = match &v["id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        let params = &v["params"];
        let rate = params["rate"].as_f64().filter(|r| *r >= 0.0)?;
        let duration = params["duration"]
            .as_f64()
            .filter(|d| d.is_finite() && *d > 0.0)
            .unwrap_or(60.0)
            .min(86_400.0);
        let now = Instant::now();
        tracing::warn!(
            rate,
            duration_s = duration,
            "EnOS asks to slow down (traffic/control); upstream and replay paced"
        );
        *self.traffic.lock().unwrap_or_else(|e| e.into_inner()) = Some(TrafficLimit {
            rate,
            until: now + Duration::from_secs_f64(duration),
            bucket: (now, rate.min(1.0)),
        });
        self.status.send_modify(|s| {
            s.traffic_limited = true;
            s.traffic_notices += 1;
        });
        Some(id)
    }

    /// A `…/measurepoint/resume_reply`: counts and logs a refusal.
    pub fn on_resume_reply(&self, topic: &str, payload: &[u8]) {
        match EnosReply::parse(payload) {
            Some(r) if r.code == 200 => {}
            Some(r) => {
                self.resume_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic, id = %r.id, code = r.code, message = %r.message, "EnOS refused resumed measurepoints");
                self.refresh_counters();
            }
            None => tracing::warn!(topic, "unparsable resume reply"),
        }
    }

    /// Moves queued upstream messages into the EnOS client; `false` when
    /// its channel is full (the rest waits for the next poll).
    pub fn feed_upstream(&self, client: &AsyncClient) -> bool {
        if let Some(spool) = &self.spool {
            let mut moved = false;
            let mut room = true;
            let cfg = spool.config();
            let resume_after = u64::try_from(cfg.resume_after.as_millis()).unwrap_or(u64::MAX);
            *self.paced_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
            while let Some(s) = spool.peek() {
                let now = enos_domain::now_ms();
                let late = now.saturating_sub(s.time_ms) > resume_after;
                if let Some(wait) = self.pace(&s.message.topic, late, cfg.replay_rate) {
                    *self.paced_until.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now() + wait);
                    break;
                }
                let resumed = if late {
                    crate::spool::as_resume(&s.message, s.time_ms)
                } else {
                    None
                };
                let is_resume = resumed.is_some();
                let m = resumed.unwrap_or(s.message);
                let mut acks = self.acks();
                if client
                    .try_publish(m.topic, m.qos, false, m.payload)
                    .is_err()
                {
                    room = false;
                    break;
                }
                acks.order.push_back(Tag::Spooled(s.seq, m.qos));
                drop(acks);
                spool.taken(s.seq);
                if is_resume {
                    self.resumed.fetch_add(1, Ordering::Relaxed);
                }
                moved = true;
                self.upstream_sent.fetch_add(1, Ordering::Relaxed);
            }
            if moved {
                self.refresh_counters();
            }
            if !room {
                return false;
            }
        }
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
