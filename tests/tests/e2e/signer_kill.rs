//! The signer killed with SIGKILL while agents are connected.

use std::time::Duration;

use enos_agent::ConnectionState;
use enos_e2e::{Binaries, InProcessAgent, SignerProcess};

use crate::support::{SOON, TestResult, World, devices, wait_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_sigkilled_signer_and_new_connects_succeed_after_its_restart()
-> TestResult {
    let mut world = World::start(devices("PkKill", "kill", 4), |_| {}).await;
    // The same state served by the real binary, so that it can die for real.
    world.signer.stop().await;
    let binaries = Binaries::locate()?;
    let mut signer = SignerProcess::new(
        &binaries.signer,
        world.signer.config_path(),
        world.signer.addr(),
        None,
    );
    signer.log_filter("debug");
    signer.start()?;

    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(InProcessAgent::start(world.agent_toml(i).config()?)?);
    }
    wait_all(&mut agents, "the first connect", SOON, |s| s.connects == 1).await?;

    // The sandbox's own log of those connects may reach the harness after
    // the agents saw CONNACK: wait for it, so that the mark below comes
    // after every line of the connects so far.
    for agent in &agents {
        world.sandbox.wait_for_log(
            &format!(
                "accepted MQTT CONNECT listener=\"enos-mqtt\" device={}",
                agent.device
            ),
            SOON,
        )?;
    }

    // SIGKILL: no drain, no goodbye; every gRPC connection is cut.
    let pid = signer.pid().expect("running");
    let mark = world.sandbox.log_mark();
    signer.kill();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the signer is gone"
    );

    // A device that was not connected yet cannot get a credential now.
    let mut latecomer = InProcessAgent::start(world.agent_toml(3).config()?)?;
    let waiting = latecomer
        .wait_for("a failed credential request", SOON, |s| {
            s.network_failures >= 1
        })
        .await?;
    assert_eq!(waiting.connects, 0, "{waiting:?}");

    // Meanwhile every established session stays up: no agent saw its
    // connection drop, and the broker saw no new CONNECT.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for agent in &agents {
        let s = agent.now();
        assert_eq!(
            s.state,
            ConnectionState::Connected,
            "{}: {s:?}",
            agent.device
        );
        assert_eq!(
            (s.connects, s.network_failures, s.refusals),
            (1, 0, 0),
            "{s:?}"
        );
    }
    assert!(
        world
            .sandbox
            .wait_for_log_since(mark, "accepted MQTT CONNECT", Duration::from_millis(1))
            .is_err(),
        "no connect happened while the signer was dead"
    );

    // The signer comes back on the same address with the same registry.
    signer.start()?;
    let joined = latecomer
        .wait_for("the connect after the restart", SOON, |s| s.connects == 1)
        .await?;
    assert_eq!(joined.credentials_reused, 0);

    // New connects of the established agents work too, with fresh credentials.
    world.sandbox.restart()?;
    for agent in &mut agents {
        let s = agent
            .wait_for("the reconnect", SOON, |s| s.connects == 2)
            .await?;
        assert!(s.credentials_issued >= 2, "a fresh credential: {s:?}");
        assert_eq!(s.credentials_reused, 0, "{s:?}");
    }

    for agent in agents {
        agent.stop().await?;
    }
    latecomer.stop().await?;
    assert!(
        signer.stop()?.success(),
        "the restarted signer drains and exits 0"
    );
    world
        .other_logs
        .push(("the enos-signer binary's log".into(), signer.logs()));
    world.scan_logs();
    Ok(())
}
