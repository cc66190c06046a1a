//! `[audit.sink] kind = "postgres"`: every issuance and refusal is a row
//! of `audit_records`; the replicas' role may only append to it (the
//! migration's GRANTs); and the trail still fails closed.

mod common;

use std::path::PathBuf;

use enos_postgres_fixture::PgCluster;
use enos_signer_proto::v1::IssueMqttCredentialRequest;
use enos_signer_svc::{
    audit::postgres::PostgresAuditSinkConfig,
    config::{AuditSinkConfig, RegistryConfig},
    registry::{PostgresRegistry, postgres::PostgresConfig},
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
