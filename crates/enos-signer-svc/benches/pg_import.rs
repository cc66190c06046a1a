//! Import of an EnOS console export into PostgreSQL: 100,000 devices
//! through `Admin.ImportDevices` (streamed in chunks as `enos-signer import`
//! sends them; checked, sealed and written in one transaction), against
//! `psql \copy` of the same rows (sealed bytes included) into an equivalent
//! table without triggers, as the anchor. Prints rows/s of both and the
//! ratio.
//!
//! `ENOS_BENCH_ROWS` (default 100000): `cargo bench -p enos-signer-svc
//! --bench pg_import`.
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::Instant;

use enos_postgres_fixture::PgCluster;
use enos_registry::postgres::PostgresConfig;
use enos_signer_proto::v1::{ImportDevicesRequest, ImportRow};
use enos_signer_svc::config::RegistryConfig;
use enos_testkit::signer::TestSigner;

/// Rows per streamed message, as the CLI sends them.
const CHUNK: usize = 500;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rows: usize = std::env::var("ENOS_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cluster = PgCluster::start()?;
    cluster.create_database("import")?;
    let dir = tempfile::tempdir()?;
    let pki = enos_testkit::Pki::new("bench")?;
    let registry = RegistryConfig::Postgres(PostgresConfig {
        url: cluster.url("import"),
        password_file: Some(cluster.password_file()),
        pool_size: 4,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    });
    let signer = TestSigner::start_with(dir.path(), &pki, move |c| {
        c.registry = registry;
        c.audit.sink = enos_signer_svc::config::AuditSinkConfig::Log;
    })
    .await?;

    let all: Vec<ImportRow> = (0..rows)
        .map(|i| ImportRow {
            line: u32::try_from(i + 2).unwrap_or(u32::MAX),
            product_key: "PkImport".into(),
            device_key: format!("dev-{i:07}"),
            device_secret: format!("Secret{i:010}x"),
            gateway: None,
            awaiting_activation: false,
            ..Default::default()
        })
        .collect();
    let chunks = |dry_run: bool| -> Vec<ImportDevicesRequest> {
        all.chunks(CHUNK)
            .enumerate()
            .map(|(i, c)| ImportDevicesRequest {
                rows: c.to_vec(),
                dry_run: dry_run && i == 0,
                ..Default::default()
            })
            .collect()
    };
    // A dry run first: streaming, checks and the locked read of every id,
    // without sealing or writing (what the write costs is the rest).
    let started = Instant::now();
    let dry = signer
        .admin()
        .await
        .import_devices(futures::stream::iter(chunks(true)))
        .await?
        .into_inner();
    let dry_secs = started.elapsed().as_secs_f64();
    assert!(!dry.committed && dry.errors.is_empty());
    let started = Instant::now();
    let response = signer
        .admin()
        .await
        .import_devices(futures::stream::iter(chunks(false)))
        .await?
        .into_inner();
    let import_secs = started.elapsed().as_secs_f64();
    assert_eq!(response.imported as usize, rows, "{:?}", response.errors);

    // The anchor: the same rows, as stored, copied into a table like
    // `devices` (same columns, key and collation; no trigger) by psql.
    let file = dir.path().join("rows.csv");
    cluster.psql(
        "import",
        &format!(
            "\\copy (SELECT * FROM devices) TO '{}' WITH (FORMAT csv)",
            file.display()
        ),
    )?;
    cluster.psql(
        "import",
        "CREATE TABLE devices_anchor (LIKE devices INCLUDING ALL)",
    )?;
    let started = Instant::now();
    cluster.psql(
        "import",
        &format!(
            "\\copy devices_anchor FROM '{}' WITH (FORMAT csv)",
            file.display()
        ),
    )?;
    let copy_secs = started.elapsed().as_secs_f64();
    let copied = cluster.psql("import", "SELECT count(*) FROM devices_anchor")?;
    assert_eq!(copied, rows.to_string());

    let import_rate = rows as f64 / import_secs;
    let copy_rate = rows as f64 / copy_secs;
    println!("PostgreSQL import benchmark: {rows} devices, one transaction");
    println!(
        "Admin.ImportDevices (check, seal, write)  {import_rate:>10.0} rows/s   ({import_secs:.2} s)"
    );
    println!(
        "  of which a dry run (stream, check, read)  {:>10.0} rows/s   ({dry_secs:.2} s)",
        rows as f64 / dry_secs
    );
    println!(
        "psql \\copy of the same rows (anchor)     {copy_rate:>10.0} rows/s   ({copy_secs:.2} s)"
    );
    println!("ratio import / \\copy: {:.3}", import_rate / copy_rate);
    Ok(())
}
