//! Load benchmark: N concurrent mTLS clients (one device certificate and
//! one connection each) against a signer on 127.0.0.1, for a bounded time.
//!
//! 1. Issuance: `IssueMqttCredential` as fast as the clients can.
//! 2. Floor: `grpc.health.v1.Health/Check` on the same server and the same
//!    connections: one mTLS unary call doing nothing.
//! 3. Issuance paced at half the maximum RPS measured in 1, for the p99
//!    goal.
//!
//! Prints RPS, p50 and p99 for each, and the ratio issuance / floor.
//! Goals (issue 24): ratio ≥ 0.9; p99 ≤ 2 ms at half the maximum RPS.
//!
//! PostgreSQL column (issue 14): the same issuance against two more
//! signers on a throwaway PostgreSQL cluster, one with the record cache
//! (warm) and one without (every issuance reads its row), measured in the
//! same alternating slices; ratios to the redb signer, and p99 of each at
//! half its own maximum. Goals: warm ≥ 0.8× redb, p99 ≤ 2 ms at half
//! load. `ENOS_BENCH_POSTGRES=0` skips it (no PostgreSQL installed).
//!
//! `ENOS_BENCH_CLIENTS` (default 16) and `ENOS_BENCH_SECS` (per phase,
//! default 5) tune the run: `cargo bench -p enos-signer-svc --bench load`.
//!
//! `-- --profile` (issue 24): instead, issuance and then Health/Check on
//! the redb signer, each under `perf record`, and the CPU per call of each
//! stage of the request path beside the empty call ([`stages`]).
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

#[path = "support/stages.rs"]
mod stages;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use enos_postgres_fixture::PgCluster;
use enos_registry::postgres::PostgresConfig;
use enos_signer_proto::v1::{IssueMqttCredentialRequest, credentials_client::CredentialsClient};
use enos_signer_svc::{SignerConfig, client, config::RegistryConfig};
use enos_testkit::signer::{TestSigner, client_identity};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Throughput and latency of one phase.
struct Phase {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
    /// Every latency, sorted (to merge slices).
    latencies: Vec<Duration>,
    /// Wall time of the phase.
    elapsed: Duration,
}

/// One phase out of several slices of the same kind.
fn merge(slices: Vec<Phase>) -> Phase {
    let elapsed: Duration = slices.iter().map(|p| p.elapsed).sum();
    let errors = slices.iter().map(|p| p.errors).sum();
    let mut latencies: Vec<Duration> = slices.into_iter().flat_map(|p| p.latencies).collect();
    latencies.sort_unstable();
    Phase {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        errors,
        latencies,
        elapsed,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs `call` on every channel until `duration` has passed; with
/// `interval`, each client sends at that pace (open loop), else flat out.
async fn phase<F, Fut>(
    channels: &[Channel],
    duration: Duration,
    interval: Option<Duration>,
    call: F,
) -> Phase
where
    F: Fn(Channel) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for channel in channels {
        let channel = channel.clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let sent = Instant::now();
                if call(channel.clone()).await {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.expect("client task");
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Phase {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        errors,
        latencies: all,
        elapsed,
    }
}

fn report(name: &str, p: &Phase) {
    println!(
        "{name:<28} {:>9.0} RPS   p50 {:>7.3} ms   p99 {:>7.3} ms   errors {}",
        p.rps,
        p.p50.as_secs_f64() * 1e3,
        p.p99.as_secs_f64() * 1e3,
        p.errors
    );
}

async fn issue(channel: Channel) -> bool {
    CredentialsClient::new(channel)
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .is_ok()
}

async fn health(channel: Channel) -> bool {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok()
}

/// A signer under test and one connection per client.
struct Target {
    /// Kept running for the whole benchmark.
    _signer: TestSigner,
    /// One mTLS connection per client, each with its own device.
    channels: Vec<Channel>,
}

/// Starts a signer in `dir` (config adjusted by `adjust`) with `clients`
/// devices and a connection for each.
async fn target(
    dir: &std::path::Path,
    pki: &enos_testkit::Pki,
    clients: usize,
    adjust: impl FnOnce(&mut SignerConfig),
) -> Result<Target, Box<dyn std::error::Error + Send + Sync>> {
    let signer = TestSigner::start_with(dir, pki, adjust).await?;
    let mut channels = Vec::with_capacity(clients);
    for i in 0..clients {
        let dk = format!("bench-{i}");
        signer
            .put_device("PkBench", &dk, &format!("secret-{i}"))
            .await?;
        let identity = pki.device("PkBench", &dk)?;
        channels.push(
            client::connect_mtls(
                &signer.uri(),
                signer.ca_pem(),
                Some(client_identity(&identity)),
            )
            .await?,
        );
    }
    Ok(Target {
        _signer: signer,
        channels,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too.
    let clients = env_or("ENOS_BENCH_CLIENTS", 16) as usize;
    let secs = Duration::from_secs(env_or("ENOS_BENCH_SECS", 5));
    let profile = std::env::args().any(|a| a == "--profile");
    let with_postgres = !profile && env_or("ENOS_BENCH_POSTGRES", 1) != 0;
    let dir = tempfile::tempdir()?;
    let pki = enos_testkit::Pki::new("bench")?;
    // ENOS_BENCH_AUDIT=log sends audit records to the (absent) logger
    // instead of the file, to see what the file costs.
    let audit_to_log = std::env::var("ENOS_BENCH_AUDIT").is_ok_and(|v| v == "log");
    let audit = move |c: &mut SignerConfig| {
        if audit_to_log {
            c.audit.sink = enos_signer_svc::config::AuditSinkConfig::Log;
        }
        if profile {
            // A per-identity limit that never refuses here, so that its
            // cost shows in the profile (a production signer has one).
            c.rate_limit = Some(enos_signer_svc::config::RateLimitConfig {
                per_second: 1_000_000,
                burst: 1_000_000,
            });
        }
    };
    let redb = target(&dir.path().join("redb"), &pki, clients, audit).await?;
    let channels = &redb.channels;
    // Two more signers on one PostgreSQL cluster, cache on and cache off;
    // a database each (each signer has its own master key).
    let cluster = if with_postgres {
        Some(PgCluster::start()?)
    } else {
        None
    };
    let mut postgres = Vec::new();
    if let Some(cluster) = &cluster {
        for (name, cache) in [("pg-warm", true), ("pg-cold", false)] {
            let database = name.replace('-', "_");
            cluster.create_database(&database)?;
            let registry = RegistryConfig::Postgres(PostgresConfig {
                url: cluster.url(&database),
                password_file: Some(cluster.password_file()),
                pool_size: 16,
                ca_file: None,
                cache,
                allow_plaintext_password: false,
            });
            let adjust = move |c: &mut SignerConfig| {
                audit(c);
                c.registry = registry;
            };
            postgres.push((
                name,
                target(&dir.path().join(name), &pki, clients, adjust).await?,
            ));
        }
    }
    println!(
        "signer load benchmark: {clients} mTLS clients on 127.0.0.1, {} s per phase, {} CPUs",
        secs.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // What "audited" meant in this run (docs/signer.md, "Audit").
    println!(
        "audit: {}, fail-closed: the credential leaves after its record is {}",
        if audit_to_log {
            "log sink (stderr)"
        } else {
            "file sink"
        },
        if audit_to_log {
            "written to stderr (one write + flush per record)"
        } else {
            "written to the file (records arriving together share one O_APPEND write; in the page cache, no fsync)"
        }
    );

    // Warm up connections, caches and allocators.
    phase(channels, Duration::from_millis(500), None, issue).await;
    phase(channels, Duration::from_millis(500), None, health).await;
    for (_, t) in &postgres {
        phase(&t.channels, Duration::from_millis(500), None, issue).await;
    }

    if profile {
        return profile_stages(channels, secs, dir.path()).await;
    }

    // All are measured in alternating slices, so that load from
    // elsewhere on the machine hits them alike.
    let slices = (secs.as_millis() / 500).max(1) as u32;
    let slice = secs / slices;
    let (mut issuance_slices, mut floor_slices) = (Vec::new(), Vec::new());
    let mut postgres_slices: Vec<Vec<Phase>> = postgres.iter().map(|_| Vec::new()).collect();
    for _ in 0..slices {
        issuance_slices.push(phase(channels, slice, None, issue).await);
        floor_slices.push(phase(channels, slice, None, health).await);
        for ((_, t), slices) in postgres.iter().zip(&mut postgres_slices) {
            slices.push(phase(&t.channels, slice, None, issue).await);
        }
    }
    let issuance = merge(issuance_slices);
    report("IssueMqttCredential (max)", &issuance);
    let floor = merge(floor_slices);
    report("Health/Check (floor)", &floor);
    println!(
        "ratio issuance / health RPS: {:.3}   (goal >= 0.9)",
        issuance.rps / floor.rps
    );
    let postgres_max: Vec<Phase> = postgres_slices.into_iter().map(merge).collect();
    for ((name, _), max) in postgres.iter().zip(&postgres_max) {
        report(&format!("{name} Issue (max)"), max);
        println!(
            "ratio {name} / redb issuance RPS: {:.3}{}",
            max.rps / issuance.rps,
            if *name == "pg-warm" {
                "   (goal >= 0.8)"
            } else {
                ""
            }
        );
    }

    let half = issuance.rps / 2.0;
    let per_client = Duration::from_secs_f64(clients as f64 / half);
    let paced = phase(channels, secs, Some(per_client), issue).await;
    report("IssueMqttCredential @ 50%", &paced);
    println!(
        "p99 at half of max RPS ({half:.0} offered): {:.3} ms   (goal <= 2 ms)",
        paced.p99.as_secs_f64() * 1e3
    );
    for ((name, t), max) in postgres.iter().zip(&postgres_max) {
        if max.rps < 1.0 {
            println!("{name}: no successful issuance, no paced phase");
            continue;
        }
        let half = max.rps / 2.0;
        let per_client = Duration::from_secs_f64(clients as f64 / half);
        let paced = phase(&t.channels, secs, Some(per_client), issue).await;
        report(&format!("{name} Issue @ 50%"), &paced);
        println!(
            "{name} p99 at half of its max RPS ({half:.0} offered): {:.3} ms{}",
            paced.p99.as_secs_f64() * 1e3,
            if *name == "pg-warm" {
                "   (goal <= 2 ms)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `--profile`: issuance, then Health/Check, each for `secs` under
/// `perf record`; prints each stage's CPU per call.
async fn profile_stages(
    channels: &[Channel],
    secs: Duration,
    dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let recording = stages::record(dir, "issue")?;
    tokio::time::sleep(stages::ATTACH).await;
    let issuance = phase(channels, secs, None, issue).await;
    let issue_profile = recording.finish()?;
    let recording = stages::record(dir, "health")?;
    tokio::time::sleep(stages::ATTACH).await;
    let floor = phase(channels, secs, None, health).await;
    let floor_profile = recording.finish()?;
    report("IssueMqttCredential (max)", &issuance);
    report("Health/Check (floor)", &floor);
    println!(
        "ratio issuance / health RPS: {:.3} (under perf: lower than without)",
        issuance.rps / floor.rps
    );
    stages::print(
        (&issue_profile, issuance.latencies.len()),
        (&floor_profile, floor.latencies.len()),
    );
    Ok(())
}
