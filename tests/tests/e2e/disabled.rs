//! A device disabled in the signer while its agent runs.

use std::time::{Duration, Instant};

use enos_agent::ConnectionState;
use enos_e2e::InProcessAgent;

use crate::support::{REFUSAL_BACKOFF, SOON, TestResult, World, devices};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_device_is_refused_by_the_signer_and_its_agent_backs_off_until_enabled()
-> TestResult {
    let mut world = World::start(devices("PkOff", "off", 1), |_| {}).await;
    let (pk, dk) = (
        world.devices[0].product_key.clone(),
        world.devices[0].device_key.clone(),
    );
    let backoff = REFUSAL_BACKOFF;
    let mut toml = world.agent_toml(0);
    toml.backoff = backoff;
    let mut agent = InProcessAgent::start(toml.config()?)?;
    agent
        .wait_for("the first connect", SOON, |s| s.connects == 1)
        .await?;

    // Disabled in the signer only: EnOS would still take a credential, so
    // any connect now would prove the agent reused one the signer no
    // longer stands behind.
    world.signer.set_enabled(&pk, &dk, false).await?;
    world.sandbox.restart()?;
    let first = agent
        .wait_for("the signer's refusal", SOON, |s| s.refusals >= 1)
        .await?;
    assert!(
        first
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("FailedPrecondition")),
        "the signer's refusal is reported: {first:?}"
    );

    // Watch it for 3 s: a few spaced attempts, no connect, no reuse.
    let window = Duration::from_secs(3);
    agent
        .watch_until(Instant::now() + window, |now| {
            assert_eq!(now.connects, 1, "no connect while disabled: {now:?}");
            assert_eq!(
                now.credentials_reused, 0,
                "no reuse after a refusal: {now:?}"
            );
        })
        .await;
    let during = agent.now();
    let attempts = during.refusals - first.refusals;
    assert!(
        (1..=12).contains(&attempts),
        "the agent retries, spaced out (a hot loop would make hundreds): \
         {attempts} refusals in {window:?}"
    );
    let ceiling = Duration::from_millis(during.last_backoff_ceiling_ms.unwrap_or(0));
    assert!(
        ceiling > backoff.max,
        "refusals back off further than network failures (max {:?}): ceiling {ceiling:?}",
        backoff.max
    );
    assert_ne!(during.state, ConnectionState::Connected);

    // The audit trail agrees: each refusal the agent counted was one
    // refused request (one more may be in flight).
    let refused = world.audit().refused("failed_precondition");
    assert!(
        (during.refusals as usize..=during.refusals as usize + 1).contains(&refused),
        "{refused} refusals recorded, {} seen by the agent",
        during.refusals
    );

    // Enabled again: the agent connects on its next attempt.
    world.signer.set_enabled(&pk, &dk, true).await?;
    let back = agent
        .wait_for("the connect after enabling", SOON, |s| s.connects == 2)
        .await?;
    assert_eq!(back.state, ConnectionState::Connected);
    agent.stop().await?;
    world.scan_logs();
    Ok(())
}
