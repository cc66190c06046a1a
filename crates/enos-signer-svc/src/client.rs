//! [`mtls_endpoint`] / [`connect_mtls`] for clients (admin CLI, agent,
//! tests). The server's material lives in [`crate::listener::tls_reload`].
//!
//! One crypto provider, ring, is used everywhere.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Result, SignerError};

/// An mTLS endpoint for the signer at `uri` (`https://host:port`),
/// trusting `ca_pem` and presenting `identity` (none: the signer refuses
/// the handshake, so nothing answers). Call `.connect()` or
/// `.connect_lazy()` on it.
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
