//! TLS set-up: the one crypto provider (ring) and the rustls client config
//! for two-way TLS to the EnOS broker.

use std::{path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};

use crate::{
    config::MqttTlsConfig,
    device_key::{ClientCertificate, KeyLocation, certified_key},
    error::AgentError,
};

/// Installs ring as the process-wide rustls provider. Idempotent; call it
/// before any TLS is set up (rustls panics when it has to choose between
/// two linked providers, and only ring is linked here).
pub fn install_crypto_provider() {
    // Err means a provider is already installed: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn tls_error(path: &Path, reason: impl Into<String>) -> AgentError {
    AgentError::Tls {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|source| AgentError::ReadFile {
        path: path.to_owned(),
        cause: source,
    })
}

/// Reads a private key file, refusing one that group or others may read
/// (the workspace's one rule, [`enos_domain::private_file::read`]: one
/// open, the mode checked on that handle, read from it).
pub(crate) fn read_private_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, AgentError> {
    enos_domain::private_file::read(path).map_err(|e| tls_error(path, e.to_string()))
}

pub(crate) fn parse_certs(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Fails unless `pem` holds at least one certificate.
pub(crate) fn check_pem_certs(path: &Path, pem: &[u8]) -> Result<(), AgentError> {
    parse_certs(path, pem).map(|_| ())
}

/// Fails unless `pem` holds a private key. The error never shows the key.
pub(crate) fn check_pem_key(path: &Path, pem: &[u8]) -> Result<(), AgentError> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(tls_error(path, "no PRIVATE KEY block found")),
        Err(_) => Err(tls_error(path, "the private key PEM is malformed")),
    }
}

/// Fails unless the key in `key_pem` is the one `cert_pem`'s leaf
/// certifies. The error never shows the key.
pub(crate) fn check_key_fits(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<(), AgentError> {
    let chain = parse_certs(cert_path, cert_pem)?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|_| tls_error(key_path, "the private key PEM is malformed"))?
        .ok_or_else(|| tls_error(key_path, "no PRIVATE KEY block found"))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map(|_| ())
        .map_err(|e| tls_error(key_path, format!("key does not fit the certificate: {e}")))
}

/// The `[enos.tls]` files' contents, as read: compared before each
/// connect, so that a renewed pair is used from the next connection.
#[derive(PartialEq, Eq)]
pub(crate) struct MqttTlsMaterial {
    /// The CA bundle of the broker's certificate.
    ca: Vec<u8>,
    /// The device certificate chain.
    cert: Vec<u8>,
    /// Its key file; wiped on drop. `None` for a token key, which the
    /// certificate names.
    key: Option<zeroize::Zeroizing<Vec<u8>>>,
}

impl MqttTlsMaterial {
    /// Reads the three files (the key as a private file).
    pub(crate) fn read(tls: &MqttTlsConfig) -> Result<Self, AgentError> {
        Ok(MqttTlsMaterial {
            ca: read(&tls.ca)?,
            cert: read(&tls.cert)?,
            key: match &tls.key {
                KeyLocation::File(path) => Some(read_private_key(path)?),
                KeyLocation::Token(_) => None,
            },
        })
    }
}

/// The trust anchors in the CA bundle at `path` (already read as `pem`).
pub(crate) fn root_store(path: &Path, pem: &[u8]) -> Result<RootCertStore, AgentError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A ring-only client config trusting `roots` and presenting `certified`.
pub(crate) fn client_config_with(
    roots: RootCertStore,
    certified: Arc<rustls::sign::CertifiedKey>,
    ca_path: &Path,
) -> Result<ClientConfig, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(ca_path, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(ClientCertificate(certified))))
}

/// The rustls config for `ssl://` EnOS brokers: the configured CA only, and
/// the device certificate for client authentication.
pub(crate) fn mqtt_client_config(tls: &MqttTlsConfig) -> Result<Arc<ClientConfig>, AgentError> {
    mqtt_client_config_from(tls, &MqttTlsMaterial::read(tls)?)
}

/// [`mqtt_client_config`] from material already read; refuses a key
/// that does not fit the certificate.
pub(crate) fn mqtt_client_config_from(
    tls: &MqttTlsConfig,
    material: &MqttTlsMaterial,
) -> Result<Arc<ClientConfig>, AgentError> {
    let roots = root_store(&tls.ca, &material.ca)?;
    let chain = parse_certs(&tls.cert, &material.cert)?;
    let certified = certified_key(
        &tls.key,
        &tls.cert,
        chain,
        material.key.as_deref().map(Vec::as_slice),
    )?;
    Ok(Arc::new(client_config_with(roots, certified, &tls.ca)?))
}
