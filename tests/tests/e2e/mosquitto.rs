//! Debian's Mosquitto as the broker: TLS with a required device
//! certificate, and a broker that refuses the agent's credentials.

use std::time::{Duration, Instant};

use enos_e2e::{
    InProcessAgent,
    mosquitto::{Mosquitto, MosquittoAuth, MosquittoTls},
    mqtt::{self, Login},
};

use crate::support::{REFUSAL_BACKOFF, SOON, TestResult, World, devices};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_connects_to_mosquitto_over_tls_presenting_its_device_certificate() -> TestResult
{
    let mut world = World::start(devices("PkMosq", "tls", 1), |_| {}).await;
    let server = world.pki.server("mosquitto-server")?;
    let mosquitto = Mosquitto::start(
        &world.dir.path().join("mosquitto-tls"),
        Some(&MosquittoTls {
            ca: world.pki.ca.clone(),
            cert: server.cert,
            key: server.key,
        }),
        MosquittoAuth::Anonymous,
    )?;

    // Without a client certificate the handshake fails: the certificate is
    // really required.
    let anonymous = mqtt::try_connect(
        mosquitto.addr(),
        &Login {
            client_id: "no-certificate".into(),
            credentials: None,
            tls: Some(enos_e2e::tls::client_config(world.pki.ca_pem(), None)?),
        },
        Duration::from_secs(5),
    )
    .await;
    assert!(
        anonymous.is_err(),
        "Mosquitto took a client without a certificate"
    );

    let mut toml = world.agent_toml(0);
    toml.broker = format!("ssl://{}", mosquitto.addr());
    toml.broker_ca = Some(world.pki.ca.clone());
    let mut agent = InProcessAgent::start(toml.config()?)?;
    agent
        .wait_for("the TLS connect", SOON, |s| s.connects == 1)
        .await?;

    // `use_identity_as_username`: Mosquitto names the client by the
    // certificate's CN, the device key: the device certificate was presented
    // and verified against the CA.
    let dk = world.devices[0].device_key.clone();
    let line = mosquitto
        .log()
        .wait_for(0, &format!("u'{dk}'"), SOON)
        .ok_or("Mosquitto did not log the client with the certificate's identity")?;
    assert!(line.contains("New client connected"), "{line}");

    agent.stop().await?;
    world
        .other_logs
        .push(("Mosquitto's log (TLS)".into(), mosquitto.log().text()));
    world.scan_logs();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_answers_not_authorised_and_the_agent_backs_off() -> TestResult {
    let mut world = World::start(devices("PkMosq", "refused", 1), |_| {}).await;
    let mosquitto = Mosquitto::start(
        &world.dir.path().join("mosquitto-refusing"),
        None,
        MosquittoAuth::PasswordFileWithout,
    )?;
    let backoff = REFUSAL_BACKOFF;
    let mut toml = world.agent_toml(0);
    toml.broker = format!("tcp://{}", mosquitto.addr());
    toml.backoff = backoff;
    let started = Instant::now();
    let agent = InProcessAgent::start(toml.config()?)?;
    let mut attempts = vec![];
    let window = Duration::from_secs(4);
    let mut seen = 0;
    agent
        .watch_until(started + window, |now| {
            if now.refusals > seen {
                attempts.push(started.elapsed());
                seen = now.refusals;
            }
        })
        .await;
    let s = agent.now();
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("NotAuthorized")),
        "the CONNACK code is reported: {s:?}"
    );
    assert_eq!(s.connects, 0);
    assert_eq!(
        s.network_failures, 0,
        "a refusal is not a network failure: {s:?}"
    );
    assert_eq!(
        s.credentials_reused, 0,
        "a refused credential is never presented again"
    );
    // A hot loop would make thousands of attempts in 4 s. With a refusal
    // ceiling of 400 ms doubling to 1.6 s, expect a handful.
    assert!(
        (2..=15).contains(&s.refusals),
        "{} attempts in {window:?}: {attempts:?}",
        s.refusals
    );
    assert!(
        (s.refusals..=s.refusals + 1).contains(&s.credentials_issued),
        "a fresh credential for every attempt: {s:?}"
    );
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<Duration>() / u32::try_from(gaps.len().max(1))?;
    assert!(
        mean >= Duration::from_millis(150),
        "attempts are spaced out: gaps {gaps:?}"
    );
    assert!(
        Duration::from_millis(s.last_backoff_ceiling_ms.unwrap_or(0)) > backoff.max,
        "refusals back off further than network failures: {s:?}"
    );
    // Mosquitto's side of it.
    let log = mosquitto.log().text();
    assert!(log.contains("not authorised"), "Mosquitto's log:\n{log}");

    agent.stop().await?;
    world
        .other_logs
        .push(("Mosquitto's log (refusing)".into(), log));
    world.scan_logs();
    Ok(())
}
