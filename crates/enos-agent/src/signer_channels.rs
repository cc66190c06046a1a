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

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::{config::SignerClientConfig, error::AgentError};

/// The mTLS files' contents, as read.
#[derive(PartialEq, Eq)]
struct Material {
    /// The CA bundle of the signer's server certificate.
    ca: Vec<u8>,
    /// The device certificate chain.
    cert: Vec<u8>,
    /// The device key; wiped on drop.
    key: Zeroizing<Vec<u8>>,
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
        let material = Material {
            ca: read_pem("signer.ca", &config.ca)?,
            cert: read_pem("signer.cert", &config.cert)?,
            key: crate::tls::read_private_key(&config.key)?,
        };
        crate::tls::check_pem_certs(&config.ca, &material.ca)?;
        crate::tls::check_pem_certs(&config.cert, &material.cert)?;
        crate::tls::check_pem_key(&config.key, &material.key)?;
        crate::tls::check_key_fits(&config.cert, &material.cert, &config.key, &material.key)?;
        Ok(material)
    }
}

fn build(config: &SignerClientConfig, material: Material) -> Result<Built, AgentError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&material.ca))
        .identity(Identity::from_pem(&material.cert, &*material.key))
        .timeout(config.connect_timeout);
    if let Some(name) = &config.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    let mut endpoints = Vec::with_capacity(config.endpoints.len());
    for (i, url) in config.endpoints.iter().enumerate() {
        let endpoint = Endpoint::from_shared(url.clone())
            .and_then(|e| e.tls_config(tls.clone()))
            .map_err(|e| AgentError::config(format!("signer.endpoints[{i}]"), e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
        endpoints.push((url.clone(), endpoint.connect_lazy()));
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
