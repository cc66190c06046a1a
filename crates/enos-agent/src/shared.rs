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
    config::Config,
    queue::BoundedQueue,
    spool::{Spool, Spooled, as_resume, has_late_path, resume_entry},
    status::{AgentStatus, SpoolStatus},
    topics::{DeviceTopics, DownstreamMap, MessageIds},
};

/// Eviction warnings are logged at most this often (each names the count
/// since the last one and the total).
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Spooled messages one `resume.batch` carries at most: EnOS documents
/// no limit. Each batch is held until its PUBACK, in our channel and in
/// rumqttc's in-flight window (100 publishes): at 100 entries (~20 KiB a
/// batch) an unlimited replay held ~2 MiB of batches and the agent's
/// VmHWM draining a 360,000-message backlog reached 8.80 MiB (#28's goal:
/// ≤ 8 MiB); at 25 it is 6.5-6.7 MiB, and the drain is still faster than
/// a raw client publishing the messages one by one.
const MAX_RESUME_BATCH: usize = 25;

/// Which publish on the EnOS client an `Outgoing::Publish` event is: the
/// events come in the order the publishes entered the client's channel.
#[derive(Debug, Clone)]
enum Tag {
    /// Not spooled (a sub-device login, the activation reply).
    Other,
    /// Spooled messages (one, or those a `resume.batch` carries), at
    /// this QoS: its PUBACK delivers them all.
    Spooled(Vec<u64>, QoS),
}

/// What maps EnOS's acknowledgements back to spooled messages.
#[derive(Debug, Default)]
pub struct Acks {
    /// Publishes in the client's channel, oldest first.
    order: VecDeque<Tag>,
    /// Packet id → spooled sequence numbers, awaiting its PUBACK.
    awaiting: HashMap<u16, Vec<u64>>,
}

/// Where a sub-device stands on the current connection, for its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubDeviceLogin {
    /// Its login on this connection has not settled: its data waits.
    Pending,
    /// Logged in: its data goes.
    Online,
    /// Refused or failed: its measurepoints go as late data with
    /// `allowOfflineSubDevice` (EnOS refuses posts of an offline
    /// sub-device).
    Offline,
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
    /// The pace: no spooled message goes before this instant (the replay
    /// rate, EnOS's flow control, or a sub-device not logged in yet).
    pub paced_until: Mutex<Option<Instant>>,
    /// The replay rate's token bucket: (last refill, tokens).
    pub replay_bucket: Mutex<Option<(Instant, f64)>>,
    /// EnOS's flow-control notice in force (`traffic/control`).
    pub traffic: Mutex<Option<TrafficLimit>>,
    /// Late measurepoints sent through `resume` or `resume.batch`.
    pub resumed: AtomicU64,
    /// `resume` and `resume.batch` replies other than 200 (a batch
    /// counts once).
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
    /// The state for `config`'s agent, with its spool (when `[spool]` is
    /// configured and opened).
    pub fn new(config: &Config, spool: Option<Spool>) -> Shared {
        let topics = DeviceTopics::new(
            config.device.product_key.as_str(),
            config.device.device_key.as_str(),
        );
        let mut reply_routes: HashMap<String, Vec<String>> = HashMap::new();
        let mut downstream_map = None;
        if let Some(bridge) = &config.bridge {
            for route in &bridge.upstream {
                if let Some(local) = &route.reply_to {
                    let (enos_topic, _) = topics.upstream_target(route);
                    let locals = reply_routes
                        .entry(format!("{enos_topic}_reply"))
                        .or_default();
                    if !locals.contains(local) {
                        locals.push(local.clone());
                    }
                }
            }
            downstream_map = bridge.downstream.as_ref().map(DownstreamMap::new);
        }
        let (status, _) = watch::channel(AgentStatus::new(config.enos.broker.to_string()));
        if config.bridge.is_some() {
            status.send_modify(|s| s.local_broker_connected = Some(false));
        }
        let (session, _) = watch::channel(None);
        let ids = match &spool {
            Some(spool) => MessageIds::starting_at(spool.next_seq()),
            None => MessageIds::default(),
        };
        Shared {
            upstream: BoundedQueue::new(config.queue.upstream_capacity),
            downstream: BoundedQueue::new(config.queue.downstream_capacity),
            status,
            session,
            pending_logins: Default::default(),
            topics,
            downstream_map,
            reply_routes,
            ids,
            upstream_sent: Default::default(),
            downstream_delivered: Default::default(),
            spool,
            acks: Default::default(),
            eviction_log: Default::default(),
            paced_until: Default::default(),
            replay_bucket: Default::default(),
            traffic: Default::default(),
            resumed: Default::default(),
            resume_refused: Default::default(),
            sub_device_prefixes: config
                .sub_devices
                .iter()
                .map(|d| {
                    (
                        format!("/sys/{}/{}/", d.product_key.as_str(), d.device_key.as_str()),
                        d.product_key.as_str().to_owned(),
                        d.device_key.as_str().to_owned(),
                    )
                })
                .collect(),
            enos_candidate: Default::default(),
            enos_candidate_ready: Default::default(),
        }
    }

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
            Some(Tag::Spooled(seqs, QoS::AtMostOnce)) => {
                drop(acks);
                for seq in seqs {
                    spool.acknowledged(seq);
                }
            }
            Some(Tag::Spooled(seqs, _)) => {
                acks.awaiting.insert(pkid, seqs);
            }
            Some(Tag::Other) | None => {}
        }
    }

    /// EnOS acknowledged packet `pkid`.
    pub fn on_puback(&self, pkid: u16) {
        let Some(spool) = &self.spool else { return };
        let seqs = self.acks().awaiting.remove(&pkid);
        if let Some(seqs) = seqs {
            for seq in seqs {
                spool.acknowledged(seq);
            }
            self.refresh_counters();
        }
    }

    /// The EnOS connection ended: what rumqttc held is gone (a clean
    /// session), so every spooled message not acknowledged goes again.
    ///
    /// `drain` empties the EnOS client's request channel (rumqttc's
    /// `EventLoop::clean`, whose leftovers the next clean CONNACK drops).
    /// It runs under the lock [`Shared::publish_other`] holds: a
    /// sub-device login queued by the login task between the failed poll
    /// and this call would otherwise go out on the next connection while
    /// its tag was cleared here, and every later PUBACK would then be
    /// matched to the message published before it, so a message could
    /// leave the spool on another one's acknowledgement.
    pub fn on_connection_lost(&self, drain: impl FnOnce()) {
        let mut acks = self.acks();
        drain();
        let Some(spool) = &self.spool else { return };
        acks.order.clear();
        acks.awaiting.clear();
        spool.rewind();
    }

    /// Where the sub-device whose data `topic` carries stands on this
    /// connection; `None` when it is not a configured sub-device's topic.
    fn sub_device_login(&self, topic: &str) -> Option<SubDeviceLogin> {
        let (_, pk, dk) = self
            .sub_device_prefixes
            .iter()
            .find(|(prefix, _, _)| topic.starts_with(prefix.as_str()))?;
        let generation = *self.session.borrow();
        let status = self.status.borrow();
        let Some(d) = status.sub_devices.iter().find(|d| {
            d.product_key == *pk && d.device_key == *dk && Some(d.connection) == generation
        }) else {
            return Some(SubDeviceLogin::Pending);
        };
        Some(match d.state {
            crate::status::SubDeviceState::Pending => SubDeviceLogin::Pending,
            crate::status::SubDeviceState::Online => SubDeviceLogin::Online,
            _ => SubDeviceLogin::Offline,
        })
    }

    /// Whether a configured sub-device's login on this connection has not
    /// settled yet.
    fn sub_device_logins_pending(&self) -> bool {
        if self.sub_device_prefixes.is_empty() {
            return false;
        }
        let generation = *self.session.borrow();
        self.status.borrow().sub_devices.iter().any(|d| {
            Some(d.connection) != generation || d.state == crate::status::SubDeviceState::Pending
        })
    }

    /// Replay messages the replay rate allows now (`usize::MAX` without a
    /// rate), or how long until it allows a tenth of a second's worth:
    /// the backlog goes in up to ten batches a second, not one message
    /// per token.
    fn replay_allowance(&self, rate: u32) -> Result<usize, Duration> {
        if rate == 0 {
            return Ok(usize::MAX);
        }
        let want = f64::from((rate / 10).clamp(1, MAX_RESUME_BATCH as u32));
        let mut bucket = self.replay_bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (last, tokens) = bucket.get_or_insert((now, 1.0));
        let rate = f64::from(rate);
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate.max(1.0));
        *last = now;
        if *tokens < want {
            return Err(Duration::from_secs_f64((want - *tokens) / rate));
        }
        // Floored, ≥ 1: fits.
        Ok(tokens.floor() as usize)
    }

    /// `n` replayed messages used the replay rate.
    fn replay_spend(&self, n: usize) {
        if let Some((_, tokens)) = self
            .replay_bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            *tokens -= n as f64;
        }
    }

    /// Holds spooled messages back for `wait` (the earliest of the reasons
    /// given in one feed wins: something may go then).
    fn pace_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paced = self.paced_until.lock().unwrap_or_else(|e| e.into_inner());
        *paced = Some(paced.map_or(until, |p| p.min(until)));
    }

    /// Whether a spooled message may ride in the gateway's `resume.batch`:
    /// a measurepoint post of the gateway or of a configured sub-device
    /// (another device's would make EnOS refuse the whole batch, 740).
    fn batchable(&self, s: &Spooled) -> bool {
        let topic = s.message.topic.as_str();
        has_late_path(topic)
            && (topic == self.topics.measurepoint_post()
                || self
                    .sub_device_prefixes
                    .iter()
                    .any(|(prefix, _, _)| topic.starts_with(prefix.as_str())))
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

    /// A `…/measurepoint/resume_reply` or `…/resume/batch_reply`: counts
    /// and logs a refusal (per message, a batch once).
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
    ///
    /// With a spool, two lanes read it (see [`Spool::peek_live`]): the
    /// live lane first, at full pace, then the replay lane behind it, at
    /// `replay_rate`. So live data is never queued behind a backlog.
    pub fn feed_upstream(&self, client: &AsyncClient) -> bool {
        if let Some(spool) = &self.spool {
            *self.paced_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
            // After a (re)connect nothing spooled goes until the sub-device
            // logins of this connection settled: then each lane goes in
            // spool order from its start. Sending the gateway's messages
            // between sub-device ones that wait would let a full spool
            // evict some of a device's messages while delivering others
            // of the same age: the evicted would no longer be the oldest.
            if self.sub_device_logins_pending() {
                self.pace_for(Duration::from_millis(50));
                return self.feed(client, &self.upstream, &self.upstream_sent);
            }
            let live = self.feed_live(spool, client);
            if !live || !self.feed_replay(spool, client) {
                return false;
            }
        }
        self.feed(client, &self.upstream, &self.upstream_sent)
    }

    /// Publishes `m` for the spooled messages `seqs`, keeping the
    /// acknowledgement order; `false` when the client's channel is full.
    fn publish_spooled(&self, client: &AsyncClient, m: Outbound, seqs: Vec<u64>) -> bool {
        let mut acks = self.acks();
        if client
            .try_publish(m.topic, m.qos, false, m.payload)
            .is_err()
        {
            return false;
        }
        acks.order.push_back(Tag::Spooled(seqs, m.qos));
        true
    }

    /// The live lane: messages on their own topics, in spool order, at
    /// once. It defers to the replay lane a message held longer than
    /// `resume_after`, and a measurepoint post of a sub-device whose login
    /// on this connection failed (`resume.batch` takes it with
    /// `allowOfflineSubDevice`; a post would be refused). A sub-device's
    /// data waits until its login on this connection settled.
    fn feed_live(&self, spool: &Spool, client: &AsyncClient) -> bool {
        let resume_after =
            u64::try_from(spool.config().resume_after.as_millis()).unwrap_or(u64::MAX);
        let mut moved = false;
        let mut room = true;
        loop {
            let now = enos_domain::now_ms();
            let next = spool.peek_live(|s| {
                now.saturating_sub(s.time_ms) > resume_after
                    || (has_late_path(&s.message.topic)
                        && self.sub_device_login(&s.message.topic) == Some(SubDeviceLogin::Offline))
            });
            let Some(s) = next else { break };
            if self.sub_device_login(&s.message.topic) == Some(SubDeviceLogin::Pending) {
                self.pace_for(Duration::from_millis(50));
                break;
            }
            if let Some(wait) = self.traffic_wait() {
                self.pace_for(wait);
                break;
            }
            if !self.publish_spooled(client, s.message, vec![s.seq]) {
                room = false;
                break;
            }
            spool.take_live(s.seq);
            moved = true;
            self.upstream_sent.fetch_add(1, Ordering::Relaxed);
        }
        if moved {
            self.refresh_counters();
        }
        room
    }

    /// The replay lane, behind the live lane, at `replay_rate` messages
    /// per second: measurepoint posts through `thing.measurepoint.resume`
    /// (several in a row, of the gateway and its sub-devices, in one
    /// `thing.measurepoint.resume.batch`), with their original time; other
    /// messages on their own topics. In spool order, so per device.
    fn feed_replay(&self, spool: &Spool, client: &AsyncClient) -> bool {
        let rate = spool.config().replay_rate;
        let mut moved = false;
        let mut room = true;
        while let Some(first) = spool.peek_replay(1, |_| false).into_iter().next() {
            if self.sub_device_login(&first.message.topic) == Some(SubDeviceLogin::Pending) {
                self.pace_for(Duration::from_millis(50));
                break;
            }
            let allowance = match self.replay_allowance(rate) {
                Ok(n) => n,
                Err(wait) => {
                    self.pace_for(wait);
                    break;
                }
            };
            if let Some(wait) = self.traffic_wait() {
                self.pace_for(wait);
                break;
            }
            // A sub-device whose login failed rides alone: if EnOS refuses
            // it (say, 740: no longer this gateway's), it refuses no other.
            let alone =
                self.sub_device_login(&first.message.topic) == Some(SubDeviceLogin::Offline);
            let mut group = vec![first];
            if allowance > 1 && !alone && self.batchable(&group[0]) {
                group = spool.peek_replay(allowance.min(MAX_RESUME_BATCH), |s| {
                    self.batchable(s)
                        && self
                            .sub_device_login(&s.message.topic)
                            .is_none_or(|l| l == SubDeviceLogin::Online)
                });
            }
            let entries: Vec<serde_json::Value> = group
                .iter()
                .map_while(|s| resume_entry(&s.message, s.time_ms))
                .collect();
            // `resume.batch` for several, and for an offline sub-device
            // (only the batch takes `allowOfflineSubDevice`).
            let as_batch = entries.len() > 1 || (alone && entries.len() == 1);
            let (m, seqs, resumed) = if as_batch {
                group.truncate(entries.len());
                let payload = serde_json::json!({
                    "id": self.ids.next(),
                    "version": "1.0",
                    "method": "thing.measurepoint.resume.batch",
                    "params": entries,
                    // Replayed data is history: a sub-device offline now
                    // (its login failed on this connection, or EnOS took
                    // it offline since) still gets its past data stored,
                    // instead of the whole batch refused with 460.
                    "allowOfflineSubDevice": true,
                    // One point EnOS does not know (a model changed while
                    // the data waited) costs that point, not the batch:
                    // the rest of an hour of data is still stored.
                    "skipInvalidMeasurepoints": true,
                });
                let m = Outbound {
                    topic: self.topics.measurepoint_resume_batch(),
                    payload: serde_json::to_vec(&payload).unwrap_or_default(),
                    qos: QoS::AtLeastOnce,
                };
                (
                    m,
                    group.iter().map(|s| s.seq).collect::<Vec<_>>(),
                    group.len(),
                )
            } else {
                let s = group.swap_remove(0);
                match as_resume(&s.message, s.time_ms) {
                    Some(m) => (m, vec![s.seq], 1),
                    None => (s.message, vec![s.seq], 0),
                }
            };
            let n = seqs.len();
            if !self.publish_spooled(client, m, seqs.clone()) {
                room = false;
                break;
            }
            spool.take_replay(&seqs);
            self.replay_spend(n);
            self.resumed.fetch_add(resumed as u64, Ordering::Relaxed);
            moved = true;
            self.upstream_sent.fetch_add(1, Ordering::Relaxed);
        }
        if moved {
            self.refresh_counters();
        }
        room
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

#[cfg(test)]
mod tests {
    use rumqttc::{MqttOptions, Request};

    use super::*;

    /// #28 item 3 (the race at a disconnect): a sub-device login the login task queues between the failed poll and the rewind does not go out on the next connection ahead of the spooled messages, so every PUBACK is matched to the message it acknowledges.
    #[tokio::test]
    async fn a_login_queued_at_a_disconnect_cannot_shift_the_acknowledgements() {
        let dir = tempfile::tempdir().expect("dir");
        let text = format!(
            "[device]\nproduct_key = \"pk1\"\ndevice_key = \"dk1\"\n\n[signer]\nendpoints = [\"https://127.0.0.1:7443\"]\nca = \"ca.pem\"\ncert = \"d.pem\"\nkey = \"d.key\"\n\n[enos]\nbroker = \"tcp://127.0.0.1:1\"\n\n[spool]\npath = \"{}\"\n",
            dir.path().join("upstream.spool").display()
        );
        let config = Config::parse(&text, std::path::Path::new("/etc/enos-agent/agent.toml"))
            .expect("config");
        let (spool, _) = Spool::open(config.spool.as_ref().expect("[spool]")).expect("open");
        let shared = Shared::new(&config, Some(spool));
        let spool = shared.spool.as_ref().expect("spool");
        let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 16);
        let event = "/sys/pk1/dk1/thing/event/alarm/post";
        for i in 0..2 {
            shared.enqueue_upstream(Outbound {
                topic: event.into(),
                payload: format!("{{\"i\":{i}}}").into_bytes(),
                qos: QoS::AtLeastOnce,
            });
        }
        // Connected: both go into the client's channel.
        assert!(shared.feed_upstream(&client));
        // The connection fails: rumqttc's poll empties the channel into
        // `pending` (`EventLoop::clean`) and returns the error.
        eventloop.clean();
        // The login task queues a login at that moment.
        shared
            .publish_other(
                &client,
                "/ext/session/pk1/dk1/combine/login".into(),
                QoS::AtLeastOnce,
                b"{}".to_vec(),
            )
            .expect("queued");
        // The session task sees the loss; the next CONNACK (a clean
        // session) drops what the old connection left.
        shared.on_connection_lost(|| eventloop.clean());
        eventloop.pending.clear();
        // Reconnected: the spooled messages go again.
        assert!(shared.feed_upstream(&client));
        eventloop.clean();
        let out: Vec<String> = eventloop
            .pending
            .iter()
            .filter_map(|r| match r {
                Request::Publish(p) => Some(p.topic.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            out,
            [event, event],
            "what the new connection sends, in the order its PUBACKs are matched"
        );
        // Their PUBACKs deliver them, one each.
        shared.on_outgoing_publish(1);
        shared.on_outgoing_publish(2);
        shared.on_puback(1);
        assert_eq!(spool.stats().delivered, 1);
        shared.on_puback(2);
        assert_eq!(spool.stats().messages, 0);
    }
}
