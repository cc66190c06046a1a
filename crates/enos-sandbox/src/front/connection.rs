//! One client connection through the front: CONNECT, the decision, the
//! upstream connection to rumqttd, and the packet loop (see the
//! [module docs](super) for the rules).

use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rumqttc::mqttbytes::{
    QoS,
    v4::{
        ConnAck, Connect, ConnectReturnCode, LastWill, Login, Packet, PubAck, PubComp, PubRec,
        Publish, SubAck, Subscribe, SubscribeFilter, SubscribeReasonCode, UnsubAck, Unsubscribe,
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    time::Instant,
};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{
    context::{FrontContext, Listener},
    packets::{PacketReader, PacketWriter, StreamError},
    session_state::{AtCap, SessionState, lock},
    topics,
};
use crate::{
    activation::{ActivationPush, Activations},
    auth::{ActivationStep, Admitted, Refusal},
    devices::DeviceId,
    sub_devices::{OnlineSubDevices, SubDeviceSessions},
};

/// How long rumqttd may take to answer the front's CONNECT and SUBSCRIBE.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// The keepalive of the front's own sessions in rumqttd, whatever the
/// client asked for: rumqttd refuses keepalive 0, which MQTT 3.1.1 and
/// EnOS allow, so the front keeps the client's keepalive itself and
/// pings rumqttd on its own.
const UPSTREAM_KEEPALIVE_SECS: u16 = 60;

/// How often the front pings rumqttd: well within its keepalive.
const UPSTREAM_PING: Duration = Duration::from_secs(20);

/// Numbers the short internal sessions that publish wills.
static NEXT_WILL_SESSION: AtomicU64 = AtomicU64::new(1);

/// How a session's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client sent DISCONNECT: its will is discarded.
    Disconnect,
    /// Anything else (socket closed, keepalive expired, taken over,
    /// closed by rumqttd, a protocol error): its will is published.
    Closed,
}

/// The client's keepalive as the front keeps it (MQTT 3.1.1 §3.1.2.10):
/// nothing from the client for one and a half times the keepalive ends
/// the connection; keepalive 0 turns the check off.
struct Keepalive {
    /// One and a half keepalives; `None` for keepalive 0.
    limit: Option<Duration>,
    /// When the connection ends unless a packet arrives first.
    deadline: Instant,
}

impl Keepalive {
    fn new(keep_alive_secs: u16) -> Self {
        let limit =
            (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
        Keepalive {
            limit,
            deadline: Instant::now() + limit.unwrap_or(Duration::ZERO),
        }
    }

    /// A packet arrived from the client.
    fn heard(&mut self) {
        if let Some(limit) = self.limit {
            self.deadline = Instant::now() + limit;
        }
    }

    /// Resolves once the client has been silent too long; never for
    /// keepalive 0.
    async fn expired(&self) {
        match self.limit {
            Some(_) => tokio::time::sleep_until(self.deadline).await,
            None => std::future::pending().await,
        }
    }
}

/// An interval for pinging rumqttd, its first tick one period away.
fn upstream_pings() -> tokio::time::Interval {
    let mut pings = tokio::time::interval_at(Instant::now() + UPSTREAM_PING, UPSTREAM_PING);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings
}

/// Takes the client's will out of `connect` (the front publishes it
/// itself, see [`publish_will`]); a will outside the client's topics is
/// dropped and logged.
fn take_will(connect: &mut Connect, allowed: impl Fn(&str) -> bool) -> Option<LastWill> {
    let will = connect.last_will.take()?;
    if allowed(&will.topic) {
        Some(will)
    } else {
        info!(client_id = ?shorten(&connect.client_id), topic = ?shorten(&will.topic), "dropped a last will outside the client's topics");
        None
    }
}

/// Publishes `will` through a short internal session of its own, as
/// the broker does when a connection ends other than by DISCONNECT. The
/// front keeps wills rather than rumqttd: rumqttd loses or mixes them up
/// when a session is taken over, and the front's own end of the
/// connection (keepalive, a protocol error) is not rumqttd's to see.
async fn publish_will(context: &FrontContext, who: &str, will: LastWill) {
    let session_id = format!("will|{}", NEXT_WILL_SESSION.fetch_add(1, Ordering::Relaxed));
    let connect = Connect::new(session_id.clone());
    let published = async {
        let (mut rx, mut tx, _) = connect_once(context, &connect, session_id).await?;
        let qos = match will.qos {
            QoS::AtMostOnce => QoS::AtMostOnce,
            QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
        };
        let mut publish = Publish::new(will.topic.clone(), qos, will.message.to_vec());
        publish.retain = will.retain;
        publish.pkid = u16::from(qos == QoS::AtLeastOnce);
        tx.write(&Packet::Publish(publish)).await?;
        if qos == QoS::AtLeastOnce {
            let acked = async {
                loop {
                    match rx.read().await? {
                        Some(Packet::PubAck(_)) => return Ok(()),
                        Some(_) => {}
                        None => {
                            return Err(StreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                    }
                }
            };
            tokio::time::timeout(UPSTREAM_TIMEOUT, acked)
                .await
                .map_err(|_| StreamError::Io(std::io::Error::other("no PUBACK for the will")))??;
        }
        tx.write(&Packet::Disconnect).await
    }
    .await;
    match published {
        Ok(()) => info!(client = who, topic = ?shorten(&will.topic), "published the last will"),
        Err(e) => {
            warn!(client = who, topic = ?shorten(&will.topic), error = %e, "could not publish the last will")
        }
    }
}

/// Who the client turned out to be.
enum Role {
    /// A device with a verified login, and for a `securemode=3` login
    /// the activation to push after CONNACK.
    Device(DeviceId, Option<ActivationPush>),
    /// The console, the cloud's side.
    Console,
}

type ClientReader<S> = PacketReader<ReadHalf<S>>;
type ClientWriter<S> = PacketWriter<WriteHalf<S>>;
type UpstreamReader = PacketReader<OwnedReadHalf>;
type UpstreamWriter = PacketWriter<OwnedWriteHalf>;

/// Serves one client connection until either side closes it.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    listener: Listener,
    certificate: Option<Vec<u8>>,
    context: Arc<FrontContext>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let mut client_rx = PacketReader::new(read, context.max_packet);
    let mut client_tx = PacketWriter::new(write);
    let connect = match tokio::time::timeout(context.connect_timeout, client_rx.read()).await {
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(Some(_))) => {
            info!(listener = listener.name(), peer = %peer, "closed a connection whose first packet was not CONNECT");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            info!(listener = listener.name(), peer = %peer, error = %e, "closed a connection before CONNECT");
            return;
        }
        Err(_) => {
            info!(listener = listener.name(), peer = %peer, "closed a connection that sent no CONNECT in time");
            return;
        }
    };
    // The presented password is only needed for the decision.
    let password = Zeroizing::new(
        connect
            .login
            .as_ref()
            .map(|l| l.password.clone())
            .unwrap_or_default(),
    );
    let username = connect
        .login
        .as_ref()
        .map(|l| l.username.clone())
        .unwrap_or_default();
    let mut connect = connect;
    if let Some(login) = connect.login.as_mut() {
        zeroize::Zeroize::zeroize(&mut login.password);
    }
    let decision = decide(
        &context,
        listener,
        peer,
        certificate.as_deref(),
        &connect.client_id,
        &username,
        &password,
    );
    drop(password);
    let role = match decision {
        Ok(role) => role,
        Err(refusal) => {
            info!(
                listener = listener.name(),
                client_id = ?shorten(&connect.client_id),
                username = ?shorten(&username),
                reason = %refusal,
                "refused MQTT CONNECT"
            );
            let code = match refusal.connack_code() {
                3 => ConnectReturnCode::ServiceUnavailable,
                4 => ConnectReturnCode::BadUserNamePassword,
                _ => ConnectReturnCode::NotAuthorized,
            };
            let _ = connack(&mut client_tx, code, false).await;
            client_tx.shutdown().await;
            return;
        }
    };
    let result = match role {
        Role::Device(device, activation) => {
            device_session(
                &context,
                listener,
                device,
                activation,
                connect,
                client_rx,
                &mut client_tx,
            )
            .await
        }
        Role::Console => {
            console_session(&context, listener, connect, client_rx, &mut client_tx).await
        }
    };
    if let Err(e) = result {
        info!(listener = listener.name(), peer = %peer, error = %e, "connection ended");
    }
    client_tx.shutdown().await;
}

/// Who may this CONNECT be: the console, a device with a verified login
/// (and, over TLS, that device's certificate), or refused.
fn decide(
    context: &FrontContext,
    listener: Listener,
    peer: SocketAddr,
    certificate: Option<&[u8]>,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<Role, Refusal> {
    if let Some(console) = &context.console
        && console.is_console_user(username)
    {
        if listener != Listener::Plain || !peer.ip().is_loopback() {
            return Err(Refusal::ConsoleNotHere);
        }
        return if console.password_matches(password) {
            Ok(Role::Console)
        } else {
            Err(Refusal::ConsolePassword)
        };
    }
    let Admitted { device, activation } = context.auth.check(client_id, username, password)?;
    if listener == Listener::Tls {
        let Some(der) = certificate else {
            return Err(Refusal::CertificateMismatch {
                device,
                reason: "no client certificate".into(),
            });
        };
        let enos = context
            .enos_api
            .as_ref()
            .and_then(|api| api.check_mqtts(der, &device));
        enos.unwrap_or_else(|| context.certificate_rule.check(der, &device))
            .map_err(|reason| Refusal::CertificateMismatch {
                device: device.clone(),
                reason,
            })?;
    }
    // Only now, the whole CONNECT admitted, may a login change state.
    let push = match activation {
        Some(ActivationStep::Push(push)) => Some(push),
        Some(ActivationStep::Complete) => {
            context.auth.activations().complete(&device);
            None
        }
        None => None,
    };
    Ok(Role::Device(device, push))
}

/// [`connect_once`], tried again a few times: when a device reconnects
/// at once, rumqttd may still be tearing the old session of the same id
/// down and close the new connection; a moment later it accepts it.
///
/// `still_latest` is asked before every attempt: once a newer login of the
/// same device exists, this one gives up rather than take its session over.
async fn connect_upstream(
    context: &FrontContext,
    connect: &Connect,
    session_id: String,
    still_latest: impl Fn() -> bool,
) -> Result<(UpstreamReader, UpstreamWriter, bool), StreamError> {
    let mut delay = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        if !still_latest() {
            return Err(StreamError::Io(std::io::Error::other(
                "a newer login of the device arrived meanwhile",
            )));
        }
        match connect_once(context, connect, session_id.clone()).await {
            Ok(up) => return Ok(up),
            Err(e) if attempt == UPSTREAM_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::debug!(attempt, error = %e, "rumqttd refused the session; trying again");
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
        }
    }
}

/// How often the front tries to open a session in rumqttd.
const UPSTREAM_ATTEMPTS: u32 = 4;

/// Connects to rumqttd's internal listener as `session_id`, with the
/// process's token, the front's keepalive and no will (the front keeps
/// it); returns the halves and whether rumqttd had a session.
async fn connect_once(
    context: &FrontContext,
    connect: &Connect,
    session_id: String,
) -> Result<(UpstreamReader, UpstreamWriter, bool), StreamError> {
    let stream = TcpStream::connect(context.upstream).await?;
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut rx = PacketReader::new(read, usize::MAX);
    let mut tx = PacketWriter::new(write);
    let mut upstream_connect = connect.clone();
    upstream_connect.client_id = session_id;
    upstream_connect.keep_alive = UPSTREAM_KEEPALIVE_SECS;
    upstream_connect.last_will = None;
    let (username, password) = context.sessions.internal_login();
    upstream_connect.login = Some(Login {
        username: username.to_owned(),
        password: password.to_owned(),
    });
    let sent = tx.write(&Packet::Connect(upstream_connect.clone())).await;
    if let Some(login) = upstream_connect.login.as_mut() {
        zeroize::Zeroize::zeroize(&mut login.password);
    }
    sent?;
    match tokio::time::timeout(UPSTREAM_TIMEOUT, rx.read()).await {
        Ok(Ok(Some(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
            Ok((rx, tx, ack.session_present))
        }
        Ok(Ok(other)) => Err(StreamError::Io(std::io::Error::other(format!(
            "rumqttd answered the front's CONNECT with {other:?}"
        )))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StreamError::Io(std::io::Error::other(
            "rumqttd did not answer the front's CONNECT",
        ))),
    }
}

/// Answers the CONNECT: `code`, and for an accepted one whether rumqttd
/// kept a session.
async fn connack<W: AsyncWrite + Unpin>(
    client_tx: &mut PacketWriter<W>,
    code: ConnectReturnCode,
    session_present: bool,
) -> Result<(), StreamError> {
    client_tx
        .write(&Packet::ConnAck(ConnAck::new(code, session_present)))
        .await
}

/// Tells the client its login is fine but the broker behind is not.
async fn unavailable<W: AsyncWrite + Unpin>(client_tx: &mut PacketWriter<W>, error: &StreamError) {
    warn!(error = %error, "rumqttd's internal listener did not take the session; answered CONNACK 3");
    let _ = connack(client_tx, ConnectReturnCode::ServiceUnavailable, false).await;
}

/// The console's session: packets pass through, but it only publishes
/// what the cloud sends.
async fn console_session<S>(
    context: &FrontContext,
    listener: Listener,
    mut connect: Connect,
    mut client_rx: ClientReader<S>,
    client_tx: &mut ClientWriter<S>,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let will = take_will(&mut connect, topics::console_may_publish);
    let (mut up_rx, mut up_tx, session_present) = match connect_upstream(
        context,
        &connect,
        format!("console:{}", connect.client_id),
        // A console client id taken twice is the console's own business.
        || true,
    )
    .await
    {
        Ok(up) => up,
        Err(e) => {
            unavailable(client_tx, &e).await;
            return Ok(());
        }
    };
    info!(
        listener = listener.name(),
        client_id = ?shorten(&connect.client_id),
        "accepted console login"
    );
    connack(client_tx, ConnectReturnCode::Success, session_present).await?;
    let mut dropped = DroppedPublishes::default();
    let mut keepalive = Keepalive::new(connect.keep_alive);
    let mut pings = upstream_pings();
    let ended: Result<Ending, StreamError> = async {
        loop {
            tokio::select! {
                packet = client_rx.read() => {
                    keepalive.heard();
                    match packet? {
                        None => return Ok(Ending::Closed),
                        Some(Packet::Disconnect) => {
                            let _ = up_tx.write(&Packet::Disconnect).await;
                            return Ok(Ending::Disconnect);
                        }
                        Some(Packet::Publish(publish)) if !topics::console_may_publish(&publish.topic) => {
                            info!(topic = ?shorten(&publish.topic), "dropped a console PUBLISH: not a topic the cloud sends");
                            dropped.acknowledge(&publish, client_tx).await?;
                        }
                        Some(Packet::PubRel(rel)) if dropped.release(rel.pkid) => {
                            client_tx.write(&Packet::PubComp(PubComp::new(rel.pkid))).await?;
                        }
                        Some(Packet::PingReq) => client_tx.write(&Packet::PingResp).await?,
                        Some(Packet::Connect(_)) => return Ok(Ending::Closed),
                        Some(other) => up_tx.write(&other).await?,
                    }
                },
                packet = up_rx.read() => match packet? {
                    None | Some(Packet::Disconnect) => return Ok(Ending::Closed),
                    Some(Packet::PingResp) => {}
                    Some(packet) => client_tx.write(&packet).await?,
                },
                _ = pings.tick() => up_tx.write(&Packet::PingReq).await?,
                () = keepalive.expired() => {
                    info!(listener = listener.name(), client_id = ?shorten(&connect.client_id), "the console's keepalive expired");
                    return Ok(Ending::Closed);
                }
            }
        }
    }
    .await;
    if ended.as_ref().ok() != Some(&Ending::Disconnect)
        && let Some(will) = will
    {
        drop((up_rx, up_tx));
        publish_will(context, "console", will).await;
    }
    ended.map(|_| ())
}

/// Publishes the front dropped, acknowledged so that the client does not
/// resend them; QoS 2 ones are remembered until their PUBREL.
#[derive(Default)]
struct DroppedPublishes {
    /// Packet ids of dropped QoS 2 publishes awaiting PUBREL.
    exactly_once: HashSet<u16>,
}

impl DroppedPublishes {
    async fn acknowledge<W: AsyncWrite + Unpin>(
        &mut self,
        publish: &Publish,
        client_tx: &mut PacketWriter<W>,
    ) -> Result<(), StreamError> {
        match publish.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => {
                client_tx
                    .write(&Packet::PubAck(PubAck::new(publish.pkid)))
                    .await
            }
            QoS::ExactlyOnce => {
                self.exactly_once.insert(publish.pkid);
                client_tx
                    .write(&Packet::PubRec(PubRec::new(publish.pkid)))
                    .await
            }
        }
    }

    /// Whether `pkid` was a dropped QoS 2 publish (now released).
    fn release(&mut self, pkid: u16) -> bool {
        self.exactly_once.remove(&pkid)
    }
}

/// A device's session: the namespace subscriptions, the topic rules and
/// the delivery filter.
struct DeviceSession<'a, W> {
    /// The device.
    device: DeviceId,
    /// The listener, for log lines.
    listener: Listener,
    /// To the client.
    client_tx: &'a mut PacketWriter<W>,
    /// To rumqttd.
    up_tx: UpstreamWriter,
    /// The session's state: the client's own subscriptions (kept here,
    /// never sent upstream) and its unacknowledged deliveries.
    state: Arc<Mutex<SessionState>>,
    /// Whether the session outlives the connection (`clean_session = 0`):
    /// only then are unacknowledged deliveries tracked.
    persistent: bool,
    /// Filters the session may hold.
    max_filters: usize,
    /// Whether the client has its CONNACK: no delivery goes before it.
    connacked: bool,
    /// rumqttd's QoS 1 deliveries not yet acknowledged to it, in the
    /// order it sent them, and whether each may be (the client acked
    /// it, or the front dropped it): rumqttd takes PUBACKs only in
    /// order (as MQTT 3.1.1 §4.6 asks) and closes the session on an
    /// acknowledgement out of order.
    upstream_acks: VecDeque<(u16, bool)>,
    /// The logged-in sub-devices, for a gateway: their namespaces are
    /// the session's too.
    sub_devices: watch::Receiver<OnlineSubDevices>,
    /// The sub-devices whose namespaces are subscribed upstream.
    placed: BTreeSet<DeviceId>,
    /// SUBACKs from rumqttd still to come; while any is, deliveries wait,
    /// so that nothing published after a sub-device login is missed.
    pending_subacks: usize,
    /// Deliveries waiting for those SUBACKs.
    held: VecDeque<Publish>,
    /// Packet id of the front's next SUBSCRIBE / UNSUBSCRIBE upstream.
    next_pkid: u16,
    /// The client's dropped publishes.
    dropped: DroppedPublishes,
    /// Where the device's reply to an activation push goes.
    activations: Arc<Activations>,
    /// `--record`: what the device publishes is written there.
    record: Option<Arc<crate::record::Record>>,
}

async fn device_session<S>(
    context: &FrontContext,
    listener: Listener,
    device: DeviceId,
    activation: Option<ActivationPush>,
    mut connect: Connect,
    mut client_rx: ClientReader<S>,
    client_tx: &mut ClientWriter<S>,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let sub_devices = context.sub_devices.watch(&device);
    // However the session ends, a gateway's sub-devices go offline with
    // it (unless a later login of the gateway took it over).
    let lease = GatewayLease {
        sessions: &context.sub_devices,
        session: context.sub_devices.session_opened(&device),
        gateway: device.clone(),
    };
    let still_latest = || context.sub_devices.is_latest(&device, lease.session);
    let will_device = device.clone();
    let will_subs = sub_devices.clone();
    let will = take_will(&mut connect, move |topic: &str| {
        topics::namespace_of(topic)
            .is_some_and(|ns| ns == will_device || will_subs.borrow().contains(&ns))
    });
    // One session per device, whatever client id it presents: a second
    // login of the same device takes the first one's session over, and
    // the same credential with its parameters reordered is still one
    // session.
    let session_id = device_session_id(&device);
    let open_upstream = || connect_upstream(context, &connect, session_id.clone(), still_latest);
    let (mut up_rx, up_tx, mut session_present) = match open_upstream().await {
        Ok(up) => up,
        Err(e) => {
            unavailable(client_tx, &e).await;
            return Ok(());
        }
    };
    let persistent = !connect.clean_session;
    let mut session = DeviceSession {
        device: device.clone(),
        listener,
        client_tx,
        up_tx,
        // Replaced below once rumqttd said whether it kept the session.
        state: Arc::default(),
        persistent,
        max_filters: context.max_filters,
        connacked: false,
        upstream_acks: VecDeque::new(),
        sub_devices,
        placed: BTreeSet::new(),
        pending_subacks: 0,
        held: VecDeque::new(),
        next_pkid: 0,
        dropped: DroppedPublishes::default(),
        activations: Arc::clone(context.auth.activations()),
        record: context.record.clone(),
    };
    // The device's own namespace, and its sub-devices' if it is a gateway
    // that reconnects: subscribed before the device hears CONNACK.
    // If rumqttd is too busy to take the subscriptions (a reconnect storm
    // of thousands), the client hears "server unavailable" (CONNACK 3),
    // which it retries as a network failure, not a silent close, which a
    // device takes for a refused login and backs off far longer.
    // A session whose subscriptions rumqttd lost (it can, while it still
    // tears down the device's previous session of the same id) is opened
    // again, a few times, before the client hears CONNACK 3.
    let mut attempt = 1;
    loop {
        session.placed.clear();
        session.pending_subacks = 0;
        session.held.clear();
        let subscribed = async {
            session
                .subscribe_upstream(std::slice::from_ref(&device))
                .await?;
            session.sync_sub_devices().await?;
            session.await_subacks(&mut up_rx).await
        }
        .await;
        let error = match subscribed {
            Ok(()) => break,
            Err(e) => e,
        };
        if attempt == UPSTREAM_ATTEMPTS {
            unavailable(session.client_tx, &error).await;
            return Ok(());
        }
        tracing::debug!(attempt, error = %error, "rumqttd lost the session's subscriptions; opening it again");
        tokio::time::sleep(Duration::from_millis(20) * 3u32.pow(attempt - 1)).await;
        attempt += 1;
        match open_upstream().await {
            Ok((rx, tx, present)) => {
                up_rx = rx;
                session.up_tx = tx;
                session_present = present;
            }
            Err(e) => {
                unavailable(session.client_tx, &e).await;
                return Ok(());
            }
        }
    }
    context.sessions.record(&device, &session_id);
    // The front's half of the session: the device's filters, kept with
    // rumqttd's session (held deliveries are matched against them below).
    session.state = context
        .session_store
        .open(&device, connect.clean_session, session_present);
    info!(
        listener = listener.name(),
        device = %device,
        client_id = ?shorten(&connect.client_id),
        "accepted MQTT CONNECT"
    );
    let ended = async {
        connack(
            session.client_tx,
            ConnectReturnCode::Success,
            session_present,
        )
        .await?;
        session.connacked = true;
        if let Some(push) = activation {
            session.push_activation(&push).await?;
        }
        session.flush_held().await?;
        session
            .run(&mut client_rx, &mut up_rx, connect.keep_alive)
            .await
    }
    .await;
    let state = Arc::clone(&session.state);
    drop(session);
    if ended.as_ref().ok() != Some(&Ending::Disconnect)
        && let Some(will) = will
    {
        drop(up_rx);
        publish_will(context, &device.to_string(), will).await;
    }
    context
        .session_store
        .close(&device, &state, connect.clean_session);
    ended.map(|_| ())
}

impl<W: AsyncWrite + Unpin> DeviceSession<'_, W> {
    /// Pushes the activation secret, as EnOS: unasked, on the device's
    /// `thing/activate/info`, at QoS 0 (an acknowledgement would reach
    /// rumqttd, which never sent it; a lost push is recovered by logging
    /// in again, which pushes the same secret). The encoded copies are
    /// wiped.
    async fn push_activation(&mut self, push: &ActivationPush) -> Result<(), StreamError> {
        let payload = push.payload();
        let publish = Publish::new(push.topic(), QoS::AtMostOnce, payload.to_vec());
        let packet = Packet::Publish(publish);
        let sent = self.client_tx.write(&packet).await;
        if let Packet::Publish(publish) = packet
            && let Ok(mut bytes) = publish.payload.try_into_mut()
        {
            zeroize::Zeroize::zeroize(bytes.as_mut());
        }
        sent?;
        info!(
            listener = self.listener.name(),
            device = %self.device,
            "activation pushed"
        );
        Ok(())
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        client_rx: &mut PacketReader<R>,
        up_rx: &mut UpstreamReader,
        keep_alive_secs: u16,
    ) -> Result<Ending, StreamError> {
        let mut keepalive = Keepalive::new(keep_alive_secs);
        let mut pings = upstream_pings();
        loop {
            tokio::select! {
                packet = client_rx.read() => {
                    keepalive.heard();
                    match packet? {
                        None => return Ok(Ending::Closed),
                        Some(Packet::Disconnect) => {
                            let _ = self.up_tx.write(&Packet::Disconnect).await;
                            return Ok(Ending::Disconnect);
                        }
                        Some(Packet::Connect(_)) => return Ok(Ending::Closed),
                        Some(packet) => self.on_client_packet(packet).await?,
                    }
                },
                packet = up_rx.read() => match packet? {
                    None | Some(Packet::Disconnect) => return Ok(Ending::Closed),
                    Some(packet) => self.on_upstream_packet(packet).await?,
                },
                changed = self.sub_devices.changed() => {
                    if changed.is_ok() {
                        self.sync_sub_devices().await?;
                    }
                }
                _ = pings.tick() => self.up_tx.write(&Packet::PingReq).await?,
                () = keepalive.expired() => {
                    info!(listener = self.listener.name(), device = %self.device, "the device's keepalive expired");
                    return Ok(Ending::Closed);
                }
            }
        }
    }

    /// Waits for every pending SUBACK, holding deliveries meanwhile.
    async fn await_subacks(&mut self, up_rx: &mut UpstreamReader) -> Result<(), StreamError> {
        while self.pending_subacks > 0 {
            match tokio::time::timeout(UPSTREAM_TIMEOUT, up_rx.read()).await {
                Ok(Ok(Some(packet))) => self.on_upstream_packet(packet).await?,
                Ok(Ok(None)) => {
                    return Err(StreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(StreamError::Io(std::io::Error::other(
                        "rumqttd did not acknowledge the namespace subscription",
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether `device` is this session's or one of its logged-in
    /// sub-devices'.
    fn owns(&self, device: &DeviceId) -> bool {
        *device == self.device || self.sub_devices.borrow().contains(device)
    }

    async fn on_client_packet(&mut self, packet: Packet) -> Result<(), StreamError> {
        match packet {
            Packet::Publish(publish) => {
                if topics::is_activation_reply(&publish.topic, &self.device) {
                    self.activations.on_reply(&self.device, &publish.payload);
                }
                if topics::namespace_of(&publish.topic).is_some_and(|ns| self.owns(&ns)) {
                    if let Some(record) = &self.record {
                        record.received(
                            &self.device,
                            &publish.topic,
                            match publish.qos {
                                QoS::AtMostOnce => 0,
                                QoS::AtLeastOnce => 1,
                                QoS::ExactlyOnce => 2,
                            },
                            &publish.payload,
                        );
                    }
                    self.up_tx.write(&Packet::Publish(publish)).await
                } else {
                    info!(
                        listener = self.listener.name(),
                        device = %self.device,
                        topic = ?shorten(&publish.topic),
                        "dropped a PUBLISH outside the device's topics"
                    );
                    self.dropped.acknowledge(&publish, self.client_tx).await
                }
            }
            Packet::PubRel(rel) if self.dropped.release(rel.pkid) => {
                self.client_tx
                    .write(&Packet::PubComp(PubComp::new(rel.pkid)))
                    .await
            }
            Packet::Subscribe(subscribe) => self.subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                {
                    let mut state = lock(&self.state);
                    for topic in &unsubscribe.topics {
                        state.filters.remove(topic);
                    }
                }
                self.client_tx
                    .write(&Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                    .await
            }
            // The front keeps the client's keepalive (see `Keepalive`).
            Packet::PingReq => self.client_tx.write(&Packet::PingResp).await,
            Packet::PubAck(ack) => {
                if self.persistent {
                    lock(&self.state).acknowledged(ack.pkid);
                }
                self.ack_in_order(ack.pkid).await
            }
            // The client's other acknowledgements of deliveries.
            other => self.up_tx.write(&other).await,
        }
    }

    /// Keeps the allowed filters (QoS at most 1, what the namespace
    /// subscription carries; at most `max_filters` of them) and answers
    /// with a SUBACK.
    async fn subscribe(&mut self, subscribe: Subscribe) -> Result<(), StreamError> {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut owned = vec![self.device.clone()];
        owned.extend(self.sub_devices.borrow().iter().cloned());
        for filter in subscribe.filters {
            if topics::filter_allowed(&filter.path, &owned) {
                let qos = match filter.qos {
                    QoS::AtMostOnce => QoS::AtMostOnce,
                    QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
                };
                let added =
                    lock(&self.state)
                        .filters
                        .insert(filter.path.clone(), qos, self.max_filters);
                match added {
                    Ok(()) => codes.push(SubscribeReasonCode::Success(qos)),
                    Err(AtCap(cap)) => {
                        info!(
                            listener = self.listener.name(),
                            device = %self.device,
                            filter = ?shorten(&filter.path),
                            cap,
                            "refused a SUBSCRIBE: the session holds the most filters allowed"
                        );
                        codes.push(SubscribeReasonCode::Failure);
                    }
                }
            } else {
                info!(
                    listener = self.listener.name(),
                    device = %self.device,
                    filter = ?shorten(&filter.path),
                    "refused a SUBSCRIBE outside the device's topics"
                );
                codes.push(SubscribeReasonCode::Failure);
            }
        }
        self.client_tx
            .write(&Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            .await
    }

    async fn on_upstream_packet(&mut self, packet: Packet) -> Result<(), StreamError> {
        match packet {
            Packet::Publish(publish) => {
                // A sub-device login changes the watch before its reply is
                // published: subscribe to the new namespace first.
                if self.sub_devices.has_changed().unwrap_or(false) {
                    self.sync_sub_devices().await?;
                }
                if self.pending_subacks > 0 || !self.connacked {
                    self.held.push_back(publish);
                    Ok(())
                } else {
                    self.deliver(publish).await
                }
            }
            Packet::SubAck(_) => {
                self.pending_subacks = self.pending_subacks.saturating_sub(1);
                if self.pending_subacks == 0 && self.connacked {
                    self.flush_held().await?;
                }
                Ok(())
            }
            // The front's own pings.
            Packet::UnsubAck(_) | Packet::ConnAck(_) | Packet::PingResp => Ok(()),
            // PINGRESP, and rumqttd's acknowledgements of the client's publishes.
            other => self.client_tx.write(&other).await,
        }
    }

    async fn flush_held(&mut self) -> Result<(), StreamError> {
        while self.pending_subacks == 0
            && self.connacked
            && let Some(publish) = self.held.pop_front()
        {
            self.deliver(publish).await?;
        }
        Ok(())
    }

    /// Passes a message from the namespace subscription on to the client
    /// if it is downstream or matches one of its filters, at the QoS of
    /// the subscription; otherwise acknowledges it to rumqttd itself.
    async fn deliver(&mut self, mut publish: Publish) -> Result<(), StreamError> {
        let owned = topics::namespace_of(&publish.topic).is_some_and(|ns| self.owns(&ns));
        let granted = if topics::is_downstream(&publish.topic) {
            Some(QoS::AtLeastOnce)
        } else {
            lock(&self.state).filters.best_match(&publish.topic)
        };
        match granted.filter(|_| owned) {
            None => self.acknowledge_upstream(&publish).await,
            Some(granted) if publish.qos > granted => {
                self.acknowledge_upstream(&publish).await?;
                publish.qos = granted;
                publish.pkid = 0;
                self.client_tx.write(&Packet::Publish(publish)).await
            }
            Some(_) => {
                if publish.qos == QoS::AtLeastOnce {
                    self.upstream_acks.push_back((publish.pkid, false));
                }
                if self.persistent && publish.qos == QoS::AtLeastOnce {
                    // rumqttd sends the previous connection's
                    // unacknowledged deliveries again without DUP.
                    let resent =
                        lock(&self.state).delivered(publish.pkid, &publish.topic, &publish.payload);
                    publish.dup |= resent;
                }
                self.client_tx.write(&Packet::Publish(publish)).await
            }
        }
    }

    /// Acknowledges a delivery the client will not get (or gets at a
    /// lower QoS) to rumqttd, after those before it.
    async fn acknowledge_upstream(&mut self, publish: &Publish) -> Result<(), StreamError> {
        match publish.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => {
                self.upstream_acks.push_back((publish.pkid, false));
                self.ack_in_order(publish.pkid).await
            }
            // The namespace subscription is QoS 1, so rumqttd never
            // sends QoS 2 here; acknowledge it as rumqttd expects anyway.
            QoS::ExactlyOnce => {
                self.up_tx
                    .write(&Packet::PubRec(PubRec::new(publish.pkid)))
                    .await
            }
        }
    }

    /// Marks rumqttd's delivery `pkid` acknowledged and sends the PUBACKs
    /// now due, in rumqttd's order. A `pkid` the front did not see go out
    /// is passed on as it is.
    async fn ack_in_order(&mut self, pkid: u16) -> Result<(), StreamError> {
        match self
            .upstream_acks
            .iter_mut()
            .find(|(p, done)| *p == pkid && !*done)
        {
            Some(entry) => entry.1 = true,
            None => {
                return self.up_tx.write(&Packet::PubAck(PubAck::new(pkid))).await;
            }
        }
        while let Some(&(pkid, true)) = self.upstream_acks.front() {
            self.upstream_acks.pop_front();
            self.up_tx.write(&Packet::PubAck(PubAck::new(pkid))).await?;
        }
        Ok(())
    }

    /// Subscribes to the namespaces of sub-devices that logged in, and
    /// unsubscribes from those that logged out.
    async fn sync_sub_devices(&mut self) -> Result<(), StreamError> {
        let online = self.sub_devices.borrow_and_update().clone();
        let added: Vec<DeviceId> = online.difference(&self.placed).cloned().collect();
        let removed: Vec<DeviceId> = self.placed.difference(&online).cloned().collect();
        if !added.is_empty() {
            self.subscribe_upstream(&added).await?;
        }
        if !removed.is_empty() {
            let topics = removed.iter().flat_map(topics::namespace_filters).collect();
            let pkid = self.next_pkid();
            self.up_tx
                .write(&Packet::Unsubscribe(Unsubscribe { pkid, topics }))
                .await?;
        }
        self.placed = online.iter().cloned().collect();
        Ok(())
    }

    async fn subscribe_upstream(&mut self, devices: &[DeviceId]) -> Result<(), StreamError> {
        let filters = devices
            .iter()
            .flat_map(topics::namespace_filters)
            .map(|path| SubscribeFilter::new(path, QoS::AtLeastOnce))
            .collect();
        let pkid = self.next_pkid();
        self.pending_subacks += 1;
        self.up_tx
            .write(&Packet::Subscribe(Subscribe { pkid, filters }))
            .await
    }

    /// Packet ids 1..=65535 in turn. The front never forwards the
    /// client's SUBSCRIBEs, so every SUBACK from rumqttd is for one of these.
    fn next_pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }
}

/// A device session's hold on its sub-devices: dropped when the session
/// ends, it takes them offline, which frees the gateway's slots.
struct GatewayLease<'a> {
    /// Where the sub-devices are online.
    sessions: &'a SubDeviceSessions,
    /// The gateway (any device: most have no sub-devices).
    gateway: DeviceId,
    /// The number of this session, from [`SubDeviceSessions::session_opened`].
    session: u64,
}

impl Drop for GatewayLease<'_> {
    fn drop(&mut self) {
        let offline = self.sessions.session_ended(&self.gateway, self.session);
        if offline > 0 {
            info!(
                device = %self.gateway,
                sub_devices = offline,
                "the gateway's session ended: its sub-devices are offline"
            );
        }
    }
}

/// The client id of a device's session in rumqttd: `device|{pk}|{dk}`.
/// `|` is in no key, and rumqttd refuses `/` `+` `#` `$` in client ids.
/// Console sessions are `console|…`; rumqttd's own links have no `|`.
fn device_session_id(device: &DeviceId) -> String {
    format!("device|{}|{}", device.product_key, device.device_key)
}

/// At most 160 characters of an untrusted value, for logs; `?` formatting
/// escapes control characters.
pub(crate) fn shorten(value: &str) -> &str {
    match value.char_indices().nth(160) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}
