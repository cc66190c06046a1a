//! TLS material: the server's identity and client CA for both listeners,
//! and [`mtls_endpoint`] / [`connect_mtls`] for clients (admin CLI, agent,
//! tests).
//!
//! One crypto provider, ring, is used everywhere.

use std::{path::Path, sync::Arc, time::Duration};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

use crate::{
    config::ServerConfig,
    error::{Result, SignerError},
    key_file,
};

/// The server's certificate, key and client CA as PEM, read once.
pub struct ServerTlsMaterial {
    /// Server certificate chain.
    cert_pem: String,
    /// Server private key (never logged).
    key_pem: zeroize::Zeroizing<String>,
    /// The CA of device and admin client certificates.
    client_ca_pem: String,
}

fn read(path: &Path, action: &'static str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| SignerError::Io {
        action,
        path: path.to_owned(),
        source,
    })
}

impl ServerTlsMaterial {
    /// Reads the files named by the config; the key must be mode 0600.
    pub fn load(config: &ServerConfig) -> Result<Self> {
        key_file::check_permissions(&config.key)?;
        Ok(ServerTlsMaterial {
            cert_pem: read(&config.cert, "reading server certificate")?,
            key_pem: zeroize::Zeroizing::new(read(&config.key, "reading server key")?),
            client_ca_pem: read(&config.client_ca, "reading client CA")?,
        })
    }

    /// The gRPC listener's TLS: the client certificate is optional in the
    /// handshake so that a call without one reaches the service and gets
    /// Unauthenticated (health checks need none); a certificate that is
    /// presented must chain to the client CA or the handshake fails.
    pub fn grpc(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, self.key_pem.as_bytes()))
            .client_ca_root(Certificate::from_pem(&self.client_ca_pem))
            .client_auth_optional(true)
            .timeout(Duration::from_secs(10))
    }

    /// The metrics listener's TLS: a client certificate of the client CA
    /// is required.
    pub fn metrics(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.client_ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| SignerError::Tls(format!("client CA: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| SignerError::Tls(format!("client CA: {e}")))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| SignerError::Tls(format!("client verifier: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SignerError::Tls(format!("server certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| SignerError::Tls("server key: not a PEM private key".into()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SignerError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| SignerError::Tls(format!("server certificate/key: {e}")))?;
        Ok(Arc::new(config))
    }
}

/// An mTLS endpoint for the signer at `uri` (`https://host:port`),
/// trusting `ca_pem` and presenting `identity` (none: only health and
/// reflection will answer). Call `.connect()` or `.connect_lazy()` on it.
pub fn mtls_endpoint(uri: &str, ca_pem: &str, identity: Option<Identity>) -> Result<Endpoint> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(|e| SignerError::Config(format!("endpoint {uri:?}: {e}")))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

/// Connects an mTLS channel to the signer (see [`mtls_endpoint`]).
pub async fn connect_mtls(uri: &str, ca_pem: &str, identity: Option<Identity>) -> Result<Channel> {
    Ok(mtls_endpoint(uri, ca_pem, identity)?.connect().await?)
}
