//! A secret rotated while the agent runs.

use enos_e2e::{
    InProcessAgent,
    leaks::Issuance,
    mqtt::{self, Login},
};

use crate::support::{SOON, TestResult, World, devices};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_used_at_the_next_connect_and_the_old_one_is_refused() -> TestResult {
    let mut world = World::start(devices("PkRot", "rot", 1), |_| {}).await;
    let (pk, dk) = (
        world.devices[0].product_key.clone(),
        world.devices[0].device_key.clone(),
    );
    let mut agent = InProcessAgent::start(world.agent_toml(0).config()?)?;
    agent
        .wait_for("the first connect", SOON, |s| s.connects == 1)
        .await?;

    // A login signed with the old secret, as a copy left on a device would be.
    let old_login = world.devices[0].sign_login()?;
    let old_secret = world.devices[0].rotate()?;
    world.scan.old_secret(&world.devices[0], &old_secret);
    world.scan.device(&world.devices[0]);
    let new_secret = world.devices[0].secret().to_owned();

    // The new secret goes to the signer (admin API), then to EnOS (the
    // sandbox's device file): EnOS drops the session of the old secret.
    let rotated_at = enos_agent::now_ms();
    world.signer.rotate_secret(&pk, &dk, &new_secret).await?;
    let mark = world.sandbox.log_mark();
    let reload = world.reload_sandbox();
    assert_eq!(
        reload.dropped_sessions, 1,
        "EnOS closes the old secret's session"
    );

    // The agent's next connect, with a fresh credential, is accepted.
    let status = agent
        .wait_for("the reconnect", SOON, |s| s.connects == 2)
        .await?;
    assert_eq!(status.refusals, 0, "no connect was refused: {status:?}");
    assert_eq!(status.credentials_reused, 0, "{status:?}");
    world
        .sandbox
        .wait_for_log_since(mark, "accepted MQTT CONNECT", SOON)?;

    // That credential was signed with the new secret, and not the old one.
    let (audit_file, audit_key) = world.audit_files();
    let after: Vec<Issuance> = Issuance::read_all(&audit_file)?
        .into_iter()
        .filter(|i| i.time_ms >= rotated_at)
        .collect();
    assert!(
        !after.is_empty(),
        "no credential was issued after the rotation"
    );
    for issuance in &after {
        assert!(issuance.signed_with(&new_secret, &audit_key)?);
        assert!(!issuance.signed_with(&old_secret, &audit_key)?);
    }

    // The sandbox refuses the old secret: the login signed before the
    // rotation, and a fresh one signed with the old secret.
    let fresh_old = enos_e2e::devices::sign_login(&world.devices[0], &old_secret)?;
    for (what, login) in [
        ("the old login", &old_login),
        ("a new login with the old secret", &fresh_old),
    ] {
        let mark = world.sandbox.log_mark();
        let attempt = mqtt::try_connect(
            world.sandbox.mqtt_addr(),
            &Login {
                client_id: login.mqtt_client_id.clone(),
                credentials: Some((
                    login.username.clone(),
                    enos_e2e::devices::password(login).to_owned(),
                )),
                tls: None,
            },
            std::time::Duration::from_secs(5),
        )
        .await;
        assert!(attempt.is_err(), "{what} was accepted");
        world
            .sandbox
            .wait_for_log_since(mark, "password does not match", SOON)?;
    }
    // The refused attempts did not disturb the agent.
    let status = agent.stop().await?;
    assert_eq!(status.connects, 2, "{status:?}");
    world.scan_logs();
    Ok(())
}

/// The scan is only worth something if it finds what it looks for: an
/// issued password (recovered from the audit trail alone) and a secret,
/// in either case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_scan_finds_an_issued_password_and_a_secret() -> TestResult {
    let mut world = World::start(devices("PkScan", "scan", 1), |_| {}).await;
    let config = world.agent_toml(0).config()?;
    let signer = enos_agent::GrpcSigner::new(&config.signer, &config.device)?;
    let credential = enos_agent::SignerClient::issue_mqtt_credential(&signer).await?;
    let (audit_file, audit_key) = world.audit_files();
    let summary = world.scan.audit_trail(&audit_file, &audit_key)?;
    assert_eq!(summary.issued, 1);

    let leak = format!(
        "debug: connecting with {}",
        credential.password().to_lowercase()
    );
    let found = world
        .scan
        .scan("a planted line", &leak)
        .expect_err("the password is found");
    assert!(
        found.to_string().contains("the password issued at"),
        "{found}"
    );
    let leak = format!("secret={}", world.devices[0].secret().to_uppercase());
    let found = world
        .scan
        .scan("a planted line", &leak)
        .expect_err("the secret is found");
    assert!(
        found.to_string().contains("secret #1 of PkScan/scan-000"),
        "{found}"
    );
    assert!(
        !found.to_string().contains(world.devices[0].secret()),
        "the report hides it"
    );
    world.scan.scan("a clean line", "nothing to see")?;
    Ok(())
}
