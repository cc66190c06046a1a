//! `[audit.sink] kind = "postgres"`: every issuance and refusal is a row
//! of `audit_records`; the replicas' role may only append to it (the
//! migration's GRANTs); and the trail still fails closed. An issuance
//! waiting for its record's commit holds no async worker: other calls are
//! served meanwhile.

mod common;

use std::{path::PathBuf, sync::Arc, time::Duration};

use enos_postgres_fixture::PgCluster;
use enos_registry::{PostgresRegistry, postgres::PostgresConfig};
use enos_signer_proto::v1::IssueMqttCredentialRequest;
use enos_signer_svc::{
    audit::{
        Audit, AuditRecord,
        postgres::{BATCH, OVERFLOW, QUEUE},
    },
    config::{AuditConfig, AuditSinkConfig, PostgresAuditSinkConfig, RegistryConfig},
};
use tonic::Code;

/// A config for `user` (password in `password_file`) on `database`.
fn as_user(
    cluster: &PgCluster,
    user: &str,
    password_file: PathBuf,
    database: &str,
) -> PostgresConfig {
    PostgresConfig {
        url: cluster.url_as(user, database),
        password_file: Some(password_file),
        pool_size: 4,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    }
}

/// Waits (at most 5 s) until `database` holds `n` audit rows.
async fn rows_within(cluster: &PgCluster, database: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let count: usize = cluster
            .psql(database, "SELECT count(*) FROM audit_records")
            .expect("psql")
            .parse()
            .expect("count");
        if count >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} audit rows, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_is_an_append_only_table_and_still_fails_closed() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    cluster.create_database("audited").expect("createdb");
    // The owner migrates; the replica serves with a role that is only a
    // member of enos_signer (created by the migration).
    let owner = as_user(&cluster, "enos", cluster.password_file(), "audited");
    PostgresRegistry::create(&owner).expect("migrate as the owner");
    let replica_password = cluster
        .create_login("replica_role", "IN ROLE enos_signer")
        .expect("login role");
    let replica = as_user(&cluster, "replica_role", replica_password, "audited");
    let sink = PostgresAuditSinkConfig {
        url: replica.url.clone(),
        password_file: replica.password_file.clone(),
        ca_file: None,
        allow_plaintext_password: false,
    };
    let f = common::fixture_with(move |c| {
        c.registry = RegistryConfig::Postgres(replica);
        c.audit.sink = AuditSinkConfig::Postgres(sink);
    })
    .await;
    f.signer
        .put_device("PkAudit", "dev-1", "SecretAudit1")
        .await
        .expect("put");
    let mut device = f.device("PkAudit", "dev-1").await;
    for _ in 0..3 {
        let credential = device
            .issue_mqtt_credential(IssueMqttCredentialRequest::default())
            .await
            .expect("issue")
            .into_inner();
        assert!(common::verify(&credential, "SecretAudit1"));
    }
    let mut stranger = f.device("PkAudit", "unknown").await;
    let refused = stranger
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await;
    assert_eq!(common::code(refused), Code::NotFound);

    // The refusal's record is queued without waiting for its commit.
    rows_within(&cluster, "audited", 6).await;
    let rows = cluster
        .psql(
            "audited",
            "SELECT event, device, outcome, record->>'password_hmac' IS NOT NULL \
             FROM audit_records ORDER BY id",
        )
        .expect("psql");
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(
        rows,
        [
            // An admin change: its intent before, its outcome after.
            "put_device|PkAudit/dev-1|started|f",
            "put_device|PkAudit/dev-1|ok|f",
            "issue_mqtt_credential|PkAudit/dev-1|ok|t",
            "issue_mqtt_credential|PkAudit/dev-1|ok|t",
            "issue_mqtt_credential|PkAudit/dev-1|ok|t",
            "issue_mqtt_credential||not_found|f",
        ]
    );
    let trail = cluster
        .psql("audited", "SELECT record::text FROM audit_records")
        .expect("psql");
    assert!(!trail.contains("SecretAudit1"), "no secret in the trail");

    // The replica's role appends, and nothing else.
    for statement in [
        "UPDATE audit_records SET outcome = 'ok'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
        "SELECT count(*) FROM audit_records",
    ] {
        let denied = cluster
            .psql("audited", &format!("SET ROLE replica_role; {statement}"))
            .expect_err(statement);
        assert!(
            denied.to_string().contains("permission denied"),
            "{statement}: {denied}"
        );
    }

    // The table refuses the replica's inserts: issuance fails closed
    // (Unavailable, no credential); once it accepts them again, issuance
    // resumes.
    cluster
        .psql("audited", "REVOKE INSERT ON audit_records FROM enos_signer")
        .expect("psql");
    let closed = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await;
    assert_eq!(common::code(closed), Code::Unavailable);
    cluster
        .psql("audited", "GRANT INSERT ON audit_records TO enos_signer")
        .expect("psql");
    device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issuance resumes");
    let issued = cluster
        .psql(
            "audited",
            "SELECT count(*) FROM audit_records WHERE event = 'issue_mqtt_credential' AND outcome = 'ok'",
        )
        .expect("psql");
    assert_eq!(issued, "4", "every credential that left has its row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuances_waiting_for_their_commit_hold_no_worker() {
    let cluster = Arc::new(PgCluster::start().expect("PostgreSQL cluster"));
    cluster.create_database("waiting").expect("createdb");
    let owner = as_user(&cluster, "enos", cluster.password_file(), "waiting");
    PostgresRegistry::create(&owner).expect("migrate");
    let sink = PostgresAuditSinkConfig {
        url: owner.url.clone(),
        password_file: owner.password_file.clone(),
        ca_file: None,
        allow_plaintext_password: false,
    };
    let f = common::fixture_with(move |c| {
        c.audit.sink = AuditSinkConfig::Postgres(sink);
    })
    .await;
    const WAITING: usize = 4;
    let mut devices = Vec::new();
    for i in 0..WAITING {
        let dk = format!("dev-{i}");
        f.signer
            .put_device("PkWait", &dk, "SecretWait1")
            .await
            .expect("put");
        devices.push(f.device("PkWait", &dk).await);
    }
    rows_within(&cluster, "waiting", 2 * WAITING).await;

    // A transaction holds the table for 3 s: every commit waits for it
    // (within the sink's 5 s confirmation timeout).
    let locker = lock_table(&cluster, "waiting", 3).await;
    // More issuances waiting than the runtime has workers.
    let issuances: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            tokio::spawn(async move {
                device
                    .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = f.signer.admin().await;
    admin
        .get_device(enos_signer_proto::v1::DeviceRef::new("PkWait", "dev-0"))
        .await
        .expect("a call without a record is served meanwhile");
    assert!(
        issuances.iter().all(|i| !i.is_finished()),
        "served while every issuance still waits for its commit"
    );
    for issuance in issuances {
        issuance
            .await
            .expect("task")
            .expect("issued once the table is free");
    }
    locker.await.expect("task").expect("the lock transaction");
    rows_within(&cluster, "waiting", 3 * WAITING).await;
}

/// Holds `audit_records` locked for `secs` in a transaction of its own;
/// returns once the lock is held.
async fn lock_table(
    cluster: &Arc<PgCluster>,
    database: &'static str,
    secs: u32,
) -> tokio::task::JoinHandle<enos_postgres_fixture::Result<String>> {
    let locker = {
        let cluster = Arc::clone(cluster);
        tokio::task::spawn_blocking(move || {
            cluster.psql(
                database,
                &format!(
                    "BEGIN; LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE; \
                     SELECT pg_sleep({secs}); COMMIT;"
                ),
            )
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cluster
        .psql(
            database,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'audit_records' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        )
        .expect("psql")
        != "1"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    locker
}

/// Issue 23, finding 7: while the audit table cannot be written (locked,
/// then its database stopped), refusal records beyond the queue wait in
/// at most OVERFLOW tasks; the rest are dropped, and every loss is
/// counted. Once the table is free, every record not dropped is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_7_refusal_records_in_an_audit_outage_are_bounded_and_their_loss_counted() {
    let cluster = Arc::new(PgCluster::start().expect("PostgreSQL cluster"));
    cluster.create_database("outage").expect("createdb");
    let owner = as_user(&cluster, "enos", cluster.password_file(), "outage");
    PostgresRegistry::create(&owner).expect("migrate");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("audit.key");
    enos_signer_svc::key_file::create(&key_file).expect("audit key");
    let config = AuditConfig {
        key_file,
        sink: AuditSinkConfig::Postgres(PostgresAuditSinkConfig {
            url: owner.url.clone(),
            password_file: owner.password_file.clone(),
            ca_file: None,
            allow_plaintext_password: false,
        }),
        fail_closed: true,
    };
    let audit = tokio::task::spawn_blocking(move || Audit::open(&config))
        .await
        .expect("task")
        .expect("audit sink");
    let refusal = |i: usize| {
        AuditRecord::new(
            "issue_mqtt_credential",
            None,
            Some(format!("PkOutage/dev-{i}")),
            "not_found",
        )
    };

    // The table is locked: the writer's INSERT waits, the queue fills.
    let locker = lock_table(&cluster, "outage", 4).await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();
    const REFUSALS: usize = QUEUE + OVERFLOW + BATCH + 3000;
    for i in 0..REFUSALS {
        audit.record_detached(&refusal(i));
    }
    let waiting_tasks = runtime.num_alive_tasks().saturating_sub(tasks_before);
    let losses = audit.losses();
    assert!(
        waiting_tasks <= OVERFLOW,
        "{waiting_tasks} tasks wait for the queue, at most {OVERFLOW}"
    );
    assert!(losses.waiting <= OVERFLOW, "{losses:?}");
    let at_least = (REFUSALS - QUEUE - OVERFLOW - BATCH) as u64;
    assert!(
        losses.dropped >= at_least,
        "{losses:?}: at least {at_least} dropped"
    );
    assert_eq!(losses.failed, 0, "nothing failed yet: {losses:?}");

    // The lock goes: every record not dropped reaches the table.
    locker.await.expect("task").expect("the lock transaction");
    let written = REFUSALS - losses.dropped as usize;
    rows_within(&cluster, "outage", written).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while audit.losses().waiting > 0 {
        assert!(std::time::Instant::now() < deadline, "waiters left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows: usize = cluster
        .psql("outage", "SELECT count(*) FROM audit_records")
        .expect("psql")
        .parse()
        .expect("count");
    assert_eq!(rows, written, "written + dropped = refusals");
    assert_eq!(audit.losses().dropped, losses.dropped);

    // The database stops: the writer's writes fail, and are counted.
    cluster.stop().expect("stop PostgreSQL");
    const DURING_STOP: usize = 200;
    for i in 0..DURING_STOP {
        audit.record_detached(&refusal(REFUSALS + i));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = audit.losses();
        if now.failed + (now.dropped - losses.dropped) == DURING_STOP as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "losses not counted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(audit.losses().waiting <= OVERFLOW);
}
