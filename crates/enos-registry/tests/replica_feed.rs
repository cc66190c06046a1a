//! Two replicas on one real PostgreSQL, one of them behind a small TCP
//! proxy written here (on 127.0.0.1, port from the OS) that can hold a
//! COMMIT reply, drop the notifications it relays, or hold every byte the
//! server sends: the races and silent failures of issue 23, findings 4
//! and 5, made on purpose.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use support::{id, record};

use enos_custody::SealedSecret;
use enos_postgres_fixture::PgCluster;
use enos_registry::{
    Registry, Write,
    postgres::{FEED_PING_EVERY, FEED_PING_TIMEOUT, PostgresConfig, PostgresRegistry},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::Notify,
};

fn pg_config(url: String, cluster: &PgCluster) -> PostgresConfig {
    PostgresConfig {
        url,
        password_file: Some(cluster.password_file()),
        pool_size: 4,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    }
}

/// Polls `check` every 10 ms until it holds, for at most `within`.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the proxy does to the bytes the server sends, switched by the test.
#[derive(Default)]
struct ProxyControl {
    /// One shot: the next COMMIT reply (CommandComplete `COMMIT`) and
    /// everything after it on that connection is held this long.
    delay_commit: Mutex<Option<Duration>>,
    /// Told when a COMMIT reply is being held.
    holding_commit: Notify,
    /// Drop every NotificationResponse: the connections stay up and
    /// answer queries, but no LISTEN ever hears anything (as behind a
    /// pooler that dropped the LISTEN).
    drop_notifications: AtomicBool,
    /// Hold every byte the server sends (a connection dead without a
    /// word).
    stall: AtomicBool,
}

/// A TCP proxy in front of one replica's connections (no TLS, so the
/// server's messages can be read: a type byte and a length each).
struct Proxy {
    /// Where the replica connects.
    port: u16,
    /// The switches.
    control: Arc<ProxyControl>,
}

impl Proxy {
    async fn start(server_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let control = Arc::new(ProxyControl::default());
        let shared = Arc::clone(&control);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let mut client_read = client_read;
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let control = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = relay_server(&mut server_read, client_write, &control).await;
                });
            }
        });
        Proxy { port, control }
    }
}

/// Relays the server's messages to the client, as `control` says.
async fn relay_server(
    from: &mut OwnedReadHalf,
    mut to: OwnedWriteHalf,
    control: &ProxyControl,
) -> std::io::Result<()> {
    let mut pending = Vec::new();
    let mut chunk = vec![0_u8; 16 * 1024];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while pending.len() >= 5 {
            let length = u32::from_be_bytes(pending[1..5].try_into().expect("4 bytes")) as usize;
            if pending.len() < 1 + length {
                break;
            }
            let message: Vec<u8> = pending.drain(..1 + length).collect();
            if message[0] == b'A' && control.drop_notifications.load(Ordering::SeqCst) {
                continue;
            }
            if message[0] == b'C' && message[5..] == *b"COMMIT\0" {
                let delay = control.delay_commit.lock().expect("lock").take();
                if let Some(delay) = delay {
                    to.write_all(&out).await?;
                    out.clear();
                    control.holding_commit.notify_one();
                    tokio::time::sleep(delay).await;
                }
            }
            out.extend_from_slice(&message);
        }
        while control.stall.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to.write_all(&out).await?;
    }
}

/// Issue 23, finding 4: replica A's COMMIT reply is held 3 s; meanwhile
/// replica B disables the device A just rotated, and a read on A caches
/// the disabled record. When A's commit returns it must not write its
/// older copy (enabled) over it: A keeps refusing like B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_delayed_commit_never_writes_back_an_older_record() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("race").expect("createdb");
    let direct = pg_config(cluster.url("race"), &cluster);
    PostgresRegistry::create(&direct).expect("migrate");
    let proxy = Proxy::start(cluster.port()).await;
    let through_proxy = pg_config(
        cluster.url("race").replace(
            &format!(":{}/", cluster.port()),
            &format!(":{}/", proxy.port),
        ),
        &cluster,
    );
    assert_ne!(through_proxy.url, direct.url);
    let a = Arc::new(PostgresRegistry::open(&through_proxy).expect("open a"));
    let b = PostgresRegistry::open(&direct).expect("open b");
    let dev = id("race", "dev");
    b.modify(
        vec![],
        Box::new(|_| Ok(vec![Write::Put(record("race", "dev"))])),
    )
    .await
    .expect("put");
    // A's feed is up and A serves the device from its cache.
    assert!(a.get(&dev).await.expect("get").is_some());
    eventually(Duration::from_secs(10), "A's feed up", async || {
        a.cache_live()
    })
    .await;
    assert!(a.get(&dev).await.expect("get").expect("present").enabled);

    // A rotates; the server commits, its reply is held by the proxy.
    *proxy.control.delay_commit.lock().expect("lock") = Some(Duration::from_secs(3));
    let rotating = {
        let a = Arc::clone(&a);
        let dev = dev.clone();
        tokio::spawn(async move {
            a.modify(
                vec![dev],
                Box::new(|current| {
                    let mut r = current.into_iter().next().flatten().expect("present at A");
                    r.secret_version += 1;
                    r.sealed = Some(SealedSecret {
                        scheme: "test".into(),
                        bytes: vec![9, 9, 9],
                    });
                    Ok(vec![Write::Put(r)])
                }),
            )
            .await
        })
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        proxy.control.holding_commit.notified(),
    )
    .await
    .expect("A's COMMIT reply held");

    // B disables the device (it sees A's rotation: committed).
    b.modify(
        vec![dev.clone()],
        Box::new(|current| {
            let mut r = current.into_iter().next().flatten().expect("present at B");
            assert_eq!(r.secret_version, 2, "B sees A's committed rotation");
            r.enabled = false;
            Ok(vec![Write::Put(r)])
        }),
    )
    .await
    .expect("disable at B");
    // A's feed drops the id, and reads on A refill the cache with the
    // disabled record, all while A's COMMIT reply is still held.
    eventually(Duration::from_secs(2), "A reads the disable", async || {
        !a.get(&dev).await.expect("get").expect("present").enabled
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        assert!(!a.get(&dev).await.expect("get").expect("present").enabled);
    }
    assert!(a.cache_live(), "A reads through its cache");
    assert!(!rotating.is_finished(), "A's COMMIT reply is still held");

    let written = rotating.await.expect("task").expect("rotation committed");
    assert_eq!(written.len(), 1);
    // Now and later (no notification will come to correct it).
    for _ in 0..3 {
        let at_a = a.get(&dev).await.expect("get").expect("present");
        assert!(
            !at_a.enabled,
            "replica A serves the older record it wrote back: {at_a:?}"
        );
        assert_eq!(at_a.secret_version, 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!b.get(&dev).await.expect("get").expect("present").enabled);
}

/// Issue 23, finding 5: a feed whose connection stays up but hears
/// nothing (notifications dropped by the proxy, as by a pooler that
/// dropped the LISTEN), or whose connection went silent, is noticed
/// within one ping interval and one ping timeout: the cache is bypassed,
/// a change made meanwhile is read, and the feed is used again only once
/// its own NOTIFY comes back. Prints the measured detection times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_the_feed_proves_itself_by_its_own_notify() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("proof").expect("createdb");
    let direct = pg_config(cluster.url("proof"), &cluster);
    PostgresRegistry::create(&direct).expect("migrate");
    let proxy = Proxy::start(cluster.port()).await;
    let through_proxy = pg_config(
        cluster.url("proof").replace(
            &format!(":{}/", cluster.port()),
            &format!(":{}/", proxy.port),
        ),
        &cluster,
    );
    let replica = PostgresRegistry::open(&through_proxy).expect("open");
    let dev = id("proof", "dev");
    replica
        .modify(
            vec![],
            Box::new(|_| Ok(vec![Write::Put(record("proof", "dev"))])),
        )
        .await
        .expect("put");
    assert!(replica.get(&dev).await.expect("get").is_some());

    let bound = FEED_PING_EVERY + FEED_PING_TIMEOUT;
    // Slack for a loaded 2-core machine: the bound is asserted, not a speed.
    let allowed = bound + Duration::from_secs(1);
    let mut dropped = Vec::new();
    let mut silent = Vec::new();
    for round in 0..3_i64 {
        eventually(Duration::from_secs(15), "feed up", async || {
            replica.cache_live()
        })
        .await;
        // Let a ping or two pass, so the break comes at a random phase.
        tokio::time::sleep(Duration::from_millis(300 + 170 * round as u64)).await;
        replica.get(&dev).await.expect("get");
        proxy
            .control
            .drop_notifications
            .store(true, Ordering::SeqCst);
        let broke = Instant::now();
        eventually(allowed, "deaf feed noticed", async || !replica.cache_live()).await;
        dropped.push(broke.elapsed());
        // A change nobody will be told of is read: the cache is bypassed.
        let version = 100 + round;
        cluster
            .psql(
                "proof",
                &format!("UPDATE devices SET secret_version = {version}"),
            )
            .expect("psql");
        let read = replica.get(&dev).await.expect("get").expect("present");
        assert_eq!(i64::from(read.secret_version), version);
        // Reconnecting does not help while nothing is delivered: the feed
        // is not used again until its own NOTIFY comes back.
        let until = Instant::now() + 2 * bound;
        while Instant::now() < until {
            assert!(!replica.cache_live(), "a feed that hears nothing is used");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
            .control
            .drop_notifications
            .store(false, Ordering::SeqCst);
    }
    for round in 0..3_u64 {
        eventually(Duration::from_secs(15), "feed up", async || {
            replica.cache_live()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        proxy.control.stall.store(true, Ordering::SeqCst);
        let broke = Instant::now();
        eventually(allowed, "silent feed noticed", async || {
            !replica.cache_live()
        })
        .await;
        silent.push(broke.elapsed());
        proxy.control.stall.store(false, Ordering::SeqCst);
    }
    eventually(Duration::from_secs(15), "feed back", async || {
        replica.cache_live()
    })
    .await;
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    eprintln!(
        "change feed down noticed after: notifications dropped {dropped:?} (max {:?}), \
         connection silent {silent:?} (max {:?}); bound: ping every {FEED_PING_EVERY:?}, \
         back within {FEED_PING_TIMEOUT:?} = {bound:?}",
        max(&dropped),
        max(&silent),
    );
}
