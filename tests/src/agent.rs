//! The agent's side: its config file ([`AgentToml`]), the agent run in
//! this process ([`InProcessAgent`]) and waits on its status.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use enos_agent::{Agent, AgentStatus, Config, GrpcSigner};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    devices::TestDevice,
    error::{E2eError, Result},
};

/// Everything an agent config names. Timings default to short test values.
#[derive(Debug, Clone)]
pub struct AgentToml {
    /// `[device]`: product key and device key.
    pub device: (String, String),
    /// `[signer] endpoints`.
    pub signer_endpoints: Vec<String>,
    /// `[signer] ca`: the CA of the signer's server certificate.
    pub signer_ca: PathBuf,
    /// `[signer] cert` and `key`: the device certificate.
    pub device_cert: (PathBuf, PathBuf),
    /// `[enos] broker`: `tcp://…` or `ssl://…`.
    pub broker: String,
    /// `[enos.tls]` CA, with the device certificate; for `ssl://`.
    pub broker_ca: Option<PathBuf>,
    /// `[enos.tls]` cert and key of an EnOS certificate the agent gets
    /// through the signer (`source = "signer"`); `None`: the signer
    /// certificate's files.
    pub enos_cert: Option<(PathBuf, PathBuf)>,
    /// `[backoff]` min, max, refusal_factor, reset_after.
    pub backoff: Backoff,
    /// `[status] file`.
    pub status_file: Option<PathBuf>,
    /// `[[sub_devices]]`.
    pub sub_devices: Vec<(String, String)>,
    /// Extra TOML appended verbatim (the `[bridge]` section).
    pub extra: String,
}

/// The agent's reconnect pacing, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First ceiling after a network failure.
    pub min: Duration,
    /// Largest ceiling after network failures.
    pub max: Duration,
    /// Refusals back off this many times further.
    pub refusal_factor: u32,
    /// A connection that lasted this long resets the schedule.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(800),
            refusal_factor: 4,
            reset_after: Duration::from_secs(1),
        }
    }
}

impl AgentToml {
    /// A config for `device` with the signer at `signer_uri` and the broker
    /// URL `broker`; the files are those of [`crate::pki::LoopPki`].
    pub fn new(
        device: &TestDevice,
        signer_uri: &str,
        signer_ca: &Path,
        device_cert: (PathBuf, PathBuf),
        broker: String,
    ) -> Self {
        AgentToml {
            device: (device.product_key.clone(), device.device_key.clone()),
            signer_endpoints: vec![signer_uri.to_owned()],
            signer_ca: signer_ca.to_owned(),
            device_cert,
            broker,
            broker_ca: None,
            enos_cert: None,
            backoff: Backoff::default(),
            status_file: None,
            sub_devices: Vec::new(),
            extra: String::new(),
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let quote = |p: &Path| format!("{:?}", p.display().to_string());
        let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let endpoints: Vec<String> = self
            .signer_endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        let mut toml = format!(
            "[device]\nproduct_key = {:?}\ndevice_key = {:?}\n\n\
             [signer]\nendpoints = [{}]\nca = {}\ncert = {}\nkey = {}\n\
             connect_timeout = \"2s\"\nrequest_timeout = \"3s\"\n\n\
             [enos]\nbroker = {:?}\nkeepalive = \"10s\"\nconnect_timeout = \"3s\"\n",
            self.device.0,
            self.device.1,
            endpoints.join(", "),
            quote(&self.signer_ca),
            quote(&self.device_cert.0),
            quote(&self.device_cert.1),
            self.broker,
        );
        if let Some(ca) = &self.broker_ca {
            let (cert, key) = self.enos_cert.as_ref().unwrap_or(&self.device_cert);
            toml.push_str(&format!(
                "\n[enos.tls]\nca = {}\ncert = {}\nkey = {}\n",
                quote(ca),
                quote(cert),
                quote(key)
            ));
            if self.enos_cert.is_some() {
                toml.push_str("source = \"signer\"\n");
            }
        }
        toml.push_str(&format!(
            "\n[backoff]\nmin = {}\nmax = {}\njitter = 1.0\nrefusal_factor = {}\nreset_after = {}\n",
            ms(self.backoff.min),
            ms(self.backoff.max),
            self.backoff.refusal_factor,
            ms(self.backoff.reset_after),
        ));
        toml.push_str("\n[sub_device_login]\nreply_timeout = \"2s\"\nmax_attempts = 3\n");
        if let Some(file) = &self.status_file {
            toml.push_str(&format!("\n[status]\nfile = {}\n", quote(file)));
        }
        for (pk, dk) in &self.sub_devices {
            toml.push_str(&format!(
                "\n[[sub_devices]]\nproduct_key = {pk:?}\ndevice_key = {dk:?}\n"
            ));
        }
        if !self.extra.is_empty() {
            toml.push('\n');
            toml.push_str(&self.extra);
        }
        toml
    }

    /// The parsed, validated config.
    pub fn config(&self) -> Result<Config> {
        Ok(Config::parse(&self.to_toml(), Path::new("agent.toml"))?)
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_toml())
            .map_err(E2eError::io(format!("writing {}", path.display())))
    }
}

/// An agent run by the library in this process, with its status.
#[derive(Debug)]
pub struct InProcessAgent {
    /// The device it is.
    pub device: String,
    /// Its live status.
    pub status: watch::Receiver<AgentStatus>,
    /// Cancelled to stop it (clean DISCONNECT).
    shutdown: CancellationToken,
    /// The running agent.
    task: Option<JoinHandle<Result<(), enos_agent::AgentError>>>,
}

impl InProcessAgent {
    /// Starts an agent with `config` on the current Tokio runtime.
    pub fn start(config: Config) -> Result<Self> {
        let device = format!("{}/{}", config.device.product_key, config.device.device_key);
        let signer = GrpcSigner::new(&config.signer, &config.device)?;
        let agent = Agent::new(config, signer);
        let status = agent.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        Ok(InProcessAgent {
            device,
            status,
            shutdown,
            task: Some(task),
        })
    }

    /// A copy of the current status.
    pub fn now(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `pred`; the error shows the status.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&AgentStatus) -> bool,
    ) -> Result<AgentStatus> {
        let waited = tokio::time::timeout(timeout, self.status.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(s)) => Ok(s),
            _ => Err(E2eError::failed(format!(
                "agent {}: {what} did not happen within {timeout:?}; status: {:?}",
                self.device,
                *self.status.borrow()
            ))),
        }
    }

    /// Calls `each` with every status change until `until` passes.
    pub async fn watch_until(&self, until: Instant, mut each: impl FnMut(&AgentStatus)) {
        let mut status = self.status.clone();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if tokio::time::timeout(left, status.changed()).await.is_err() {
                break;
            }
            let now = status.borrow_and_update().clone();
            each(&now);
        }
    }

    /// Stops the agent (DISCONNECT) and returns its final status.
    pub async fn stop(mut self) -> Result<AgentStatus> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .map_err(|_| E2eError::Timeout {
                    what: format!("agent {} to stop", self.device),
                    after: Duration::from_secs(10),
                })?
                .map_err(|e| E2eError::failed(format!("agent {} panicked: {e}", self.device)))??;
        }
        Ok(self.status.borrow().clone())
    }
}

impl InProcessAgent {
    /// Stops the agent abruptly, as if its process died: no DISCONNECT,
    /// nothing flushed, its memory gone.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
