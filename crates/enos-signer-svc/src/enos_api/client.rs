//! [`EnosApiClient`]: one EnOS environment's API gateway, as a client.
//!
//! - **Token.** `POST /apim-token-service/v2.0/token/get` with `appKey`,
//!   `timestamp` (epoch ms, never the same twice: the gateway refuses a
//!   reused one as a replay) and `encryption` = SHA-256 hex of `appKey +
//!   timestamp + appSecret`. The token is kept until a minute before its
//!   `expire`, and fetched again when a call says it expired (1203).
//! - **Each call** carries `apim-accesstoken`, `apim-timestamp` and
//!   `apim-signature` = SHA-256 hex of `accessToken + paramsData +
//!   timestamp + appSecret` (`paramsData`: the query's parameters sorted
//!   by name as `name + value`, then the raw body).
//! - **Answers** are EnOS's envelope `{code, msg, requestId, data}`:
//!   code 0 is success whatever the HTTP status; anything else is
//!   [`SignerError::EnosApi`]. No reply, a timeout or a reply that is not
//!   the envelope is [`SignerError::EnosApiUnreachable`].
//! - **Bounded.** At most `concurrency` calls at once (a semaphore shared
//!   by every environment's client), each within `timeout`.
//! - **Measured.** Each exchange's duration, each call's outcome, the
//!   wait for a permit and the exchanges in flight go to
//!   [`EnosApiMetrics`] (the signer's `/metrics`).
//!
//! Neither the secret nor the token nor a signature ever reaches an
//! error, a log line or a `Debug` print.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::Semaphore};
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::credential::ApiCredential;
use crate::{
    config::EnosEnvironmentConfig,
    error::{Result, SignerError},
    listener::metrics::EnosApiMetrics,
};

/// The certificates path (every EnOS version 2.1 to 3.x).
const CERTIFICATES: &str = "/connect-service/v2.0/certificates";
/// The largest reply read.
const REPLY_LIMIT: usize = 256 * 1024;
/// A token is fetched again this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// `issueAuthority`: which EnOS root signs, from the key's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// RSA-2048 keys.
    Rsa,
    /// P-256 keys.
    Ecc,
}

impl Authority {
    /// `RSA` or `ECC`, as EnOS spells it.
    pub fn name(self) -> &'static str {
        match self {
            Authority::Rsa => "RSA",
            Authority::Ecc => "ECC",
        }
    }
}

/// What apply and renew return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedEnosCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial (`certSN`, decimal).
    pub cert_sn: String,
    /// The EnOS root, PEM.
    pub ca_cert_pem: String,
}

/// One certificate of List.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEnosCert {
    /// `certSN`.
    pub cert_sn: String,
    /// 0 valid, 1 revoked, 2 expired.
    pub status: i64,
    /// `signDate`, unix ms.
    pub sign_ms: i64,
    /// `expireDate`, unix ms.
    pub expire_ms: i64,
    /// `subject`, as EnOS prints it.
    pub subject: String,
}

/// The client of one environment.
pub struct EnosApiClient {
    /// `https://host[:port]` or `http://…`, no trailing slash.
    base: String,
    /// Host and port to connect to.
    authority: String,
    /// The host name the gateway's certificate must carry.
    host: String,
    /// TLS to the gateway, when `https://`.
    tls: Option<TlsConnector>,
    /// `orgId`.
    org_id: String,
    /// The AccessKey, and the sealed SecretKey the custody signs with.
    credential: Arc<ApiCredential>,
    /// The current token and when to stop using it.
    token: Mutex<Option<(Zeroizing<String>, Instant)>>,
    /// The last timestamp used: each one differs.
    last_ms: AtomicU64,
    /// Bounds the calls in flight, shared by all environments.
    permits: Arc<Semaphore>,
    /// One call's deadline.
    timeout: Duration,
    /// Durations, outcomes, queueing and calls in flight, for `/metrics`.
    metrics: EnosApiMetrics,
}

impl std::fmt::Debug for EnosApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnosApiClient")
            .field("base", &self.base)
            .field("org_id", &self.org_id)
            .field("access_key", &self.credential.access_key)
            .finish_non_exhaustive()
    }
}

/// `paramsData`: sorted `name + value` of the query, then the body.
fn params_data(query: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut pairs: Vec<&(&str, String)> = query.iter().collect();
    pairs.sort();
    let mut data = Vec::new();
    for (name, value) in pairs {
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(value.as_bytes());
    }
    data.extend_from_slice(body);
    data
}

/// Percent-encodes a query value (unreserved characters stay).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl EnosApiClient {
    /// A client of `environment` signing with `credential`; `permits`
    /// bounds the calls in flight (share one semaphore between clients).
    pub fn new(
        environment: &EnosEnvironmentConfig,
        credential: ApiCredential,
        permits: Arc<Semaphore>,
        timeout: Duration,
    ) -> Result<Self> {
        let url = environment.gateway_url.trim_end_matches('/');
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(SignerError::Config(format!(
                "enos_api gateway_url {url:?} must start with https:// or http://"
            )));
        };
        if rest.is_empty() || rest.contains('/') {
            return Err(SignerError::Config(format!(
                "enos_api gateway_url {url:?} must be scheme://host[:port] with no path"
            )));
        }
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| SignerError::Config(format!("enos_api gateway_url {url:?}: {e}")))?;
        let host = uri
            .host()
            .ok_or_else(|| {
                SignerError::Config(format!("enos_api gateway_url {url:?} has no host"))
            })?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if https {
            let path = environment.ca_file.as_ref().ok_or_else(|| {
                SignerError::Config("an https:// EnOS gateway needs ca_file".into())
            })?;
            let pem = std::fs::read(path).map_err(|cause| SignerError::Io {
                action: "reading",
                path: path.clone(),
                cause,
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| SignerError::Config(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| SignerError::Config(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(SignerError::Config(format!(
                    "{}: holds no PEM certificate",
                    path.display()
                )));
            }
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| SignerError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(EnosApiClient {
            base: url.to_owned(),
            authority,
            host,
            tls,
            org_id: environment.org_id.clone(),
            credential: Arc::new(credential),
            token: Mutex::new(None),
            last_ms: AtomicU64::new(0),
            permits,
            timeout,
            metrics: EnosApiMetrics::default(),
        })
    }

    /// Counts this client's calls in `metrics` (the serving signer's
    /// series) instead of series of its own.
    pub fn with_metrics(mut self, metrics: EnosApiMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts a finished call of `operation` by its outcome.
    fn count<T>(&self, operation: &'static str, result: &Result<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(SignerError::EnosApi { .. }) => "refused",
            Err(_) => "unreachable",
        };
        self.metrics.called(operation, outcome);
    }

    /// Now in epoch ms, never the same twice in this client.
    fn timestamp(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut last = self.last_ms.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self
                .last_ms
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// One HTTP exchange of `operation`: status and body.
    async fn exchange(
        &self,
        operation: &'static str,
        request: Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes)> {
        let unreachable = |what: &str, e: &dyn std::fmt::Display| {
            SignerError::EnosApiUnreachable(format!("{} ({what}): {e}", self.base))
        };
        let queued = Instant::now();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| unreachable("queue", &e))?;
        let started = Instant::now();
        self.metrics.queued(started - queued);
        let _in_flight = self.metrics.exchange_started();
        let call = async {
            let tcp = TcpStream::connect(&self.authority)
                .await
                .map_err(|e| unreachable("connect", &e))?;
            let _ = tcp.set_nodelay(true);
            let response = match &self.tls {
                Some(tls) => {
                    let name = ServerName::try_from(self.host.clone())
                        .map_err(|e| unreachable("host name", &e))?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|e| unreachable("TLS", &e))?;
                    send(TokioIo::new(stream), request).await
                }
                None => send(TokioIo::new(tcp), request).await,
            }
            .map_err(|e| unreachable("HTTP", &e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), REPLY_LIMIT)
                .collect()
                .await
                .map_err(|e| unreachable("reply", &e))?
                .to_bytes();
            Ok((status, body))
        };
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unreachable("timeout", &format!("no reply within {:?}", self.timeout)))?;
        self.metrics.exchanged(operation, started.elapsed());
        result
    }

    /// The current token, fetched when there is none or it is about to
    /// expire.
    async fn token(&self, fresh: bool) -> Result<Zeroizing<String>> {
        if !fresh {
            let held = self.token.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((token, until)) = held.as_ref()
                && *until > Instant::now()
            {
                return Ok(token.clone());
            }
        }
        let fetched = self.fetch_token().await;
        self.count("token", &fetched);
        fetched
    }

    /// `token/get`: a new token, kept until shortly before it expires.
    async fn fetch_token(&self) -> Result<Zeroizing<String>> {
        let ts = self.timestamp().to_string();
        let key = &self.credential.access_key;
        let encryption = self
            .credential
            .signature([key.as_bytes(), ts.as_bytes()].concat())
            .await?;
        let body = json!({"appKey": key, "encryption": encryption, "timestamp": ts.parse::<u64>().unwrap_or(0)})
            .to_string();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/apim-token-service/v2.0/token/get", self.base))
            .header("host", &self.authority)
            .header("content-type", "application/json;charset=UTF-8")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SignerError::EnosApiUnreachable(e.to_string()))?;
        let (_, reply) = self.exchange("token", request).await?;
        let reply: Value = serde_json::from_slice(&reply).map_err(|_| {
            SignerError::EnosApiUnreachable(format!(
                "{}: the token service's reply is not JSON",
                self.base
            ))
        })?;
        let status = reply
            .get("status")
            .or_else(|| reply.get("stauts"))
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        if status != 0 {
            return Err(SignerError::EnosApi {
                code: status,
                message: format!(
                    "token: {}",
                    reply
                        .get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or("no message")
                ),
            });
        }
        let token = reply["data"]["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                SignerError::EnosApiUnreachable(format!(
                    "{}: the token reply has no accessToken",
                    self.base
                ))
            })?;
        let expire = reply["data"]["expire"].as_u64().unwrap_or(7200);
        let until = Instant::now() + Duration::from_secs(expire).saturating_sub(TOKEN_MARGIN);
        let token = Zeroizing::new(token.to_owned());
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some((token.clone(), until));
        Ok(token)
    }

    /// A signed certificates call of `action` for `pk/dk`; `data` of the
    /// envelope on success. A token the gateway calls expired is fetched
    /// again once. Each attempt is counted by its outcome.
    async fn call(
        &self,
        action: &'static str,
        pk: &str,
        dk: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let query = [
            ("action", action.to_owned()),
            ("orgId", self.org_id.clone()),
            ("productKey", pk.to_owned()),
            ("deviceKey", dk.to_owned()),
        ];
        let target = format!(
            "{}{CERTIFICATES}?{}",
            self.base,
            query
                .iter()
                .map(|(n, v)| format!("{n}={}", encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        );
        let data = params_data(&query, body.as_bytes());
        let mut fresh = false;
        loop {
            let token = self.token(fresh).await?;
            let result = self.attempt(action, &target, &data, &body, &token).await;
            self.count(action, &result);
            match result {
                Err(SignerError::EnosApi { code: 1203, .. }) if !fresh => fresh = true,
                other => return other,
            }
        }
    }

    /// One signed request of `action` to `target` with `token`.
    async fn attempt(
        &self,
        action: &'static str,
        target: &str,
        data: &[u8],
        body: &str,
        token: &str,
    ) -> Result<Value> {
        let ts = self.timestamp().to_string();
        let signature = self
            .credential
            .signature([token.as_bytes(), data, ts.as_bytes()].concat())
            .await?;
        let method = if action == "list" {
            Method::GET
        } else {
            Method::POST
        };
        let request = Request::builder()
            .method(method)
            .uri(target)
            .header("host", &self.authority)
            .header("content-type", "application/json;charset=UTF-8")
            .header("apim-accesstoken", token)
            .header("apim-timestamp", &ts)
            .header("apim-signature", signature)
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| SignerError::EnosApiUnreachable(e.to_string()))?;
        let (status, reply) = self.exchange(action, request).await?;
        let reply: Value = serde_json::from_slice(&reply).map_err(|_| {
            SignerError::EnosApiUnreachable(format!(
                "{}: HTTP {status} with a reply that is not EnOS's envelope",
                self.base
            ))
        })?;
        let code = reply.get("code").and_then(Value::as_i64).ok_or_else(|| {
            SignerError::EnosApiUnreachable(format!(
                "{}: HTTP {status} with a reply that has no code",
                self.base
            ))
        })?;
        if code != 0 {
            return Err(SignerError::EnosApi {
                code,
                message: reply
                    .get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
                    .chars()
                    .take(500)
                    .collect(),
            });
        }
        Ok(reply.get("data").cloned().unwrap_or(Value::Null))
    }

    fn issued(data: &Value) -> Result<IssuedEnosCert> {
        let text = |name: &str| data.get(name).and_then(Value::as_str).map(str::to_owned);
        // The doc tables say certSn, every sample certSN: take both.
        let cert_sn = data
            .get("certSN")
            .or_else(|| data.get("certSn"))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        match (text("cert"), cert_sn) {
            (Some(cert_pem), Some(cert_sn)) if cert_sn.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(IssuedEnosCert {
                    cert_pem,
                    cert_sn,
                    ca_cert_pem: text("caCert").unwrap_or_default(),
                })
            }
            _ => Err(SignerError::EnosApiUnreachable(
                "the apply/renew reply has no cert or no decimal certSN".into(),
            )),
        }
    }

    /// Gets an access token (a new one): proves the credential, the URL
    /// and the gateway's certificate.
    pub async fn check_token(&self) -> Result<()> {
        self.token(true).await.map(drop)
    }

    /// `action=apply`.
    pub async fn apply(
        &self,
        pk: &str,
        dk: &str,
        csr_pem: &str,
        valid_day: u32,
        authority: Authority,
    ) -> Result<IssuedEnosCert> {
        let body =
            json!({"csr": csr_pem, "validDay": valid_day, "issueAuthority": authority.name()});
        Self::issued(&self.call("apply", pk, dk, Some(body)).await?)
    }

    /// `action=renew` of `cert_sn` with a new CSR.
    pub async fn renew(
        &self,
        pk: &str,
        dk: &str,
        cert_sn: &str,
        csr_pem: &str,
        valid_day: u32,
        authority: Authority,
    ) -> Result<IssuedEnosCert> {
        let sn = parse_sn(cert_sn)?;
        let body = json!({"certSn": sn, "csr": csr_pem, "validDay": valid_day, "issueAuthority": authority.name()});
        Self::issued(&self.call("renew", pk, dk, Some(body)).await?)
    }

    /// `action=revoke` of `cert_sn` with RFC 5280 `reason`.
    pub async fn revoke(&self, pk: &str, dk: &str, cert_sn: &str, reason: u8) -> Result<()> {
        let sn = parse_sn(cert_sn)?;
        self.call(
            "revoke",
            pk,
            dk,
            Some(json!({"certSn": sn, "reason": reason})),
        )
        .await
        .map(drop)
    }

    /// `action=list`.
    pub async fn list(&self, pk: &str, dk: &str) -> Result<Vec<ListedEnosCert>> {
        let data = self.call("list", pk, dk, None).await?;
        let entries = data.as_array().cloned().unwrap_or_default();
        Ok(entries
            .iter()
            .map(|e| ListedEnosCert {
                cert_sn: match e.get("certSN").or_else(|| e.get("certSn")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                },
                status: e.get("certStatus").and_then(Value::as_i64).unwrap_or(-1),
                sign_ms: e.get("signDate").and_then(Value::as_i64).unwrap_or(0),
                expire_ms: e.get("expireDate").and_then(Value::as_i64).unwrap_or(0),
                subject: e
                    .get("subject")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect())
    }
}

fn parse_sn(cert_sn: &str) -> Result<u64> {
    cert_sn.parse().map_err(|_| {
        SignerError::invalid("cert_sn", format!("{cert_sn:?} is not a decimal serial"))
    })
}

/// Sends `request` on a new HTTP/1.1 connection over `io`.
async fn send<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> std::result::Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // The request line carries the path and query only.
    let (mut parts, body) = request.into_parts();
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = pq.as_str().parse().unwrap_or(parts.uri);
    }
    sender.send_request(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn sha256_hex(parts: &[&[u8]]) -> String {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// EnOS's documented known answer.
    #[test]
    fn signs_the_documented_example() {
        let query = [
            ("k3", "v3".to_owned()),
            ("k1", "v1".to_owned()),
            ("k2", "v2".to_owned()),
        ];
        let body = "{\n  \"count\": 20,\n  \"page\": 1,\n  \"desc\": \"描述\"\n}";
        let data = params_data(&query, body.as_bytes());
        assert_eq!(
            sha256_hex(&[b"xxxxaaaxxxx", &data, b"1572574909697", b"xxxappSecretxxx"]),
            "59828328f6c1f9771015dc74e4929ae30f518a35a3d2353972c2ea46556fc981"
        );
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
