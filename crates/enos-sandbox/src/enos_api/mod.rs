//! EnOS's certificate API, played by the sandbox: the API gateway's token
//! method (`/apim-token-service/v2.0/token/get|refresh`, a signature over
//! each call), the Connection Service's `certificates?action=apply|renew|
//! revoke|list`, and the public root and CRL (`/enos/CA/cacert/{RSA|ECC}`,
//! `/enos/CA/crl/{RSA|ECC}`), on an HTTP listener of its own (HTTPS when
//! given a certificate, plain HTTP as the EnOS Edge variant).
//!
//! The certificates come from the sandbox's own "EnOS CA" ([`ca`]), shaped
//! as EnOS's roots and leaves; the MQTTS listener trusts that CA and binds
//! each certificate to the device it was issued for by its serial
//! ([`store::CertStore::check_binding`]), as EnOS does.
//!
//! Where the reference marks EnOS's behaviour unknown, the choice is made
//! here, documented in docs/sandbox.md, and a switch of
//! [`EnosApiSettings`] where a choice could hide a client bug.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`gateway`] | [`gateway::ApiGateway`]: tokens, replay guard, the per-call signature |
//! | [`ca`] | [`ca::EnosCa`]: the roots, a CSR checked by EnOS's rules, the leaf profile, the CRL |
//! | [`store`] | [`store::CertStore`]: issued certificates by serial, persisted, the MQTTS binding |
//! | `http` | the listener and the four actions with EnOS's envelope and codes |

pub mod ca;
pub mod gateway;
mod http;
pub mod store;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

pub(crate) use http::serve;
pub use http::{EnosApi, Reply, parse_query};

/// The default `validDay` of a product, as EnOS's.
pub const DEFAULT_VALID_DAY: u32 = 730;
/// The default `maxValidDay` of a product, as EnOS's.
pub const DEFAULT_MAX_VALID_DAY: u32 = 1095;
/// How long an access token lives, as EnOS's (`expire`: 7200 s).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(7200);
/// How far a signed timestamp may be from the sandbox's clock (EnOS does
/// not document its window).
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// One product's certificate rules (EnOS's product settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductRules {
    /// `validDay` when a request leaves it out.
    pub default_valid_day: u32,
    /// A larger `validDay` is refused (99400).
    pub max_valid_day: u32,
    /// Whether the product has certificate (bi-directional) authentication
    /// on: without it, EnOS refuses every certificate request.
    pub bi_directional_auth: bool,
}

impl Default for ProductRules {
    fn default() -> Self {
        ProductRules {
            default_valid_day: DEFAULT_VALID_DAY,
            max_valid_day: DEFAULT_MAX_VALID_DAY,
            bi_directional_auth: true,
        }
    }
}

/// The certificate API, complete: `[enos_api]` of the config file merged
/// with the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnosApiSettings {
    /// Where the API listens (port 0 picks one).
    pub listen: SocketAddr,
    /// HTTPS with this certificate chain and key; `None`: plain HTTP (the
    /// EnOS Edge variant).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The only `orgId` served; another is refused with 99403.
    pub org_id: String,
    /// The application's AccessKey (`appKey`).
    pub app_key: String,
    /// The file holding its SecretKey (owner-only), never the secret itself.
    pub app_secret_file: PathBuf,
    /// Where the CA and the issued certificates are kept across restarts;
    /// `None`: in memory, a new CA each start.
    pub state_dir: Option<PathBuf>,
    /// An RSA-2048 CA key (PKCS#8 PEM, owner-only) for `issueAuthority`
    /// RSA; `None`: RSA requests are answered 99500 (ring, the sandbox's
    /// crypto, cannot make RSA keys).
    pub rsa_ca_key: Option<PathBuf>,
    /// Accepted distance of a signed timestamp from now.
    pub clock_skew: Duration,
    /// How long an access token lives.
    pub token_lifetime: Duration,
    /// The length of one `validDay`: a day, shortened by tests of renewal.
    pub day: Duration,
    /// Errors carry a matching HTTP status (400/401/403/404/500) besides
    /// the envelope's code; `false` (the default): HTTP 200, as EnOS's
    /// samples imply.
    pub error_http_status: bool,
    /// A renewal also revokes the old certificate (reason SUPERSEDED):
    /// undocumented for EnOS, off by default so a client that forgets to
    /// revoke is seen.
    pub renew_revokes_old: bool,
    /// A CSR's C, ST and O must equal the root's (EnOS 2.1's rule; later
    /// versions are unclear). Off by default.
    pub subject_must_match_root: bool,
    /// While this file exists, certificate calls fail as in an outage:
    /// `unreachable` in it closes the connection unanswered, anything
    /// else answers 99500.
    pub outage_file: Option<PathBuf>,
    /// Rules of products not in `products`.
    pub default_product: ProductRules,
    /// Rules per product key.
    pub products: BTreeMap<String, ProductRules>,
}

impl EnosApiSettings {
    /// The rules of `product_key`.
    pub fn product(&self, product_key: &str) -> ProductRules {
        self.products
            .get(product_key)
            .copied()
            .unwrap_or(self.default_product)
    }
}
