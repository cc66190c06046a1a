//! Two `enos-signer serve` replicas on one PostgreSQL database; 200 agents
//! (in process, each with its own certificate) list both; one replica is
//! SIGKILLed and the broker restarted: every agent regains a credential
//! from the other replica, the sandbox refuses none, and every issuance is
//! in the audit trail.

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use enos_e2e::{Binaries, SignerProcess};
use enos_postgres_fixture::PgCluster;
use enos_registry::postgres::PostgresConfig;
use enos_signer_svc::config::RegistryConfig;

use crate::support::{TestResult, World, devices, stop_all, wait_all};

const AGENTS: usize = 200;
/// Waiting for 200 connects on a loaded 2-core machine.
const FLEET_TIMEOUT: Duration = Duration::from_secs(90);

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_fail_over_when_a_replica_is_sigkilled() -> TestResult {
    let cluster = PgCluster::start()?;
    cluster.create_database("fleet")?;
    let registry = RegistryConfig::Postgres(PostgresConfig {
        url: cluster.url("fleet"),
        password_file: Some(cluster.password_file()),
        pool_size: 8,
        ca_file: None,
        cache: true,
        allow_plaintext_password: false,
    });
    // The in-process signer migrates the schema and imports the fleet.
    let mut world = World::start(devices("PkReplica", "rep", AGENTS), |c| {
        c.registry = registry;
    })
    .await;
    world.signer.stop().await;

    // Two replicas of the same config (same keys, same database, one
    // audit file that both append to), each on its own port.
    let binaries = Binaries::locate()?;
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let addr = free_addr();
        let mut config = world.signer.config().clone();
        config.server.listen = addr;
        let path = world.dir.path().join(format!("signer-{name}.toml"));
        std::fs::write(&path, config.to_toml()?)?;
        let mut replica = SignerProcess::new(&binaries.signer, &path, addr, None);
        replica.start()?;
        replicas.push(replica);
    }
    let (uri_a, uri_b) = (replicas[0].uri(), replicas[1].uri());

    let started = Instant::now();
    let mut agents = world.start_fleet(|i, toml| {
        // Half the fleet prefers each replica: both serve.
        toml.signer_endpoints = if i % 2 == 0 {
            vec![uri_a.clone(), uri_b.clone()]
        } else {
            vec![uri_b.clone(), uri_a.clone()]
        };
    })?;
    wait_all(&mut agents, "the first connect", FLEET_TIMEOUT, |s| {
        s.connects == 1
    })
    .await?;
    let connected_in = started.elapsed();
    let audit = world.audit();
    assert_eq!(audit.issued_per_device.len(), AGENTS);

    // Replica A dies (no drain), then the broker restarts: every agent
    // needs a fresh credential, and A's half must get it from B.
    replicas[0].kill();
    let killed = Instant::now();
    world.sandbox.restart()?;
    wait_all(&mut agents, "the reconnect", FLEET_TIMEOUT, |s| {
        s.connects == 2
    })
    .await?;
    let reconnected_in = killed.elapsed();
    let audit = world.audit();
    let mut issued_to_agents: u64 = 0;
    for agent in &agents {
        let s = agent.now();
        assert!(
            s.credentials_issued >= 2,
            "{}: a fresh credential after the kill: {s:?}",
            agent.device
        );
        assert_eq!(s.credentials_reused, 0, "{}: {s:?}", agent.device);
        assert_eq!(
            s.refusals, 0,
            "{}: the sandbox refused: {s:?}",
            agent.device
        );
        // Every credential the agent received has its audit record. (The
        // trail may hold more: an answer that timed out on a loaded
        // machine, after which the agent asked the other replica, or
        // one in flight when A died: audited before it is sent.)
        let audited = audit
            .issued_per_device
            .get(&agent.device)
            .copied()
            .unwrap_or(0) as u64;
        assert!(
            audited >= s.credentials_issued,
            "{}: {audited} audited, {} received",
            agent.device,
            s.credentials_issued
        );
        issued_to_agents += s.credentials_issued;
    }
    assert!(audit.issued_per_device.values().all(|n| *n >= 2));
    eprintln!(
        "replicas: {AGENTS} agents connected in {:.1} s over 2 replicas; after a SIGKILL of one \
         and a broker restart, all reconnected through the other in {:.1} s; {issued_to_agents} credentials received, all audited ({} audited)",
        connected_in.as_secs_f64(),
        reconnected_in.as_secs_f64(),
        audit.issued
    );

    stop_all(agents).await?;
    assert!(replicas[1].stop()?.success(), "B drains and exits 0");
    for (name, replica) in ["a", "b"].iter().zip(&replicas) {
        world
            .other_logs
            .push((format!("replica {name}'s log"), replica.logs()));
    }
    world.scan_logs();
    Ok(())
}
