//! 200 agents in one process through a broker restart.

use std::time::{Duration, Instant};

use enos_signer_svc::config::RateLimitConfig;

use crate::support::{TestResult, World, devices, stop_all, wait_all};

const AGENTS: usize = 200;
/// The signer's per-device budget: 2 requests a second, 6 at once.
const RATE: RateLimitConfig = RateLimitConfig {
    per_second: 2,
    burst: 6,
};
/// Waiting for 200 connects on a loaded 2-core machine.
const FLEET_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_reconnect_after_a_broker_restart_with_fresh_credentials_within_the_rate_limit()
-> TestResult {
    let mut world = World::start(devices("PkFleet", "node", AGENTS), |c| {
        c.rate_limit = Some(RATE);
    })
    .await;
    let started = Instant::now();
    let mut agents = world.start_fleet(|_, _| {})?;
    wait_all(&mut agents, "the first connect", FLEET_TIMEOUT, |s| {
        s.connects == 1
    })
    .await?;
    let connected_in = started.elapsed();
    // Let every connection pass `reset_after`, as a fleet in service would.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let restarted = Instant::now();
    world.sandbox.restart()?;
    wait_all(&mut agents, "the reconnect", FLEET_TIMEOUT, |s| {
        s.connects == 2
    })
    .await?;
    let reconnected_in = restarted.elapsed();
    // The broker saw every one of them, twice. It logs a CONNECT before
    // its CONNACK, but the log reaches this process through a pipe and a
    // reader thread, which a loaded machine may leave behind the agents.
    let accepted_connects = || {
        world
            .sandbox
            .logs()
            .lines()
            .filter(|l| l.contains("accepted MQTT CONNECT"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut accepted = accepted_connects();
    while accepted < 2 * AGENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        accepted = accepted_connects();
    }
    assert!(
        accepted >= 2 * AGENTS,
        "the sandbox accepted {accepted} CONNECTs"
    );
    eprintln!(
        "fleet: {AGENTS} agents connected in {:.1} s; all reconnected {:.1} s after the broker restart began",
        connected_in.as_secs_f64(),
        reconnected_in.as_secs_f64()
    );

    for agent in &agents {
        let s = agent.now();
        assert!(
            s.credentials_issued >= 2,
            "{}: a fresh credential for the reconnect: {s:?}",
            agent.device
        );
        assert_eq!(s.credentials_reused, 0, "{}: {s:?}", agent.device);
        assert_eq!(s.refusals, 0, "{}: {s:?}", agent.device);
    }
    // The signer never had to refuse anyone for going over the limit, and
    // issued every device at least two credentials.
    let audit = world.audit();
    assert_eq!(
        audit.refused("resource_exhausted"),
        0,
        "the signer's rate limit was exceeded: {:?}",
        audit.refused
    );
    assert_eq!(audit.issued_per_device.len(), AGENTS);
    assert!(audit.issued_per_device.values().all(|n| *n >= 2));
    eprintln!(
        "fleet: {} credentials issued, at most {} to one device, none refused",
        audit.issued,
        audit.issued_per_device.values().max().copied().unwrap_or(0)
    );

    // And the limit is real: one device asking in a tight loop is refused.
    let hammer = enos_agent::GrpcSigner::new(
        &world.agent_toml(0).config()?.signer,
        &world.agent_toml(0).config()?.device,
    )?;
    let mut failed = 0;
    for _ in 0..(RATE.burst + 4) {
        // The agent counts ResourceExhausted as "unavailable" (it may
        // reuse a cached credential); the audit trail names the code.
        if enos_agent::SignerClient::issue_mqtt_credential(&hammer)
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    // Refusals over the limit are audited at most once a second per
    // identity (a caller must not be able to flood the trail), so the
    // burst leaves at least one record and at most one per refusal.
    let exhausted = world.audit().refused("resource_exhausted");
    assert!(
        failed > 0 && (1..=failed).contains(&exhausted),
        "the rate limit is configured and enforced: {failed} failed, {exhausted} over the limit audited"
    );

    let stopping = Instant::now();
    stop_all(agents).await?;
    eprintln!(
        "fleet: {AGENTS} agents stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    world.scan_logs();
    Ok(())
}
