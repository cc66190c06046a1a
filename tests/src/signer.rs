//! [`SignerProcess`]: the real `enos-signer` binary as a child process:
//! `init`, `serve` (stopped with SIGTERM or killed with SIGKILL, restarted
//! on the same port), `import`.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::Arc,
    time::Duration,
};

use enos_custody::{Custody, SecretRef};
use enos_domain::DeviceId;
use enos_registry::{RedbRegistry, Registry};
use enos_sandbox::PortReservation;
use enos_sign_core::{DeviceKey, ExposeSecret, ProductKey};
use enos_signer_svc::{
    SignerConfig,
    config::{CustodyConfig, LogFormat, LoggingConfig, PolicyConfig, RegistryConfig},
    custody::SoftwareCustody,
};
use zeroize::Zeroizing;

use enos_testkit::{
    ChildProcess, OutputLog,
    process::run_to_end,
    signer::{server_config, state_in},
};

use crate::{
    TestDevice,
    error::{E2eError, Result},
    pki::LoopPki,
};

/// How long a signer may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The files of a signer's state.
#[derive(Debug, Clone)]
pub struct SignerFiles {
    /// `signer.toml`.
    pub config: PathBuf,
    /// The audit trail (JSON lines).
    pub audit_file: PathBuf,
    /// The audit HMAC key.
    pub audit_key: PathBuf,
    /// The master key sealing the secrets.
    pub master_key: PathBuf,
    /// The redb registry file.
    pub registry: PathBuf,
}

impl SignerFiles {
    /// The files named by a config.
    pub fn of(config_path: &Path, config: &SignerConfig) -> Result<Self> {
        let CustodyConfig::Software { master_key_file } = &config.custody else {
            return Err(E2eError::failed(
                "the end-to-end signer uses software custody (its master key is scanned for leaks)",
            ));
        };
        Ok(SignerFiles {
            config: config_path.to_owned(),
            audit_file: config
                .audit_file()
                .ok_or_else(|| E2eError::failed("the signer's audit sink is not a file"))?
                .to_owned(),
            audit_key: config.audit.key_file.clone(),
            master_key: master_key_file.clone(),
            registry: match &config.registry {
                RegistryConfig::Redb { path } => path.clone(),
                RegistryConfig::Postgres(_) => {
                    return Err(E2eError::failed(
                        "the end-to-end signer keeps its registry in redb",
                    ));
                }
            },
        })
    }
}

/// The device secret of `device` as the signer's custody holds it, opened
/// with the master key: how a scenario learns a secret nobody else saw
/// (one EnOS pushed at activation) to scan for it. The signer must be
/// stopped (redb has one owner).
pub async fn device_secret_in_custody(
    files: &SignerFiles,
    device: &TestDevice,
) -> Result<Zeroizing<String>> {
    let failed = |what: &str, e: &dyn std::fmt::Display| E2eError::failed(format!("{what}: {e}"));
    let registry = RedbRegistry::open(&files.registry).map_err(|e| failed("registry", &e))?;
    let key =
        enos_signer_svc::key_file::load(&files.master_key).map_err(|e| failed("master key", &e))?;
    let custody = SoftwareCustody::new(&key);
    let id = DeviceId::new(
        ProductKey::new(&device.product_key).map_err(|e| failed("product key", &e))?,
        DeviceKey::new(&device.device_key).map_err(|e| failed("device key", &e))?,
    );
    let record = registry
        .get(&id)
        .await
        .map_err(|e| failed("reading the registry", &e))?
        .ok_or_else(|| E2eError::failed(format!("{id} is not registered")))?;
    let sealed = record.sealed.as_ref().ok_or_else(|| {
        E2eError::failed(format!("{id} has no secret (still awaiting activation)"))
    })?;
    let secret = custody
        .open(SecretRef::of(&id, record.secret_version), sealed)
        .map_err(|e| failed("opening the sealed secret", &e))?;
    Ok(Zeroizing::new(secret.expose_secret().to_owned()))
}

/// Writes a config for a signer whose state lives in `dir`: redb
/// registry, software custody, audit trail in a file (the leak scan reads
/// it), server certificate from `pki`, listening on `listen`.
pub fn write_config(
    dir: &Path,
    pki: &LoopPki,
    listen: SocketAddr,
    policy: PolicyConfig,
) -> Result<(SignerConfig, SignerFiles)> {
    std::fs::create_dir_all(dir).map_err(E2eError::io(format!("creating {}", dir.display())))?;
    let tls = pki.server("signer-server")?;
    let mut server = server_config(listen, tls.cert, tls.key, pki.ca.clone());
    server.drain_timeout = std::time::Duration::from_secs(3);
    let mut config = state_in(dir, server);
    config.policy = policy;
    config.logging = LoggingConfig {
        format: LogFormat::Json,
        filter: "info".into(),
    };
    let path = dir.join("signer.toml");
    std::fs::write(&path, config.to_toml()?)
        .map_err(E2eError::io(format!("writing {}", path.display())))?;
    let files = SignerFiles::of(&path, &config)?;
    Ok((config, files))
}

/// `enos-signer init --config FILE`: keys and an empty registry.
pub fn init(binary: &Path, config: &Path) -> Result<String> {
    let (status, output) = run_to_end(
        "enos-signer init",
        binary,
        &[
            OsStr::new("init"),
            OsStr::new("--config"),
            config.as_os_str(),
        ],
        &[],
        Duration::from_secs(20),
    )?;
    if !status.success() {
        return Err(E2eError::failed(format!(
            "`enos-signer init` failed ({status}):\n{output}"
        )));
    }
    Ok(output)
}

/// `enos-signer serve`, restartable on the same port.
#[derive(Debug)]
pub struct SignerProcess {
    /// The `enos-signer` binary.
    binary: PathBuf,
    /// Its config file.
    config: PathBuf,
    /// Where it listens (the config's `server.listen`).
    addr: SocketAddr,
    /// Holds the port between runs, so that a restart gets it back.
    _reservation: Option<PortReservation>,
    /// The current run.
    child: Option<ChildProcess>,
    /// The output of every run, for the leak scan.
    runs: Vec<Arc<OutputLog>>,
    /// `RUST_LOG` of the child.
    log_filter: String,
}

impl SignerProcess {
    /// A signer that will serve `config` on `addr` (not started yet).
    /// `reservation`, if given, holds `addr`'s port for its whole life.
    pub fn new(
        binary: &Path,
        config: &Path,
        addr: SocketAddr,
        reservation: Option<PortReservation>,
    ) -> Self {
        SignerProcess {
            binary: binary.to_owned(),
            config: config.to_owned(),
            addr,
            _reservation: reservation,
            child: None,
            runs: Vec::new(),
            log_filter: "info".into(),
        }
    }

    /// Sets `RUST_LOG` for the next runs.
    pub fn log_filter(&mut self, filter: &str) {
        self.log_filter = filter.to_owned();
    }

    /// The gRPC endpoint, `https://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current run's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildProcess::pid)
    }

    /// Starts `enos-signer serve` and waits until it listens.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Err(E2eError::failed("the signer is already running"));
        }
        let mut child = ChildProcess::spawn(
            "enos-signer serve",
            &self.binary,
            [
                OsStr::new("serve"),
                OsStr::new("--config"),
                self.config.as_os_str(),
            ],
            &[("RUST_LOG", OsStr::new(&self.log_filter))],
        )?;
        self.runs.push(Arc::clone(child.log()));
        child.wait_for_line(0, "signer listening", START_TIMEOUT)?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// SIGTERM: NOT_SERVING, drain, exit; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        match self.child.take() {
            Some(mut child) => Ok(child.terminate(Duration::from_secs(10))?),
            None => Err(E2eError::failed("the signer is not running")),
        }
    }

    /// Everything every run wrote.
    pub fn logs(&self) -> String {
        self.runs.iter().map(|r| r.text()).collect()
    }

    /// The last lines of the current (or last) run.
    pub fn tail(&self) -> String {
        self.runs.last().map(|r| r.tail(15)).unwrap_or_default()
    }
}

/// Where admin commands reach the signer, as environment variables of
/// `enos-signer` (`ENOS_SIGNER_ENDPOINT`, `_CA`, `_CERT`, `_KEY`).
#[derive(Debug, Clone)]
pub struct AdminEnv {
    /// The endpoint.
    pub endpoint: String,
    /// The CA of the signer's certificate.
    pub ca: PathBuf,
    /// The admin certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl AdminEnv {
    /// `enos-signer ARGS…` as an admin; returns its output, or fails with it.
    pub fn run(&self, binary: &Path, args: &[&OsStr]) -> Result<String> {
        let env = [
            ("ENOS_SIGNER_ENDPOINT", OsStr::new(&self.endpoint)),
            ("ENOS_SIGNER_CA", self.ca.as_os_str()),
            ("ENOS_SIGNER_CERT", self.cert.as_os_str()),
            ("ENOS_SIGNER_KEY", self.key.as_os_str()),
        ];
        let (status, output) = run_to_end(
            "enos-signer admin",
            binary,
            args,
            &env,
            Duration::from_secs(20),
        )?;
        if status.success() {
            Ok(output)
        } else {
            let what: Vec<String> = args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            Err(E2eError::failed(format!(
                "`enos-signer {}` failed ({status}):\n{output}",
                what.join(" ")
            )))
        }
    }
}
