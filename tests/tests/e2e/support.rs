//! The scenarios' world: a throwaway PKI, the signer (in process:
//! `TestSigner`, real mTLS), the EnOS sandbox (a child process), devices
//! registered in both, and the leak scan every scenario ends with.

use std::{path::PathBuf, time::Duration};

use enos_agent::AgentStatus;
use enos_e2e::{
    AgentToml, InProcessAgent, LeakScan, LoopPki, ProcessLogs, TestDevice, agent::Backoff,
};
use enos_signer_proto::v1;
use enos_signer_svc::SignerConfig;
use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use enos_testkit::signer::TestSigner;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Generous bound for what should happen "soon" on a loaded 2-core box.
pub(crate) const SOON: Duration = Duration::from_secs(20);

/// The refusal scenarios' pacing: network failures back off to 400 ms at
/// most, so that refusals (4 times further) are seen spaced out within
/// seconds.
pub(crate) const REFUSAL_BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(100),
    max: Duration::from_millis(400),
    refusal_factor: 4,
    reset_after: Duration::from_secs(1),
};

/// The 200-agent scenarios' pacing: spread enough that a broker restart
/// does not bring the whole fleet back in one burst.
pub(crate) const FLEET_BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(200),
    max: Duration::from_secs(2),
    refusal_factor: 4,
    reset_after: Duration::from_secs(1),
};

/// Installs the crypto provider and the log capture, once per process.
pub(crate) fn init() -> &'static ProcessLogs {
    enos_agent::install_crypto_provider();
    ProcessLogs::install()
}

/// The sandbox binary: beside the test executable, or built.
pub(crate) fn sandbox_binary() -> SandboxBinary {
    SandboxBinary::locate().expect("the enos-sandbox binary")
}

/// Everything one scenario runs against.
pub(crate) struct World {
    /// State of every component; removed at the end.
    pub(crate) dir: tempfile::TempDir,
    /// The one CA.
    pub(crate) pki: LoopPki,
    /// The signer, in process, with real mTLS.
    pub(crate) signer: TestSigner,
    /// The EnOS sandbox (plain and TLS listeners).
    pub(crate) sandbox: Sandbox,
    /// The devices registered in the signer and in the sandbox.
    pub(crate) devices: Vec<TestDevice>,
    /// What the final scan looks for (secrets added as devices come).
    pub(crate) scan: LeakScan,
    /// Logs from elsewhere (child processes) for the final scan.
    pub(crate) other_logs: Vec<(String, String)>,
    /// This process's captured logs.
    logs: &'static ProcessLogs,
}

impl World {
    /// Starts the signer (config adjusted by `adjust`) and the sandbox with
    /// `devices` registered in both (in one bulk import).
    pub(crate) async fn start(
        devices: Vec<TestDevice>,
        adjust: impl FnOnce(&mut SignerConfig),
    ) -> World {
        let logs = init();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = LoopPki::new(&dir.path().join("pki"), "e2e-ca").expect("pki");
        let signer = TestSigner::start_with(&dir.path().join("signer"), &pki.pki, adjust)
            .await
            .expect("the signer starts");
        import(&signer, &devices).await;
        let csv = dir.path().join("enos-devices.csv");
        let refs: Vec<&TestDevice> = devices.iter().collect();
        enos_e2e::devices::write_csv(&csv, &refs).expect("devices.csv");
        let server = pki.server("broker-server").expect("broker certificate");
        let sandbox = Sandbox::builder(sandbox_binary(), &csv)
            .tls(&pki.ca, &server.cert, &server.key)
            .log_filter("debug")
            .start()
            .expect("the sandbox starts");
        let mut scan = LeakScan::new();
        scan.devices(&devices);
        World {
            dir,
            pki,
            signer,
            sandbox,
            devices,
            scan,
            other_logs: Vec::new(),
            logs,
        }
    }

    /// The sandbox's device file.
    pub(crate) fn sandbox_csv(&self) -> PathBuf {
        self.dir.path().join("enos-devices.csv")
    }

    /// Rewrites the sandbox's device file from `self.devices` and reloads it.
    pub(crate) fn reload_sandbox(&self) -> enos_sandbox::ReloadOutcome {
        let refs: Vec<&TestDevice> = self.devices.iter().collect();
        enos_e2e::devices::write_csv(&self.sandbox_csv(), &refs).expect("devices.csv");
        self.sandbox.reload_devices().expect("the sandbox reloads")
    }

    /// The agent config of `devices[i]` against this world's signer and
    /// the sandbox's plain listener (its device certificate written now).
    pub(crate) fn agent_toml(&self, i: usize) -> AgentToml {
        let device = &self.devices[i];
        let (files, _) = self.pki.device(device).expect("device certificate");
        AgentToml::new(
            device,
            &self.signer.uri(),
            &self.pki.ca,
            (files.cert, files.key),
            format!("tcp://{}", self.sandbox.mqtt_addr()),
        )
    }

    /// Starts an agent in this process for every device, paced by
    /// [`FLEET_BACKOFF`], its config adjusted by `adjust(i, …)` first.
    pub(crate) fn start_fleet(
        &self,
        mut adjust: impl FnMut(usize, &mut AgentToml),
    ) -> enos_e2e::Result<Vec<InProcessAgent>> {
        let mut agents = Vec::with_capacity(self.devices.len());
        for i in 0..self.devices.len() {
            let mut toml = self.agent_toml(i);
            toml.backoff = FLEET_BACKOFF;
            adjust(i, &mut toml);
            agents.push(InProcessAgent::start(toml.config()?)?);
        }
        Ok(agents)
    }

    /// The signer's audit trail and key.
    pub(crate) fn audit_files(&self) -> (PathBuf, PathBuf) {
        let config = self.signer.config();
        (
            config.audit_file().expect("audit file").to_owned(),
            config.audit.key_file.clone(),
        )
    }

    /// The audit trail's summary (and its passwords added to the scan).
    pub(crate) fn audit(&mut self) -> enos_e2e::leaks::AuditSummary {
        let (file, key) = self.audit_files();
        let mut scan = LeakScan::new();
        scan.devices(&self.devices);
        scan.audit_trail(&file, &key).expect("audit trail")
    }

    /// The end of every scenario: every secret (current and old) and every
    /// password the signer issued (recovered from its audit trail) is
    /// looked for in every log: this process's (signer and agents), the
    /// sandbox's, and the child processes'. Panics naming any leak.
    pub(crate) fn scan_logs(mut self) {
        let (file, key) = self.audit_files();
        let summary = self.scan.audit_trail(&file, &key).expect("audit trail");
        assert!(summary.issued > 0, "the scenario issued no credential");
        assert!(
            self.logs.is_capturing(),
            "this process's logs are not captured"
        );
        let mut sources = vec![
            ("this process's log".to_owned(), self.logs.text()),
            ("the sandbox's log".to_owned(), self.sandbox.logs()),
        ];
        sources.append(&mut self.other_logs);
        for (source, text) in &sources {
            assert!(!text.is_empty(), "{source} is empty: nothing was captured");
            if let Err(leak) = self.scan.scan(source, text) {
                panic!("{leak}");
            }
        }
    }
}

/// Waits until every agent's status satisfies `pred`, each within `timeout`.
pub(crate) async fn wait_all(
    agents: &mut [InProcessAgent],
    what: &str,
    timeout: Duration,
    pred: impl Fn(&AgentStatus) -> bool,
) -> enos_e2e::Result<()> {
    for agent in agents {
        agent.wait_for(what, timeout, &pred).await?;
    }
    Ok(())
}

/// Stops every agent (DISCONNECT), all at once.
pub(crate) async fn stop_all(agents: Vec<InProcessAgent>) -> TestResult {
    let stops: Vec<_> = agents
        .into_iter()
        .map(|agent| tokio::spawn(agent.stop()))
        .collect();
    for stop in stops {
        stop.await??;
    }
    Ok(())
}

/// Registers `devices` in the signer in one all-or-nothing import.
pub(crate) async fn import(signer: &TestSigner, devices: &[TestDevice]) {
    let rows: Vec<v1::ImportRow> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| v1::ImportRow {
            line: u32::try_from(i + 2).expect("line"),
            product_key: d.product_key.clone(),
            device_key: d.device_key.clone(),
            device_secret: d.secret().to_owned(),
            gateway: d
                .gateway
                .as_ref()
                .map(|(pk, dk)| v1::DeviceRef::new(pk.clone(), dk.clone())),
            awaiting_activation: false,
            ..Default::default()
        })
        .collect();
    let response = signer.import(rows).await.expect("import");
    assert!(
        response.errors.is_empty(),
        "import errors: {:?}",
        response.errors
    );
    assert_eq!(response.imported as usize, devices.len());
}

/// `n` devices of product `pk`, keys `{prefix}-{i}`.
pub(crate) fn devices(pk: &str, prefix: &str, n: usize) -> Vec<TestDevice> {
    (0..n)
        .map(|i| TestDevice::new(pk, &format!("{prefix}-{i:03}")).expect("device"))
        .collect()
}
