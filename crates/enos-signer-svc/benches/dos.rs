//! Denial-of-service benchmark (#23 findings 1–2): 100 devices keep issuing
//! while one attacker on loopback holds as many anonymous connections and
//! unfinished calls as it can open.
//!
//! One signer on 127.0.0.1 with the default `[server.limits]`. The devices
//! connect from 127.0.0.2 (one device certificate and one connection
//! each; every 20th call they reconnect, as agents do), each issuing a
//! credential every 50 ms. The attacker, from 127.0.0.1, runs
//! `ENOS_DOS_ATTACKERS` workers (default 1000), half of each kind:
//!
//! - TLS callers: a TLS connection without a client certificate, then 64
//!   `IssueMqttCredential` calls whose request body never ends; again as
//!   soon as the connection goes;
//! - silent holders: a TCP connection that never says a byte; again as
//!   soon as the server closes it.
//!
//! Two phases of `ENOS_DOS_SECS` (default 60) each: the devices alone,
//! then the devices under attack. The attacker runs on a thread of its own
//! (one core at most), the signer on two workers, the devices on the
//! bench's runtime: on a small host all share its CPUs, so the p99 ratio
//! includes the attacker's own CPU use, which on a real network is another
//! host's. Prints each phase's success rate (goal:
//! 100 %) and p99 of calls and of reconnects, the ratio attack / alone,
//! and what the attacker held. `cargo bench -p enos-signer-svc --bench dos`
//! (`ENOS_DOS_SECS=10` for a quick run).
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use enos_signer_proto::v1::{
    IssueMqttCredentialRequest, MqttCredential, credentials_client::CredentialsClient,
};
use enos_signer_svc::client;
use enos_testkit::signer::{TestSigner, client_identity};
use tokio::{io::AsyncReadExt, net::TcpSocket, task::JoinSet};
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel};

/// The devices' source address: not the attacker's.
const DEVICES_FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The attacker's source address.
const ATTACKER_FROM: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Devices issuing.
const DEVICES: usize = 100;
/// A device issues this often.
const PACE: Duration = Duration::from_millis(50);
/// A device reconnects every this many calls.
const RECONNECT_EVERY: u64 = 20;
/// Unfinished calls per anonymous TLS connection (the server's default
/// streams per connection).
const CALLS_PER_CONNECTION: usize = 64;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What the devices saw in one phase.
#[derive(Default)]
struct Seen {
    /// Latency of each successful call.
    calls: Vec<Duration>,
    /// Calls that failed (any status).
    failed_calls: u64,
    /// Latency of each successful reconnect (connect + first call).
    reconnects: Vec<Duration>,
    /// Reconnects that failed.
    failed_reconnects: u64,
    /// The first few failures, for the report.
    errors: Vec<String>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.calls.extend(other.calls);
        self.failed_calls += other.failed_calls;
        self.reconnects.extend(other.reconnects);
        self.failed_reconnects += other.failed_reconnects;
        if self.errors.len() < 5 {
            self.errors.extend(other.errors.into_iter().take(5));
        }
    }

    fn report(&mut self, name: &str) -> (Duration, Duration) {
        self.calls.sort();
        self.reconnects.sort();
        let rate = |ok: usize, failed: u64| {
            let total = ok as u64 + failed;
            (total, 100.0 * ok as f64 / total.max(1) as f64)
        };
        let (calls, call_rate) = rate(self.calls.len(), self.failed_calls);
        let (reconnects, reconnect_rate) = rate(self.reconnects.len(), self.failed_reconnects);
        let call_p99 = percentile(&self.calls, 0.99);
        let reconnect_p99 = percentile(&self.reconnects, 0.99);
        println!(
            "{name:<16} calls {calls:>7}  ok {call_rate:>8.3} %  p50 {:>7.2} ms  p99 {:>7.2} ms   reconnects {reconnects:>5}  ok {reconnect_rate:>8.3} %  p99 {:>7.2} ms",
            percentile(&self.calls, 0.50).as_secs_f64() * 1e3,
            call_p99.as_secs_f64() * 1e3,
            reconnect_p99.as_secs_f64() * 1e3,
        );
        for error in &self.errors {
            println!("{:<16} error: {error}", "");
        }
        (call_p99, reconnect_p99)
    }
}

async fn device_channel(
    signer: &TestSigner,
    identity: &tonic::transport::Identity,
) -> Result<Channel, String> {
    client::mtls_endpoint(&signer.uri(), signer.ca_pem(), Some(identity.clone()))
        .map_err(|e| e.to_string())?
        .local_address(Some(DEVICES_FROM))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))
}

async fn issue(channel: Channel) -> Result<(), String> {
    CredentialsClient::new(channel)
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .map(drop)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// One device issuing every [`PACE`] until `end`, reconnecting every
/// [`RECONNECT_EVERY`] calls.
async fn device(
    signer: Arc<TestSigner>,
    identity: tonic::transport::Identity,
    mut channel: Channel,
    end: Instant,
) -> (Seen, Channel) {
    let mut seen = Seen::default();
    let mut n = 0u64;
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let started = Instant::now();
        if n % RECONNECT_EVERY == 0 {
            let fresh = match device_channel(&signer, &identity).await {
                Ok(fresh) => issue(fresh.clone()).await.map(|()| fresh),
                Err(e) => Err(e),
            };
            match fresh {
                Ok(fresh) => {
                    seen.reconnects.push(started.elapsed());
                    channel = fresh;
                }
                Err(e) => {
                    seen.failed_reconnects += 1;
                    if seen.errors.len() < 5 {
                        seen.errors.push(format!("reconnect: {e}"));
                    }
                }
            }
            continue;
        }
        match issue(channel.clone()).await {
            Ok(()) => seen.calls.push(started.elapsed()),
            Err(e) => {
                seen.failed_calls += 1;
                if seen.errors.len() < 5 {
                    seen.errors.push(e);
                }
            }
        }
    }
    (seen, channel)
}

/// Every device for one phase of `length`.
async fn phase(
    signer: &Arc<TestSigner>,
    devices: &mut Vec<(tonic::transport::Identity, Channel)>,
    length: Duration,
) -> Seen {
    let end = Instant::now() + length;
    let mut tasks = JoinSet::new();
    for (i, (identity, channel)) in devices.drain(..).enumerate() {
        let signer = Arc::clone(signer);
        tasks.spawn(async move {
            let (seen, channel) = device(signer, identity.clone(), channel, end).await;
            (i, seen, identity, channel)
        });
    }
    let mut all = Seen::default();
    let mut back = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, seen, identity, channel) = joined.expect("device task");
        all.merge(seen);
        back.push((i, identity, channel));
    }
    back.sort_by_key(|(i, _, _)| *i);
    devices.extend(back.into_iter().map(|(_, id, ch)| (id, ch)));
    all
}

/// What the attacker managed.
#[derive(Default)]
struct Attack {
    /// TCP connections opened.
    connections: AtomicU64,
    /// Connections open now (attacker side: not yet seen closed).
    held: AtomicU64,
    /// The most held at once.
    max_held: AtomicU64,
    /// The longest one connection stayed open, in ms.
    longest_ms: AtomicU64,
    /// Anonymous TLS connections that came up on the client side.
    tls_up: AtomicU64,
    /// Unfinished calls started.
    calls: AtomicU64,
    /// Calls answered by a service (a status that is not the transport's):
    /// the call was in the server.
    answered: AtomicU64,
}

impl Attack {
    /// Counts one connection open; returns when it opened.
    fn opened(&self) -> Instant {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let held = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_held.fetch_max(held, Ordering::Relaxed);
        Instant::now()
    }

    fn closed(&self, since: Instant) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.longest_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

async fn attacker_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ATTACKER_FROM, 0))?;
    socket.connect(addr).await
}

/// A silent holder: TCP, not a byte, again when closed; until `end`.
async fn silent_holder(addr: SocketAddr, attack: Arc<Attack>, end: Instant) {
    while Instant::now() < end {
        let Ok(Ok(mut tcp)) =
            tokio::time::timeout(Duration::from_secs(1), attacker_tcp(addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let since = attack.opened();
        let mut sink = [0u8; 64];
        let left = end.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, tcp.read(&mut sink)).await;
        attack.closed(since);
    }
}

/// A TLS caller: an anonymous TLS connection with
/// [`CALLS_PER_CONNECTION`] calls whose body never ends, again when they
/// are gone; until `end`.
async fn tls_caller(target: Arc<(String, String)>, attack: Arc<Attack>, end: Instant) {
    while Instant::now() < end {
        let endpoint = client::mtls_endpoint(&target.0, &target.1, None)
            .expect("endpoint")
            .local_address(Some(ATTACKER_FROM));
        let since = attack.opened();
        let Ok(Ok(channel)) =
            tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await
        else {
            attack.closed(since);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        attack.tls_up.fetch_add(1, Ordering::Relaxed);
        let mut calls = JoinSet::new();
        for _ in 0..CALLS_PER_CONNECTION {
            let channel = channel.clone();
            let attack = Arc::clone(&attack);
            calls.spawn(async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                if grpc.ready().await.is_err() {
                    return;
                }
                attack.calls.fetch_add(1, Ordering::Relaxed);
                let path =
                    PathAndQuery::from_static("/enos.signer.v1.Credentials/IssueMqttCredential");
                let codec =
                    tonic_prost::ProstCodec::<IssueMqttCredentialRequest, MqttCredential>::default(
                    );
                let body = futures::stream::pending::<IssueMqttCredentialRequest>();
                let answer = grpc
                    .client_streaming(tonic::Request::new(body), path, codec)
                    .await;
                // A status of a service (not the transport's refusal):
                // this call was in the server.
                if let Err(status) = answer {
                    if !matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    ) {
                        attack.answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let left = end.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, calls.join_all()).await;
        attack.closed(since);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let secs = env_or("ENOS_DOS_SECS", 60);
    let attackers = usize::try_from(env_or("ENOS_DOS_ATTACKERS", 1000)).unwrap_or(1000);
    let length = Duration::from_secs(secs);
    let dir = tempfile::tempdir()?;
    let pki = enos_testkit::Pki::new("dos-bench")?;
    let signer = Arc::new(TestSigner::start(dir.path(), &pki).await?);
    let limits = signer.config().server.limits.clone();
    let mut devices = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let dk = format!("dos-{i}");
        signer
            .put_device("PkDos", &dk, &format!("secret-{i}"))
            .await?;
        let identity = client_identity(&pki.device("PkDos", &dk)?);
        let channel = device_channel(&signer, &identity).await?;
        devices.push((identity, channel));
    }
    println!(
        "dos: {DEVICES} devices from {DEVICES_FROM} (a call every {} ms, a reconnect every {RECONNECT_EVERY} calls); attacker from {ATTACKER_FROM}: {} TLS callers without a certificate ({CALLS_PER_CONNECTION} unfinished calls each) + {} silent TCP holders; {secs} s per phase",
        PACE.as_millis(),
        attackers / 2,
        attackers - attackers / 2,
    );
    println!(
        "limits: max_connections {}, max_connections_per_ip {}, handshake_timeout {:?}, http2_start_timeout {:?}, max_concurrent_requests {}",
        limits.max_connections,
        limits.max_connections_per_ip,
        limits.handshake_timeout,
        limits.http2_start_timeout,
        limits.max_concurrent_requests,
    );

    let mut alone = phase(&signer, &mut devices, length).await;
    let (alone_p99, alone_reconnect_p99) = alone.report("devices alone");

    let attack = Arc::new(Attack::default());
    let end = Instant::now() + length;
    // The attacker runs on a thread of its own (as it would on a host of
    // its own, it does not share the devices' scheduler); on this host it
    // still competes for the same CPUs.
    let attacker = {
        let attack = Arc::clone(&attack);
        let target = Arc::new((signer.uri(), signer.ca_pem().to_owned()));
        let addr = signer.addr();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("attacker runtime");
            runtime.block_on(async move {
                let mut attackers_set = JoinSet::new();
                for i in 0..attackers {
                    let attack = Arc::clone(&attack);
                    if i % 2 == 0 {
                        attackers_set.spawn(tls_caller(Arc::clone(&target), attack, end));
                    } else {
                        attackers_set.spawn(silent_holder(addr, attack, end));
                    }
                }
                attackers_set.join_all().await;
            });
        })
    };
    let mut attacked = phase(&signer, &mut devices, length).await;
    let _ = tokio::task::spawn_blocking(move || attacker.join()).await;
    let (attacked_p99, attacked_reconnect_p99) = attacked.report("under attack");

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "p99 under attack / alone: calls {:.2}x, reconnects {:.2}x",
        ratio(attacked_p99, alone_p99),
        ratio(attacked_reconnect_p99, alone_reconnect_p99),
    );
    let total = attacked.calls.len() as u64 + attacked.reconnects.len() as u64;
    let failed = attacked.failed_calls + attacked.failed_reconnects;
    println!(
        "success under attack: {:.3} % of {} (goal: 100 %)",
        100.0 * (total as f64) / ((total + failed).max(1) as f64),
        total + failed,
    );
    println!(
        "attacker: {} connections opened, at most {} open at once, the longest open {:.1} s; {} anonymous TLS connections came up on its side, {} unfinished calls sent, {} of them answered by a service (0: none reached one)",
        attack.connections.load(Ordering::Relaxed),
        attack.max_held.load(Ordering::Relaxed),
        attack.longest_ms.load(Ordering::Relaxed) as f64 / 1e3,
        attack.tls_up.load(Ordering::Relaxed),
        attack.calls.load(Ordering::Relaxed),
        attack.answered.load(Ordering::Relaxed),
    );
    Ok(())
}
