//! The device's private key, where `[signer] key` (and `[enos.tls] key`)
//! points: a 0600 PEM file, or key pairs in a PKCS#11 token named by a
//! `pkcs11:` URI (a TPM through tpm2-pkcs11, SoftHSM2 in tests).
//!
//! A token key never leaves the token: TLS handshakes and CSRs are signed
//! in it ([`TokenSigningKey`]). Which of the token's pairs is the device's
//! key is decided by the certificate file: the pair whose public key the
//! leaf certifies (see `enos_custody_pkcs11::DeviceKeyToken`). Renewal
//! makes a new pair beside the old one, and promoting the certificate
//! file switches keys in one rename; pairs no certificate names are
//! removed after a promotion and at start.
//!
//! The module is loaded only when a `pkcs11:` key is configured, once per
//! process (PKCS#11 allows one `C_Initialize` per module and process).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use enos_custody_pkcs11::{DeviceKeyToken, DeviceKeyUri, TokenKey};
use rustls::{
    SignatureAlgorithm, SignatureScheme,
    client::ResolvesClientCert,
    pki_types::CertificateDer,
    sign::{CertifiedKey, Signer, SigningKey},
};
use serde::{Deserialize, Deserializer};

use crate::error::AgentError;

/// Where the device's private key is.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// A PEM file, mode 0600 (PKCS#8, SEC1 or PKCS#1).
    File(PathBuf),
    /// Key pairs in a PKCS#11 token, labelled with the URI's `object`.
    Token(DeviceKeyUri),
}

impl fmt::Debug for KeyLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for KeyLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyLocation::File(path) => write!(f, "{}", path.display()),
            KeyLocation::Token(uri) => write!(f, "{uri}"),
        }
    }
}

impl KeyLocation {
    /// `pkcs11:…` is a token key; anything else a file path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("pkcs11:") {
            DeviceKeyUri::parse(text)
                .map(KeyLocation::Token)
                .map_err(|e| e.to_string())
        } else if text.is_empty() {
            Err("empty: give a key file's path or a `pkcs11:` URI".into())
        } else {
            Ok(KeyLocation::File(PathBuf::from(text)))
        }
    }

    /// A relative file path made absolute against `base`.
    pub fn resolve(&mut self, base: &Path) {
        if let KeyLocation::File(path) = self {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The file, for a file key.
    pub fn file(&self) -> Option<&Path> {
        match self {
            KeyLocation::File(path) => Some(path),
            KeyLocation::Token(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for KeyLocation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyLocation::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The token of this process, opened on first use.
static TOKEN: Mutex<Option<Arc<DeviceKeyToken>>> = Mutex::new(None);

/// The opened token `uri` names; opened (module loaded, logged in) on the
/// first call. A second, different URI in one process is refused: its
/// module could not be initialised twice.
pub fn token(uri: &DeviceKeyUri) -> Result<Arc<DeviceKeyToken>, AgentError> {
    let mut slot = TOKEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(open) = slot.as_ref() {
        if open.uri() == uri {
            return Ok(Arc::clone(open));
        }
        return Err(token_error(
            uri,
            format!(
                "this process already uses the device key {}; one `pkcs11:` key URI per agent",
                open.uri()
            ),
        ));
    }
    let open = Arc::new(DeviceKeyToken::open(uri).map_err(|e| token_error(uri, e.to_string()))?);
    *slot = Some(Arc::clone(&open));
    Ok(open)
}

pub(crate) fn token_error(uri: &DeviceKeyUri, reason: impl Into<String>) -> AgentError {
    AgentError::DeviceKey {
        location: uri.to_string(),
        reason: reason.into(),
    }
}

/// The pair in `uri`'s token that `leaf_der` certifies.
pub(crate) fn token_key_for(
    uri: &DeviceKeyUri,
    leaf_der: &[u8],
) -> Result<(Arc<DeviceKeyToken>, TokenKey), AgentError> {
    let spki = crate::certificate::subject_public_key_info(leaf_der)
        .ok_or_else(|| token_error(uri, "the certificate's public key is unreadable"))?;
    let token = token(uri)?;
    let key = token
        .find(spki)
        .map_err(|e| token_error(uri, e.to_string()))?;
    Ok((token, key))
}

/// A token pair as a rustls (and CSR) signing key: ECDSA P-256 with SHA-256, signed
/// in the token. rustls calls it on the thread running the handshake; a
/// token's sign takes milliseconds (a TPM: tens), once per handshake.
#[derive(Clone)]
pub struct TokenSigningKey {
    /// The opened token.
    token: Arc<DeviceKeyToken>,
    /// The pair.
    key: TokenKey,
}

impl fmt::Debug for TokenSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigningKey")
            .field("token", &self.token.token_label())
            .field("key", &self.key)
            .finish()
    }
}

impl TokenSigningKey {
    /// `key` of the opened `token`.
    pub fn new(token: Arc<DeviceKeyToken>, key: TokenKey) -> Self {
        TokenSigningKey { token, key }
    }

    /// Signs `message` (SHA-256, ECDSA), DER.
    pub fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.token
            .sign(&self.key, message)
            .map_err(|e| e.to_string())
    }

    /// The SubjectPublicKeyInfo (DER).
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public_key_der()
    }

    /// The pair.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// The opened token.
    pub fn token(&self) -> &Arc<DeviceKeyToken> {
        &self.token
    }
}

impl SigningKey for TokenSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for TokenSigningKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.sign_der(message).map_err(|reason| {
            tracing::error!(%reason, "the device key in the token did not sign the TLS handshake");
            rustls::Error::General(format!(
                "the device key in the token did not sign: {reason}"
            ))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// The certificate chain and its key, for rustls: the key from the PEM
/// file's bytes (`key_pem`) or from the token.
pub(crate) fn certified_key(
    location: &KeyLocation,
    cert_path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key_pem: Option<&[u8]>,
) -> Result<Arc<CertifiedKey>, AgentError> {
    match location {
        KeyLocation::File(key_path) => {
            let fail = |reason: String| AgentError::Tls {
                path: key_path.clone(),
                reason,
            };
            let key = rustls_pemfile::private_key(&mut key_pem.unwrap_or_default())
                .map_err(|_| fail("the private key PEM is malformed".into()))?
                .ok_or_else(|| fail("no PRIVATE KEY block found".into()))?;
            let certified =
                CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
                    .map_err(|e| fail(format!("key does not fit the certificate: {e}")))?;
            Ok(Arc::new(certified))
        }
        KeyLocation::Token(uri) => {
            let leaf = chain.first().ok_or_else(|| AgentError::Tls {
                path: cert_path.to_owned(),
                reason: "no CERTIFICATE block found".into(),
            })?;
            let (token, key) = token_key_for(uri, leaf)?;
            let signing = TokenSigningKey::new(token, key);
            Ok(Arc::new(CertifiedKey::new(chain, Arc::new(signing))))
        }
    }
}

/// Presents one certified key to every server that asks.
#[derive(Debug)]
pub(crate) struct ClientCertificate(pub(crate) Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // rustls asks the key itself to pick a scheme; a key with none of
        // the offered ones sends no certificate and the server says why.
        self.0
            .key
            .choose_scheme(sigschemes)
            .is_some()
            .then(|| Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
