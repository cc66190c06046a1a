//! [`SignerChannels`]: the signer's mTLS channels, created when a call
//! needs them, closed once idle, and rebuilt when the CA, certificate or
//! key files change.
//!
//! The agent calls the signer once per connect (and per sub-device login
//! after it), minutes or hours apart. An HTTP/2 connection kept open in
//! between holds its TLS session and buffers for nothing, so a call opens
//! the channels and they stay open only [`KEEP_OPEN`] after the last call:
//! long enough that a connect's sub-device logins share the connection
//! with its credential, short enough that a connected agent holds none.
//!
//! Device certificates from cert-manager or SPIRE are renewed long before
//! they expire; the agent must present the renewed one without a restart.
//! Before every call, [`SignerChannels::current`] re-reads the three small
//! files. When they changed and form a usable identity, new channels are
//! built, so that call connects with the new certificate; the old
//! connection closes once its in-flight calls are done. Broken new files
//! are refused with a log line and the material of the last good files
//! stays in use.

use std::{
    path::Path,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::{config::SignerClientConfig, error::AgentError};

/// How long the channels stay open after the last call that used them.
pub(crate) const KEEP_OPEN: Duration = Duration::from_secs(2);

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

/// Open channels, one per endpoint, built from one [`Material`].
pub(crate) struct Built {
    /// `(url, channel)` per endpoint, in config order.
    pub(crate) endpoints: Vec<(String, Channel)>,
    /// The material generation they were built from: a newer one is
    /// never served by older channels.
    generation: u64,
}

/// The last good material and what follows from it.
struct State {
    /// What the endpoints were configured from, to notice a change.
    material: Material,
    /// Counts material changes; [`Built::generation`] refers to it.
    generation: u64,
    /// `(url, endpoint)` per endpoint: TLS and timeouts set, not connected.
    endpoints: Vec<(String, Endpoint)>,
    /// The channels while a call or [`KEEP_OPEN`] holds them.
    open: Weak<Built>,
}

/// The signer channels, following the mTLS files.
pub(crate) struct SignerChannels {
    /// Endpoints, file paths and timeouts.
    config: SignerClientConfig,
    /// Material, endpoints and the open channels, if any.
    state: Mutex<State>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|source| AgentError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

impl Material {
    fn read(config: &SignerClientConfig) -> Result<Self, AgentError> {
        let material = Material {
            ca: read_pem(&config.ca)?,
            cert: read_pem(&config.cert)?,
            key: crate::tls::read_private_key(&config.key)?,
        };
        crate::tls::check_pem_certs(&config.ca, &material.ca)?;
        crate::tls::check_pem_certs(&config.cert, &material.cert)?;
        crate::tls::check_pem_key(&config.key, &material.key)?;
        crate::tls::check_key_fits(&config.cert, &material.cert, &config.key, &material.key)?;
        Ok(material)
    }
}

fn endpoints(
    config: &SignerClientConfig,
    material: &Material,
) -> Result<Vec<(String, Endpoint)>, AgentError> {
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
        endpoints.push((url.clone(), endpoint));
    }
    Ok(endpoints)
}

/// Holds `built` open for [`KEEP_OPEN`] (outside a runtime, only as long
/// as the caller does).
fn keep_open(built: Arc<Built>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            tokio::time::sleep(KEEP_OPEN).await;
            drop(built);
        });
    }
}

impl SignerChannels {
    /// Reads and checks the mTLS material and configures (without
    /// connecting) each endpoint.
    pub(crate) fn new(config: &SignerClientConfig) -> Result<Self, AgentError> {
        let material = Material::read(config)?;
        let endpoints = endpoints(config, &material)?;
        Ok(SignerChannels {
            config: config.clone(),
            state: Mutex::new(State {
                material,
                generation: 0,
                endpoints,
                open: Weak::new(),
            }),
        })
    }

    /// The endpoint URLs, in config order (reads no file).
    pub(crate) fn urls(&self) -> impl Iterator<Item = &str> {
        self.config.endpoints.iter().map(String::as_str)
    }

    /// The channels to call with: the open ones, or new ones (connecting
    /// on first use), from new material first when the files changed and
    /// are usable.
    pub(crate) fn current(&self) -> Arc<Built> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match Material::read(&self.config) {
            Ok(material) if material == state.material => {}
            Ok(material) => match endpoints(&self.config, &material) {
                Ok(endpoints) => {
                    tracing::info!(
                        "signer mTLS files changed; the next connection uses the new certificate"
                    );
                    state.material = material;
                    state.endpoints = endpoints;
                    state.generation += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "signer mTLS files unusable; keeping the previous certificate");
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "signer mTLS files unusable; keeping the previous certificate");
            }
        }
        let built = match state.open.upgrade() {
            Some(open) if open.generation == state.generation => open,
            _ => {
                let built = Arc::new(Built {
                    endpoints: state
                        .endpoints
                        .iter()
                        .map(|(url, endpoint)| (url.clone(), endpoint.connect_lazy()))
                        .collect(),
                    generation: state.generation,
                });
                state.open = Arc::downgrade(&built);
                built
            }
        };
        keep_open(Arc::clone(&built));
        built
    }
}

#[cfg(test)]
mod tests {
    use enos_testkit::Pki;

    use super::*;

    fn config(dir: &Path, pki: &Pki, device: &str) -> SignerClientConfig {
        let files = pki
            .device("pkCh", device)
            .expect("device cert")
            .write(dir, "device")
            .expect("write cert");
        SignerClientConfig {
            // Never connected to: the channels are only built.
            endpoints: vec!["https://127.0.0.1:9".into()],
            ca: pki.write_ca(dir).expect("ca"),
            cert: files.cert,
            key: files.key,
            tls_server_name: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_share_the_channels_until_idle_then_they_close() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("channels-ca").expect("pki");
        let channels = SignerChannels::new(&config(dir.path(), &pki, "dev1")).expect("channels");

        let first = channels.current();
        let open = Arc::downgrade(&first);
        drop(first);
        tokio::time::sleep(KEEP_OPEN / 2).await;
        let second = channels.current();
        assert!(
            Arc::ptr_eq(&second, &open.upgrade().expect("still open")),
            "a call within KEEP_OPEN of the last one shares its channels"
        );
        drop(second);

        tokio::time::sleep(KEEP_OPEN + Duration::from_millis(1)).await;
        assert!(
            open.upgrade().is_none(),
            "idle for KEEP_OPEN: the channels are closed"
        );
        let third = channels.current();
        assert_eq!(third.endpoints.len(), 1, "the next call opens them again");
    }

    #[tokio::test(start_paused = true)]
    async fn changed_files_get_new_channels_at_once() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("channels-ca").expect("pki");
        let channels = SignerChannels::new(&config(dir.path(), &pki, "dev1")).expect("channels");
        let before = channels.current();

        // The renewed certificate, written over the old files.
        config(dir.path(), &pki, "dev2");
        let after = channels.current();
        assert!(
            !Arc::ptr_eq(&before, &after),
            "open channels of the old certificate are not reused"
        );
        assert!(Arc::ptr_eq(&after, &channels.current()));

        // Broken files: the last good material stays in use.
        std::fs::write(&channels.config.cert, "not a certificate").expect("break");
        assert!(Arc::ptr_eq(&after, &channels.current()));
    }
}
