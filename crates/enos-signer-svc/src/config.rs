//! [`SignerConfig`]: the TOML configuration, as serde structs.
//!
//! Relative paths are resolved against the config file's directory by
//! [`SignerConfig::load`]; key files (master key, audit key) named by a
//! relative path are looked up in `$CREDENTIALS_DIRECTORY` first when it is
//! set (systemd `LoadCredential=`). No key is ever taken from argv.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

// `[registry]`: defined by the registry crate, part of this file.
pub use enos_registry::RegistryConfig;
use enos_registry::postgres::PostgresConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SignerError};

/// The whole configuration of one signer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// The gRPC listener and its TLS material: every client is mTLS.
    pub server: ServerConfig,
    /// Where device records live.
    pub registry: RegistryConfig,
    /// Who keeps the secrets sealed and signs with them.
    pub custody: CustodyConfig,
    /// Where the audit trail goes and how strict it is.
    pub audit: AuditConfig,
    /// Per-identity request budget; absent means no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// TTL, sign method and broker URLs, per product with a global default.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The Prometheus endpoint; absent means no metrics listener.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Log format and filter (used by the binary).
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The plain (no TLS) health port for kubelet probes, and how often
    /// readiness is checked; absent means no health port (readiness is
    /// still checked for the mTLS listener's health service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    /// The signer as the certificate authority of its devices' client
    /// certificates (enrollment, renewal, revocation); absent: the
    /// operator keeps their own PKI and everything works as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaConfig>,
    /// The signer as a client of EnOS's certificate API (gateways' EnOS
    /// device certificates, docs/enos-certificates.md); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enos_api: Option<EnosApiConfig>,
}

/// `[enos_api]`: EnOS's API gateway, per environment. The application's
/// AccessKey and SecretKey are never here: `enos-signer enos-api
/// set-credential` seals them into each environment's `credential_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnosApiConfig {
    /// At most this many calls to EnOS at once, over all environments: a
    /// renewal wave queues here instead of flooding the API gateway.
    #[serde(default = "default_enos_api_concurrency")]
    pub concurrency: NonZeroUsize,
    /// One call (connect, TLS, request, answer) must finish within this.
    #[serde(default = "default_enos_api_timeout", with = "enos_toml::duration")]
    pub timeout: Duration,
    /// `validDay` of the certificates applied for (EnOS's default 730;
    /// at most the product's `maxValidDay`, 1095 by default).
    #[serde(default = "default_valid_day")]
    pub valid_day: u32,
    /// The environments by name (a name is also the custody reference of
    /// its sealed credential: ASCII letters, digits, `-`, `_`).
    pub environments: BTreeMap<String, EnosEnvironmentConfig>,
    /// The subject every gateway's CSR must carry (EnOS requires C, ST,
    /// L, O, OU and CN); `{deviceKey}` and `{productKey}` in `cn` make it
    /// unique per device, as EnOS demands.
    #[serde(default)]
    pub subject: SubjectTemplate,
    /// The subject per product key, where it differs from `subject`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub product_subjects: BTreeMap<String, SubjectTemplate>,
}

/// A CSR subject template: C, ST, L, O, OU verbatim, CN with
/// `{productKey}` / `{deviceKey}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectTemplate {
    /// Country (2 letters; EnOS's roots say `CN`).
    pub c: String,
    /// State or province.
    pub st: String,
    /// Locality.
    pub l: String,
    /// Organisation (EnOS's RSA root: `EnOS`).
    pub o: String,
    /// Organisational unit.
    pub ou: String,
    /// Common name; must name `{deviceKey}` so that it is unique per device.
    pub cn: String,
}

impl Default for SubjectTemplate {
    /// EnOS's root's C, ST, O (some EnOS versions require them), CN the
    /// device.
    fn default() -> Self {
        SubjectTemplate {
            c: "CN".into(),
            st: "Shanghai".into(),
            l: "Shanghai".into(),
            o: "EnOS".into(),
            ou: "gateways".into(),
            cn: "{productKey}.{deviceKey}".into(),
        }
    }
}

impl SubjectTemplate {
    /// The subject of `pk/dk`: (short name, value) in C, ST, L, O, OU, CN order.
    pub fn expand(&self, pk: &str, dk: &str) -> [(&'static str, String); 6] {
        [
            ("C", self.c.clone()),
            ("ST", self.st.clone()),
            ("L", self.l.clone()),
            ("O", self.o.clone()),
            ("OU", self.ou.clone()),
            (
                "CN",
                self.cn
                    .replace("{productKey}", pk)
                    .replace("{deviceKey}", dk),
            ),
        ]
    }
}

/// `[enos_api.environments.<name>]`: one EnOS environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnosEnvironmentConfig {
    /// The API gateway's base URL, `https://apim-…` (or `http://` for an
    /// EnOS Edge).
    pub gateway_url: String,
    /// The organisation (`orgId`) the devices belong to.
    pub org_id: String,
    /// The sealed AccessKey/SecretKey, written by `enos-signer enos-api
    /// set-credential` (ciphertext under the custody's key).
    pub credential_file: PathBuf,
    /// Roots trusted for the gateway's HTTPS certificate (PEM); required
    /// for `https://` (the signer ships no public root store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The product keys served by this environment; `["*"]`: every
    /// product no other environment names.
    pub products: Vec<String>,
}

fn default_enos_api_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(8).unwrap_or(NonZeroUsize::MIN)
}

fn default_enos_api_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_valid_day() -> u32 {
    730
}

impl EnosApiConfig {
    /// The subject template of `product_key`.
    pub fn subject_of(&self, product_key: &str) -> &SubjectTemplate {
        self.product_subjects
            .get(product_key)
            .unwrap_or(&self.subject)
    }

    /// The environment (name and settings) serving `product_key`: the one
    /// naming it, else the one with `*`.
    pub fn environment_of(&self, product_key: &str) -> Option<(&str, &EnosEnvironmentConfig)> {
        let named = self
            .environments
            .iter()
            .find(|(_, e)| e.products.iter().any(|p| p == product_key));
        named
            .or_else(|| {
                self.environments
                    .iter()
                    .find(|(_, e)| e.products.iter().any(|p| p == "*"))
            })
            .map(|(name, e)| (name.as_str(), e))
    }

    /// Refuses what cannot work: no environment, a bad name or URL, a
    /// product in two environments, `*` twice, `validDay` out of EnOS's
    /// range, an `https://` gateway without `ca_file`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SignerError::Config(format!("enos_api: {m}")));
        if self.environments.is_empty() {
            return bad("name at least one [enos_api.environments.<name>]".into());
        }
        if !(1..=3650).contains(&self.valid_day) {
            return bad("valid_day must be 1 to 3650 (EnOS's range)".into());
        }
        if self.timeout.is_zero() {
            return bad("timeout must be above 0".into());
        }
        for (which, subject) in std::iter::once(("subject".to_owned(), &self.subject)).chain(
            self.product_subjects
                .iter()
                .map(|(pk, s)| (format!("product_subjects.{pk}"), s)),
        ) {
            if subject.c.chars().count() != 2
                || [
                    &subject.st,
                    &subject.l,
                    &subject.o,
                    &subject.ou,
                    &subject.cn,
                ]
                .iter()
                .any(|v| v.is_empty() || v.chars().count() > 64)
            {
                return bad(format!(
                    "{which}: c has 2 characters; st, l, o, ou, cn 1 to 64 (EnOS's limits)"
                ));
            }
            if !subject.cn.contains("{deviceKey}") {
                return bad(format!(
                    "{which}.cn must name {{deviceKey}}: EnOS refuses a CN another device has"
                ));
            }
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, env) in &self.environments {
            if name.is_empty()
                || name.len() > 32
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return bad(format!(
                    "environment name {name:?}: 1 to 32 ASCII letters, digits, - or _"
                ));
            }
            let https = env.gateway_url.starts_with("https://");
            if !https && !env.gateway_url.starts_with("http://") {
                return bad(format!(
                    "environments.{name}.gateway_url must start with https:// or http://"
                ));
            }
            if https && env.ca_file.is_none() {
                return bad(format!(
                    "environments.{name}: an https:// gateway needs ca_file (the roots its certificate chains to)"
                ));
            }
            if env.org_id.is_empty() {
                return bad(format!("environments.{name}.org_id is empty"));
            }
            if env.products.is_empty() {
                return bad(format!(
                    "environments.{name}.products is empty (list product keys, or \"*\")"
                ));
            }
            for product in &env.products {
                if let Some(other) = seen.insert(product.as_str(), name.as_str()) {
                    return bad(format!(
                        "product {product:?} is in environments {other} and {name}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[ca]`: the signer issues its devices' client certificates. Its key is
/// held by the custody (sealed under the master key, or in the HSM) and
/// made by `enos-signer ca init`; its chain is kept in the registry, so
/// every replica serves the same CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Where `Enrollment` is served: server-authenticated TLS with the
    /// signer's certificate and no client certificate (a device being
    /// enrolled has none; its one-time token is its proof). Absent: no
    /// enrollment listener (renewal still works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_listen: Option<SocketAddr>,
    /// Lifetime of an issued device certificate (default 30 days).
    #[serde(default = "default_certificate_lifetime", with = "enos_toml::duration")]
    pub lifetime: Duration,
    /// Lifetime per product key, where it differs from `lifetime`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub products: BTreeMap<String, CaProductConfig>,
    /// Lifetime of an enrollment token when `enroll-token` gives none
    /// (default 24 h).
    #[serde(default = "default_token_ttl", with = "enos_toml::duration")]
    pub token_ttl: Duration,
    /// Where the CRL is written (DER), refreshed on every revocation and
    /// well before its nextUpdate; absent: served over HTTP only
    /// (`/crl` on the metrics listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
    /// How long a published CRL is valid (its nextUpdate; default 24 h).
    /// It is re-signed at half of it, so a reader that fetches it at
    /// least that often never holds a stale list.
    #[serde(default = "default_crl_validity", with = "enos_toml::duration")]
    pub crl_validity: Duration,
}

impl Default for CaConfig {
    /// Every default, and no enrollment listener.
    fn default() -> Self {
        CaConfig {
            enroll_listen: None,
            lifetime: default_certificate_lifetime(),
            products: BTreeMap::new(),
            token_ttl: default_token_ttl(),
            crl_file: None,
            crl_validity: default_crl_validity(),
        }
    }
}

/// `[ca.products.<productKey>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaProductConfig {
    /// Lifetime of this product's device certificates.
    #[serde(with = "enos_toml::duration")]
    pub lifetime: Duration,
}

/// The longest certificate lifetime `[ca]` accepts: a device certificate
/// is renewed, not kept for years.
pub const MAX_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(398 * 86_400);
/// The longest enrollment token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

fn default_certificate_lifetime() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(86_400)
}

fn default_crl_validity() -> Duration {
    Duration::from_secs(86_400)
}

impl CaConfig {
    /// The certificate lifetime for `product_key`.
    pub fn lifetime_of(&self, product_key: &str) -> Duration {
        self.products
            .get(product_key)
            .map_or(self.lifetime, |p| p.lifetime)
    }

    /// Refuses lifetimes that are zero or longer than the maxima.
    pub fn validate(&self) -> Result<()> {
        let lifetimes = std::iter::once(("ca.lifetime".to_owned(), self.lifetime)).chain(
            self.products
                .iter()
                .map(|(pk, p)| (format!("ca.products.{pk}.lifetime"), p.lifetime)),
        );
        for (key, lifetime) in lifetimes {
            if lifetime.is_zero() || lifetime > MAX_CERTIFICATE_LIFETIME {
                return Err(SignerError::Config(format!(
                    "{key} must be more than 0 and at most 398 days"
                )));
            }
        }
        if self.token_ttl.is_zero() || self.token_ttl > MAX_TOKEN_TTL {
            return Err(SignerError::Config(
                "ca.token_ttl must be more than 0 and at most 30 days".into(),
            ));
        }
        if self.crl_validity < Duration::from_secs(60) {
            return Err(SignerError::Config(
                "ca.crl_validity must be at least 1 minute".into(),
            ));
        }
        Ok(())
    }
}

/// The gRPC listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the binary binds (`serve`); tests bind their own listener.
    pub listen: SocketAddr,
    /// The server certificate chain (PEM) presented to clients.
    pub cert: PathBuf,
    /// The server's private key (PEM); must be mode 0600 or stricter.
    pub key: PathBuf,
    /// The CA (PEM) that issues device client certificates, and admin
    /// certificates too unless `admin_ca` is set.
    pub client_ca: PathBuf,
    /// A CA (PEM) of its own for admin certificates (recommended): when
    /// set, an admin certificate must chain to it, so a certificate of
    /// `client_ca` with an admin SAN is refused (whoever can get a device
    /// certificate cannot become an admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_ca: Option<PathBuf>,
    /// The admin names (`spiffe://enos/admin/{name}`) allowed on Admin;
    /// empty: every admin certificate of the admin CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_names: Vec<String>,
    /// Certificate revocation lists (PEM or DER) of the client and admin
    /// CAs, re-read with the certificates: a revoked certificate is refused
    /// in the TLS handshake of every new connection. A CA without a list
    /// here is not checked for revocation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
    /// What a CRL past its nextUpdate does to the material that holds it,
    /// at start and at each reload: `warn` (the default: it is still the
    /// newest list there is) or `refuse` (the material is refused: no start,
    /// or the reload keeps the previous material).
    #[serde(default)]
    pub crl_expired: CrlExpired,
    /// How long a graceful shutdown waits for in-flight calls (`"10s"`).
    #[serde(default = "default_drain", with = "enos_toml::duration")]
    pub drain_timeout: Duration,
    /// Async worker threads (gRPC, TLS); absent means one per CPU. With
    /// HSM custody on a token that computes on this host's CPUs (SoftHSM2),
    /// the sign threads (one per `custody.sessions`) need CPUs of their
    /// own: give the workers the rest, or the token work is preempted by
    /// the requests feeding it (on 2 CPUs with one session, 1 worker
    /// issued 1.3× as many credentials as 2). A network HSM's sign
    /// threads mostly wait: keep the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<NonZeroUsize>,
    /// How often `cert`, `key` and `client_ca` are re-read (`"5s"`); new
    /// material is used for new connections, established ones keep theirs.
    /// Certificates from cert-manager or SPIRE live an hour or less.
    /// `"0s"`: only on SIGHUP.
    #[serde(default = "default_tls_reload", with = "enos_toml::duration")]
    pub tls_reload_interval: Duration,
    /// Connections, streams, requests in flight and import size
    /// (`[server.limits]`): what callers can hold before proving anything.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `server.crl_expired`: what a CRL past its nextUpdate does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpired {
    /// Logged as a warning; the CRL is used.
    #[default]
    Warn,
    /// The material is refused.
    Refuse,
}

fn default_drain() -> Duration {
    Duration::from_secs(10)
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(5)
}

impl ServerConfig {
    /// The multi-threaded runtime that serves this config, its threads
    /// named `name`.
    pub fn runtime(&self, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(workers) = self.worker_threads {
            builder.worker_threads(workers.get());
        }
        builder.thread_name(name).enable_all().build()
    }

    /// [`ServerConfig::drain_timeout`].
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// [`ServerConfig::tls_reload_interval`]; `None`: no polling.
    pub fn tls_reload_interval(&self) -> Option<Duration> {
        (!self.tls_reload_interval.is_zero()).then_some(self.tls_reload_interval)
    }
}

/// The custody backend. One variant per custody; [`crate::custody::build`]
/// turns it into a [`enos_custody::Custody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CustodyConfig {
    /// Secrets sealed with XChaCha20-Poly1305 under a 256-bit master key.
    Software {
        /// The master key file (64 hex digits), mode 0600 or from
        /// `$CREDENTIALS_DIRECTORY`.
        master_key_file: PathBuf,
    },
    /// Secrets wrapped under a key that never leaves a PKCS#11 token (an
    /// HSM); passwords are digested inside the token. See
    /// [`enos_custody_pkcs11::Pkcs11Config`] for the keys.
    Pkcs11(enos_custody_pkcs11::Pkcs11Config),
}

/// The audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The HMAC-SHA256 key (64 hex digits) under which issued passwords
    /// are hashed in the trail; same file rules as the master key.
    pub key_file: PathBuf,
    /// Where records go.
    #[serde(default)]
    pub sink: AuditSinkConfig,
    /// If the sink cannot be written, refuse to issue (Unavailable) rather
    /// than issue unaudited.
    #[serde(default = "yes")]
    pub fail_closed: bool,
}

fn yes() -> bool {
    true
}

/// Where audit records are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditSinkConfig {
    /// JSON lines appended to a file.
    File {
        /// The file; created 0600 if missing.
        path: PathBuf,
    },
    /// JSON lines `{"audit":{…}}` on standard error, written directly (not
    /// through the log filter, which cannot switch the trail off), so a
    /// failed write fails closed like the other sinks.
    #[default]
    Log,
    /// Rows of the append-only `audit_records` table (migrated by `init`
    /// with the registry's schema); see
    /// [`PostgresAuditSinkConfig`] for the keys.
    Postgres(PostgresAuditSinkConfig),
}

/// Where the audit table is: the registry's database or another one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresAuditSinkConfig {
    /// As `registry.url`: no password in it.
    pub url: String,
    /// As `registry.password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// As `registry.ca_file` (TLS with verify-full when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// As `registry.allow_plaintext_password`: without `ca_file`, a
    /// password goes only to a socket or a loopback host unless this is
    /// true (the operator's explicit opt-out).
    #[serde(default)]
    pub allow_plaintext_password: bool,
}

impl PostgresAuditSinkConfig {
    /// The same connection as a registry config (one connection, no cache),
    /// to share the URL, password and TLS rules.
    pub fn connection(&self) -> PostgresConfig {
        PostgresConfig {
            url: self.url.clone(),
            password_file: self.password_file.clone(),
            pool_size: 1,
            ca_file: self.ca_file.clone(),
            cache: false,
            allow_plaintext_password: self.allow_plaintext_password,
        }
    }
}

/// Per-identity rate limit (GCRA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per identity.
    pub per_second: u32,
    /// Requests an identity may make at once after being idle.
    pub burst: u32,
}

/// Issuance policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Lifetime of an issued credential (default `"5m"`).
    #[serde(default = "default_ttl", with = "enos_toml::duration")]
    pub ttl: Duration,
    /// Sign method when the request leaves it unspecified.
    #[serde(default = "default_method")]
    pub sign_method: String,
    /// Whether `hmacmd5` may be issued at all (weak; off by default).
    #[serde(default)]
    pub allow_md5: bool,
    /// Overrides per product key.
    #[serde(default)]
    pub products: BTreeMap<String, ProductPolicyConfig>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_method() -> String {
    "hmacsha1".into()
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            ttl: default_ttl(),
            sign_method: default_method(),
            allow_md5: false,
            products: BTreeMap::new(),
        }
    }
}

/// A product's overrides of the global policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProductPolicyConfig {
    /// Overrides [`PolicyConfig::ttl`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "enos_toml::duration::option"
    )]
    pub ttl: Option<Duration>,
    /// Overrides [`PolicyConfig::sign_method`].
    #[serde(default)]
    pub sign_method: Option<String>,
    /// Broker endpoints handed out with the product's credentials
    /// (`tcp://host:11883`, `ssl://host:18883`).
    #[serde(default)]
    pub broker_urls: Vec<String>,
    /// Whether the product's devices registered without a secret may
    /// activate themselves (a `securemode=3` credential signed with the
    /// product's secret). Off unless a product opts in.
    #[serde(default)]
    pub dynamic_activation: bool,
}

/// The Prometheus listener: mTLS like every listener (same server
/// certificate and client CA); any certificate of the client CA may scrape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` endpoint.
    pub listen: SocketAddr,
    /// How long a client may take to send a request's header (a slow
    /// header holds a connection slot; default `"5s"`).
    #[serde(
        default = "default_metrics_header_timeout",
        with = "enos_toml::duration"
    )]
    pub header_timeout: Duration,
    /// How long a connection may stay open, idle keep-alive included (a
    /// scraper simply reconnects; default `"1m"`).
    #[serde(
        default = "default_metrics_connection_lifetime",
        with = "enos_toml::duration"
    )]
    pub connection_lifetime: Duration,
}

fn default_metrics_header_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_metrics_connection_lifetime() -> Duration {
    Duration::from_secs(60)
}

impl MetricsConfig {
    /// The listener on `listen` with the default timeouts.
    pub fn on(listen: SocketAddr) -> Self {
        MetricsConfig {
            listen,
            header_timeout: default_metrics_header_timeout(),
            connection_lifetime: default_metrics_connection_lifetime(),
        }
    }

    /// Both timeouts as durations (at least 1 s each).
    pub fn timeouts(&self) -> HttpTimeouts {
        HttpTimeouts {
            header: self.header_timeout.max(Duration::from_secs(1)),
            lifetime: self.connection_lifetime.max(Duration::from_secs(1)),
        }
    }
}

/// `[server.limits]`; every key has a default sized for a fleet of tens
/// of thousands of devices on a small host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// TLS connections open at once on the gRPC listener (devices keep one
    /// each while they refresh credentials; a flood of idle ones must not
    /// exhaust file descriptors).
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once (a gateway
    /// signing for many sub-devices needs a few; one client must not hold
    /// the server's whole request budget).
    pub max_concurrent_streams: u32,
    /// Calls in flight over all connections; above it a call is refused
    /// with `ResourceExhausted` at once, so overload costs almost nothing.
    pub max_concurrent_requests: usize,
    /// Bytes one import may stream in total (the row count has its own
    /// cap, `import::MAX_ROWS`): the import is held in memory until it is
    /// checked whole.
    pub import_max_bytes: usize,
    /// New connections per second one peer address may open (IPv6: per
    /// /64); 0: no throttle. Generous, as a whole fleet behind one NAT
    /// reconnects at once after an outage.
    pub connections_per_ip_per_second: u32,
    /// New connections one peer address may open at once after a quiet
    /// spell.
    pub connection_burst_per_ip: u32,
    /// Connections one peer address (IPv6: its /64) may hold open at once,
    /// handshakes included; 0: no cap. Well below `max_connections`, so
    /// that one address cannot take every slot (a peer that never finishes
    /// its handshake holds one for `handshake_timeout`); raise it for
    /// a large fleet behind one NAT address.
    pub max_connections_per_ip: usize,
    /// How long a client has to complete its TLS handshake (client
    /// certificate included); then the connection is closed. At least 1 s.
    #[serde(with = "enos_toml::duration")]
    pub handshake_timeout: Duration,
    /// How long a client has, after its handshake, to send the HTTP/2
    /// connection preface; a connection that finished TLS and then says
    /// nothing is closed. At least 1 s.
    #[serde(with = "enos_toml::duration")]
    pub http2_start_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_concurrent_streams: 64,
            max_concurrent_requests: 2_048,
            import_max_bytes: 256 * 1024 * 1024,
            connections_per_ip_per_second: 1_000,
            connection_burst_per_ip: 10_000,
            max_connections_per_ip: 1_000,
            handshake_timeout: Duration::from_secs(5),
            http2_start_timeout: Duration::from_secs(5),
        }
    }
}

impl LimitsConfig {
    /// [`LimitsConfig::handshake_timeout`], at least 1 s.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout.max(Duration::from_secs(1))
    }

    /// [`LimitsConfig::http2_start_timeout`], at least 1 s.
    pub fn http2_start_timeout(&self) -> Duration {
        self.http2_start_timeout.max(Duration::from_secs(1))
    }
}

/// The timeouts of an HTTP/1 listener (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// A request's header must arrive within this.
    pub header: Duration,
    /// A connection is closed after this, idle or not.
    pub lifetime: Duration,
}
/// The plain health port: `grpc.health.v1.Health` only, no TLS, so that
/// a kubelet `grpc` probe works. Readiness (`""`) means the registry
/// answers, the custody could sign, and the signer is not draining;
/// liveness (service `liveness`) does not depend on the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address of the health port (for example `0.0.0.0:8081`).
    pub listen: SocketAddr,
    /// How often the registry and custody are checked (`"5s"`, at least
    /// 1 s).
    #[serde(default = "default_check_interval", with = "enos_toml::duration")]
    pub check_interval: Duration,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}

impl HealthConfig {
    /// [`HealthConfig::check_interval`], at least 1 s.
    pub fn check_interval(&self) -> Duration {
        self.check_interval.max(Duration::from_secs(1))
    }
}

/// Logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `json` (for a journal or a collector) or `pretty` (for people).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` overrides it.
    #[serde(default = "default_filter")]
    pub filter: String,
}

fn default_filter() -> String {
    "info".into()
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::default(),
            filter: default_filter(),
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable, multi-line.
    Pretty,
}

/// Keys of older releases, refused with their new name and form.
pub const RENAMED: &[enos_toml::Renamed] = &[
    renamed("drain_timeout_secs", "drain_timeout", "s"),
    renamed("tls_reload_interval_secs", "tls_reload_interval", "s"),
    renamed("ttl_secs", "ttl", "s"),
    renamed("header_timeout_secs", "header_timeout", "s"),
    renamed("connection_lifetime_secs", "connection_lifetime", "s"),
    renamed("handshake_timeout_secs", "handshake_timeout", "s"),
    renamed("http2_start_timeout_secs", "http2_start_timeout", "s"),
    renamed("check_interval_secs", "check_interval", "s"),
    renamed("retry_interval_ms", "retry_interval", "ms"),
];

const fn renamed(old: &'static str, new: &'static str, unit: &'static str) -> enos_toml::Renamed {
    enos_toml::Renamed { old, new, unit }
}

impl SignerConfig {
    /// Parses a config from TOML text; relative paths stay relative.
    pub fn from_toml(text: &str) -> Result<Self> {
        // enos-toml: the error never quotes the file (a secret pasted
        // into the wrong key stays out of the log).
        let config: Self = enos_toml::from_str_renamed(text, RENAMED)
            .map_err(|e| SignerError::Config(e.to_string()))?;
        if let Some(ca) = &config.ca {
            ca.validate()?;
        }
        if let Some(api) = &config.enos_api {
            api.validate()?;
        }
        Ok(config)
    }

    /// Reads `path` and resolves relative paths against its directory
    /// (key files: against `$CREDENTIALS_DIRECTORY` first, if set).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| SignerError::Io {
            action: "reading config",
            path: path.to_owned(),
            cause: source,
        })?;
        // The file's name before the reason, and "configuration:" once.
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            SignerError::Config(reason) => {
                SignerError::Config(format!("{}: {reason}", path.display()))
            }
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        config.resolve_paths(base, credentials.as_deref());
        Ok(config)
    }

    /// Makes every path absolute: plain files relative to `base`, key
    /// files relative to `credentials` when given and the file exists there.
    pub fn resolve_paths(&mut self, base: &Path, credentials: Option<&Path>) {
        let file = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let key = |p: &mut PathBuf| {
            if p.is_relative() {
                let from_credentials = credentials.map(|dir| dir.join(&*p));
                *p = match from_credentials {
                    Some(c) if c.exists() => c,
                    _ => base.join(&*p),
                };
            }
        };
        file(&mut self.server.cert);
        key(&mut self.server.key);
        file(&mut self.server.client_ca);
        if let Some(admin_ca) = &mut self.server.admin_ca {
            file(admin_ca);
        }
        for crl in &mut self.server.crls {
            file(crl);
        }
        match &mut self.registry {
            RegistryConfig::Redb { path } => file(path),
            RegistryConfig::Postgres(pg) => {
                if let Some(password) = &mut pg.password_file {
                    key(password);
                }
                if let Some(ca) = &mut pg.ca_file {
                    file(ca);
                }
            }
        }
        if let Some(crl) = self.ca.as_mut().and_then(|ca| ca.crl_file.as_mut()) {
            file(crl);
        }
        if let Some(api) = &mut self.enos_api {
            for env in api.environments.values_mut() {
                key(&mut env.credential_file);
                if let Some(ca) = &mut env.ca_file {
                    file(ca);
                }
            }
        }
        match &mut self.custody {
            CustodyConfig::Software { master_key_file } => key(master_key_file),
            CustodyConfig::Pkcs11(hsm) => {
                if let Some(module) = &mut hsm.module {
                    file(module);
                }
                if let Some(enos_custody_pkcs11::PinSource::File(pin)) = &mut hsm.pin {
                    key(pin);
                }
            }
        }
        key(&mut self.audit.key_file);
        match &mut self.audit.sink {
            AuditSinkConfig::File { path } => file(path),
            AuditSinkConfig::Postgres(pg) => {
                if let Some(password) = &mut pg.password_file {
                    key(password);
                }
                if let Some(ca) = &mut pg.ca_file {
                    file(ca);
                }
            }
            AuditSinkConfig::Log => {}
        }
    }

    /// The audit file, when the sink is a file.
    pub fn audit_file(&self) -> Option<&Path> {
        match &self.audit.sink {
            AuditSinkConfig::File { path } => Some(path),
            AuditSinkConfig::Log | AuditSinkConfig::Postgres(_) => None,
        }
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| SignerError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/fixtures/enos-api.toml` parses to the values it shows; what
    /// cannot work is refused with the key named.
    #[test]
    fn enos_api_fixture_parses_and_bad_sections_are_refused() {
        let base = include_str!("../../../deploy/signer.example.toml");
        let fixture = include_str!("../tests/fixtures/enos-api.toml");
        let mut config =
            SignerConfig::from_toml(&format!("{base}\n{fixture}")).expect("the fixture is valid");
        config.resolve_paths(Path::new("/etc/enos-signer"), None);
        let api = config.enos_api.clone().expect("[enos_api]");
        assert_eq!(api.concurrency.get(), 4);
        assert_eq!(api.timeout, Duration::from_secs(5));
        assert_eq!(api.valid_day, 365);
        assert_eq!(
            api.environments["prod"],
            EnosEnvironmentConfig {
                gateway_url: "https://apim-ppe1.envisioniot.com".into(),
                org_id: "o15724268424841".into(),
                credential_file: "/etc/enos-signer/enos-api-prod.sealed".into(),
                ca_file: Some("/etc/enos-signer/apigw-ca.pem".into()),
                products: vec!["gwPk1".into(), "gwPk2".into()],
            }
        );
        assert_eq!(api.environment_of("gwPk2").map(|e| e.0), Some("prod"));
        assert_eq!(api.subject, SubjectTemplate::default());
        assert_eq!(
            api.subject_of("gwPk1").expand("gwPk1", "gw-1")[5].1,
            "gwPk1.gw-1"
        );
        assert_eq!(api.subject_of("gwPk2").expand("gwPk2", "gw-1")[0].1, "DE");
        assert_eq!(api.subject_of("gwPk2").expand("gwPk2", "gw-1")[5].1, "gw-1");
        assert_eq!(api.environment_of("other").map(|e| e.0), Some("edge"));
        // Defaults.
        let minimal = "[enos_api.environments.e]\ngateway_url = \"http://h\"\norg_id = \"o\"\ncredential_file = \"c\"\nproducts = [\"*\"]\n";
        let config =
            SignerConfig::from_toml(&format!("{base}\n[enos_api]\n{minimal}")).expect("minimal");
        let api = config.enos_api.expect("[enos_api]");
        assert_eq!(
            (api.concurrency.get(), api.timeout, api.valid_day),
            (8, Duration::from_secs(15), 730)
        );
        for (bad, needle) in [
            ("[enos_api]\nvalid_day = 4000\n", "valid_day"),
            (
                "[enos_api.subject]\nc = \"CN\"\nst = \"s\"\nl = \"l\"\no = \"o\"\nou = \"u\"\ncn = \"fixed\"\n",
                "{deviceKey}",
            ),
            ("[enos_api]\nenvironments = {}\n", "at least one"),
            ("[enos_api]\nunknown = 1\n", "unknown"),
            (
                "[enos_api.environments.e]\ngateway_url = \"https://h\"\norg_id = \"o\"\ncredential_file = \"c\"\nproducts = [\"*\"]\n",
                "ca_file",
            ),
            (
                "[enos_api.environments.e]\ngateway_url = \"ftp://h\"\norg_id = \"o\"\ncredential_file = \"c\"\nproducts = [\"*\"]\n",
                "https:// or http://",
            ),
            (
                "[enos_api.environments.a]\ngateway_url = \"http://h\"\norg_id = \"o\"\ncredential_file = \"c\"\nproducts = [\"p\"]\n[enos_api.environments.b]\ngateway_url = \"http://h\"\norg_id = \"o\"\ncredential_file = \"d\"\nproducts = [\"p\"]\n",
                "is in environments a and b",
            ),
            (
                "[enos_api.environments.\"x y\"]\ngateway_url = \"http://h\"\norg_id = \"o\"\ncredential_file = \"c\"\nproducts = [\"*\"]\n",
                "environment name",
            ),
        ] {
            let text = if (bad.starts_with("[enos_api]\n") && !bad.contains("environments"))
                || bad.starts_with("[enos_api.subject]")
            {
                format!("{base}\n{bad}{minimal}")
            } else {
                format!("{base}\n{bad}")
            };
            let err = SignerConfig::from_toml(&text).expect_err(bad);
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
    }

    /// The shipped example must parse, and say what it claims.
    #[test]
    fn deploy_example_parses() {
        let text = include_str!("../../../deploy/signer.example.toml");
        let config = SignerConfig::from_toml(text).expect("deploy/signer.example.toml parses");
        assert!(matches!(config.custody, CustodyConfig::Software { .. }));
        assert!(matches!(config.registry, RegistryConfig::Redb { .. }));
        assert!(config.audit.fail_closed);
        assert_eq!(config.policy.ttl, Duration::from_secs(300));
        assert_eq!(
            config.policy.products["ExamplePk"].ttl,
            Some(Duration::from_secs(120))
        );
        assert_eq!(config.server.drain_timeout, Duration::from_secs(10));
        assert_eq!(config.server.tls_reload_interval, Duration::from_secs(5));
        assert!(config.metrics.is_some());
        assert!(config.rate_limit.is_some());
        // The example spells out the defaults of the limits and timeouts.
        assert_eq!(config.server.limits, LimitsConfig::default());
        let metrics = config.metrics.expect("metrics");
        assert_eq!(metrics, MetricsConfig::on(metrics.listen));
        // The CA section spells out its defaults too.
        let ca = config.ca.expect("[ca]");
        assert_eq!(
            ca,
            CaConfig {
                enroll_listen: Some(([0, 0, 0, 0], 7444).into()),
                crl_file: Some("/var/lib/enos-signer/devices.crl".into()),
                ..CaConfig::default()
            }
        );
    }

    #[test]
    fn ca_lifetimes_per_product_and_out_of_range_values_are_refused_by_name() {
        let base = include_str!("../../../deploy/signer.example.toml");
        let base = &base[..base.find("[ca]").expect("[ca]")];
        let with = |ca: &str| SignerConfig::from_toml(&format!("{base}[ca]\n{ca}"));
        let config = with("lifetime = \"7d\"\n[ca.products.PkMeters]\nlifetime = \"12h\"\n")
            .expect("per-product lifetime");
        let ca = config.ca.expect("[ca]");
        assert_eq!(ca.lifetime_of("PkMeters"), Duration::from_secs(12 * 3600));
        assert_eq!(ca.lifetime_of("PkOther"), Duration::from_secs(7 * 86_400));
        for (bad, named) in [
            ("lifetime = \"0s\"", "ca.lifetime"),
            ("lifetime = \"400d\"", "ca.lifetime"),
            (
                "[ca.products.Pk]\nlifetime = \"0s\"",
                "ca.products.Pk.lifetime",
            ),
            ("token_ttl = \"31d\"", "ca.token_ttl"),
            ("crl_validity = \"10s\"", "ca.crl_validity"),
        ] {
            let error = with(bad).expect_err(bad).to_string();
            assert!(error.contains(named), "{bad}: {error}");
        }
        assert!(
            with("lifetime = 30").is_err(),
            "a bare number is not a duration"
        );
    }

    #[test]
    fn limits_and_metrics_timeouts_parse_with_defaults() {
        let base = r#"
            [server]
            listen = "127.0.0.1:7443"
            cert = "server.pem"
            key = "server.key"
            client_ca = "ca.pem"
            LIMITS
            [registry]
            kind = "redb"
            path = "registry.redb"
            [custody]
            kind = "software"
            master_key_file = "master.key"
            [audit]
            key_file = "audit.key"
            [metrics]
            listen = "127.0.0.1:9464"
            METRICS
        "#;
        let parse = |limits: &str, metrics: &str| {
            SignerConfig::from_toml(&base.replace("LIMITS", limits).replace("METRICS", metrics))
        };
        let defaults = parse("", "").expect("defaults");
        assert_eq!(
            defaults.server.limits,
            LimitsConfig {
                max_connections: 10_000,
                max_concurrent_streams: 64,
                max_concurrent_requests: 2_048,
                import_max_bytes: 256 * 1024 * 1024,
                connections_per_ip_per_second: 1_000,
                connection_burst_per_ip: 10_000,
                max_connections_per_ip: 1_000,
                handshake_timeout: Duration::from_secs(5),
                http2_start_timeout: Duration::from_secs(5),
            }
        );
        let metrics = defaults.metrics.expect("metrics");
        assert_eq!(
            (metrics.header_timeout, metrics.connection_lifetime),
            (Duration::from_secs(5), Duration::from_secs(60))
        );
        let set = parse(
            "[server.limits]\nmax_connections = 5\nimport_max_bytes = 1000\nhandshake_timeout = \"1500ms\"",
            "header_timeout = \"2s\"\nconnection_lifetime = \"0s\"",
        )
        .expect("overrides");
        assert_eq!(set.server.limits.max_connections, 5);
        assert_eq!(set.server.limits.import_max_bytes, 1000);
        assert_eq!(
            set.server.limits.handshake_timeout(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            set.server.limits.max_concurrent_streams, 64,
            "the rest default"
        );
        let timeouts = set.metrics.expect("metrics").timeouts();
        assert_eq!(timeouts.header, Duration::from_secs(2));
        assert_eq!(timeouts.lifetime, Duration::from_secs(1), "at least 1 s");
        let mut admins = parse(
            "admin_ca = \"admins.pem\"\nadmin_names = [\"ops\"]\ncrls = [\"c.crl\", \"/abs/a.crl\"]",
            "",
        )
        .expect("admin CA, names, CRLs");
        assert_eq!(defaults.server.admin_ca, None);
        assert!(defaults.server.crls.is_empty() && defaults.server.admin_names.is_empty());
        admins.resolve_paths(Path::new("/etc/enos"), None);
        assert_eq!(
            admins.server.admin_ca.as_deref(),
            Some(Path::new("/etc/enos/admins.pem"))
        );
        assert_eq!(admins.server.admin_names, ["ops"]);
        assert_eq!(
            admins.server.crls,
            [
                PathBuf::from("/etc/enos/c.crl"),
                PathBuf::from("/abs/a.crl")
            ]
        );
        let typo = parse("[server.limits]\nmax_conections = 5", "").expect_err("typo refused");
        assert!(typo.to_string().contains("max_conections"), "{typo}");
    }

    #[test]
    fn minimal_config_gets_defaults_and_unknown_fields_are_refused() {
        let minimal = r#"
            [server]
            listen = "127.0.0.1:7443"
            cert = "server.pem"
            key = "server.key"
            client_ca = "ca.pem"
            [registry]
            kind = "redb"
            path = "registry.redb"
            [custody]
            kind = "software"
            master_key_file = "master.key"
            [audit]
            key_file = "audit.key"
        "#;
        let mut config = SignerConfig::from_toml(minimal).expect("minimal config parses");
        assert_eq!(config.policy, PolicyConfig::default());
        assert_eq!(config.policy.ttl, Duration::from_secs(300));
        assert_eq!(config.server.drain_timeout(), Duration::from_secs(10));
        assert_eq!(
            config.server.tls_reload_interval(),
            Some(Duration::from_secs(5))
        );
        assert!(config.audit.fail_closed);
        assert_eq!(config.audit.sink, AuditSinkConfig::Log);
        assert_eq!(config.rate_limit, None);
        assert_eq!(config.server.worker_threads, None);
        config.resolve_paths(Path::new("/etc/enos"), None);
        assert_eq!(config.server.cert, Path::new("/etc/enos/server.pem"));
        assert_eq!(
            config.custody,
            CustodyConfig::Software {
                master_key_file: "/etc/enos/master.key".into()
            }
        );

        let one_worker = minimal.replace("[registry]", "worker_threads = 1\n[registry]");
        let parsed = SignerConfig::from_toml(&one_worker).expect("worker_threads = 1");
        assert_eq!(parsed.server.worker_threads, NonZeroUsize::new(1));
        let runtime = parsed.server.runtime("config-test").expect("runtime");
        assert_eq!(runtime.metrics().num_workers(), 1);
        let zero = minimal.replace("[registry]", "worker_threads = 0\n[registry]");
        let refused = SignerConfig::from_toml(&zero).expect_err("0 workers refused");
        assert!(refused.to_string().contains("worker_threads"), "{refused}");

        let typo = minimal.replace("fail_closed", "fail_close");
        let typo = format!("{typo}\nfail_close = true\n");
        assert!(SignerConfig::from_toml(&typo).is_err());
    }

    /// #29 item 8: `drain_timeout_secs = 10` and the other `*_secs` /
    /// `*_ms` keys became humantime strings; an old file is refused with
    /// the new key and its value in the new form, and a bare number with
    /// the form.
    #[test]
    fn an_old_duration_key_or_form_names_the_new_one() {
        let example = include_str!("../../../deploy/signer.example.toml");
        let refused = |from: &str, to: &str| {
            assert!(example.contains(from), "{from}");
            SignerConfig::from_toml(&example.replacen(from, to, 1))
                .expect_err(to)
                .to_string()
        };
        for (from, old, named) in [
            (
                "drain_timeout = \"10s\"",
                "drain_timeout_secs = 10",
                "`drain_timeout_secs` was renamed: write `drain_timeout = \"10s\"`",
            ),
            (
                "tls_reload_interval = \"5s\"",
                "tls_reload_interval_secs = 0",
                "`tls_reload_interval_secs` was renamed: write `tls_reload_interval = \"0s\"`",
            ),
            (
                "ttl = \"5m\"",
                "ttl_secs = 300",
                "`ttl_secs` was renamed: write `ttl = \"300s\"`",
            ),
            (
                "handshake_timeout = \"5s\"",
                "handshake_timeout_secs = 5",
                "`handshake_timeout_secs` was renamed: write `handshake_timeout = \"5s\"`",
            ),
            (
                "header_timeout = \"5s\"",
                "header_timeout_secs = 5",
                "`header_timeout_secs` was renamed: write `header_timeout = \"5s\"`",
            ),
        ] {
            let error = refused(from, old);
            assert!(error.contains(named), "{old}: {error}");
        }
        let error = refused("drain_timeout = \"10s\"", "drain_timeout = 10");
        assert!(
            error.contains(
                "`drain_timeout` is a duration with its unit, written as a string: for example `drain_timeout = \"10s\"`"
            ),
            "{error}"
        );
        let error = refused("drain_timeout = \"10s\"", "drain_timeout = \"10 parsecs\"");
        assert!(error.contains("not a duration (unknown unit)"), "{error}");
        // A [custody] of kind pkcs11 too.
        let minimal = "[server]\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n\
            [registry]\nkind = \"redb\"\npath = \"r\"\n[audit]\nkey_file = \"a\"\n\
            [custody]\nkind = \"pkcs11\"\nuri = \"pkcs11:token=t\"\n";
        let error = SignerConfig::from_toml(&format!("{minimal}retry_interval_ms = 250\n"))
            .expect_err("old HSM key")
            .to_string();
        assert!(
            error.contains("write `retry_interval = \"250ms\"`"),
            "{error}"
        );
        let config = SignerConfig::from_toml(&format!("{minimal}retry_interval = \"250ms\"\n"))
            .expect("new HSM key");
        let CustodyConfig::Pkcs11(hsm) = config.custody else {
            panic!("pkcs11")
        };
        assert_eq!(hsm.retry_interval, Some(Duration::from_millis(250)));
        // Loaded from a file: the file named, "configuration:" once (#29
        // item 5 printed `configuration: FILE: configuration: line …`).
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.toml");
        std::fs::write(
            &path,
            example.replacen("drain_timeout = \"10s\"", "drain_timeout_secs = 10", 1),
        )
        .expect("write");
        let error = SignerConfig::load(&path).expect_err("old key").to_string();
        assert!(
            error.starts_with(&format!("configuration: {}: line ", path.display())),
            "{error}"
        );
        assert_eq!(error.matches("configuration").count(), 1, "{error}");
        // What `to_toml` writes reads back the same.
        let config = SignerConfig::from_toml(example).expect("example");
        let again = SignerConfig::from_toml(&config.to_toml().expect("toml")).expect("again");
        assert_eq!(again, config);
    }

    #[test]
    fn key_files_come_from_the_credentials_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("master.key"), "x").expect("write");
        let mut config =
            SignerConfig::from_toml(include_str!("../../../deploy/signer.example.toml"))
                .expect("parses");
        config.resolve_paths(Path::new("/etc/enos"), Some(dir.path()));
        // Present in the credentials directory: taken from there.
        assert_eq!(
            config.custody,
            CustodyConfig::Software {
                master_key_file: dir.path().join("master.key")
            }
        );
        // Absent there: relative to the config file.
        assert_eq!(config.audit.key_file, Path::new("/etc/enos/audit.key"));
    }
}
