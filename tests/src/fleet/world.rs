//! [`FleetWorld`]: what a run runs against: a throwaway PKI, the signer
//! (in process, real mTLS, the devices registered through Admin import),
//! the EnOS sandbox (a child process) and N device identities.

use std::path::{Path, PathBuf};

use enos_agent::Config;
use enos_signer_proto::v1;
use enos_signer_svc::config::{CaConfig, RateLimitConfig};
use enos_testkit::sandbox::{Sandbox, SandboxBinary};
use enos_testkit::signer::TestSigner;

use crate::{
    agent::{AgentToml, Backoff},
    devices::{self, TestDevice as Device},
    error::{E2eError, Result},
    fleet::options::{FleetOptions, Scenario},
    pki::LoopPki,
};

/// The product key of the fleet's devices.
pub const PRODUCT_KEY: &str = "PkFleet";

/// Rows per Admin import request: well under gRPC's 4 MiB message limit.
const IMPORT_CHUNK: usize = 2_000;

/// Everything a run talks to.
pub struct FleetWorld {
    /// State of every component; removed when the world is dropped.
    pub dir: tempfile::TempDir,
    /// The CA of every certificate.
    pub pki: LoopPki,
    /// The signer, with the run's rate limit.
    pub signer: TestSigner,
    /// The EnOS sandbox.
    pub sandbox: Sandbox,
    /// The devices, registered in both.
    pub devices: Vec<Device>,
    /// Each device's agent config, certificate written.
    pub configs: Vec<Config>,
    /// The first device's config again, for the rate-limit probe after
    /// the run (the agents take theirs).
    pub probe_config: Option<Config>,
}

impl std::fmt::Debug for FleetWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetWorld")
            .field("dir", &self.dir.path())
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl FleetWorld {
    /// Creates `options.agents` identities, starts the signer and imports
    /// them, starts the sandbox with the same devices.
    pub async fn start(options: &FleetOptions, sandbox_binary: SandboxBinary) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(E2eError::io("creating a temporary directory"))?;
        let pki = LoopPki::new(&dir.path().join("pki"), "fleet-ca")?;
        let rate = RateLimitConfig {
            per_second: options.rate_per_second,
            burst: options.rate_burst,
        };
        // `renew`: the signer is the devices' CA, and each device enrolls
        // with a one-time token instead of a certificate of the test PKI.
        let renew = options.scenario == Scenario::Renew;
        let ca = renew.then(|| CaConfig {
            enroll_listen: Some(([127, 0, 0, 1], 0).into()),
            lifetime: options.lifetime,
            ..CaConfig::default()
        });
        let signer = TestSigner::start_with(&dir.path().join("signer"), &pki.pki, |c| {
            c.rate_limit = Some(rate);
            // Every agent of the simulated fleet connects from 127.0.0.1,
            // as a fleet behind one NAT address: no per-address cap.
            c.server.limits.max_connections_per_ip = 0;
            c.ca = ca;
        })
        .await
        .map_err(E2eError::Component)?;
        let devices = (0..options.agents)
            .map(|i| Device::new(PRODUCT_KEY, &format!("gw-{i:05}")))
            .collect::<Result<Vec<_>>>()?;
        import(&signer, &devices).await?;
        let csv = dir.path().join("enos-devices.csv");
        let refs: Vec<&Device> = devices.iter().collect();
        devices::write_csv(&csv, &refs)?;
        let sandbox = Sandbox::builder(sandbox_binary, &csv)
            .log_filter("info")
            .start()?;
        let backoff = Backoff {
            min: options.backoff_min,
            max: options.backoff_max,
            refusal_factor: 4,
            reset_after: options.reset_after,
        };
        let mut configs = Vec::with_capacity(devices.len());
        for device in &devices {
            let pair = if renew {
                let own = dir.path().join("agents").join(&device.device_key);
                std::fs::create_dir_all(&own)
                    .map_err(E2eError::io("creating an agent's directory"))?;
                (own.join("device.pem"), own.join("device.key"))
            } else {
                let (files, _) = pki.device(device)?;
                (files.cert, files.key)
            };
            let mut toml = AgentToml::new(
                device,
                &signer.uri(),
                &pki.ca,
                pair,
                format!("tcp://{}", sandbox.mqtt_addr()),
            );
            toml.backoff = backoff;
            let mut config = toml.config()?;
            // The agent's own defaults, not the suite's short test values:
            // a fleet's first wave queues behind thousands of handshakes.
            config.signer.connect_timeout = std::time::Duration::from_secs(5);
            config.signer.request_timeout = std::time::Duration::from_secs(10);
            config.enos.connect_timeout = std::time::Duration::from_secs(30);
            if renew {
                config.renewal.enabled = true;
                config.renewal.at = options.renew_at;
                config.renewal.jitter = options.renew_jitter;
            }
            configs.push(config);
        }
        if renew {
            enroll_all(&signer, &configs, &pki.ca, dir.path()).await?;
        }
        let probe_config = configs.first().cloned();
        Ok(FleetWorld {
            probe_config,
            dir,
            pki,
            signer,
            sandbox,
            devices,
            configs,
        })
    }

    /// The signer's audit trail and its key.
    pub fn audit_files(&self) -> (PathBuf, PathBuf) {
        let config = self.signer.config();
        (
            config
                .audit_file()
                .map(Path::to_owned)
                .unwrap_or_else(|| self.dir.path().join("signer/audit.jsonl")),
            config.audit.key_file.clone(),
        )
    }
}

/// Enrolls every device of `configs` as `enos-agent enroll` does: a
/// one-time token from Admin, a key made for the device, the certificate
/// from the signer's enrollment listener; sixteen at a time.
async fn enroll_all(
    signer: &TestSigner,
    configs: &[Config],
    signer_ca: &Path,
    dir: &Path,
) -> Result<()> {
    use futures::StreamExt;
    let uri = signer
        .enroll_uri()
        .ok_or_else(|| E2eError::failed("the signer has no enrollment listener"))?;
    let mut admin = signer.admin().await;
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(E2eError::io("creating the tokens' directory"))?;
    // The tokens a thousand a call (one rate-limit token each), as
    // `enos-signer enroll-token --csv` makes them.
    let mut token_files = Vec::with_capacity(configs.len());
    for chunk in configs.chunks(1000) {
        let made = admin
            .create_enroll_tokens(v1::CreateEnrollTokensRequest {
                devices: chunk
                    .iter()
                    .map(|c| {
                        v1::DeviceRef::new(
                            c.device.product_key.as_str(),
                            c.device.device_key.as_str(),
                        )
                    })
                    .collect(),
                ttl_secs: 0,
            })
            .await
            .map_err(|e| E2eError::failed(format!("enrollment tokens: {e}")))?
            .into_inner()
            .tokens;
        for token in made {
            let file = tokens.join(format!("{}.token", token_files.len()));
            enos_testkit::pki::write_private(&file, token.token.as_bytes())
                .map_err(E2eError::Component)?;
            token_files.push(file);
        }
    }
    let results: Vec<Result<()>> = futures::stream::iter(configs.iter().zip(token_files))
        .map(|(config, token_file)| {
            let uri = uri.clone();
            async move {
                let request = enos_agent::enroll::EnrollRequest {
                    signer: uri,
                    ca: signer_ca.to_owned(),
                    token_file,
                    force: false,
                };
                enos_agent::enroll::enroll(config, &request).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Registers `devices` in the signer through Admin import.
async fn import(signer: &TestSigner, devices: &[Device]) -> Result<()> {
    for (c, chunk) in devices.chunks(IMPORT_CHUNK).enumerate() {
        let rows: Vec<v1::ImportRow> = chunk
            .iter()
            .enumerate()
            .map(|(i, d)| v1::ImportRow {
                line: u32::try_from(c * IMPORT_CHUNK + i + 2).unwrap_or(u32::MAX),
                product_key: d.product_key.clone(),
                device_key: d.device_key.clone(),
                device_secret: d.secret().to_owned(),
                gateway: None,
                awaiting_activation: false,
                ..Default::default()
            })
            .collect();
        let response = signer
            .import(rows)
            .await
            .map_err(|e| E2eError::failed(format!("Admin import: {e}")))?;
        if !response.errors.is_empty() || response.imported as usize != chunk.len() {
            return Err(E2eError::failed(format!(
                "Admin import took {} of {} rows: {:?}",
                response.imported,
                chunk.len(),
                response.errors
            )));
        }
    }
    Ok(())
}
