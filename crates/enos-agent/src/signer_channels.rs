//! [`SignerChannels`]: one lazily connected mTLS channel per signer
//! endpoint, rebuilt when the CA, certificate or key files change.
//!
//! Device certificates from cert-manager or SPIRE are renewed long before
//! they expire; the agent must present the renewed one without a restart.
//! Before every call, [`SignerChannels::current`] re-reads the three small
//! files (calls are minutes apart). When they changed and form a usable
//! identity, new channels are built, so that call connects with the new
//! certificate; the old connection closes once its in-flight calls are
//! done. Broken new files are refused with a log line and the channels of
//! the last good material stay in use.
//!
//! The channels are lazy (`connect_lazy`: nothing connects before the
//! first call) and then stay open. Closing them between calls was measured
//! (`cargo bench -p enos-agent --bench rss`): 0.02 MiB less RSS, within the
//! run-to-run noise, while every reconnect (all agents at once after a
//! broker restart) would pay a new mTLS handshake with the signer.

//!
//! The TLS is the agent's own ([`MtlsConnector`]), not tonic's: tonic
//! takes the client key as PEM only, and a key in a PKCS#11 token (a
//! `pkcs11:` `[signer] key`) has no PEM. One path serves both kinds.

use std::{
    future::Future,
    io,
    path::Path,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

use crate::{
    config::SignerClientConfig,
    device_key::{self, KeyLocation},
    error::AgentError,
};

/// The mTLS files' contents, as read.
#[derive(PartialEq, Eq)]
struct Material {
    /// The CA bundle of the signer's server certificate.
    ca: Vec<u8>,
    /// The device certificate chain.
    cert: Vec<u8>,
    /// The device key file; wiped on drop. `None` for a token key: the
    /// certificate names the token's pair (a new certificate is a new key).
    key: Option<Zeroizing<Vec<u8>>>,
}

/// Channels built from one [`Material`].
pub(crate) struct Built {
    /// What they were built from, to notice a change.
    material: Material,
    /// `(url, channel)` per endpoint, in config order.
    pub(crate) endpoints: Vec<(String, Channel)>,
}

/// The signer channels, following the mTLS files.
pub(crate) struct SignerChannels {
    /// Endpoints, file paths and timeouts.
    config: SignerClientConfig,
    /// The channels of the last good material.
    current: RwLock<Arc<Built>>,
}

/// Reads the file of config key `key` (`signer.ca`, …); the error names
/// the key and the path.
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|cause| AgentError::ConfigFile {
        key,
        path: path.to_owned(),
        cause,
    })
}

impl Material {
    fn read(config: &SignerClientConfig) -> Result<Self, AgentError> {
        let ca = read_pem("signer.ca", &config.ca)?;
        let cert = read_pem("signer.cert", &config.cert)?;
        let key = match &config.key {
            KeyLocation::File(path) => Some(crate::tls::read_private_key(path)?),
            KeyLocation::Token(_) => None,
        };
        let material = Material { ca, cert, key };
        crate::tls::check_pem_certs(&config.ca, &material.ca)?;
        crate::tls::check_pem_certs(&config.cert, &material.cert)?;
        if let (KeyLocation::File(path), Some(key)) = (&config.key, &material.key) {
            crate::tls::check_pem_key(path, key)?;
            crate::tls::check_key_fits(&config.cert, &material.cert, path, key)?;
        }
        Ok(material)
    }
}

/// The rustls client config: the signer's CA only, the device
/// certificate with its key (file or token), ALPN h2 as gRPC needs.
pub(crate) fn client_tls(
    config: &SignerClientConfig,
    ca: &[u8],
    cert: &[u8],
    key_pem: Option<&[u8]>,
) -> Result<Arc<ClientConfig>, AgentError> {
    let roots = crate::tls::root_store(&config.ca, ca)?;
    let chain = crate::tls::parse_certs(&config.cert, cert)?;
    let certified = device_key::certified_key(&config.key, &config.cert, chain, key_pem)?;
    let mut tls = crate::tls::client_config_with(roots, certified, &config.ca)?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(tls))
}

/// Connects TCP, then TLS with the device certificate, within the
/// connect timeout; refuses a server that does not agree on HTTP/2.
#[derive(Clone)]
struct MtlsConnector {
    /// The client config of the current material.
    tls: Arc<ClientConfig>,
    /// `signer.tls_server_name`, else the URL's host.
    server_name: Option<ServerName<'static>>,
    /// Bounds the TLS handshake (tonic bounds the whole connect too).
    handshake_timeout: Duration,
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
            let host = uri
                .host()
                .ok_or_else(|| invalid("the signer URL has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = match this.server_name {
                Some(name) => name,
                None => ServerName::try_from(host.clone())
                    .map_err(|_| invalid("the signer URL's host is not a valid TLS server name"))?,
            };
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let handshake = TlsConnector::from(this.tls).connect(name, tcp);
            let tls = tokio::time::timeout(this.handshake_timeout, handshake)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake timed out")
                })??;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server did not agree on HTTP/2 (ALPN h2): is this the signer's gRPC port?",
                ));
            }
            Ok(TokioIo::new(tls))
        })
    }
}

/// `https://host[:port]/…` as tonic's endpoint: `http://host:port`, since
/// the connector, not tonic, does the TLS (tonic refuses an `https` URL
/// it has no TLS config for). The port is made explicit first.
fn plain_endpoint_uri(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let authority = uri.authority()?;
    let port = uri.port_u16().unwrap_or(443);
    Some(format!("http://{}:{port}", authority.host()))
}

fn build(config: &SignerClientConfig, material: Material) -> Result<Built, AgentError> {
    let tls = client_tls(
        config,
        &material.ca,
        &material.cert,
        material.key.as_deref().map(Vec::as_slice),
    )?;
    let server_name = match &config.tls_server_name {
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
            AgentError::config(
                "signer.tls_server_name",
                format!("{name:?} is not a DNS name"),
            )
        })?),
        None => None,
    };
    let connector = MtlsConnector {
        tls,
        server_name,
        handshake_timeout: config.connect_timeout,
    };
    let mut endpoints = Vec::with_capacity(config.endpoints.len());
    for (i, url) in config.endpoints.iter().enumerate() {
        let invalid = |reason: String| AgentError::config(format!("signer.endpoints[{i}]"), reason);
        let plain = plain_endpoint_uri(url)
            .ok_or_else(|| invalid(format!("{url:?} is not a valid URL")))?;
        let endpoint = Endpoint::from_shared(plain)
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
        endpoints.push((
            url.clone(),
            endpoint.connect_with_connector_lazy(connector.clone()),
        ));
    }
    Ok(Built {
        material,
        endpoints,
    })
}

impl SignerChannels {
    /// Reads the mTLS material and prepares (without connecting) a channel
    /// per endpoint.
    pub(crate) fn new(config: &SignerClientConfig) -> Result<Self, AgentError> {
        let built = build(config, Material::read(config)?)?;
        Ok(SignerChannels {
            config: config.clone(),
            current: RwLock::new(Arc::new(built)),
        })
    }

    /// The endpoint URLs, in config order (reads no file).
    pub(crate) fn urls(&self) -> impl Iterator<Item = &str> {
        self.config.endpoints.iter().map(String::as_str)
    }

    /// The channels to call with: rebuilt first when the files changed
    /// and are usable.
    pub(crate) fn current(&self) -> Arc<Built> {
        let current = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        let material = match Material::read(&self.config) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "signer mTLS files unusable; keeping the previous certificate");
                return current;
            }
        };
        if material == current.material {
            return current;
        }
        match build(&self.config, material) {
            Ok(built) => {
                tracing::info!(
                    "signer mTLS files changed; the next connection uses the new certificate"
                );
                let built = Arc::new(built);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&built);
                built
            }
            Err(e) => {
                tracing::error!(error = %e, "signer mTLS files unusable; keeping the previous certificate");
                current
            }
        }
    }
}
