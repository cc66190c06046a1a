//! The registry's schema: versioned migrations embedded in the binary,
//! applied by `enos-signer init` and `enos-signer registry migrate`
//! ([`apply`]) and checked by every replica that starts serving
//! ([`check`]).
//!
//! [`apply`] runs in one transaction under an advisory lock, so replicas
//! (or operators) starting at once apply each migration exactly once. The
//! applied versions are rows of `enos_schema_migrations`.

use tokio_postgres::Client;

use super::db;
use crate::error::{RegistryError, Result};

/// One step of the schema.
pub struct Migration {
    /// Applied in increasing order; never renumbered once shipped.
    pub version: i32,
    /// What it does, for the migrations table and messages.
    pub name: &'static str,
    /// The SQL, run as one batch inside the migration transaction.
    pub sql: &'static str,
}

/// Every migration this binary knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "devices",
        sql: include_str!("../../migrations/0001_devices.sql"),
    },
    Migration {
        version: 2,
        name: "audit",
        sql: include_str!("../../migrations/0002_audit.sql"),
    },
    Migration {
        version: 3,
        name: "activation",
        sql: include_str!("../../migrations/0003_activation.sql"),
    },
    Migration {
        version: 4,
        name: "devices_gateway",
        sql: include_str!("../../migrations/0004_devices_gateway.sql"),
    },
    Migration {
        version: 5,
        name: "certificates",
        sql: include_str!("../../migrations/0005_certificates.sql"),
    },
    Migration {
        version: 6,
        name: "enos_certificates",
        sql: include_str!("../../migrations/0006_enos_certificates.sql"),
    },
];

/// SQL that undoes the latest migration's objects (6: the EnOS
/// certificates' table), for tests that make a database of the previous
/// release; the version row is removed apart.
pub const UNDO_LATEST: &str = "DROP TABLE enos_certificates";

/// The schema version this binary serves.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Key of the advisory lock that serialises migrations ("enos" "schema").
const LOCK_KEY: i64 = 0x656e_6f73_7363_6865;

/// Applies the migrations the database lacks; returns the versions applied
/// (empty when it was current). Refuses a database newer than this binary.
pub async fn apply(client: &mut Client) -> Result<Vec<i32>> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(db)?;
    // Created only when absent: a replica's role may not create tables,
    // and needs none when the schema is current.
    if !migrations_table_exists(&tx).await? {
        tx.batch_execute(
            "CREATE TABLE enos_schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(db)?;
    }
    let current = current_version(&tx).await?.unwrap_or(0);
    if current > latest() {
        return Err(newer(current));
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql).await.map_err(|e| {
            RegistryError::Store(format!(
                "migration {} ({}): {}",
                migration.version,
                migration.name,
                super::db_message(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO enos_schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(db)?;
        applied.push(migration.version);
    }
    tx.commit().await.map_err(db)?;
    Ok(applied)
}

/// Checks that the database has exactly the schema this binary serves.
pub async fn check(client: &Client) -> Result<()> {
    let current = if migrations_table_exists(client).await? {
        current_version(client).await?
    } else {
        None
    };
    match current {
        None => Err(RegistryError::Config(
            "the registry database has no enos-signer schema; run `enos-signer init` first \
             (or `enos-signer registry migrate` when the keys exist already)"
                .into(),
        )),
        Some(v) if v < latest() => Err(RegistryError::Config(format!(
            "the registry schema is at version {v}, this binary serves version {}; \
             migrate it with this binary: `enos-signer registry migrate --config FILE`",
            latest()
        ))),
        Some(v) if v > latest() => Err(newer(v)),
        Some(_) => Ok(()),
    }
}

fn newer(version: i32) -> RegistryError {
    RegistryError::Config(format!(
        "the registry schema is at version {version}, newer than this binary's {}; \
         upgrade enos-signer before serving this database",
        latest()
    ))
}

async fn current_version(client: &impl tokio_postgres::GenericClient) -> Result<Option<i32>> {
    let row = client
        .query_one("SELECT max(version) FROM enos_schema_migrations", &[])
        .await
        .map_err(db)?;
    Ok(row.get(0))
}

async fn migrations_table_exists(client: &impl tokio_postgres::GenericClient) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT to_regclass('enos_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db)?
        .get(0))
}
