//! rustls client configs for the suite's own MQTT clients (ring only).

use std::sync::Arc;

use enos_testkit::Identity;
use rustls::{ClientConfig, RootCertStore};

use crate::error::{E2eError, Result};

/// A client config trusting `ca_pem`, presenting `identity` if given.
pub fn client_config(ca_pem: &str, identity: Option<&Identity>) -> Result<Arc<ClientConfig>> {
    let bad = |what: &str, e: &dyn std::fmt::Display| E2eError::failed(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| bad("CA PEM", &e))?;
        roots.add(cert).map_err(|e| bad("CA certificate", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = rustls_pemfile::certs(&mut id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate PEM", &e))?;
            let key = rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
                .map_err(|_| E2eError::failed("the client key PEM is malformed"))?
                .ok_or_else(|| E2eError::failed("no client key in the PEM"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", &e))?
        }
    };
    Ok(Arc::new(config))
}
