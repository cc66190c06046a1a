//! Sub-devices re-logged in by one `combine.login.batch`: 150 sub-devices
//! behind one gateway, one of them not bound to it in the signer. The
//! signer signs the 149 in one RPC and lists the other; the agent sends one
//! batch; the sandbox answers 200 with the 149 logged in.

use enos_agent::{ConnectionState, SubDeviceState};
use enos_e2e::{InProcessAgent, TestDevice};
use enos_signer_proto::v1;

use crate::support::{SOON, TestResult, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_logs_in_150_sub_devices_and_the_unbound_one_is_refused() -> TestResult {
    let gateway = TestDevice::new("PkBatchGw", "gw-batch")?;
    let mut devices = vec![gateway.clone()];
    for i in 0..150 {
        devices.push(TestDevice::new("PkBatchSub", &format!("sub-{i:03}"))?.behind(&gateway));
    }
    let world = World::start(devices, |_| {}).await;
    // The signer no longer has sub-077 bound to the gateway (EnOS still
    // does): the signer must refuse to sign for it.
    world
        .signer
        .admin()
        .await
        .unbind_sub_device(v1::UnbindSubDeviceRequest {
            sub_device: Some(v1::DeviceRef::new("PkBatchSub", "sub-077")),
        })
        .await?;

    let mut toml = world.agent_toml(0);
    toml.sub_devices = world.devices[1..]
        .iter()
        .map(|d| (d.product_key.clone(), d.device_key.clone()))
        .collect();
    let mark = world.sandbox.log_mark();
    let before = world.sandbox.logs().len();
    let mut agent = InProcessAgent::start(toml.config()?)?;
    let status = agent
        .wait_for("every sub-device settled", SOON, |s| {
            s.state == ConnectionState::Connected
                && s.sub_devices.len() == 150
                && s.sub_devices
                    .iter()
                    .all(|d| !matches!(d.state, SubDeviceState::Pending))
        })
        .await?;
    let online = status
        .sub_devices
        .iter()
        .filter(|d| d.state == SubDeviceState::Online)
        .count();
    assert_eq!(online, 149, "{:?}", status.sub_devices);
    let refused: Vec<_> = status
        .sub_devices
        .iter()
        .filter(|d| matches!(d.state, SubDeviceState::Refused { .. }))
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].device_key, "sub-077");
    assert!(
        matches!(&refused[0].state, SubDeviceState::Refused { reason } if reason.contains("signer")),
        "refused by the signer: {refused:?}"
    );

    // One batch, no single logins: the sandbox saw one combine.login.batch.
    world
        .sandbox
        .wait_for_log_since(mark, "combine.login.batch", SOON)?;
    let logs = world.sandbox.logs();
    let since = &logs[before.min(logs.len())..];
    let answered = |l: &&str| l.contains("answered request") && l.contains("combine.login");
    let batches = since
        .lines()
        .filter(answered)
        .filter(|l| l.contains("combine.login.batch"))
        .count();
    let singles = since
        .lines()
        .filter(answered)
        .filter(|l| !l.contains("combine.login.batch"))
        .count();
    assert_eq!(batches, 1, "one batch: {since}");
    assert_eq!(singles, 0, "no single combine.login: {since}");

    // The audit trail has one signed entry per logged-in sub-device.
    let (file, _) = world.audit_files();
    let trail = std::fs::read_to_string(file)?;
    let signed = trail
        .lines()
        .filter(|l| {
            l.contains("\"event\":\"sign_sub_device_login_batch\"")
                && l.contains("\"outcome\":\"ok\"")
        })
        .count();
    assert_eq!(signed, 149);
    agent.stop().await?;
    world.scan_logs();
    Ok(())
}
