//! Configuration: [`ConfigFile`] (the `--config FILE.toml` serde structs),
//! [`Overrides`] (the command line) and [`Settings`], what the sandbox
//! runs with once both are merged and checked.
//!
//! ```toml
//! devices = "devices.csv"          # relative paths are relative to this file
//!
//! [mqtt]
//! listen = "127.0.0.1:11883"
//!
//! [tls]                            # optional: the MQTTS listener
//! listen = "127.0.0.1:18883"
//! ca = "ca.pem"                    # client certificates must chain to this CA
//! cert = "server.pem"
//! key = "server.key"
//! # device_identity = "uri:spiffe://enos/device/{productKey}/{deviceKey}"  # or "cn:…"
//! # crls = ["devices.crl"]         # the client CA's CRLs (the signer's [ca] crl_file), followed
//!
//! [checks]
//! # freshness_window = "10m"       # absent (the default): no freshness check, as EnOS;
//!                                  # set: |timestamp - now| <= this, for testing short-lived credentials
//! allow_md5 = false                # accept signmethod=hmacmd5
//!
//! [console]                        # optional: the cloud's side, for tests and the demo
//! user = "console"                 # from loopback on the plain listener only
//! password_file = "console.secret"
//!
//! [enos_api]                      # optional: EnOS's certificate API (docs/sandbox.md)
//! listen = "127.0.0.1:8443"
//! org_id = "o15724268424841"
//! app_key = "app-key"
//! app_secret_file = "enos-app.secret"  # owner-only; never the secret here
//! # cert = "server.pem"            # with key: HTTPS; without: plain HTTP (EnOS Edge)
//! # key = "server.key"
//! # state_dir = "enos-ca"          # the CA and issued certificates across restarts
//! # rsa_ca_key = "enos-rsa-ca.key" # RSA-2048 PKCS#8: issueAuthority RSA
//! # clock_skew = "5m"
//! # token_lifetime = "2h"
//! # day = "1d"                     # one validDay; tests of renewal shorten it
//! # error_http_status = false
//! # renew_revokes_old = false
//! # subject_must_match_root = false
//! # outage_file = "enos-outage"   # while it exists: 99500 ("unreachable" in it: no answer)
//! # default_valid_day = 730
//! # max_valid_day = 1095
//! # bi_directional_auth = true
//! # [enos_api.products.pkA]        # per product
//! # max_valid_day = 200
//!
//! [limits]
//! connect_timeout = "5s"           # a connection must send CONNECT within this
//! max_payload_bytes = 262144
//! max_sub_devices_per_gateway = 200  # EnOS's limit of online sub-devices per gateway
//! max_filters_per_session = 1000   # a device's own subscription filters; more get SUBACK 0x80
//! ```
//!
//! Unknown keys are errors, so that a typo is not silently ignored; a key
//! of an older release ([`RENAMED`]) is refused with its new name.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use enos_sign_core::Md5Policy;
use serde::Deserialize;

use crate::{
    certificate::CertificateRule,
    enos_api::{self, EnosApiSettings, ProductRules},
    error::SandboxError,
};

/// The plain MQTT port of EnOS.
pub const DEFAULT_MQTT_PORT: u16 = 11883;
/// The MQTT-over-TLS port of EnOS.
pub const DEFAULT_TLS_PORT: u16 = 18883;
/// How long a new connection may take to send CONNECT.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `[limits] connect_timeout` (rumqttd counts it in `u16`
/// milliseconds).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_millis(u16::MAX as u64);

/// Keys of older releases, refused with their new name and form.
pub const RENAMED: &[enos_toml::Renamed] = &[
    enos_toml::Renamed {
        old: "freshness_window_secs",
        new: "freshness_window",
        unit: "s",
    },
    enos_toml::Renamed {
        old: "connect_timeout_ms",
        new: "connect_timeout",
        unit: "ms",
    },
];
/// The largest accepted MQTT payload.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The default of `[limits] max_filters_per_session`: enough for a
/// gateway at EnOS's 200 online sub-devices subscribing a few `_reply`
/// topics for each (EnOS documents no limit of its own).
pub const DEFAULT_MAX_FILTERS_PER_SESSION: usize = 1_000;

/// The config file as written. Every field is optional: the command line
/// may supply or override it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The device CSV file; optional here so that `--devices` can give it.
    pub devices: Option<PathBuf>,
    /// The plain listener; EnOS's 11883.
    pub mqtt: Option<MqttSection>,
    /// The TLS listener; EnOS's 18883. Absent: no TLS listener.
    pub tls: Option<TlsSection>,
    /// How strictly credentials are checked.
    #[serde(default)]
    pub checks: ChecksSection,
    /// Connection limits handed to rumqttd.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The console login: the cloud's side, for tests and the demo.
    pub console: Option<ConsoleSection>,
    /// EnOS's certificate API, played by the sandbox. Absent: none.
    pub enos_api: Option<EnosApiSection>,
}

/// `[enos_api]`: EnOS's certificate API (token method, apply, renew,
/// revoke, list, root and CRL). See docs/sandbox.md for every choice.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnosApiSection {
    /// Where the API listens; port 0 picks one.
    pub listen: SocketAddr,
    /// The `orgId` served.
    pub org_id: String,
    /// The application's AccessKey.
    pub app_key: String,
    /// A file holding the application's SecretKey (owner-only).
    pub app_secret_file: PathBuf,
    /// HTTPS: the server certificate chain (with `key`).
    pub cert: Option<PathBuf>,
    /// HTTPS: the server key (with `cert`).
    pub key: Option<PathBuf>,
    /// Where the CA and the issued certificates persist.
    pub state_dir: Option<PathBuf>,
    /// An RSA-2048 CA key (PKCS#8 PEM) for `issueAuthority` RSA.
    pub rsa_ca_key: Option<PathBuf>,
    /// Accepted distance of a signed timestamp from now.
    #[serde(default = "default_skew", with = "enos_toml::duration")]
    pub clock_skew: Duration,
    /// Lifetime of an access token.
    #[serde(default = "default_token_lifetime", with = "enos_toml::duration")]
    pub token_lifetime: Duration,
    /// The length of one `validDay` (tests of renewal shorten it).
    #[serde(default = "default_day", with = "enos_toml::duration")]
    pub day: Duration,
    /// Errors carry a matching HTTP status besides the envelope's code.
    #[serde(default)]
    pub error_http_status: bool,
    /// Renew also revokes the old certificate (SUPERSEDED).
    #[serde(default)]
    pub renew_revokes_old: bool,
    /// A CSR's C, ST, O must equal the root's.
    #[serde(default)]
    pub subject_must_match_root: bool,
    /// While this file exists, certificate calls fail as in an EnOS
    /// outage: `unreachable` in it closes the connection unanswered,
    /// anything else answers 99500 (tests of a client's retries).
    #[serde(default)]
    pub outage_file: Option<PathBuf>,
    /// `validDay` of a request without one (products not listed).
    #[serde(default = "default_valid_day")]
    pub default_valid_day: u32,
    /// The largest `validDay` (products not listed).
    #[serde(default = "default_max_valid_day")]
    pub max_valid_day: u32,
    /// Certificate authentication on (products not listed).
    #[serde(default = "yes")]
    pub bi_directional_auth: bool,
    /// Rules per product key.
    #[serde(default)]
    pub products: std::collections::BTreeMap<String, ProductSection>,
}

/// `[enos_api.products.PK]`: one product's certificate rules; absent
/// keys take `[enos_api]`'s.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSection {
    /// `defaultValidDay`.
    pub default_valid_day: Option<u32>,
    /// `maxValidDay`.
    pub max_valid_day: Option<u32>,
    /// `biDirectionalAuth`.
    pub bi_directional_auth: Option<bool>,
}

fn default_skew() -> Duration {
    enos_api::DEFAULT_CLOCK_SKEW
}
fn default_token_lifetime() -> Duration {
    enos_api::DEFAULT_TOKEN_LIFETIME
}
fn default_day() -> Duration {
    Duration::from_secs(86_400)
}
fn default_valid_day() -> u32 {
    enos_api::DEFAULT_VALID_DAY
}
fn default_max_valid_day() -> u32 {
    enos_api::DEFAULT_MAX_VALID_DAY
}
fn yes() -> bool {
    true
}

impl EnosApiSection {
    /// The complete settings, `listen` possibly overridden; checks the
    /// limits.
    fn settings(self, listen: Option<SocketAddr>) -> Result<EnosApiSettings, SandboxError> {
        let bad = |m: String| SandboxError::Settings(format!("[enos_api] {m}"));
        let tls = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "cert and key go together (HTTPS) or not at all (HTTP)".into()
                ));
            }
        };
        if self.day.is_zero() || self.token_lifetime.is_zero() {
            return Err(bad("day and token_lifetime must be above 0".into()));
        }
        let default_product = ProductRules {
            default_valid_day: self.default_valid_day,
            max_valid_day: self.max_valid_day,
            bi_directional_auth: self.bi_directional_auth,
        };
        let mut products = std::collections::BTreeMap::new();
        for (pk, p) in self.products {
            let max_valid_day = p.max_valid_day.unwrap_or(default_product.max_valid_day);
            products.insert(
                pk,
                ProductRules {
                    // Inherited, but never above the product's own maximum.
                    default_valid_day: p
                        .default_valid_day
                        .unwrap_or(default_product.default_valid_day.min(max_valid_day)),
                    max_valid_day,
                    bi_directional_auth: p
                        .bi_directional_auth
                        .unwrap_or(default_product.bi_directional_auth),
                },
            );
        }
        for (name, rules) in std::iter::once(("[enos_api]", &default_product))
            .chain(products.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if rules.default_valid_day < 1
                || rules.max_valid_day > 3650
                || rules.default_valid_day > rules.max_valid_day
            {
                return Err(bad(format!(
                    "{name}: need 1 <= default_valid_day <= max_valid_day <= 3650 (EnOS's range)"
                )));
            }
        }
        Ok(EnosApiSettings {
            listen: listen.unwrap_or(self.listen),
            tls,
            org_id: self.org_id,
            app_key: self.app_key,
            app_secret_file: self.app_secret_file,
            state_dir: self.state_dir,
            rsa_ca_key: self.rsa_ca_key,
            clock_skew: self.clock_skew,
            token_lifetime: self.token_lifetime,
            day: self.day,
            error_http_status: self.error_http_status,
            renew_revokes_old: self.renew_revokes_old,
            subject_must_match_root: self.subject_must_match_root,
            outage_file: self.outage_file,
            default_product,
            products,
        })
    }
}

/// `[console]`: both keys, or no console login.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// The MQTT user name of the console.
    pub user: String,
    /// A file holding its password (never the password itself here).
    pub password_file: PathBuf,
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Where plain MQTT clients connect; port 0 picks a free port.
    pub listen: SocketAddr,
}

/// `[tls]`: all of it is needed for the TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Where TLS clients connect; defaults to 127.0.0.1:18883.
    pub listen: Option<SocketAddr>,
    /// The CA (or CAs) client certificates must chain to.
    pub ca: PathBuf,
    /// The server certificate chain, PEM.
    pub cert: PathBuf,
    /// The server private key, PEM.
    pub key: PathBuf,
    /// Which device a client certificate belongs to (see
    /// [`crate::CertificateRule`]); default
    /// `uri:spiffe://enos/device/{productKey}/{deviceKey}`.
    pub device_identity: Option<String>,
    /// CRL files (PEM or DER) of the client CA, e.g. the signer's
    /// `[ca] crl_file`: a revoked certificate fails the handshake. They
    /// are read again when they change.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// `[checks]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksSection {
    /// Accept any signed timestamp. This is the default, as EnOS checks
    /// no freshness (its SDKs reuse one timestamp for months, the C SDK
    /// always sends 2050); kept so that a file saying so stays valid.
    /// Contradicts `freshness_window`.
    pub any_timestamp: bool,
    /// Turns the freshness check on: `|timestamp - now| <= this`
    /// (`"5m"`), judged on whole milliseconds. For testing short-lived
    /// credentials; real EnOS does not do this.
    #[serde(with = "enos_toml::duration::option")]
    pub freshness_window: Option<Duration>,
    /// Accept the weak `hmacmd5` sign method.
    pub allow_md5: bool,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// A connection that sends no CONNECT within this is dropped (`"5s"`;
    /// at most 65.535 s).
    #[serde(with = "enos_toml::duration")]
    pub connect_timeout: Duration,
    /// Larger MQTT payloads are refused.
    pub max_payload_bytes: usize,
    /// A gateway's login of one more sub-device is refused (429) while it
    /// has this many online: EnOS's limit by default.
    pub max_sub_devices_per_gateway: usize,
    /// A SUBSCRIBE beyond this many filters held by one session is
    /// refused (SUBACK 0x80), so that no session grows without bound.
    pub max_filters_per_session: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_sub_devices_per_gateway: crate::sub_devices::DEFAULT_MAX_PER_GATEWAY,
            max_filters_per_session: DEFAULT_MAX_FILTERS_PER_SESSION,
        }
    }
}

impl ConfigFile {
    /// Reads and parses `path`, resolving relative paths in it against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, SandboxError> {
        let text = std::fs::read_to_string(path).map_err(|source| SandboxError::Read {
            path: path.to_owned(),
            cause: source,
        })?;
        let mut file = Self::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.resolve_paths(base);
        Ok(file)
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SandboxError> {
        // enos-toml: the error never quotes the file (a secret pasted
        // into the wrong key stays out of the log).
        enos_toml::from_str_renamed(text, RENAMED).map_err(|e| SandboxError::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(devices) = &mut self.devices {
            resolve(devices);
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.ca);
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            tls.crls.iter_mut().for_each(resolve);
        }
        if let Some(console) = &mut self.console {
            resolve(&mut console.password_file);
        }
        if let Some(api) = &mut self.enos_api {
            resolve(&mut api.app_secret_file);
            api.cert.iter_mut().for_each(resolve);
            api.key.iter_mut().for_each(resolve);
            api.state_dir.iter_mut().for_each(resolve);
            api.rsa_ca_key.iter_mut().for_each(resolve);
            api.outage_file.iter_mut().for_each(resolve);
        }
    }
}

/// What the command line sets; each `Some` / `true` overrides the config
/// file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--devices`.
    pub devices: Option<PathBuf>,
    /// `--mqtt-addr`.
    pub mqtt_addr: Option<SocketAddr>,
    /// `--tls-addr`.
    pub tls_addr: Option<SocketAddr>,
    /// `--ca`.
    pub ca: Option<PathBuf>,
    /// `--cert`.
    pub cert: Option<PathBuf>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--any-timestamp`.
    pub any_timestamp: bool,
    /// `--freshness-window`.
    pub freshness_window: Option<Duration>,
    /// `--allow-md5`.
    pub allow_md5: bool,
    /// `--tls-device-identity`.
    pub tls_device_identity: Option<String>,
    /// `--crl` (replaces the file's list when given).
    pub crls: Vec<PathBuf>,
    /// `--console-user`.
    pub console_user: Option<String>,
    /// `--console-password-file`.
    pub console_password_file: Option<PathBuf>,
    /// `--enos-api-addr` (needs `[enos_api]` in the file).
    pub enos_api_addr: Option<SocketAddr>,
    /// `--record`.
    pub record: Option<PathBuf>,
}

/// How far a signed timestamp may be from the sandbox's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshnessPolicy {
    /// Any timestamp: the default, as EnOS checks no freshness.
    Any,
    /// `|timestamp - now| <= window`.
    Window(Duration),
}

/// The TLS listener, complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where TLS clients connect.
    pub listen: SocketAddr,
    /// Client certificates must chain to this CA.
    pub ca: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// Which device a client certificate belongs to.
    pub device_identity: CertificateRule,
    /// CRL files of the client CA (followed: re-read when they change).
    pub crls: Vec<PathBuf>,
}

/// The console login, complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Its MQTT user name.
    pub user: String,
    /// The file its password is read from at start.
    pub password_file: PathBuf,
}

/// Everything the sandbox runs with: config file and command line merged,
/// defaults filled in, and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The device CSV file.
    pub devices: PathBuf,
    /// The plain MQTT listener.
    pub mqtt_listen: SocketAddr,
    /// The TLS listener, when configured.
    pub tls: Option<TlsSettings>,
    /// Timestamp check for CONNECT and `combine.login`.
    pub freshness: FreshnessPolicy,
    /// Whether `hmacmd5` is accepted.
    pub md5: Md5Policy,
    /// rumqttd drops a connection that sends no CONNECT within this (at
    /// most [`MAX_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// rumqttd refuses larger payloads.
    pub max_payload_bytes: usize,
    /// Online sub-devices one gateway may hold.
    pub max_sub_devices_per_gateway: usize,
    /// Subscription filters one session may hold.
    pub max_filters_per_session: usize,
    /// The console login, when configured.
    pub console: Option<ConsoleSettings>,
    /// EnOS's certificate API, when configured.
    pub enos_api: Option<EnosApiSettings>,
    /// Where every device PUBLISH is recorded (`--record`), for tests.
    pub record: Option<PathBuf>,
}

impl Settings {
    /// Merges the config file (if any) with the command line; the command
    /// line wins.
    pub fn resolve(file: ConfigFile, cli: Overrides) -> Result<Self, SandboxError> {
        let devices = cli.devices.or(file.devices).ok_or_else(|| {
            SandboxError::Settings(
                "no device file: pass --devices FILE.csv or set devices in the config file".into(),
            )
        })?;
        let mqtt_listen = cli
            .mqtt_addr
            .or(file.mqtt.map(|m| m.listen))
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_MQTT_PORT)));

        let freshness = freshness(cli.any_timestamp, cli.freshness_window, &file.checks)?;
        let file_rule = file.tls.as_ref().and_then(|t| t.device_identity.clone());
        let device_identity = match cli.tls_device_identity.or(file_rule) {
            Some(rule) => CertificateRule::parse(&rule).map_err(SandboxError::Settings)?,
            None => CertificateRule::default(),
        };
        let tls = match (file.tls, cli.ca, cli.cert, cli.key) {
            (Some(section), ca, cert, key) => Some(TlsSettings {
                listen: cli
                    .tls_addr
                    .or(section.listen)
                    .unwrap_or(default_tls_addr()),
                ca: ca.unwrap_or(section.ca),
                cert: cert.unwrap_or(section.cert),
                key: key.unwrap_or(section.key),
                device_identity,
                crls: if cli.crls.is_empty() {
                    section.crls
                } else {
                    cli.crls.clone()
                },
            }),
            (None, Some(ca), Some(cert), Some(key)) => Some(TlsSettings {
                listen: cli.tls_addr.unwrap_or(default_tls_addr()),
                ca,
                cert,
                key,
                device_identity,
                crls: cli.crls.clone(),
            }),
            (None, None, None, None) if cli.tls_addr.is_none() => None,
            (None, ..) => {
                return Err(SandboxError::Settings(
                    "the TLS listener needs all of --ca, --cert and --key".into(),
                ));
            }
        };

        let md5 = if cli.allow_md5 || file.checks.allow_md5 {
            Md5Policy::Allow
        } else {
            Md5Policy::Refuse
        };
        let console = match (
            cli.console_user
                .or(file.console.as_ref().map(|c| c.user.clone())),
            cli.console_password_file
                .or(file.console.map(|c| c.password_file)),
        ) {
            (Some(user), Some(password_file)) => Some(ConsoleSettings {
                user,
                password_file,
            }),
            (None, None) => None,
            _ => {
                return Err(SandboxError::Settings(
                    "the console login needs both --console-user and --console-password-file"
                        .into(),
                ));
            }
        };
        let connect_timeout = file.limits.connect_timeout;
        if connect_timeout < Duration::from_millis(1) || connect_timeout > MAX_CONNECT_TIMEOUT {
            return Err(SandboxError::Settings(
                "limits.connect_timeout must be above 0 and at most 65s".into(),
            ));
        }
        if file.limits.max_sub_devices_per_gateway == 0 {
            return Err(SandboxError::Settings(
                "limits.max_sub_devices_per_gateway must be above 0".into(),
            ));
        }
        if file.limits.max_filters_per_session == 0 {
            return Err(SandboxError::Settings(
                "limits.max_filters_per_session must be above 0".into(),
            ));
        }
        let enos_api = match (file.enos_api, cli.enos_api_addr) {
            (Some(section), addr) => Some(section.settings(addr)?),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(SandboxError::Settings(
                    "--enos-api-addr needs an [enos_api] section in the config file".into(),
                ));
            }
        };
        Ok(Settings {
            enos_api,
            devices,
            mqtt_listen,
            tls,
            freshness,
            md5,
            connect_timeout,
            max_payload_bytes: file.limits.max_payload_bytes,
            max_sub_devices_per_gateway: file.limits.max_sub_devices_per_gateway,
            max_filters_per_session: file.limits.max_filters_per_session,
            console,
            record: cli.record,
        })
    }
}

/// The command line's choice wins over the file's; within one of them,
/// `any_timestamp` and a window contradict each other.
fn freshness(
    cli_any_timestamp: bool,
    cli_window: Option<Duration>,
    file: &ChecksSection,
) -> Result<FreshnessPolicy, SandboxError> {
    let chosen = |any_timestamp: bool, window: Option<Duration>, any_name, window_name| match (
        any_timestamp,
        window,
    ) {
        (true, Some(_)) => Err(SandboxError::Settings(format!(
            "{any_name} and {window_name} contradict each other: choose one"
        ))),
        (true, None) => Ok(Some(FreshnessPolicy::Any)),
        (false, Some(window)) => Ok(Some(FreshnessPolicy::Window(window))),
        (false, None) => Ok(None),
    };
    let from_cli = chosen(
        cli_any_timestamp,
        cli_window,
        "--any-timestamp",
        "--freshness-window",
    )?;
    let from_file = chosen(
        file.any_timestamp,
        file.freshness_window,
        "checks.any_timestamp",
        "checks.freshness_window",
    )?;
    Ok(from_cli.or(from_file).unwrap_or(FreshnessPolicy::Any))
}

fn default_tls_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_TLS_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture documents every key; this test keeps it honest.
    const FIXTURE: &str = include_str!("../tests/fixtures/sandbox-config.toml");

    #[test]
    fn sub_device_limit_defaults_to_enos_and_is_above_0() {
        let path = Path::new("/etc/sandbox.toml");
        let file = ConfigFile::parse(path, "devices = \"d.csv\"").expect("valid");
        let settings = Settings::resolve(file, Overrides::default()).expect("complete");
        assert_eq!(settings.max_sub_devices_per_gateway, 200);
        assert_eq!(settings.max_filters_per_session, 1000);
        let file = ConfigFile::parse(
            path,
            "devices = \"d.csv\"\n[limits]\nmax_sub_devices_per_gateway = 0",
        )
        .expect("parses");
        let err = Settings::resolve(file, Overrides::default()).expect_err("0 refused");
        assert!(
            err.to_string().contains("max_sub_devices_per_gateway"),
            "{err}"
        );
    }

    #[test]
    fn fixture_parses_to_the_documented_values() {
        let path = Path::new("/etc/enos-sandbox/sandbox-config.toml");
        let mut file = ConfigFile::parse(path, FIXTURE).expect("the fixture is valid");
        file.resolve_paths(Path::new("/etc/enos-sandbox"));
        assert_eq!(
            file,
            ConfigFile {
                devices: Some("/etc/enos-sandbox/devices.csv".into()),
                mqtt: Some(MqttSection {
                    listen: "127.0.0.1:11883".parse().expect("addr"),
                }),
                tls: Some(TlsSection {
                    listen: Some("127.0.0.1:18883".parse().expect("addr")),
                    ca: "/etc/enos-sandbox/ca.pem".into(),
                    cert: "/etc/enos-sandbox/server.pem".into(),
                    key: "/var/lib/enos-sandbox/server.key".into(),
                    device_identity: Some("cn:{productKey}.{deviceKey}".into()),
                    crls: vec!["/etc/enos-sandbox/devices.crl".into()],
                }),
                checks: ChecksSection {
                    any_timestamp: false,
                    freshness_window: Some(Duration::from_secs(300)),
                    allow_md5: true,
                },
                limits: LimitsSection {
                    connect_timeout: Duration::from_secs(2),
                    max_payload_bytes: 65536,
                    max_sub_devices_per_gateway: 150,
                    max_filters_per_session: 500,
                },
                console: Some(ConsoleSection {
                    user: "console".into(),
                    password_file: "/etc/enos-sandbox/console.secret".into(),
                }),
                enos_api: Some(EnosApiSection {
                    listen: "127.0.0.1:8443".parse().expect("addr"),
                    org_id: "o15724268424841".into(),
                    app_key: "app-key-1".into(),
                    app_secret_file: "/etc/enos-sandbox/enos-app.secret".into(),
                    cert: Some("/etc/enos-sandbox/server.pem".into()),
                    key: Some("/var/lib/enos-sandbox/server.key".into()),
                    state_dir: Some("/etc/enos-sandbox/enos-ca".into()),
                    rsa_ca_key: None,
                    clock_skew: Duration::from_secs(120),
                    token_lifetime: Duration::from_secs(600),
                    day: Duration::from_secs(60),
                    error_http_status: true,
                    renew_revokes_old: true,
                    subject_must_match_root: true,
                    outage_file: None,
                    default_valid_day: 365,
                    max_valid_day: 1000,
                    bi_directional_auth: true,
                    products: [(
                        "pkA".to_owned(),
                        ProductSection {
                            default_valid_day: None,
                            max_valid_day: Some(200),
                            bi_directional_auth: Some(false),
                        },
                    )]
                    .into(),
                }),
            }
        );
        let settings = Settings::resolve(file, Overrides::default()).expect("complete");
        assert_eq!(
            settings.freshness,
            FreshnessPolicy::Window(Duration::from_secs(300))
        );
        assert_eq!(settings.md5, Md5Policy::Allow);
        assert_eq!(settings.max_sub_devices_per_gateway, 150);
        let api = settings.enos_api.clone().expect("enos_api");
        assert_eq!(
            api.product("pkA"),
            ProductRules {
                default_valid_day: 200,
                max_valid_day: 200,
                bi_directional_auth: false
            }
        );
        assert_eq!(api.product("other").max_valid_day, 1000);
        assert_eq!(api.day, Duration::from_secs(60));
        assert_eq!(
            settings.tls.map(|t| t.listen.port()),
            Some(DEFAULT_TLS_PORT)
        );
    }

    #[test]
    fn enos_api_limits_are_checked() {
        let base = "devices = \"d.csv\"\n[enos_api]\nlisten = \"127.0.0.1:0\"\norg_id = \"o\"\napp_key = \"a\"\napp_secret_file = \"s\"\n";
        for (extra, needle) in [
            ("max_valid_day = 4000\n", "3650"),
            (
                "default_valid_day = 900\nmax_valid_day = 800\n",
                "default_valid_day",
            ),
            ("cert = \"c.pem\"\n", "cert and key"),
            ("day = \"0s\"\n", "day"),
        ] {
            let file =
                ConfigFile::parse(Path::new("c.toml"), &format!("{base}{extra}")).expect("parses");
            let err = Settings::resolve(file, Overrides::default()).expect_err(extra);
            assert!(err.to_string().contains(needle), "{extra}: {err}");
        }
        let no_section = Settings::resolve(
            ConfigFile::default(),
            Overrides {
                devices: Some("d.csv".into()),
                enos_api_addr: Some("127.0.0.1:0".parse().expect("addr")),
                ..Overrides::default()
            },
        )
        .expect_err("no section");
        assert!(
            no_section.to_string().contains("[enos_api]"),
            "{no_section}"
        );
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file = ConfigFile::parse(Path::new("c.toml"), FIXTURE).expect("valid");
        let settings = Settings::resolve(
            file,
            Overrides {
                devices: Some("other.csv".into()),
                mqtt_addr: Some("127.0.0.1:0".parse().expect("addr")),
                key: Some("k.pem".into()),
                any_timestamp: true,
                ..Overrides::default()
            },
        )
        .expect("complete");
        assert_eq!(settings.devices, PathBuf::from("other.csv"));
        assert_eq!(settings.mqtt_listen.port(), 0);
        assert_eq!(settings.freshness, FreshnessPolicy::Any);
        let tls = settings.tls.expect("tls from the file");
        assert_eq!(tls.key, PathBuf::from("k.pem"));
        assert_eq!(tls.ca, PathBuf::from("ca.pem"));
    }

    #[test]
    fn defaults_without_a_file() {
        let settings = Settings::resolve(
            ConfigFile::default(),
            Overrides {
                devices: Some("d.csv".into()),
                ..Overrides::default()
            },
        )
        .expect("devices are enough");
        assert_eq!(settings.mqtt_listen.port(), DEFAULT_MQTT_PORT);
        assert_eq!(settings.tls, None);
        // No freshness check, as EnOS.
        assert_eq!(settings.freshness, FreshnessPolicy::Any);
        assert_eq!(settings.md5, Md5Policy::Refuse);
    }

    #[test]
    fn a_freshness_window_turns_the_check_on_and_contradicts_any_timestamp() {
        let devices = || Overrides {
            devices: Some("d.csv".into()),
            ..Overrides::default()
        };
        let window = Settings::resolve(
            ConfigFile::default(),
            Overrides {
                freshness_window: Some(Duration::from_secs(60)),
                ..devices()
            },
        )
        .expect("a window");
        assert_eq!(
            window.freshness,
            FreshnessPolicy::Window(Duration::from_secs(60))
        );
        let both = Settings::resolve(
            ConfigFile::default(),
            Overrides {
                any_timestamp: true,
                freshness_window: Some(Duration::from_secs(60)),
                ..devices()
            },
        )
        .expect_err("both on the command line");
        assert!(both.to_string().contains("contradict"), "{both}");
        let file = ConfigFile::parse(
            Path::new("c.toml"),
            "[checks]\nany_timestamp = true\nfreshness_window = \"1m\"\n",
        )
        .expect("valid TOML");
        let both = Settings::resolve(file, devices()).expect_err("both in the file");
        assert!(both.to_string().contains("checks.any_timestamp"), "{both}");
        // The command line's window wins over the file's any_timestamp.
        let file = ConfigFile::parse(Path::new("c.toml"), "[checks]\nany_timestamp = true\n")
            .expect("valid TOML");
        let cli_wins = Settings::resolve(
            file,
            Overrides {
                freshness_window: Some(Duration::from_secs(5)),
                ..devices()
            },
        )
        .expect("cli wins");
        assert_eq!(
            cli_wins.freshness,
            FreshnessPolicy::Window(Duration::from_secs(5))
        );
    }

    #[test]
    fn incomplete_or_unknown_settings_are_errors() {
        let no_devices = Settings::resolve(ConfigFile::default(), Overrides::default());
        assert!(
            no_devices
                .expect_err("no devices")
                .to_string()
                .contains("--devices")
        );

        let half_tls = Settings::resolve(
            ConfigFile::default(),
            Overrides {
                devices: Some("d.csv".into()),
                cert: Some("c.pem".into()),
                ..Overrides::default()
            },
        );
        assert!(half_tls.expect_err("no ca").to_string().contains("--ca"));

        let typo = ConfigFile::parse(
            Path::new("c.toml"),
            "devices = \"d.csv\"\nany_timestmp = true\n",
        )
        .expect_err("unknown key");
        let message = typo.to_string();
        assert!(
            message.contains("c.toml") && message.contains("any_timestmp"),
            "{message}"
        );
    }

    #[test]
    fn an_old_duration_key_or_form_names_the_new_one() {
        // #29 item 8: `connect_timeout_ms = 5000` and
        // `freshness_window_secs = 300` became humantime strings.
        let parse = |text: &str| {
            ConfigFile::parse(Path::new("c.toml"), text)
                .expect_err("old")
                .to_string()
        };
        let old = parse("[limits]\nconnect_timeout_ms = 2000\n");
        assert!(
            old.contains("`connect_timeout_ms` was renamed: write `connect_timeout = \"2000ms\"`"),
            "{old}"
        );
        let old = parse("[checks]\nfreshness_window_secs = 300\n");
        assert!(
            old.contains(
                "`freshness_window_secs` was renamed: write `freshness_window = \"300s\"`"
            ),
            "{old}"
        );
        let bare = parse("[limits]\nconnect_timeout = 5000\n");
        assert!(
            bare.contains("`connect_timeout` is a duration with its unit"),
            "{bare}"
        );
        let file = ConfigFile::parse(Path::new("c.toml"), "[limits]\nconnect_timeout = \"70s\"\n")
            .expect("parses");
        let long = Settings::resolve(
            file,
            Overrides {
                devices: Some("d.csv".into()),
                ..Overrides::default()
            },
        )
        .expect_err("above u16 ms");
        assert!(
            long.to_string().contains("limits.connect_timeout"),
            "{long}"
        );
    }
}
