//! One registry contract, run unchanged against redb and against a real
//! PostgreSQL (a throwaway cluster): get, list paging, modify seeing
//! current rows, abort, concurrent modify, delete. PostgreSQL also runs it
//! with two registries on one database (two replicas), and its schema is
//! checked (missing, older, newer) and migrated once under concurrency.
//! Both backends open a store of the previous schema (before the EnOS
//! certificates' records) and upgrade it in place.

mod support;

use std::{sync::Arc, time::Duration};
use support::{id, record};

use enos_custody::SealedSecret;
use enos_custody::StoredCaKey;
use enos_postgres_fixture::PgCluster;
use enos_registry::{
    self as registry, CaRecord, CertificateRecord, CertificateRefusal, DeviceId, DeviceRecord,
    EnosCertificateRecord, EnrollTokenRecord, ProductRecord, ProductWrite, Registry,
    RegistryConfig, RegistryError, RevokeTarget, Write,
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
    /// Whether the revoked set ends up answered from memory (redb, and
    /// PostgreSQL with its change feed; not PostgreSQL without a cache,
    /// which reads every check through).
    revoked_in_memory: bool,
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

/// A certificate of `device` issued at `issued`, valid until `not_after`.
fn cert(serial: &str, device: &DeviceId, issued: u64, not_after: u64) -> CertificateRecord {
    CertificateRecord {
        serial: serial.into(),
        device: device.clone(),
        not_before_ms: issued.saturating_sub(1),
        not_after_ms: not_after,
        issued_at_ms: issued,
        revoked: None,
        renewed_by: None,
    }
}

/// A token (its hash: `byte` repeated) for `device`, valid until
/// `expires`.
fn token(byte: u8, device: &DeviceId, expires: u64) -> EnrollTokenRecord {
    EnrollTokenRecord {
        hash: [byte; 32],
        device: device.clone(),
        created_at_ms: 1,
        expires_at_ms: expires,
        used_at_ms: None,
        revoked_at_ms: None,
    }
}

/// The refusal of a refused call.
fn refusal<T: std::fmt::Debug>(result: Result<T, RegistryError>) -> CertificateRefusal {
    match result {
        Err(RegistryError::Refusal(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Records `cert` for its device as an enrollment does (a token made and
/// used at `cert.issued_at_ms`); `byte` names the token.
async fn issue(registry: &dyn Registry, byte: u8, cert: CertificateRecord) {
    let t = token(byte, &cert.device, cert.issued_at_ms + 1_000_000);
    registry.put_enroll_token(t).await.expect("token");
    let device = cert.device.clone();
    let now = cert.issued_at_ms;
    registry
        .enroll(&[byte; 32], &device, now, cert)
        .await
        .expect("enroll");
}

/// Waits until `replica` may have seen a revocation: its generation went
/// past `before`, or it does not answer from memory now (it reads every
/// check through). From then on its `is_revoked` must answer true at
/// once. On redb (one registry) the generation moved before the call
/// returned.
async fn revocation_reached(replica: &dyn Registry, before: u64) {
    eventually(
        Duration::from_secs(5),
        "revocation generation bumped",
        async || replica.revocation_generation() > before || replica.revoked_cached("").is_none(),
    )
    .await;
}

/// `replica`'s revocation generation once its revoked set is trusted (if
/// it ever is: `in_memory`), so that a later bump comes from what
/// follows, not from a reload of something before.
async fn steady_generation(replica: &dyn Registry, in_memory: bool) -> u64 {
    if in_memory {
        eventually(Duration::from_secs(5), "revoked set trusted", async || {
            replica.revoked_cached("").is_some()
        })
        .await;
    }
    replica.revocation_generation()
}

async fn enrollment_tokens_are_single_use_and_each_refusal_is_named(pair: &Pair) {
    let (a, b) = (pair.a.as_ref(), pair.b.as_ref());
    let mut off = record("e", "off");
    off.enabled = false;
    put_all(a, vec![record("e", "dev"), record("e", "other"), off]).await;
    let (dev, other) = (id("e", "dev"), id("e", "other"));

    let refused = a.put_enroll_token(token(9, &id("e", "nobody"), 1000)).await;
    assert_eq!(refusal(refused), CertificateRefusal::DeviceUnknown);
    a.put_enroll_token(token(1, &dev, 1000))
        .await
        .expect("token");
    assert_eq!(
        b.enroll_token(&[1; 32]).await.expect("pre-check"),
        Some(token(1, &dev, 1000)),
        "the other replica reads it"
    );
    assert_eq!(b.enroll_token(&[2; 32]).await.expect("pre-check"), None);

    let enroll = |hash: u8, device: &DeviceId, now: u64, serial: &str| {
        let c = cert(serial, device, now, now + 500);
        let device = device.clone();
        async move { b.enroll(&[hash; 32], &device, now, c).await }
    };
    assert_eq!(
        refusal(enroll(2, &dev, 10, "aa").await),
        CertificateRefusal::TokenUnknown
    );
    assert_eq!(
        refusal(enroll(1, &other, 10, "aa").await),
        CertificateRefusal::TokenForAnotherDevice
    );
    assert_eq!(
        refusal(enroll(1, &dev, 1000, "aa").await),
        CertificateRefusal::TokenExpired
    );
    assert_eq!(
        a.certificate("aa").await.expect("get"),
        None,
        "nothing written"
    );
    enroll(1, &dev, 10, "aa").await.expect("enrolls");
    assert_eq!(
        a.certificate("aa").await.expect("get"),
        Some(cert("aa", &dev, 10, 510))
    );
    assert_eq!(
        a.enroll_token(&[1; 32])
            .await
            .expect("get")
            .and_then(|t| t.used_at_ms),
        Some(10),
        "marked used"
    );
    assert_eq!(
        refusal(enroll(1, &dev, 11, "bb").await),
        CertificateRefusal::TokenUsed
    );
    assert_eq!(a.certificate("bb").await.expect("get"), None);

    // Revoked before use: unused ones only are counted.
    a.put_enroll_token(token(3, &dev, 1000))
        .await
        .expect("token");
    assert_eq!(a.revoke_enroll_tokens(&dev, 20).await.expect("revoke"), 1);
    assert_eq!(b.revoke_enroll_tokens(&dev, 21).await.expect("revoke"), 0);
    assert_eq!(
        refusal(enroll(3, &dev, 22, "cc").await),
        CertificateRefusal::TokenRevoked
    );

    // A disabled or unknown device: refused, and the token stays usable.
    a.put_enroll_token(token(4, &id("e", "off"), 1000))
        .await
        .expect("token");
    assert_eq!(
        refusal(enroll(4, &id("e", "off"), 30, "dd").await),
        CertificateRefusal::DeviceDisabled
    );
    let t4 = a
        .enroll_token(&[4; 32])
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (t4.used_at_ms, t4.revoked_at_ms),
        (None, None),
        "not consumed"
    );
    assert_eq!(a.certificate("dd").await.expect("get"), None);
    let refused = CertificateRefusal::TokenUsed;
    assert!(
        !format!("{}", RegistryError::Refusal(refused)).contains("0101"),
        "no hash in a message"
    );
}

async fn one_token_raced_through_two_replicas_enrolls_once(pair: &Pair) {
    put_all(pair.a.as_ref(), vec![record("race", "dev")]).await;
    let dev = id("race", "dev");
    for round in 0..10_u8 {
        pair.a
            .put_enroll_token(token(round, &dev, u64::MAX))
            .await
            .expect("token");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [&pair.a, &pair.b]
            .into_iter()
            .enumerate()
            .map(|(i, registry)| {
                let (registry, barrier, dev) =
                    (Arc::clone(registry), Arc::clone(&barrier), dev.clone());
                tokio::spawn(async move {
                    let c = cert(&format!("{round:02x}{i}"), &dev, 5, 500);
                    barrier.wait().await;
                    registry.enroll(&[round; 32], &dev, 5, c).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("join"));
        }
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        let lost = outcomes.into_iter().find(Result::is_err).expect("a loser");
        assert_eq!(refusal(lost), CertificateRefusal::TokenUsed);
    }
    assert_eq!(
        pair.b.certificates_of(&dev).await.expect("list").len(),
        10,
        "one certificate per token"
    );
}

async fn renewal_is_refused_for_another_device_a_revoked_or_an_expired_certificate(pair: &Pair) {
    let (a, b) = (pair.a.as_ref(), pair.b.as_ref());
    put_all(a, vec![record("r", "dev"), record("r", "other")]).await;
    let (dev, other) = (id("r", "dev"), id("r", "other"));
    issue(a, 1, cert("01", &dev, 10, 1000)).await;
    let renew = |old: &str, device: &DeviceId, now: u64, serial: &str| {
        let (old, device) = (old.to_owned(), device.clone());
        let c = cert(serial, &device, now, now + 1000);
        async move { b.renew(&old, &device, now, c).await }
    };
    assert_eq!(
        refusal(renew("ff", &dev, 100, "02").await),
        CertificateRefusal::CertificateUnknown
    );
    assert_eq!(
        refusal(renew("01", &other, 100, "02").await),
        CertificateRefusal::CertificateOfAnotherDevice
    );
    assert_eq!(
        refusal(renew("01", &dev, 1000, "02").await),
        CertificateRefusal::CertificateExpired
    );
    assert_eq!(
        a.certificate("02").await.expect("get"),
        None,
        "nothing written"
    );
    renew("01", &dev, 100, "02").await.expect("renews");
    let mut renewed = cert("01", &dev, 10, 1000);
    renewed.renewed_by = Some("02".into());
    assert_eq!(
        a.certificates_of(&dev).await.expect("list"),
        [cert("02", &dev, 100, 1100), renewed],
        "newest first; the old one names its successor"
    );
    // A certificate revoked a moment earlier cannot renew.
    let revoked = a
        .revoke_certificates(RevokeTarget::Serial("02".into()), "key compromise", 150)
        .await
        .expect("revoke");
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        refusal(renew("02", &dev, 151, "03").await),
        CertificateRefusal::CertificateRevoked
    );
    // Renewing again from a certificate renewed already is allowed (an
    // answer lost on the way back): the latest successor is named.
    renew("01", &dev, 160, "04").await.expect("renews again");
    assert_eq!(
        a.certificate("01")
            .await
            .expect("get")
            .and_then(|c| c.renewed_by),
        Some("04".into())
    );
    // The device deleted: a certificate of it that was not revoked (here
    // "04", expired by the wall clock the deletion revokes at) still
    // cannot renew.
    delete(a, vec![dev.clone()]).await.expect("delete");
    assert_eq!(
        refusal(renew("04", &dev, 170, "05").await),
        CertificateRefusal::DeviceUnknown
    );
}

async fn revocation_by_serial_and_by_device_is_seen_by_every_replica(pair: &Pair) {
    let (a, b) = (pair.a.as_ref(), pair.b.as_ref());
    put_all(a, vec![record("v", "dev"), record("v", "keep")]).await;
    let dev = id("v", "dev");
    issue(a, 1, cert("c1", &dev, 10, 1000)).await;
    issue(a, 2, cert("c2", &dev, 11, 1000)).await;
    issue(a, 3, cert("c3", &dev, 12, 50)).await;
    issue(a, 4, cert("k1", &id("v", "keep"), 13, 1000)).await;
    for r in [a, b] {
        assert!(!r.is_revoked("c1").await.expect("check"));
        assert!(!r.is_revoked("unknown").await.expect("check"));
    }
    let before = steady_generation(b, pair.revoked_in_memory).await;
    let revoked = a
        .revoke_certificates(RevokeTarget::Serial("c1".into()), "key compromise", 100)
        .await
        .expect("revoke");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial, "c1");
    let revocation = revoked[0].revoked.clone().expect("revoked");
    assert_eq!(
        (revocation.at_ms, revocation.reason.as_str()),
        (100, "key compromise")
    );
    assert!(a.is_revoked("c1").await.expect("check"), "at once, here");
    revocation_reached(b, before).await;
    assert!(b.is_revoked("c1").await.expect("check"), "at once, there");
    for r in [a, b] {
        assert_ne!(r.revoked_cached("c2"), Some(true), "c2 is not revoked");
    }
    // Already revoked: neither returned nor changed.
    let again = b
        .revoke_certificates(RevokeTarget::Serial("c1".into()), "again", 200)
        .await
        .expect("revoke");
    assert!(again.is_empty());
    assert_eq!(
        a.certificate("c1")
            .await
            .expect("get")
            .and_then(|c| c.revoked)
            .map(|r| r.at_ms),
        Some(100)
    );
    assert_eq!(
        refusal(
            a.revoke_certificates(RevokeTarget::Serial("nope".into()), "x", 1)
                .await
        ),
        CertificateRefusal::CertificateUnknown
    );
    // By device: the unexpired ones not revoked yet.
    let before = steady_generation(a, pair.revoked_in_memory).await;
    let revoked = b
        .revoke_certificates(RevokeTarget::Device(dev.clone()), "stolen", 100)
        .await
        .expect("revoke");
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(serials, ["c2"]);
    revocation_reached(a, before).await;
    assert!(a.is_revoked("c2").await.expect("check"));
    assert!(
        !a.is_revoked("c3").await.expect("check"),
        "expired, untouched"
    );
    assert!(!a.is_revoked("k1").await.expect("check"), "another device");
    // The CRL: revoked and not yet expired.
    let crl: Vec<String> = b
        .revoked_certificates(100)
        .await
        .expect("crl")
        .into_iter()
        .map(|c| c.serial)
        .collect();
    assert_eq!(crl, ["c1", "c2"]);
    assert!(b.revoked_certificates(1000).await.expect("crl").is_empty());
    // In steady state the answer comes from memory.
    if !pair.revoked_in_memory {
        assert_eq!(a.revoked_cached("c1"), None, "no feed: never from memory");
        return;
    }
    eventually(
        Duration::from_secs(5),
        "in-memory set trusted",
        async || a.revoked_cached("c1") == Some(true) && b.revoked_cached("c2") == Some(true),
    )
    .await;
    assert_eq!(b.revoked_cached("k1"), Some(false));
}

async fn disabling_or_deleting_a_device_revokes_its_certificates_and_tokens(pair: &Pair) {
    let (a, b) = (pair.a.as_ref(), pair.b.as_ref());
    put_all(
        a,
        vec![record("l", "dis"), record("l", "del"), record("l", "rot")],
    )
    .await;
    let (dis, del, rot) = (id("l", "dis"), id("l", "del"), id("l", "rot"));
    let now = registry_now();
    let far = now + 3_600_000;
    issue(a, 1, cert("d1", &dis, now, far)).await;
    issue(a, 2, cert("e1", &del, now, far)).await;
    issue(a, 3, cert("r1", &rot, now, far)).await;
    for (byte, device) in [(11, &dis), (12, &del), (13, &rot)] {
        a.put_enroll_token(token(byte, device, u64::MAX))
            .await
            .expect("token");
    }

    // A change that fails revokes nothing.
    let mut disabled = record("l", "dis");
    disabled.enabled = false;
    let failed = a
        .modify(vec![], Box::new(|_| Err(RegistryError::refused("abort"))))
        .await;
    assert!(failed.is_err());
    assert!(!a.is_revoked("d1").await.expect("check"));

    let before = steady_generation(b, pair.revoked_in_memory).await;
    put_all(a, vec![disabled]).await;
    let d1 = a.certificate("d1").await.expect("get").expect("present");
    assert_eq!(
        d1.revoked.map(|r| r.reason),
        Some("device disabled".to_owned()),
        "revoked in the disabling transaction"
    );
    assert!(a.is_revoked("d1").await.expect("check"));
    revocation_reached(b, before).await;
    assert!(b.is_revoked("d1").await.expect("check"));
    let t11 = b
        .enroll_token(&[11; 32])
        .await
        .expect("get")
        .expect("present");
    assert!(t11.revoked_at_ms.is_some(), "its unused token too");
    // Enabled again: nothing is un-revoked.
    put_all(a, vec![record("l", "dis")]).await;
    assert!(b.is_revoked("d1").await.expect("check"));

    let before = steady_generation(b, pair.revoked_in_memory).await;
    delete(b, vec![del.clone()]).await.expect("delete");
    let e1 = a.certificate("e1").await.expect("get").expect("kept");
    assert_eq!(
        e1.revoked.map(|r| r.reason),
        Some("device deleted".to_owned())
    );
    revocation_reached(b, before).await;
    assert!(b.is_revoked("e1").await.expect("check"));
    assert!(
        a.enroll_token(&[12; 32])
            .await
            .expect("get")
            .expect("present")
            .revoked_at_ms
            .is_some()
    );

    // A rewrite that keeps the device enabled (a rotation) revokes nothing.
    let mut rotated = record("l", "rot");
    rotated.secret_version = 2;
    put_all(b, vec![rotated]).await;
    assert!(!a.is_revoked("r1").await.expect("check"));
    assert!(
        a.enroll_token(&[13; 32])
            .await
            .expect("get")
            .expect("present")
            .revoked_at_ms
            .is_none()
    );
}

/// A device disabled through one replica while another enrolls it: the
/// enrollment is ordered before the disable (then the disable revokes
/// its certificate) or after it (then it is refused); never a live
/// certificate of a disabled device.
async fn an_enrollment_racing_a_disable_never_leaves_a_live_certificate(pair: &Pair) {
    let far = registry_now() + 3_600_000;
    for round in 0..20_u8 {
        let dk = format!("dev{round}");
        put_all(pair.a.as_ref(), vec![record("rc", &dk)]).await;
        let dev = id("rc", &dk);
        pair.a
            .put_enroll_token(token(round, &dev, u64::MAX))
            .await
            .expect("token");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let enroll = {
            let (registry, barrier, dev) = (Arc::clone(&pair.b), Arc::clone(&barrier), dev.clone());
            tokio::spawn(async move {
                let c = cert(&format!("{round:02x}"), &dev, 5, far);
                barrier.wait().await;
                registry.enroll(&[round; 32], &dev, 5, c).await
            })
        };
        let disable = {
            let (registry, barrier, dk) = (Arc::clone(&pair.a), Arc::clone(&barrier), dk.clone());
            tokio::spawn(async move {
                let mut disabled = record("rc", &dk);
                disabled.enabled = false;
                barrier.wait().await;
                put_all(registry.as_ref(), vec![disabled]).await;
            })
        };
        let enrolled = enroll.await.expect("join");
        disable.await.expect("join");
        if let Err(e) = &enrolled {
            // Disabled first: the token was revoked with it (or the
            // device is found disabled).
            assert!(
                matches!(
                    e,
                    RegistryError::Refusal(
                        CertificateRefusal::TokenRevoked | CertificateRefusal::DeviceDisabled
                    )
                ),
                "{e:?}"
            );
        }
        for c in pair.b.certificates_of(&dev).await.expect("list") {
            assert!(
                c.revoked.is_some(),
                "round {round}: live certificate {} of a disabled device",
                c.serial
            );
        }
    }
}

/// Now in unix ms (device changes revoke at the wall clock's time).
fn registry_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

async fn expiring_counts_live_certificates_neither_revoked_nor_renewed(pair: &Pair) {
    let a = pair.a.as_ref();
    put_all(a, vec![record("x", "dev")]).await;
    let dev = id("x", "dev");
    issue(a, 1, cert("a", &dev, 10, 150)).await; // counted
    issue(a, 2, cert("b", &dev, 10, 300)).await; // beyond the window
    issue(a, 3, cert("c", &dev, 10, 120)).await; // revoked
    issue(a, 4, cert("d", &dev, 10, 130)).await; // renewed by e
    issue(a, 5, cert("f", &dev, 10, 100)).await; // expires now: expired
    issue(a, 6, cert("g", &dev, 10, 200)).await; // the window's end: counted
    a.revoke_certificates(RevokeTarget::Serial("c".into()), "x", 50)
        .await
        .expect("revoke");
    a.renew("d", &dev, 60, cert("e", &dev, 60, 1000))
        .await
        .expect("renew");
    assert_eq!(pair.b.count_expiring(100, 100).await.expect("count"), 2);
    assert_eq!(pair.b.count_expiring(100, 0).await.expect("count"), 0);
    assert_eq!(pair.b.count_expiring(0, u64::MAX).await.expect("count"), 5);
}

fn ca_record(scheme: &str, created: u64) -> CaRecord {
    CaRecord {
        key: StoredCaKey {
            scheme: scheme.into(),
            bytes: vec![0, 1, 255],
            public_key_der: vec![0x30, 0x59, 0],
        },
        chain_der: Vec::new(),
        pending_csr_der: Some(vec![0x30, 1, 2]),
        created_at_ms: created,
    }
}

async fn the_ca_row_is_changed_by_one_writer_at_a_time(pair: &Pair) {
    let (a, b) = (pair.a.as_ref(), pair.b.as_ref());
    assert_eq!(a.get_ca().await.expect("get"), None);
    let pending = ca_record("test-ca", 0);
    let put = pending.clone();
    a.modify_ca(Box::new(move |current| {
        assert_eq!(current, None);
        Ok(put)
    }))
    .await
    .expect("create");
    assert_eq!(b.get_ca().await.expect("get"), Some(pending.clone()));
    // The certificate imported (on the other replica): the chain in full.
    let mut installed = pending.clone();
    installed.chain_der = vec![vec![0x30, 0, 1], vec![0x30, 0, 2, 0]];
    installed.pending_csr_der = None;
    let (seen, put) = (pending.clone(), installed.clone());
    let stored = b
        .modify_ca(Box::new(move |current| {
            assert_eq!(current, Some(seen));
            Ok(put)
        }))
        .await
        .expect("import");
    assert_eq!(stored, installed);
    assert_eq!(a.get_ca().await.expect("get"), Some(installed.clone()));
    let failed = a
        .modify_ca(Box::new(|_| Err(RegistryError::refused("abort"))))
        .await;
    assert!(failed.is_err());
    assert_eq!(b.get_ca().await.expect("get"), Some(installed));
    // Serialised: every change sees the one before.
    let mut tasks = Vec::new();
    for registry in [&pair.a, &pair.b, &pair.a, &pair.b] {
        let registry = Arc::clone(registry);
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                registry
                    .modify_ca(Box::new(|current| {
                        let mut r = current.expect("present");
                        r.created_at_ms += 1;
                        Ok(r)
                    }))
                    .await
                    .expect("bump");
            }
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
    assert_eq!(
        a.get_ca().await.expect("get").map(|r| r.created_at_ms),
        Some(20)
    );
}

/// An EnOS certificate record of `device`, serial `sn`, recorded at
/// `recorded`, valid until `not_after`.
fn enos_cert(sn: &str, device: &DeviceId, recorded: u64, not_after: u64) -> EnosCertificateRecord {
    EnosCertificateRecord {
        device: device.clone(),
        cert_sn: sn.into(),
        not_before_ms: recorded.saturating_sub(1),
        not_after_ms: not_after,
        issue_authority: "ECC".into(),
        recorded_at_ms: recorded,
        revoked: None,
        superseded_by: None,
    }
}

/// Issue 26: the registry records which EnOS serials a device holds;
/// apply records, renew supersedes the old one, revoke marks it, and
/// the other replica reads each change at once (no copy of its own).
async fn enos_certificates_are_recorded_superseded_and_revoked(pair: &Pair) {
    let (a, b) = (pair.a.as_ref(), pair.b.as_ref());
    let (dev, other) = (id("en", "dev"), id("en", "other"));
    let far = registry_now() + 3_600_000;
    let now = registry_now();
    assert!(b.enos_certificates_of(&dev).await.expect("list").is_empty());
    assert_eq!(
        b.current_enos_certificate(&dev, now)
            .await
            .expect("current"),
        None
    );

    // Apply: recorded, current on the other replica at once.
    a.record_enos_certificate(enos_cert("32720", &dev, 10, far), None)
        .await
        .expect("record");
    a.record_enos_certificate(enos_cert("32720", &other, 11, far), None)
        .await
        .expect("the same serial of another device (another EnOS CA) is its own record");
    let twice = a
        .record_enos_certificate(enos_cert("32720", &dev, 12, far), None)
        .await
        .expect_err("a serial is recorded once");
    assert!(twice.to_string().contains("recorded already"), "{twice}");
    let current = b
        .current_enos_certificate(&dev, now)
        .await
        .expect("current");
    assert_eq!(current, Some(enos_cert("32720", &dev, 10, far)));

    // Renew: the new one current, the old superseded (still valid).
    b.record_enos_certificate(enos_cert("32721", &dev, 20, far), Some("32720".into()))
        .await
        .expect("renew");
    let listed = a.enos_certificates_of(&dev).await.expect("list");
    let mut old = enos_cert("32720", &dev, 10, far);
    old.superseded_by = Some("32721".into());
    assert_eq!(listed, [enos_cert("32721", &dev, 20, far), old.clone()]);
    assert_eq!(
        a.current_enos_certificate(&dev, now)
            .await
            .expect("current")
            .map(|c| c.cert_sn),
        Some("32721".to_owned())
    );
    assert!(old.is_valid_at(now) && old.status_at(now) == "superseded");
    // A renewal of a serial never recorded (issued before the registry
    // kept serials) records the new one all the same.
    a.record_enos_certificate(enos_cert("40000", &other, 30, far), Some("1".into()))
        .await
        .expect("renewal of an unrecorded serial");

    // Revoke: marked once; the first reason and time stand.
    let revoked = a
        .revoke_enos_certificate(&dev, "32720", "superseded", 40)
        .await
        .expect("revoke")
        .expect("newly revoked");
    assert_eq!(
        revoked
            .revoked
            .as_ref()
            .map(|r| (r.at_ms, r.reason.as_str())),
        Some((40, "superseded"))
    );
    assert_eq!(
        b.revoke_enos_certificate(&dev, "32720", "key-compromise", 50)
            .await
            .expect("again"),
        None,
        "revoked already: unchanged"
    );
    assert_eq!(
        b.revoke_enos_certificate(&dev, "999", "unspecified", 50)
            .await
            .expect("unknown"),
        None,
        "not recorded: nothing to mark"
    );
    assert_eq!(
        b.revoke_enos_certificate(&id("en", "nobody"), "32721", "unspecified", 50)
            .await
            .expect("another device's serial"),
        None,
        "a serial is revoked only as its own device's"
    );
    let listed = b.enos_certificates_of(&dev).await.expect("list");
    assert_eq!(listed[1].status_at(now), "revoked");
    assert_eq!(
        listed[1].revoked.as_ref().map(|r| r.reason.as_str()),
        Some("superseded")
    );
    b.revoke_enos_certificate(&dev, "32721", "key-compromise", 60)
        .await
        .expect("revoke")
        .expect("newly revoked");
    assert_eq!(
        a.current_enos_certificate(&dev, now)
            .await
            .expect("current"),
        None
    );

    // Expired: not current.
    a.record_enos_certificate(enos_cert("50000", &id("en", "old"), 1, 2), None)
        .await
        .expect("record");
    assert_eq!(
        b.current_enos_certificate(&id("en", "old"), now)
            .await
            .expect("current"),
        None
    );

    // Paged in key order (for a copy).
    let page = a.list_enos_certificates(None, 2).await.expect("page");
    let keys: Vec<String> = page
        .iter()
        .map(|c| format!("{}/{}", c.device, c.cert_sn))
        .collect();
    assert_eq!(keys, ["en/dev/32720", "en/dev/32721"]);
    let last = (page[1].device.clone(), page[1].cert_sn.clone());
    let rest = b
        .list_enos_certificates(Some(&last), 10)
        .await
        .expect("page");
    let keys: Vec<String> = rest
        .iter()
        .map(|c| format!("{}/{}", c.device, c.cert_sn))
        .collect();
    assert_eq!(keys, ["en/old/50000", "en/other/32720", "en/other/40000"]);
}

/// The CA's cases (issue 25), each on a fresh registry pair from `pair`.
async fn run_certificate_contract<F, Fut>(mut pair: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: std::future::Future<Output = Pair>,
{
    enrollment_tokens_are_single_use_and_each_refusal_is_named(&pair("tokens").await).await;
    one_token_raced_through_two_replicas_enrolls_once(&pair("token_race").await).await;
    an_enrollment_racing_a_disable_never_leaves_a_live_certificate(&pair("disable_race").await)
        .await;
    renewal_is_refused_for_another_device_a_revoked_or_an_expired_certificate(&pair("renew").await)
        .await;
    revocation_by_serial_and_by_device_is_seen_by_every_replica(&pair("revoke").await).await;
    disabling_or_deleting_a_device_revokes_its_certificates_and_tokens(&pair("lifecycle").await)
        .await;
    expiring_counts_live_certificates_neither_revoked_nor_renewed(&pair("expiring").await).await;
    the_ca_row_is_changed_by_one_writer_at_a_time(&pair("ca").await).await;
    enos_certificates_are_recorded_superseded_and_revoked(&pair("enos_certs").await).await;
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
                revoked_in_memory: true,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_keeps_the_certificate_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_owned();
    run_certificate_contract(|name| {
        let config = RegistryConfig::Redb {
            path: dir.join(format!("{name}.redb")),
        };
        async move {
            registry::create(&config).expect("create");
            let registry = registry::open(&config).expect("open");
            Pair {
                a: Arc::clone(&registry),
                b: registry,
                revoked_in_memory: true,
            }
        }
    })
    .await;
}

/// redb keeps the revoked set across a reopen (loaded at open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_revocations_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RegistryConfig::Redb {
        path: dir.path().join("reopen.redb"),
    };
    registry::create(&config).expect("create");
    {
        let r = registry::open(&config).expect("open");
        put_all(r.as_ref(), vec![record("o", "dev")]).await;
        issue(r.as_ref(), 1, cert("0a", &id("o", "dev"), 10, 1000)).await;
        issue(r.as_ref(), 2, cert("0b", &id("o", "dev"), 10, 1000)).await;
        r.revoke_certificates(RevokeTarget::Serial("0a".into()), "gone", 20)
            .await
            .expect("revoke");
    }
    let r = registry::open(&config).expect("reopen");
    assert_eq!(r.revoked_cached("0a"), Some(true));
    assert_eq!(r.revoked_cached("0b"), Some(false));
    assert!(r.is_revoked("0a").await.expect("check"));
}

/// Issue 26: a redb file of the previous schema (no EnOS certificates'
/// table: every table but that one, as main's binary made it) upgrades
/// in place at open; its records stay, and the new records work and
/// survive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_a_file_from_before_the_enos_certificates_upgrades_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("previous.redb");
    let config = RegistryConfig::Redb { path: path.clone() };
    registry::create(&config).expect("create");
    {
        let r = registry::open(&config).expect("open");
        put_all(r.as_ref(), vec![record("up", "dev")]).await;
        issue(r.as_ref(), 1, cert("0a", &id("up", "dev"), 10, u64::MAX)).await;
    }
    {
        // The previous schema: drop the one table it lacked.
        let db = redb::Database::open(&path).expect("raw open");
        let txn = db.begin_write().expect("txn");
        let table: redb::TableDefinition<'static, (&str, &str, &str), &[u8]> =
            redb::TableDefinition::new("enos_certificates");
        assert!(
            txn.delete_table(table).expect("delete"),
            "the table existed"
        );
        txn.commit().expect("commit");
    }
    let r = registry::open(&config).expect("open the previous schema");
    assert!(r.get(&id("up", "dev")).await.expect("get").is_some());
    assert_eq!(
        r.certificates_of(&id("up", "dev"))
            .await
            .expect("certs")
            .len(),
        1
    );
    let dev = id("up", "dev");
    assert!(r.enos_certificates_of(&dev).await.expect("read").is_empty());
    r.record_enos_certificate(enos_cert("32720", &dev, 10, u64::MAX), None)
        .await
        .expect("record after the upgrade");
    drop(r);
    let r = registry::open(&config).expect("reopen");
    assert_eq!(
        r.current_enos_certificate(&dev, registry_now())
            .await
            .expect("current")
            .map(|c| c.cert_sn),
        Some("32720".to_owned())
    );
}

/// Makes `database` as the previous release's binary did: every
/// migration but the latest, with their version rows.
fn previous_schema(cluster: &PgCluster, database: &str) {
    cluster
        .psql(
            database,
            "CREATE TABLE enos_schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .expect("migrations table");
    for m in migrations::MIGRATIONS
        .iter()
        .filter(|m| m.version < migrations::latest())
    {
        cluster.psql(database, m.sql).expect("previous migration");
        cluster
            .psql(
                database,
                &format!(
                    "INSERT INTO enos_schema_migrations (version, name) VALUES ({}, '{}')",
                    m.version, m.name
                ),
            )
            .expect("version row");
    }
}

/// Issue 26: a PostgreSQL schema of the previous release (version 5) is
/// refused until migrated; `registry migrate` (`create`) applies the one
/// new step (6, the EnOS certificates' table) in place; earlier rows
/// stay; the signer's role may record and revoke in the new table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_schema_from_before_the_enos_certificates_migrates_in_place() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("previous").expect("createdb");
    previous_schema(&cluster, "previous");
    let config = pg_config(&cluster, "previous");
    let registry_config = RegistryConfig::Postgres(config.clone());
    cluster
        .psql(
            "previous",
            "INSERT INTO devices (product_key, device_key, enabled, secret_version,                sealed_scheme, sealed, created_at_ms, updated_at_ms)              VALUES ('up', 'dev', true, 1, 'test', '\\x01', 1, 1)",
        )
        .expect("a device of the previous release");
    let older = registry::open(&registry_config).err().expect("refused");
    assert!(
        older.to_string().contains("enos-signer registry migrate"),
        "{older}"
    );
    let applied = registry::postgres::PostgresRegistry::create(&config).expect("migrate");
    assert_eq!(applied, [6], "the one new step");
    assert_eq!(migrations::latest(), 6);
    let r = registry::open(&registry_config).expect("migrated schema serves");
    let dev = id("up", "dev");
    assert!(r.get(&dev).await.expect("get").is_some(), "rows kept");
    let password_file = cluster
        .create_login("replica", "IN ROLE enos_signer")
        .expect("login");
    let replica = registry::postgres::PostgresRegistry::open(&PostgresConfig {
        url: cluster.url_as("replica", "previous"),
        password_file: Some(password_file),
        ..config.clone()
    })
    .expect("open as the signer's role");
    replica
        .record_enos_certificate(enos_cert("32720", &dev, 10, u64::MAX), None)
        .await
        .expect("record as the signer's role");
    replica
        .record_enos_certificate(enos_cert("32721", &dev, 20, u64::MAX), Some("32720".into()))
        .await
        .expect("renew as the signer's role");
    replica
        .revoke_enos_certificate(&dev, "32720", "superseded", 30)
        .await
        .expect("revoke as the signer's role")
        .expect("newly revoked");
    assert_eq!(
        r.current_enos_certificate(&dev, registry_now())
            .await
            .expect("current")
            .map(|c| c.cert_sn),
        Some("32721".to_owned())
    );
    let bad = cluster.psql(
        "previous",
        "INSERT INTO enos_certificates (product_key, device_key, cert_sn, not_before_ms,            not_after_ms, issue_authority, recorded_at_ms) VALUES ('up', 'dev', '0x1f', 1, 2, 'ECC', 1)",
    );
    assert!(bad.is_err(), "a serial is decimal");
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
    let replicas = |name: &'static str| async move {
        cluster.create_database(name).expect("createdb");
        let config = RegistryConfig::Postgres(pg_config(cluster, name));
        registry::create(&config).expect("migrate");
        Pair {
            a: registry::open(&config).expect("open a"),
            b: registry::open(&config).expect("open b"),
            revoked_in_memory: true,
        }
    };
    run_contract(replicas).await;
    run_certificate_contract(replicas).await;
    // The same cases without the cache, one of them over the Unix socket.
    let uncached = |name: &'static str| async move {
        let database = format!("{name}_nocache");
        cluster.create_database(&database).expect("createdb");
        let mut config = pg_config(cluster, &database);
        registry::create(&RegistryConfig::Postgres(config.clone())).expect("migrate");
        config.cache = false;
        let a = registry::open(&RegistryConfig::Postgres(config.clone())).expect("open a");
        config.url = cluster.socket_url(&database);
        let b = registry::open(&RegistryConfig::Postgres(config)).expect("open b");
        Pair {
            a,
            b,
            revoked_in_memory: false,
        }
    };
    run_contract(uncached).await;
    run_certificate_contract(uncached).await;
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
        .psql("schema", migrations::UNDO_LATEST)
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

/// Issue 25: a revocation through replica A is seen by replica B's
/// per-call check at once: B's generation bumps when its feed reports it,
/// and from then on B answers true (from a reload, or by reading the row
/// while the reload is due). While B's feed is down B never answers from
/// memory: a revocation made then is seen by reading through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_revocation_on_one_replica_reaches_the_other_at_once() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("revoke").expect("createdb");
    let config = pg_config(&cluster, "revoke");
    registry::postgres::PostgresRegistry::create(&config).expect("migrate");
    let a = registry::postgres::PostgresRegistry::open(&config).expect("open a");
    let b = registry::postgres::PostgresRegistry::open(&config).expect("open b");
    put_all(&a, vec![record("rv", "dev")]).await;
    let dev = id("rv", "dev");
    let far = registry_now() + 3_600_000;
    for (byte, serial) in [(1, "r1"), (2, "r2"), (3, "r3"), (4, "r4")] {
        issue(&a, byte, cert(serial, &dev, 10, far)).await;
    }
    // Both feeds up, both sets loaded: answers from memory.
    assert!(!b.is_revoked("r1").await.expect("check"));
    assert!(!a.is_revoked("r1").await.expect("check"));
    eventually(Duration::from_secs(5), "sets trusted", async || {
        a.revoked_cached("r1") == Some(false) && b.revoked_cached("r1") == Some(false)
    })
    .await;

    let before = steady_generation(&b, true).await;
    a.revoke_certificates(RevokeTarget::Serial("r1".into()), "key compromise", 100)
        .await
        .expect("revoke");
    assert!(
        a.is_revoked("r1").await.expect("check"),
        "the revoking replica"
    );
    eventually(
        Duration::from_secs(5),
        "B's generation bumped",
        async || b.revocation_generation() > before,
    )
    .await;
    assert!(b.is_revoked("r1").await.expect("check"), "B, at once");
    eventually(Duration::from_secs(5), "B reloaded", async || {
        b.revoked_cached("r1") == Some(true)
    })
    .await;

    // A device disabled through B: A's generation bumps, r2.. revoked.
    let before = steady_generation(&a, true).await;
    let mut disabled = record("rv", "dev");
    disabled.enabled = false;
    put_all(&b, vec![disabled]).await;
    eventually(
        Duration::from_secs(5),
        "A's generation bumped",
        async || a.revocation_generation() > before,
    )
    .await;
    assert!(a.is_revoked("r2").await.expect("check"));
    put_all(&b, vec![record("rv", "dev")]).await;
    issue(&a, 5, cert("r5", &dev, 10, far)).await;

    // B's feed cut: B stops answering from memory at once (read through),
    // so a revocation made while it is down is seen; then it comes back.
    eventually(Duration::from_secs(5), "B trusted again", async || {
        b.revoked_cached("r5") == Some(false)
    })
    .await;
    let cut = cluster
        .psql(
            "revoke",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{}'",
                registry::postgres::LISTEN_APPLICATION_NAME
            ),
        )
        .expect("psql");
    assert_eq!(cut, "2", "both feeds cut");
    eventually(
        Duration::from_secs(5),
        "B's feed noticed down",
        async || b.revoked_cached("r5").is_none(),
    )
    .await;
    cluster
        .psql(
            "revoke",
            "UPDATE certificates SET revoked_at_ms = 1, revoked_reason = 'psql' WHERE serial = 'r5'",
        )
        .expect("psql");
    assert!(b.is_revoked("r5").await.expect("check"), "read through");
    eventually(
        Duration::from_secs(10),
        "B's feed back, set reloaded",
        async || b.revoked_cached("r5") == Some(true),
    )
    .await;
}

/// Issue 25: the replicas' role may do what the CA's records need: a
/// login that is only a member of `enos_signer` enrolls, renews, revokes
/// and writes the CA row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_signer_role_may_enroll_renew_revoke_and_keep_the_ca() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("grants").expect("createdb");
    registry::postgres::PostgresRegistry::create(&pg_config(&cluster, "grants")).expect("migrate");
    let password_file = cluster
        .create_login("replica", "IN ROLE enos_signer")
        .expect("login");
    let config = PostgresConfig {
        url: cluster.url_as("replica", "grants"),
        password_file: Some(password_file),
        pool_size: 2,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    };
    let r = registry::postgres::PostgresRegistry::open(&config).expect("open as the replica");
    put_all(&r, vec![record("g", "dev")]).await;
    let dev = id("g", "dev");
    let far = registry_now() + 3_600_000;
    issue(&r, 1, cert("g1", &dev, 10, far)).await;
    r.renew("g1", &dev, 20, cert("g2", &dev, 20, far))
        .await
        .expect("renew");
    r.revoke_certificates(RevokeTarget::Serial("g1".into()), "x", 30)
        .await
        .expect("revoke");
    r.put_enroll_token(token(2, &dev, u64::MAX))
        .await
        .expect("token");
    assert_eq!(r.revoke_enroll_tokens(&dev, 40).await.expect("revoke"), 1);
    delete(&r, vec![dev.clone()]).await.expect("delete revokes");
    r.modify_ca(Box::new(|_| Ok(ca_record("test", 1))))
        .await
        .expect("CA row");
    assert!(r.is_revoked("g2").await.expect("check"));
    assert_eq!(r.count_expiring(0, u64::MAX).await.expect("count"), 0);
}

/// Issue 25: `registry copy` carries the CA row, every certificate and
/// every token (redb → PostgreSQL); run again it changes nothing; a
/// revocation made on either side stands after another run; a
/// destination with another CA is refused before any certificate lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_copy_carries_the_ca_certificates_and_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("copy").expect("createdb");
    let from = RegistryConfig::Redb {
        path: dir.path().join("from.redb"),
    };
    let to = RegistryConfig::Postgres(pg_config(&cluster, "copy"));
    registry::create(&from).expect("create");
    let source = registry::open(&from).expect("open");
    let src = source.as_ref();
    put_all(src, vec![record("cp", "dev"), record("cp", "gone")]).await;
    let dev = id("cp", "dev");
    let far = registry_now() + 3_600_000;
    let ca = {
        let mut ca = ca_record("test-ca", 5);
        ca.chain_der = vec![vec![0x30, 9]];
        ca.pending_csr_der = None;
        ca
    };
    let put = ca.clone();
    src.modify_ca(Box::new(move |_| Ok(put))).await.expect("ca");
    issue(src, 1, cert("01", &dev, 10, far)).await;
    src.renew("01", &dev, 20, cert("02", &dev, 20, far))
        .await
        .expect("renew");
    issue(src, 2, cert("03", &id("cp", "gone"), 30, far)).await;
    delete(src, vec![id("cp", "gone")])
        .await
        .expect("delete revokes 03");
    src.put_enroll_token(token(3, &dev, far))
        .await
        .expect("token");
    src.put_enroll_token(token(4, &dev, far))
        .await
        .expect("token");
    src.revoke_enroll_tokens(&dev, 40).await.expect("revoke");
    src.put_enroll_token(token(5, &dev, far))
        .await
        .expect("token");
    src.record_enos_certificate(enos_cert("32720", &dev, 10, far), None)
        .await
        .expect("EnOS record");
    src.record_enos_certificate(enos_cert("32721", &dev, 20, far), Some("32720".into()))
        .await
        .expect("EnOS renewal");

    registry::create(&to).expect("migrate");
    let destination = registry::open(&to).expect("open");
    let report = registry::copy::copy(src, destination.as_ref(), |_| {})
        .await
        .expect("copy");
    assert!(report.ca_copied);
    assert_eq!(report.certificates.created, 3);
    assert_eq!(report.enroll_tokens.created, 5);
    assert_eq!(report.enos_certificates.created, 2);
    assert_eq!(
        destination
            .enos_certificates_of(&dev)
            .await
            .expect("EnOS records"),
        src.enos_certificates_of(&dev).await.expect("EnOS records")
    );
    let dst = destination.as_ref();
    assert_eq!(dst.get_ca().await.expect("ca"), Some(ca.clone()));
    assert_eq!(
        dst.list_certificates(None, 100).await.expect("list"),
        src.list_certificates(None, 100).await.expect("list")
    );
    assert_eq!(
        dst.list_enroll_tokens(None, 100).await.expect("list"),
        src.list_enroll_tokens(None, 100).await.expect("list")
    );
    let paged = dst.list_certificates(Some("01"), 1).await.expect("page");
    assert_eq!(paged.len(), 1);
    assert_eq!(paged[0].serial, "02");
    assert!(
        dst.is_revoked("03").await.expect("check"),
        "revoked there too"
    );
    assert!(!dst.is_revoked("01").await.expect("check"));

    // Again: nothing to do.
    let again = registry::copy::copy(src, dst, |_| {}).await.expect("copy");
    assert!(!again.ca_copied);
    assert_eq!(
        (again.certificates.created, again.certificates.updated),
        (0, 0)
    );
    assert_eq!(again.certificates.unchanged, 3);
    assert_eq!(again.enroll_tokens.unchanged, 5);
    assert_eq!(again.enos_certificates.unchanged, 2);

    // Revoked on each side since: both stand after another run.
    dst.revoke_certificates(RevokeTarget::Serial("01".into()), "dst", 50)
        .await
        .expect("revoke");
    src.revoke_certificates(RevokeTarget::Serial("02".into()), "src", 60)
        .await
        .expect("revoke");
    let mut used = token(5, &dev, far);
    used.used_at_ms = Some(70);
    src.merge_enroll_tokens(vec![used])
        .await
        .expect("use on the source");
    let merged = registry::copy::copy(src, dst, |_| {}).await.expect("copy");
    assert_eq!(merged.certificates.updated, 1, "02 gains its revocation");
    assert_eq!(merged.enroll_tokens.updated, 1);
    let reasons: Vec<(String, Option<String>)> = dst
        .list_certificates(None, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|c| (c.serial, c.revoked.map(|r| r.reason)))
        .collect();
    assert_eq!(
        reasons,
        [
            ("01".to_owned(), Some("dst".to_owned())),
            ("02".to_owned(), Some("src".to_owned())),
            ("03".to_owned(), Some("device deleted".to_owned())),
        ]
    );
    assert!(dst.is_revoked("02").await.expect("check"));
    assert_eq!(
        dst.enroll_token(&[5; 32])
            .await
            .expect("get")
            .and_then(|t| t.used_at_ms),
        Some(70)
    );

    // A destination with its own CA: refused, none of ours lands there.
    let other = RegistryConfig::Redb {
        path: dir.path().join("other.redb"),
    };
    registry::create(&other).expect("create");
    let other = registry::open(&other).expect("open");
    other
        .modify_ca(Box::new(|_| Ok(ca_record("another-ca", 1))))
        .await
        .expect("ca");
    let refused = registry::copy::copy(src, other.as_ref(), |_| {})
        .await
        .expect_err("another CA refused");
    assert!(refused.to_string().contains("another key"), "{refused}");
    assert!(
        other
            .list_certificates(None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}
