//! The agent's configuration: serde structs read from one TOML file.
//!
//! Unknown fields are errors (a typo must not silently fall back to a
//! default). Values that parse but make no sense are refused by
//! [`Config::validate`] with the field's dotted path. The file holds paths
//! to key material, never a secret: the device secret stays with the signer.
//!
//! See `deploy/agent.example.toml` for every field with a comment.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use enos_domain::DeviceId;
use enos_sign_core::{ClientId, DeviceKey, ProductKey, SignMethod};
use serde::{Deserialize, Serialize};

use crate::{device_key::KeyLocation, error::AgentError};

/// The whole agent config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which device (gateway) this agent is.
    pub device: DeviceConfig,
    /// Where credentials come from.
    pub signer: SignerClientConfig,
    /// The EnOS broker and the MQTT session settings.
    pub enos: EnosConfig,
    /// Reconnect pacing.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// The upstream buffer used while offline.
    #[serde(default)]
    pub queue: QueueConfig,
    /// The crash-safe upstream spool on disk; absent keeps upstream data
    /// in memory only (`[queue] upstream_capacity`), lost at a restart.
    #[serde(default)]
    pub spool: Option<SpoolConfig>,
    /// The data path to the gateway's local broker; absent means no bridge.
    #[serde(default)]
    pub bridge: Option<BridgeConfig>,
    /// Sub-devices to log in through this gateway after every connect.
    #[serde(default)]
    pub sub_devices: Vec<SubDeviceConfig>,
    /// How sub-device logins are retried.
    #[serde(default)]
    pub sub_device_login: SubDeviceLoginConfig,
    /// Where the operator sees the connection state.
    #[serde(default)]
    pub status: StatusConfig,
    /// When `run` renews the device certificate (`[signer]` `cert`/`key`).
    #[serde(default)]
    pub renewal: RenewalConfig,
}

/// The device identity, as registered in EnOS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The product key; also names the EnOS topics.
    #[serde(deserialize_with = "ident::required")]
    pub product_key: ProductKey,
    /// The device key; also names the EnOS topics.
    #[serde(deserialize_with = "ident::required")]
    pub device_key: DeviceKey,
    /// The signed clientId; the signer defaults it to the device key.
    #[serde(default, deserialize_with = "ident::optional")]
    pub client_id: Option<ClientId>,
    /// Asked of the signer; absent lets the signer's policy choose.
    #[serde(default, with = "sign_method_opt")]
    pub sign_method: Option<SignMethod>,
}

impl DeviceConfig {
    /// Which device this is.
    pub fn id(&self) -> DeviceId {
        DeviceId::new(self.product_key.clone(), self.device_key.clone())
    }
}

/// The signer endpoints and the mTLS identity the agent presents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerClientConfig {
    /// `https://host:port` URLs, tried in order; the last one that worked is
    /// tried first next time.
    pub endpoints: Vec<String>,
    /// CA bundle that signs the signer's server certificate.
    pub ca: PathBuf,
    /// The device certificate (its URI SAN is the identity the signer trusts).
    pub cert: PathBuf,
    /// The device certificate's private key: a file (0600), or a
    /// `pkcs11:` URI naming key pairs in a token (a TPM, a secure element).
    pub key: KeyLocation,
    /// Overrides the TLS server name checked against the signer's
    /// certificate, for endpoints given as IP addresses.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Bounds TCP + TLS set-up per endpoint, so failover is quick.
    #[serde(
        default = "default_signer_connect_timeout",
        with = "enos_toml::duration"
    )]
    pub connect_timeout: Duration,
    /// Bounds one RPC per endpoint.
    #[serde(
        default = "default_signer_request_timeout",
        with = "enos_toml::duration"
    )]
    pub request_timeout: Duration,
}

/// The EnOS broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnosConfig {
    /// `tcp://host:11883` (secret-based) or `ssl://host:18883` (two-way TLS).
    pub broker: BrokerUrl,
    /// Required for `ssl://`: the CA and the device certificate for the broker.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// MQTT keepalive; whole seconds, at least 1 s (the SDKs use 60 s).
    #[serde(default = "default_keepalive", with = "enos_toml::duration")]
    pub keepalive: Duration,
    /// Bounds TCP + TLS + CONNECT/CONNACK; whole seconds, at least 1 s.
    #[serde(default = "default_connect_timeout", with = "enos_toml::duration")]
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted or sent, in bytes.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
}

/// Two-way TLS to the EnOS broker (port 18883).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// CA bundle that signs the broker's certificate.
    pub ca: PathBuf,
    /// The device certificate EnOS issued for two-way TLS.
    pub cert: PathBuf,
    /// Its private key: a file (0600) or a `pkcs11:` URI.
    pub key: KeyLocation,
    /// Who provides `cert` and `key`: `file` (the default: put there by
    /// the operator), or `signer`: the agent makes the key, gets the
    /// certificate from EnOS through the signer when it is missing, and
    /// renews it at `[renewal] at` ± `jitter` of its lifetime
    /// (docs/enos-certificates.md).
    #[serde(default)]
    pub source: EnosCertSource,
}

/// Where the EnOS device certificate (`[enos.tls]` `cert`/`key`) comes
/// from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnosCertSource {
    /// Files the operator puts in place (and renews).
    #[default]
    File,
    /// Applied for and renewed by the agent through the signer, which
    /// alone holds the EnOS API credential. The key is an ECDSA P-256
    /// key made on the gateway (a file, or in the `pkcs11:` token).
    Signer,
}

/// Exponential backoff with jitter, between connect attempts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// The first ceiling after a network failure.
    #[serde(default = "default_backoff_min", with = "enos_toml::duration")]
    pub min: Duration,
    /// The largest ceiling after network failures.
    #[serde(default = "default_backoff_max", with = "enos_toml::duration")]
    pub max: Duration,
    /// 1.0 = full jitter (uniform in `[0, ceiling]`), 0.0 = none.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Refusals (bad credentials, not authorised) back off this many times
    /// further than network failures, up to `max × refusal_factor`.
    #[serde(default = "default_refusal_factor")]
    pub refusal_factor: u32,
    /// A connection that stayed up this long resets the backoff.
    #[serde(default = "default_reset_after", with = "enos_toml::duration")]
    pub reset_after: Duration,
}

/// The bounded upstream buffer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Upstream messages kept while offline; the oldest is dropped (and
    /// counted) when full.
    #[serde(default = "default_upstream_capacity")]
    pub upstream_capacity: usize,
    /// Downstream messages kept while the local broker is away.
    #[serde(default = "default_downstream_capacity")]
    pub downstream_capacity: usize,
}

/// The crash-safe upstream spool (`[spool]`); see `docs/agent.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool file (one file; created with its directory).
    pub path: PathBuf,
    /// Bytes of undelivered messages kept; the oldest are evicted (and
    /// counted) beyond it. The file itself stays under about twice this.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Messages older than this are evicted (and counted): data too old
    /// to matter must not hold the newer back.
    #[serde(default = "default_spool_max_age", with = "enos_toml::duration")]
    pub max_age: Duration,
    /// When appended messages reach the disk: `always` (each one) or
    /// `batched` (every `fsync_interval`).
    #[serde(default = "default_spool_fsync")]
    pub fsync: crate::spool::FsyncPolicy,
    /// The batched policy's bound on how long an append waits for its
    /// sync; also how often a moved head is written.
    #[serde(default = "default_spool_fsync_interval", with = "enos_toml::duration")]
    pub fsync_interval: Duration,
    /// Measurepoint posts held longer than this go up as
    /// `thing.measurepoint.resume` with their original time: EnOS's path
    /// for late data, which fires no real-time alerts.
    #[serde(default = "default_spool_resume_after", with = "enos_toml::duration")]
    pub resume_after: Duration,
    /// Messages per second replayed from a backlog (those held longer than
    /// `resume_after`); 0: no limit. Keeps a drain from crowding out the
    /// link and EnOS's flow control.
    #[serde(default = "default_spool_replay_rate")]
    pub replay_rate: u32,
}

/// The bridge to the gateway's local MQTT broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The local broker, `tcp://host:port`.
    pub local_broker: BrokerUrl,
    /// The MQTT client id used on the local broker.
    #[serde(default = "default_local_client_id")]
    pub client_id: String,
    /// Local broker username, if it requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the local broker password (never inline in the config).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Local topics carried up to EnOS.
    #[serde(default)]
    pub upstream: Vec<UpstreamRoute>,
    /// EnOS service calls carried down to local topics.
    #[serde(default)]
    pub downstream: Option<DownstreamConfig>,
}

/// One local topic filter carried up to EnOS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRoute {
    /// The local topic filter (wildcards allowed).
    pub local: String,
    /// What the messages become in EnOS.
    pub target: UpstreamTarget,
    /// For `event-post`: the event id in `/sys/{pk}/{dk}/thing/event/{id}/post`.
    #[serde(default)]
    pub event_id: Option<String>,
    /// For `raw`: the EnOS topic to publish on (e.g. a sub-device's topic).
    #[serde(default)]
    pub enos_topic: Option<String>,
    /// Wrap the local payload (JSON) as `params` of the EnOS envelope
    /// `{id, version, method, params}`; otherwise it is sent as is.
    #[serde(default = "default_true")]
    pub wrap: bool,
    /// The local topic the EnOS `_reply` is sent to; absent drops replies.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// MQTT QoS toward EnOS, 0 or 1 (EnOS has no QoS 2).
    #[serde(default)]
    pub qos: u8,
}

/// What an upstream route publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTarget {
    /// `/sys/{pk}/{dk}/thing/measurepoint/post`, method `thing.measurepoint.post`.
    MeasurepointPost,
    /// `/sys/{pk}/{dk}/thing/event/{eventId}/post`, method `thing.event.{eventId}.post`.
    EventPost,
    /// Any EnOS topic given in `enos_topic`; never wrapped.
    Raw,
}

/// EnOS → local: service calls and measurepoint-set commands, and the way back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamConfig {
    /// `/sys/{pk}/{dk}/thing/service/{rest}` arrives on `{local_prefix}/{rest}`
    /// (`rest` is a service id, or `measurepoint/set`).
    pub local_prefix: String,
    /// A reply published on `{local_reply_prefix}/{rest}` goes to
    /// `/sys/{pk}/{dk}/thing/service/{rest}_reply`.
    pub local_reply_prefix: String,
}

/// A sub-device behind this gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubDeviceConfig {
    /// The sub-device's product key.
    #[serde(deserialize_with = "ident::required")]
    pub product_key: ProductKey,
    /// The sub-device's device key.
    #[serde(deserialize_with = "ident::required")]
    pub device_key: DeviceKey,
    /// The signed clientId; the signer defaults it to the device key.
    #[serde(default, deserialize_with = "ident::optional")]
    pub client_id: Option<ClientId>,
    /// `cleanSession` sent with the login.
    #[serde(default = "default_true")]
    pub clean_session: bool,
}

impl SubDeviceConfig {
    /// Which sub-device this is.
    pub fn id(&self) -> DeviceId {
        DeviceId::new(self.product_key.clone(), self.device_key.clone())
    }
}

/// Sub-device login pacing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubDeviceLoginConfig {
    /// How long to wait for a `combine/login_reply`.
    #[serde(default = "default_reply_timeout", with = "enos_toml::duration")]
    pub reply_timeout: Duration,
    /// Attempts per sub-device per connection for retryable failures.
    #[serde(default = "default_login_attempts")]
    pub max_attempts: u32,
}

/// Where the connection state is published.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// A JSON file rewritten (atomically) on every state change. Absent:
    /// `enos-agent run` writes [`Config::default_status_file`]; a library
    /// user (the tests, the fleet) writes none.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Whether a failed write only costs the file (a warning) rather than
    /// being the agent's error: set for the default place, which nobody
    /// chose and which may not be writable.
    #[serde(skip)]
    pub best_effort: bool,
}

/// The name of the status file where `[status] file` does not say.
pub const STATUS_FILE_NAME: &str = "status.json";

/// The shipped unit's `RuntimeDirectory=enos-agent`: where `enos-agent
/// status` looks when run from a shell, which has no `$RUNTIME_DIRECTORY`.
pub const SYSTEMD_RUNTIME_DIRECTORY: &str = "/run/enos-agent";

/// Renewal of the device certificate inside `enos-agent run`: at `at` of
/// its lifetime, plus or minus `jitter` of its lifetime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalConfig {
    /// Off: the certificate is only reported (a certificate from an
    /// operator's own PKI, renewed by other means).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The renewal point, a fraction of the lifetime after `notBefore`
    /// (2/3, as step-ca's `renew --daemon`): a third of the lifetime is
    /// left to retry through a signer outage.
    #[serde(default = "default_renewal_at")]
    pub at: f64,
    /// The spread around `at`, a fraction of the lifetime: a fleet
    /// enrolled in one week does not renew in one minute. Drawn once per
    /// certificate (seeded by it), so a restart keeps the same time.
    #[serde(default = "default_renewal_jitter")]
    pub jitter: f64,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        RenewalConfig {
            enabled: true,
            at: default_renewal_at(),
            jitter: default_renewal_jitter(),
        }
    }
}

fn default_renewal_at() -> f64 {
    2.0 / 3.0
}
fn default_renewal_jitter() -> f64 {
    0.1
}

impl RenewalConfig {
    /// `0 < at - jitter` and `at + jitter < 1`: the renewal point always
    /// falls inside the lifetime.
    fn validate(&self) -> Result<(), AgentError> {
        if !(self.at > 0.0 && self.at < 1.0) {
            return Err(AgentError::config(
                "renewal.at",
                "must be a fraction of the lifetime between 0 and 1 (e.g. 0.667)",
            ));
        }
        if !(self.jitter >= 0.0 && self.jitter < 0.5) {
            return Err(AgentError::config(
                "renewal.jitter",
                "must be a fraction of the lifetime, at least 0 and below 0.5 (e.g. 0.1)",
            ));
        }
        if self.at - self.jitter <= 0.0 || self.at + self.jitter >= 1.0 {
            return Err(AgentError::config(
                "renewal.jitter",
                format!(
                    "at ± jitter ({} ± {}) must stay inside the lifetime (0, 1)",
                    self.at, self.jitter
                ),
            ));
        }
        Ok(())
    }
}

/// An MQTT broker URL: `tcp://host:port` or `ssl://host:port`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BrokerUrl {
    /// Whether the connection is TLS (`ssl://`).
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("tcp://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("ssl://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(format!(
                "broker URL {url:?} must start with tcp:// (port 11883) or ssl:// (port 18883)"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("broker URL {url:?} has no :port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("broker URL {url:?} has no valid host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("broker URL {url:?} has an invalid port"))?;
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "ssl" } else { "tcp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

/// EnOS identities, validated by enos-sign-core while parsing so that the
/// error carries the TOML line.
mod ident {
    use enos_sign_core::SignError;
    use serde::{Deserialize, Deserializer};

    pub(super) fn required<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<String, Error = SignError>,
    {
        T::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub(super) fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<String, Error = SignError>,
    {
        Option::<String>::deserialize(d)?
            .map(|s| T::try_from(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod sign_method_opt {
    use enos_sign_core::{Md5Policy, SignMethod};
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SignMethod>, D::Error> {
        let Some(name) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        // MD5 is weak: the agent never asks for it.
        SignMethod::parse(&name, Md5Policy::Refuse)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

fn default_true() -> bool {
    true
}
fn default_signer_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_signer_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_packet_size() -> usize {
    256 * 1024
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(120)
}
fn default_jitter() -> f64 {
    1.0
}
fn default_refusal_factor() -> u32 {
    4
}
fn default_reset_after() -> Duration {
    Duration::from_secs(30)
}
fn default_upstream_capacity() -> usize {
    1000
}
fn default_spool_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_spool_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_spool_fsync() -> crate::spool::FsyncPolicy {
    crate::spool::FsyncPolicy::Batched
}
fn default_spool_fsync_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_spool_resume_after() -> Duration {
    Duration::from_secs(60)
}
fn default_spool_replay_rate() -> u32 {
    500
}
fn default_downstream_capacity() -> usize {
    100
}
fn default_local_client_id() -> String {
    "enos-agent-bridge".to_owned()
}
fn default_reply_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_login_attempts() -> u32 {
    5
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            min: default_backoff_min(),
            max: default_backoff_max(),
            jitter: default_jitter(),
            refusal_factor: default_refusal_factor(),
            reset_after: default_reset_after(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            upstream_capacity: default_upstream_capacity(),
            downstream_capacity: default_downstream_capacity(),
        }
    }
}

impl Default for SubDeviceLoginConfig {
    fn default() -> Self {
        SubDeviceLoginConfig {
            reply_timeout: default_reply_timeout(),
            max_attempts: default_login_attempts(),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`, and makes every relative path
    /// in it absolute against the config file's directory, as the signer
    /// and the sandbox do: under systemd the working directory is `/`.
    pub fn load(path: &Path) -> Result<Config, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::ReadFile {
            path: path.to_owned(),
            cause: source,
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Every file path of the config made absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.signer.ca);
        resolve(&mut self.signer.cert);
        self.signer.key.resolve(base);
        if let Some(tls) = &mut self.enos.tls {
            resolve(&mut tls.ca);
            resolve(&mut tls.cert);
            tls.key.resolve(base);
        }
        if let Some(file) = self.bridge.as_mut().and_then(|b| b.password_file.as_mut()) {
            resolve(file);
        }
        if let Some(file) = &mut self.status.file {
            resolve(file);
        }
        if let Some(spool) = &mut self.spool {
            resolve(&mut spool.path);
        }
    }

    /// Where the status file goes without `[status] file`: `status.json`
    /// in `runtime_directory` (systemd's `$RUNTIME_DIRECTORY`, set by
    /// `RuntimeDirectory=`: `/run/enos-agent`), else beside the device
    /// certificate (`[signer] cert`), the directory the agent already
    /// writes (renewal).
    pub fn default_status_file(&self, runtime_directory: Option<&std::ffi::OsStr>) -> PathBuf {
        // systemd separates several runtime directories with ':'.
        let runtime = runtime_directory
            .and_then(|dirs| {
                dirs.to_str()
                    .map(|d| d.split(':').next().unwrap_or(d).to_owned())
            })
            .filter(|d| !d.is_empty());
        match runtime {
            Some(dir) => Path::new(&dir).join(STATUS_FILE_NAME),
            None => self
                .signer
                .cert
                .parent()
                .unwrap_or(Path::new("."))
                .join(STATUS_FILE_NAME),
        }
    }

    /// Gives the config its default status file (see
    /// [`Config::default_status_file`]) when `[status] file` names none;
    /// `enos-agent run` does, so that every running agent has one.
    pub fn with_default_status_file(mut self) -> Self {
        if self.status.file.is_none() {
            let runtime = std::env::var_os("RUNTIME_DIRECTORY");
            self.status.file = Some(self.default_status_file(runtime.as_deref()));
            self.status.best_effort = true;
        }
        self
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, AgentError> {
        let config: Config = enos_toml::from_str(text).map_err(|e| AgentError::ConfigSyntax {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, combinations, topic syntax. Each
    /// section checks itself, in the file's order; the first error wins.
    pub fn validate(&self) -> Result<(), AgentError> {
        self.signer.validate()?;
        self.enos.validate()?;
        self.backoff.validate()?;
        self.queue.validate()?;
        if let Some(spool) = &self.spool {
            spool.validate()?;
        }
        if let Some(bridge) = &self.bridge {
            bridge.validate()?;
        }
        self.validate_sub_devices()?;
        self.sub_device_login.validate()?;
        self.renewal.validate()
    }

    /// No sub-device twice, not the gateway itself, at most EnOS's 200.
    fn validate_sub_devices(&self) -> Result<(), AgentError> {
        let mut seen = std::collections::HashSet::new();
        let gateway = self.device.id();
        for (i, sub) in self.sub_devices.iter().enumerate() {
            let id = sub.id();
            if !seen.insert(id.clone()) {
                return Err(AgentError::config(
                    format!("sub_devices[{i}]"),
                    format!("{id} is listed twice"),
                ));
            }
            if id == gateway {
                return Err(AgentError::config(
                    format!("sub_devices[{i}]"),
                    "the gateway cannot be its own sub-device",
                ));
            }
        }
        if self.sub_devices.len() > 200 {
            return Err(AgentError::config(
                "sub_devices",
                "EnOS allows at most 200 online sub-devices per gateway",
            ));
        }
        Ok(())
    }
}

impl SignerClientConfig {
    /// At least one endpoint, each an `https://` URL; non-zero timeouts.
    fn validate(&self) -> Result<(), AgentError> {
        if self.endpoints.is_empty() {
            return Err(AgentError::config(
                "signer.endpoints",
                "at least one endpoint is needed",
            ));
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if !endpoint.starts_with("https://") {
                return Err(AgentError::config(
                    format!("signer.endpoints[{i}]"),
                    format!(
                        "{endpoint:?} must be an https:// URL (the signer is reached over mTLS)"
                    ),
                ));
            }
            if endpoint.parse::<tonic::transport::Uri>().is_err() {
                return Err(AgentError::config(
                    format!("signer.endpoints[{i}]"),
                    format!("{endpoint:?} is not a valid URL"),
                ));
            }
        }
        nonzero(self.connect_timeout, "signer.connect_timeout")?;
        nonzero(self.request_timeout, "signer.request_timeout")
    }
}

impl EnosConfig {
    /// `[enos.tls]` exactly when the broker is `ssl://`; what rumqttc can
    /// take as keepalive, connect timeout and packet size.
    fn validate(&self) -> Result<(), AgentError> {
        match (&self.broker.tls, &self.tls) {
            (true, None) => {
                return Err(AgentError::config(
                    "enos.tls",
                    "an ssl:// broker needs [enos.tls] with ca, cert and key",
                ));
            }
            (false, Some(_)) => {
                return Err(AgentError::config(
                    "enos.tls",
                    "[enos.tls] is set but the broker URL is tcp://; use ssl:// for two-way TLS",
                ));
            }
            _ => {}
        }
        whole_seconds(self.keepalive, "enos.keepalive", true)?;
        whole_seconds(self.connect_timeout, "enos.connect_timeout", false)?;
        if self.max_packet_size < 1024 {
            return Err(AgentError::config(
                "enos.max_packet_size",
                "must be at least 1024 bytes",
            ));
        }
        Ok(())
    }
}

impl BackoffConfig {
    /// `0 < min <= max`, jitter a fraction, refusals back off at least as
    /// much as failures.
    fn validate(&self) -> Result<(), AgentError> {
        nonzero(self.min, "backoff.min")?;
        if self.max < self.min {
            return Err(AgentError::config(
                "backoff.max",
                "must not be smaller than backoff.min",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(AgentError::config(
                "backoff.jitter",
                "must be between 0.0 (none) and 1.0 (full jitter)",
            ));
        }
        at_least_one(self.refusal_factor.into(), "backoff.refusal_factor")
    }
}

impl QueueConfig {
    /// Both queues hold at least one message.
    fn validate(&self) -> Result<(), AgentError> {
        at_least_one(self.upstream_capacity as u64, "queue.upstream_capacity")?;
        at_least_one(self.downstream_capacity as u64, "queue.downstream_capacity")
    }
}

impl SpoolConfig {
    /// Room for a message, a sync interval, an age.
    fn validate(&self) -> Result<(), AgentError> {
        if self.max_bytes < 64 * 1024 {
            return Err(AgentError::config(
                "spool.max_bytes",
                "at least 65536 (64 KiB): room for the largest message",
            ));
        }
        nonzero(self.fsync_interval, "spool.fsync_interval")?;
        nonzero(self.resume_after, "spool.resume_after")?;
        nonzero(self.max_age, "spool.max_age")
    }
}

impl SubDeviceLoginConfig {
    /// A reply timeout and at least one attempt.
    fn validate(&self) -> Result<(), AgentError> {
        nonzero(self.reply_timeout, "sub_device_login.reply_timeout")?;
        at_least_one(self.max_attempts.into(), "sub_device_login.max_attempts")
    }
}

impl BridgeConfig {
    /// The local connection, each upstream route, the downstream prefixes.
    fn validate(&self) -> Result<(), AgentError> {
        self.validate_local_connection()?;
        for (i, route) in self.upstream.iter().enumerate() {
            route.validate(i)?;
            if let Some(reply) = &route.reply_to {
                self.validate_reply_to(i, reply)?;
            }
        }
        if let Some(down) = &self.downstream {
            down.validate()?;
        }
        Ok(())
    }

    /// tcp:// only, a client id, no password without a username.
    fn validate_local_connection(&self) -> Result<(), AgentError> {
        if self.local_broker.tls {
            return Err(AgentError::config(
                "bridge.local_broker",
                "the local broker is reached over tcp:// only",
            ));
        }
        if self.client_id.is_empty() {
            return Err(AgentError::config("bridge.client_id", "must not be empty"));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(AgentError::config(
                "bridge.password_file",
                "a password needs bridge.username",
            ));
        }
        Ok(())
    }

    /// Route `i`'s `reply_to`: a topic that no upstream filter takes back up.
    fn validate_reply_to(&self, i: usize, reply: &str) -> Result<(), AgentError> {
        let field = format!("bridge.upstream[{i}].reply_to");
        if !rumqttc::valid_topic(reply) || reply.is_empty() {
            return Err(AgentError::config(
                field,
                format!("{reply:?} is not a valid MQTT topic (no wildcards)"),
            ));
        }
        if self
            .upstream
            .iter()
            .any(|r| crate::topics::filter_matches(reply, &r.local))
        {
            return Err(AgentError::config(
                field,
                format!("{reply:?} matches an upstream filter, so replies would loop back up"),
            ));
        }
        Ok(())
    }
}

impl UpstreamRoute {
    /// Route `i` on its own: a filter, QoS 0 or 1, exactly the fields its
    /// target takes.
    fn validate(&self, i: usize) -> Result<(), AgentError> {
        let field = |name: &str| format!("bridge.upstream[{i}].{name}");
        if !rumqttc::valid_filter(&self.local) || self.local.is_empty() {
            return Err(AgentError::config(
                field("local"),
                format!("{:?} is not a valid MQTT topic filter", self.local),
            ));
        }
        if self.qos > 1 {
            return Err(AgentError::config(
                field("qos"),
                "EnOS supports QoS 0 and 1 only",
            ));
        }
        match self.target {
            UpstreamTarget::EventPost => {
                let ok = self
                    .event_id
                    .as_deref()
                    .is_some_and(|id| !id.is_empty() && !id.contains(['/', '+', '#']));
                if !ok {
                    return Err(AgentError::config(
                        field("event_id"),
                        "event-post needs an event_id without / + #",
                    ));
                }
            }
            UpstreamTarget::Raw => {
                let ok = self
                    .enos_topic
                    .as_deref()
                    .is_some_and(|t| rumqttc::valid_topic(t) && !t.is_empty());
                if !ok {
                    return Err(AgentError::config(
                        field("enos_topic"),
                        "raw needs an enos_topic without wildcards",
                    ));
                }
            }
            UpstreamTarget::MeasurepointPost => {}
        }
        if self.target != UpstreamTarget::EventPost && self.event_id.is_some() {
            return Err(AgentError::config(
                field("event_id"),
                "only event-post routes take an event_id",
            ));
        }
        if self.target != UpstreamTarget::Raw && self.enos_topic.is_some() {
            return Err(AgentError::config(
                field("enos_topic"),
                "only raw routes take an enos_topic",
            ));
        }
        Ok(())
    }
}

impl DownstreamConfig {
    /// Two distinct prefixes, each a topic without wildcards or a trailing /.
    fn validate(&self) -> Result<(), AgentError> {
        for (name, prefix) in [
            ("local_prefix", &self.local_prefix),
            ("local_reply_prefix", &self.local_reply_prefix),
        ] {
            if prefix.is_empty() || !rumqttc::valid_topic(prefix) || prefix.ends_with('/') {
                return Err(AgentError::config(
                    format!("bridge.downstream.{name}"),
                    format!("{prefix:?} must be a topic without wildcards or a trailing /"),
                ));
            }
        }
        if self.local_prefix == self.local_reply_prefix {
            return Err(AgentError::config(
                "bridge.downstream.local_reply_prefix",
                "must differ from local_prefix, or calls would loop back as replies",
            ));
        }
        Ok(())
    }
}

fn at_least_one(count: u64, field: &str) -> Result<(), AgentError> {
    if count == 0 {
        return Err(AgentError::config(field, "must be at least 1"));
    }
    Ok(())
}

fn nonzero(d: Duration, field: &str) -> Result<(), AgentError> {
    if d.is_zero() {
        return Err(AgentError::config(field, "must be greater than zero"));
    }
    Ok(())
}

/// rumqttc takes keepalive and connect timeout in whole seconds.
fn whole_seconds(d: Duration, field: &str, zero_ok: bool) -> Result<(), AgentError> {
    if d.subsec_nanos() != 0 {
        return Err(AgentError::config(field, "must be whole seconds"));
    }
    if !zero_ok && d.is_zero() {
        return Err(AgentError::config(field, "must be at least 1s"));
    }
    if d > Duration::from_secs(u64::from(u16::MAX)) {
        return Err(AgentError::config(field, "must be at most 65535s"));
    }
    Ok(())
}
