//! One registry contract, run unchanged against redb and against a real
//! PostgreSQL (a throwaway cluster): get, list paging, modify seeing
//! current rows, abort, concurrent modify, delete. PostgreSQL also runs it
//! with two registries on one database (two replicas), and its schema is
//! checked (missing, older, newer) and migrated once under concurrency.

mod support;

use std::{sync::Arc, time::Duration};
use support::{id, record};

use enos_custody::SealedSecret;
use enos_postgres_fixture::PgCluster;
use enos_registry::{
    self as registry, DeviceId, DeviceRecord, ProductRecord, ProductWrite, Registry,
    RegistryConfig, RegistryError, Write,
    postgres::{PostgresConfig, migrations},
};
use enos_sign_core::ProductKey;

async fn put_all(registry: &dyn Registry, records: Vec<DeviceRecord>) {
    let writes = records.into_iter().map(Write::Put).collect::<Vec<_>>();
    registry
        .modify(vec![], Box::new(move |_| Ok(writes)))
        .await
        .expect("put");
}

/// The two registries of a case: the same one twice for redb (one process
/// owns the file), two replicas on one database for PostgreSQL.
struct Pair {
    a: Arc<dyn Registry>,
    b: Arc<dyn Registry>,
}

async fn get_and_list_page_in_key_order(pair: &Pair) {
    let r = pair.a.as_ref();
    assert_eq!(r.get(&id("a", "gw")).await.expect("get"), None);
    let mut sub = record("a-b", "x");
    sub.gateway = Some(id("a", "gw"));
    put_all(
        r,
        vec![
            record("b", "1"),
            record("a", "z"),
            sub.clone(),
            record("a", "gw"),
        ],
    )
    .await;
    assert_eq!(pair.b.get(&sub.id).await.expect("get"), Some(sub.clone()));

    let page1 = r.list(None, None, 2).await.expect("list");
    let keys: Vec<String> = page1.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(keys, ["a/gw", "a/z"]);
    let page2 = r.list(None, Some(&page1[1].id), 10).await.expect("list");
    let keys: Vec<String> = page2.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(keys, ["a-b/x", "b/1"], "byte order, as redb keys sort");
    assert_eq!(page2[0], sub, "every field round-trips");
    let only_a = r
        .list(Some(&ProductKey::new("a").expect("pk")), None, 10)
        .await
        .expect("list");
    assert_eq!(only_a.len(), 2);
    let a_after_gw = r
        .list(
            Some(&ProductKey::new("a").expect("pk")),
            Some(&id("a", "gw")),
            10,
        )
        .await
        .expect("list");
    assert_eq!(a_after_gw.len(), 1);
    assert!(r.list(None, None, 0).await.expect("list").is_empty());
}

async fn modify_sees_current_rows_and_abort_writes_nothing(pair: &Pair) {
    put_all(pair.a.as_ref(), vec![record("p", "one")]).await;
    // A change through one registry is what the other's change reads.
    let mut changed = record("p", "one");
    changed.secret_version = 7;
    put_all(pair.a.as_ref(), vec![changed]).await;
    let seen = pair
        .b
        .modify(
            vec![id("p", "one"), id("p", "absent")],
            Box::new(|current| {
                assert_eq!(current.len(), 2);
                let version = current[0].as_ref().map(|r| r.secret_version);
                assert_eq!(version, Some(7), "current row, not a cached one");
                assert!(current[1].is_none());
                Ok(vec![])
            }),
        )
        .await
        .expect("modify");
    assert!(seen.is_empty());

    // A failing change writes nothing, not even its first writes.
    let result = pair
        .a
        .modify(
            vec![id("p", "one")],
            Box::new(|_| Err(RegistryError::refused("abort"))),
        )
        .await;
    assert!(result.is_err());
    let aborted = pair
        .a
        .modify(
            vec![],
            Box::new(|_| {
                // Writes are decided, then the change fails: nothing lands.
                let _decided = [Write::Put(record("p", "two"))];
                Err(RegistryError::refused("abort after deciding"))
            }),
        )
        .await;
    assert!(aborted.is_err());
    assert_eq!(pair.a.get(&id("p", "two")).await.expect("get"), None);
    assert_eq!(
        pair.a
            .get(&id("p", "one"))
            .await
            .expect("get")
            .map(|r| r.secret_version),
        Some(7)
    );
}

async fn concurrent_modifies_never_lose_a_version(pair: &Pair) {
    put_all(pair.a.as_ref(), vec![record("c", "hot")]).await;
    const EACH: u32 = 20;
    let mut tasks = Vec::new();
    for registry in [&pair.a, &pair.b, &pair.a, &pair.b] {
        let registry = Arc::clone(registry);
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                registry
                    .modify(
                        vec![id("c", "hot")],
                        Box::new(|current| {
                            let mut r = current.into_iter().next().flatten().expect("present");
                            r.secret_version += 1;
                            Ok(vec![Write::Put(r)])
                        }),
                    )
                    .await
                    .expect("rotate");
            }
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
    let version = pair
        .b
        .get(&id("c", "hot"))
        .await
        .expect("get")
        .map(|r| r.secret_version);
    assert_eq!(version, Some(1 + 4 * EACH), "every rotation counted once");

    // Two changes creating one new device at once: one creates, the other
    // sees it (absent rows are serialised too).
    let mut tasks = Vec::new();
    for registry in [&pair.a, &pair.b] {
        let registry = Arc::clone(registry);
        tasks.push(tokio::spawn(async move {
            registry
                .modify(
                    vec![id("c", "new")],
                    Box::new(|current| {
                        let mut r = record("c", "new");
                        if let Some(existing) = current.into_iter().next().flatten() {
                            r.secret_version = existing.secret_version + 1;
                        }
                        Ok(vec![Write::Put(r)])
                    }),
                )
                .await
                .expect("put");
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
    let version = pair
        .a
        .get(&id("c", "new"))
        .await
        .expect("get")
        .map(|r| r.secret_version);
    assert_eq!(version, Some(2));
}

async fn delete_and_changes_reach_the_other_reader(pair: &Pair) {
    put_all(pair.a.as_ref(), vec![record("d", "x"), record("d", "y")]).await;
    // Warm both readers (caches, where there are caches).
    for r in [&pair.a, &pair.b] {
        assert!(r.get(&id("d", "x")).await.expect("get").is_some());
    }
    let mut disabled = record("d", "x");
    disabled.enabled = false;
    pair.a
        .modify(
            vec![],
            Box::new(move |_| Ok(vec![Write::Put(disabled), Write::Delete(id("d", "y"))])),
        )
        .await
        .expect("change");
    // The other reader follows within a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let x = pair.b.get(&id("d", "x")).await.expect("get");
        let y = pair.b.get(&id("d", "y")).await.expect("get");
        if x.as_ref().is_some_and(|r| !r.enabled) && y.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "change not seen within 1 s: {x:?} {y:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Deleting an absent record is a no-op; delete then put in one change.
    pair.a
        .modify(
            vec![],
            Box::new(|_| {
                Ok(vec![
                    Write::Delete(id("d", "never")),
                    Write::Delete(id("d", "x")),
                    Write::Put(record("d", "x")),
                ])
            }),
        )
        .await
        .expect("change");
    assert_eq!(
        pair.a.get(&id("d", "x")).await.expect("get"),
        Some(record("d", "x"))
    );
}

async fn large_changes_commit_whole(pair: &Pair) {
    let records: Vec<DeviceRecord> = (0..5_000)
        .map(|i| record("bulk", &format!("dev-{i:05}")))
        .collect();
    // As an import does: every id read (and locked) first, while another
    // change of one of them runs at once; neither is lost.
    put_all(pair.a.as_ref(), vec![record("bulk", "dev-00007")]).await;
    let ids: Vec<DeviceId> = records.iter().map(|r| r.id.clone()).collect();
    let bump = |registry: Arc<dyn Registry>| async move {
        registry
            .modify(
                vec![id("bulk", "dev-00007")],
                Box::new(|current| {
                    let mut r = current.into_iter().next().flatten().expect("present");
                    r.secret_version += 1;
                    Ok(vec![Write::Put(r)])
                }),
            )
            .await
            .expect("bump")
    };
    let bulk = pair.a.modify(
        ids,
        Box::new(move |current| {
            Ok(records
                .into_iter()
                .zip(current)
                .map(|(mut r, existing)| {
                    r.secret_version = existing.map_or(1, |e| e.secret_version + 1);
                    Write::Put(r)
                })
                .collect())
        }),
    );
    let (bulk, _) = tokio::join!(bulk, bump(Arc::clone(&pair.b)));
    bulk.expect("bulk change");
    let hot = pair.a.get(&id("bulk", "dev-00007")).await.expect("get");
    assert_eq!(
        hot.map(|r| r.secret_version),
        Some(3),
        "both changes counted"
    );
    let mut after = None;
    let mut total = 0;
    loop {
        let page = pair
            .b
            .list(
                Some(&ProductKey::new("bulk").expect("pk")),
                after.as_ref(),
                1000,
            )
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        total += page.len();
        after = page.last().map(|r| r.id.clone());
    }
    assert_eq!(total, 5_000);
}

/// A change's outcome when it is refused by the gateway rules: the
/// messages.
fn broken_rules(result: Result<Vec<Write>, RegistryError>) -> String {
    match result {
        Err(RegistryError::GatewayRules(broken)) => broken
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        other => panic!("expected a gateway-rules refusal, got {other:?}"),
    }
}

fn bound(pk: &str, dk: &str, gateway: (&str, &str)) -> DeviceRecord {
    let mut r = record(pk, dk);
    r.gateway = Some(id(gateway.0, gateway.1));
    r
}

async fn put(
    registry: &dyn Registry,
    records: Vec<DeviceRecord>,
) -> Result<Vec<Write>, RegistryError> {
    let writes = records.into_iter().map(Write::Put).collect::<Vec<_>>();
    registry.modify(vec![], Box::new(move |_| Ok(writes))).await
}

async fn delete(registry: &dyn Registry, ids: Vec<DeviceId>) -> Result<Vec<Write>, RegistryError> {
    let writes = ids.into_iter().map(Write::Delete).collect::<Vec<_>>();
    registry.modify(vec![], Box::new(move |_| Ok(writes))).await
}

async fn gateway_rules_hold_in_every_change(pair: &Pair) {
    let r = pair.a.as_ref();
    put_all(
        r,
        vec![
            record("gw", "1"),
            bound("sub", "1", ("gw", "1")),
            record("other", "1"),
        ],
    )
    .await;
    // A device with sub-devices is not bound as a sub-device.
    let refused = broken_rules(put(r, vec![bound("gw", "1", ("other", "1"))]).await);
    assert!(
        refused.contains("gw/1 is the gateway of sub-devices (such as sub/1)"),
        "{refused}"
    );
    // A sub-device is not a gateway.
    let refused = broken_rules(put(r, vec![bound("other", "2", ("sub", "1"))]).await);
    assert!(
        refused.contains("gateway sub/1 is itself a sub-device"),
        "{refused}"
    );
    assert_eq!(
        r.get(&id("other", "2")).await.expect("get"),
        None,
        "nothing written"
    );
    // A gateway with sub-devices is not deleted, by this replica or another.
    for registry in [&pair.a, &pair.b] {
        let refused = broken_rules(delete(registry.as_ref(), vec![id("gw", "1")]).await);
        assert!(refused.contains("unbind or delete them first"), "{refused}");
    }
    assert!(r.get(&id("gw", "1")).await.expect("get").is_some());
    // The index follows every write: rewriting the sub-device unbound
    // (or deleting it) frees the gateway.
    put_all(r, vec![record("sub", "1")]).await;
    put_all(pair.b.as_ref(), vec![bound("gw", "1", ("other", "1"))]).await;
    put_all(r, vec![record("gw", "1"), bound("sub", "1", ("gw", "1"))]).await;
    assert_eq!(
        pair.b
            .a_sub_device_of(&[id("gw", "1"), id("other", "1")])
            .await
            .expect("subs"),
        [(id("gw", "1"), id("sub", "1"))].into_iter().collect()
    );
    delete(r, vec![id("sub", "1"), id("gw", "1")])
        .await
        .expect("subs and gateway at once");
    assert!(
        pair.b
            .a_sub_device_of(&[id("gw", "1")])
            .await
            .expect("subs")
            .is_empty()
    );
    // A rewrite that keeps a binding checks nothing (records from before
    // the rules stay writable).
    put_all(r, vec![record("g2", "1"), bound("s2", "1", ("g2", "1"))]).await;
    let mut rotated = bound("s2", "1", ("g2", "1"));
    rotated.secret_version = 2;
    put_all(r, vec![rotated]).await;

    // Two replicas at once: one binds x under g3, the other g3 under h3.
    // They cannot both win (that would make g3 a sub-device with subs).
    for round in 0..5 {
        let (g, x, h) = (
            format!("g3-{round}"),
            format!("x3-{round}"),
            format!("h3-{round}"),
        );
        put_all(r, vec![record("c", &g), record("c", &x), record("c", &h)]).await;
        let bind = |registry: Arc<dyn Registry>, sub: String, gateway: String| async move {
            registry
                .modify(
                    vec![id("c", &sub), id("c", &gateway)],
                    Box::new(move |current| {
                        let mut record = current[0].clone().expect("present");
                        record.gateway = Some(id("c", &gateway));
                        Ok(vec![Write::Put(record)])
                    }),
                )
                .await
        };
        let (first, second) = tokio::join!(
            bind(Arc::clone(&pair.a), x.clone(), g.clone()),
            bind(Arc::clone(&pair.b), g.clone(), h.clone()),
        );
        assert!(
            first.is_ok() != second.is_ok(),
            "exactly one wins: {first:?} {second:?}"
        );
    }
}

/// Every case, each on a fresh registry pair from `pair`.
/// A device without a secret (awaiting activation) reads back as one, on
/// both replicas; product secrets are created, replaced, read by the other
/// replica, aborted without a write, and deleted.
async fn activation_records_round_trip(pair: &Pair) {
    let r = pair.a.as_ref();
    let awaiting = DeviceRecord::awaiting_activation(id("act", "new"), None, 5);
    assert!(awaiting.is_awaiting_activation());
    assert_eq!(awaiting.secret_version, 0);
    put_all(r, vec![awaiting.clone()]).await;
    assert_eq!(
        pair.b.get(&awaiting.id).await.expect("get"),
        Some(awaiting.clone())
    );
    let listed = pair.b.list(None, None, 10).await.expect("list");
    assert!(listed.contains(&awaiting), "{listed:?}");
    // Activated: the same record with a secret.
    let mut activated = awaiting.clone();
    activated.secret_version = 1;
    activated.sealed = record("act", "new").sealed;
    put_all(r, vec![activated.clone()]).await;
    assert_eq!(
        pair.b.get(&awaiting.id).await.expect("get"),
        Some(activated)
    );

    let pk = ProductKey::new("act").expect("pk");
    assert_eq!(pair.b.get_product(&pk).await.expect("get"), None);
    let product = |version: u32, byte: u8| ProductRecord {
        product_key: pk.clone(),
        secret_version: version,
        sealed: SealedSecret {
            scheme: "test".into(),
            bytes: vec![byte, 0, 255],
        },
        created_at_ms: 7,
        updated_at_ms: 8 + u64::from(version),
    };
    let v1 = product(1, 1);
    let put = v1.clone();
    r.modify_product(
        pk.clone(),
        Box::new(move |current| {
            assert_eq!(current, None);
            Ok(ProductWrite::Put(put))
        }),
    )
    .await
    .expect("create");
    assert_eq!(
        pair.b.get_product(&pk).await.expect("get"),
        Some(v1.clone())
    );
    // Replaced, seeing the current record (read on the other replica).
    let v2 = product(2, 2);
    let (seen, put) = (v1.clone(), v2.clone());
    pair.b
        .modify_product(
            pk.clone(),
            Box::new(move |current| {
                assert_eq!(current, Some(seen));
                Ok(ProductWrite::Put(put))
            }),
        )
        .await
        .expect("rotate");
    assert_eq!(r.get_product(&pk).await.expect("get"), Some(v2.clone()));
    // A failing change writes nothing.
    let aborted = r
        .modify_product(
            pk.clone(),
            Box::new(|_| Err(RegistryError::refused("abort"))),
        )
        .await;
    assert!(aborted.is_err());
    assert_eq!(pair.b.get_product(&pk).await.expect("get"), Some(v2));
    let gone = pk.clone();
    r.modify_product(
        pk.clone(),
        Box::new(move |_| Ok(ProductWrite::Delete(gone))),
    )
    .await
    .expect("delete");
    assert_eq!(pair.b.get_product(&pk).await.expect("get"), None);
}

async fn run_contract<F, Fut>(mut pair: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: std::future::Future<Output = Pair>,
{
    get_and_list_page_in_key_order(&pair("list").await).await;
    modify_sees_current_rows_and_abort_writes_nothing(&pair("modify").await).await;
    concurrent_modifies_never_lose_a_version(&pair("concurrent").await).await;
    delete_and_changes_reach_the_other_reader(&pair("delete").await).await;
    large_changes_commit_whole(&pair("large").await).await;
    gateway_rules_hold_in_every_change(&pair("gateways").await).await;
    activation_records_round_trip(&pair("activation").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_keeps_the_registry_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_owned();
    run_contract(|name| {
        let config = RegistryConfig::Redb {
            path: dir.join(format!("{name}.redb")),
        };
        async move {
            registry::create(&config).expect("create");
            let registry = registry::open(&config).expect("open");
            Pair {
                a: Arc::clone(&registry),
                b: registry,
            }
        }
    })
    .await;
}

fn pg_config(cluster: &PgCluster, database: &str) -> PostgresConfig {
    PostgresConfig {
        url: cluster.url(database),
        password_file: Some(cluster.password_file()),
        pool_size: 4,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_registry_contract_across_two_replicas() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    let cluster = &cluster;
    run_contract(|name| async move {
        cluster.create_database(name).expect("createdb");
        let config = RegistryConfig::Postgres(pg_config(cluster, name));
        registry::create(&config).expect("migrate");
        Pair {
            a: registry::open(&config).expect("open a"),
            b: registry::open(&config).expect("open b"),
        }
    })
    .await;
    // The same cases without the cache, one of them over the Unix socket.
    run_contract(|name| async move {
        let database = format!("{name}_nocache");
        cluster.create_database(&database).expect("createdb");
        let mut config = pg_config(cluster, &database);
        registry::create(&RegistryConfig::Postgres(config.clone())).expect("migrate");
        config.cache = false;
        let a = registry::open(&RegistryConfig::Postgres(config.clone())).expect("open a");
        config.url = cluster.socket_url(&database);
        let b = registry::open(&RegistryConfig::Postgres(config)).expect("open b");
        Pair { a, b }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_is_checked_and_migrated_once() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("schema").expect("createdb");
    let config = pg_config(&cluster, "schema");
    let registry_config = RegistryConfig::Postgres(config.clone());

    let missing = registry::open(&registry_config).err().expect("refused");
    assert!(
        missing.to_string().contains("enos-signer init"),
        "{missing}"
    );

    // Replicas (or operators) migrating at once: each migration once.
    let applied: Vec<Vec<i32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| registry::postgres::PostgresRegistry::create(&config)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("migrate"))
            .collect()
    });
    let all: Vec<i32> = applied.into_iter().flatten().collect();
    let expected: Vec<i32> = migrations::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(all, expected, "each migration applied by exactly one");
    let rows = cluster
        .psql("schema", "SELECT count(*) FROM enos_schema_migrations")
        .expect("psql");
    assert_eq!(rows, expected.len().to_string());
    registry::open(&registry_config).expect("current schema serves");

    // A newer schema (a later binary migrated it): refused, clearly.
    cluster
        .psql(
            "schema",
            "INSERT INTO enos_schema_migrations (version, name) VALUES (9999, 'future')",
        )
        .expect("psql");
    let newer = registry::open(&registry_config).err().expect("refused");
    assert!(
        newer.to_string().contains("newer than this binary"),
        "{newer}"
    );
    let init_newer = registry::create(&registry_config).expect_err("refused");
    assert!(init_newer.to_string().contains("newer"), "{init_newer}");

    // An older schema: refused until migrated.
    cluster
        .psql(
            "schema",
            &format!(
                "DELETE FROM enos_schema_migrations WHERE version >= {}",
                migrations::latest()
            ),
        )
        .expect("psql");
    let older = registry::open(&registry_config).err().expect("refused");
    assert!(
        older
            .to_string()
            .contains("migrate it with this binary: `enos-signer registry migrate"),
        "{older}"
    );
    // An older database lacks the latest step's objects too; `init`
    // applies that step alone.
    cluster
        .psql("schema", "DROP INDEX devices_gateway")
        .expect("psql");
    let applied = registry::postgres::PostgresRegistry::create(&config).expect("migrate");
    assert_eq!(applied, [migrations::latest()]);
    registry::open(&registry_config).expect("migrated schema serves");
}

/// Polls `check` every 10 ms until it holds, for at most `within`.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_follows_every_writer_and_survives_a_cut_feed() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("feed").expect("createdb");
    let config = pg_config(&cluster, "feed");
    registry::postgres::PostgresRegistry::create(&config).expect("migrate");
    let replica = registry::postgres::PostgresRegistry::open(&config).expect("open");
    put_all(&replica, vec![record("f", "dev")]).await;
    let dev = id("f", "dev");
    // The first read starts the feed; once it listens, reads are cached.
    assert!(replica.get(&dev).await.expect("get").is_some());
    eventually(Duration::from_secs(5), "feed up", async || {
        replica.cache_live()
    })
    .await;
    // The cache is really used: a write that fires no trigger (replica
    // mode) is not seen. (A notification of a commit just before LISTEN,
    // or a feed reconnect on a loaded machine, may empty the cache at any
    // moment: a few tries.)
    let mut served_from_cache = false;
    for attempt in 0..5_i64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = replica.get(&dev).await.expect("get").expect("present");
        assert!(before.enabled);
        cluster
            .psql(
                "feed",
                &format!(
                    "SET session_replication_role = replica; \
                     UPDATE devices SET secret_version = {} WHERE device_key = 'dev'",
                    40 + attempt
                ),
            )
            .expect("psql");
        let after = replica.get(&dev).await.expect("get").expect("present");
        if after.secret_version == before.secret_version {
            served_from_cache = true;
            break;
        }
    }
    assert!(served_from_cache, "reads are served from the cache");

    // ...while any ordinary writer (here psql, as another replica would)
    // is seen within a second.
    cluster
        .psql(
            "feed",
            "UPDATE devices SET enabled = false WHERE device_key = 'dev'",
        )
        .expect("psql");
    eventually(Duration::from_secs(1), "disable seen", async || {
        !replica
            .get(&dev)
            .await
            .expect("get")
            .expect("present")
            .enabled
    })
    .await;

    // Cut the feed's connection: the cache is bypassed at once, so a
    // change made while the feed is down is seen too; then it comes back.
    let cut = cluster
        .psql(
            "feed",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{}'",
                registry::postgres::LISTEN_APPLICATION_NAME
            ),
        )
        .expect("psql");
    assert_eq!(cut, "1", "one feed connection");
    eventually(Duration::from_secs(1), "feed noticed down", async || {
        !replica.cache_live()
    })
    .await;
    cluster
        .psql(
            "feed",
            "UPDATE devices SET enabled = true, secret_version = 41",
        )
        .expect("psql");
    let fresh = replica.get(&dev).await.expect("get").expect("present");
    assert!(fresh.enabled && fresh.secret_version == 41, "{fresh:?}");
    eventually(Duration::from_secs(5), "feed back", async || {
        replica.cache_live()
    })
    .await;
    cluster
        .psql("feed", "DELETE FROM devices WHERE device_key = 'dev'")
        .expect("psql");
    eventually(
        Duration::from_secs(1),
        "delete seen after reconnect",
        async || replica.get(&dev).await.expect("get").is_none(),
    )
    .await;

    // A statement of more than 1000 rows (an import, a bulk fix) notifies
    // '*': every cached record is dropped.
    put_all(&replica, vec![record("f", "dev")]).await;
    assert!(
        replica
            .get(&dev)
            .await
            .expect("get")
            .expect("present")
            .enabled
    );
    cluster
        .psql(
            "feed",
            "INSERT INTO devices SELECT 'f', 'bulk-' || i, true, 1, 'test', '\\x00', NULL, NULL, 1, 1 \
             FROM generate_series(1, 1500) AS i; \
             UPDATE devices SET enabled = false",
        )
        .expect("psql");
    eventually(Duration::from_secs(1), "bulk update seen", async || {
        !replica
            .get(&dev)
            .await
            .expect("get")
            .expect("present")
            .enabled
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_checks_the_server_certificate_against_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = enos_testkit::Pki::new("db-ca").expect("pki");
    let server = pki.server(&[]).expect("server cert");
    let cluster = PgCluster::start_with_tls(&server.cert_pem, &server.key_pem).expect("cluster");
    cluster.create_database("tls").expect("createdb");
    let ca = pki.write_ca(dir.path()).expect("ca file");
    let mut config = pg_config(&cluster, "tls");
    config.ca_file = Some(ca);
    registry::postgres::PostgresRegistry::create(&config).expect("migrate over TLS");
    let registry = registry::postgres::PostgresRegistry::open(&config).expect("open over TLS");
    put_all(&registry, vec![record("t", "dev")]).await;
    assert!(registry.get(&id("t", "dev")).await.expect("get").is_some());
    let encrypted = cluster
        .psql(
            "tls",
            "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'enos-signer'",
        )
        .expect("psql");
    assert_eq!(encrypted, "t|1", "the pool's connection is TLS");

    // Another CA: the server is not trusted, nothing is sent.
    let other = enos_testkit::Pki::new("other-ca").expect("pki");
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    config.ca_file = Some(other.write_ca(&other_dir).expect("ca file"));
    let refused = registry::postgres::PostgresRegistry::open(&config)
        .err()
        .expect("untrusted server refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");
    // The right CA, but a host name the certificate does not carry (the
    // same server, reached through hostaddr): refused, as verify-full.
    config.ca_file = Some(dir.path().join("ca.pem"));
    config.url = format!(
        "postgresql://enos@db.example:{}/tls?hostaddr=127.0.0.1",
        cluster.port()
    );
    let wrong_name = registry::postgres::PostgresRegistry::open(&config)
        .err()
        .expect("wrong name refused");
    assert!(
        wrong_name.to_string().contains("certificate"),
        "{wrong_name}"
    );
}
