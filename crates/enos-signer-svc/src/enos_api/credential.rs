//! The EnOS application's credential in custody: the AccessKey (an
//! identifier, kept readable) and the SecretKey sealed by the custody, as
//! a device secret is, under the reference `enos-api.<environment>` (so
//! that the seal of one environment's secret opens as no device's or
//! product's, and no other environment's). Written to the environment's
//! `credential_file` (mode 0600) by `enos-signer enos-api set-credential`;
//! never in the config, never logged.

use std::{path::Path, sync::Arc};

use enos_custody::{Custody, SealedSecret, SecretRef};
use enos_sign_core::{DeviceSecret, ProductKey};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SignerError};

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    /// The AccessKey (`appKey`): not a secret.
    access_key: String,
    /// The custody scheme that sealed the SecretKey.
    scheme: String,
    /// The sealed SecretKey, hex.
    sealed_hex: String,
}

/// The credential as the client uses it: the AccessKey, and the SecretKey
/// still sealed. Every signature over the SecretKey is computed by the
/// custody that sealed it ([`Custody::digest_sha256`]), in the token with
/// HSM custody, so the SecretKey is never held in the signer's memory
/// beyond one digest (software custody) or at all (HSM).
pub struct ApiCredential {
    /// The AccessKey (`appKey`): not a secret; sent with every token request.
    pub access_key: String,
    /// The SecretKey, sealed: opened only inside the custody, per digest.
    sealed: SealedSecret,
    /// `enos-api.<environment>`: the reference the seal is bound to.
    reference: ProductKey,
    /// The custody that sealed it and computes the signatures.
    custody: Arc<dyn Custody>,
}

impl std::fmt::Debug for ApiCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCredential")
            .field("access_key", &self.access_key)
            .field("scheme", &self.sealed.scheme)
            .finish_non_exhaustive()
    }
}

impl ApiCredential {
    /// `hex(SHA-256(content ‖ SecretKey))`, lower case, as EnOS's API
    /// gateway checks it, computed by the custody (synchronously: an HSM
    /// call blocks for a token round trip).
    pub fn signature_blocking(&self, content: &[u8]) -> Result<String> {
        let digest = self.custody.digest_sha256(
            SecretRef::product(&self.reference, 1),
            &self.sealed,
            content,
        )?;
        Ok(hex(&digest))
    }

    /// [`ApiCredential::signature_blocking`] on a blocking thread, so that
    /// an HSM's round trip never holds an async worker.
    pub async fn signature(self: &Arc<Self>, content: Vec<u8>) -> Result<String> {
        let credential = Arc::clone(self);
        tokio::task::spawn_blocking(move || credential.signature_blocking(&content))
            .await
            .map_err(|_| {
                SignerError::Custody(enos_custody::CustodyError::Unavailable(
                    "the EnOS API signature's thread stopped".into(),
                ))
            })?
    }
}

/// The custody reference of `environment`'s secret.
fn reference(environment: &str) -> Result<ProductKey> {
    ProductKey::new(format!("enos-api.{environment}"))
        .map_err(|e| SignerError::Config(format!("environment name {environment:?}: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Seals `secret_key` for `environment` with `custody` and writes the
/// credential to `path` (mode 0600, replacing it).
pub fn seal_credential(
    custody: &dyn Custody,
    environment: &str,
    access_key: &str,
    secret_key: &str,
    path: &Path,
) -> Result<()> {
    if access_key.is_empty() || !access_key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(SignerError::invalid(
            "access_key",
            "must be printable ASCII without whitespace",
        ));
    }
    let secret = DeviceSecret::new(secret_key.to_owned())
        .map_err(|e| SignerError::invalid("secret_key", e))?;
    let product = reference(environment)?;
    let sealed = custody.seal(SecretRef::product(&product, 1), &secret)?;
    let file = CredentialFile {
        access_key: access_key.to_owned(),
        scheme: sealed.scheme,
        sealed_hex: hex(&sealed.bytes),
    };
    let json = serde_json::to_string_pretty(&file)
        .map_err(|e| SignerError::Config(format!("encoding the credential: {e}")))?;
    write_private(path, json.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let io = |cause: std::io::Error| SignerError::Io {
        action: "writing",
        path: path.to_owned(),
        cause,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads `path` (owner-only) and checks that `custody` opens
/// `environment`'s sealed SecretKey (one digest: a seal made for another
/// environment or by another custody fails here, not at the first call).
pub fn open_credential(
    custody: Arc<dyn Custody>,
    environment: &str,
    path: &Path,
) -> Result<ApiCredential> {
    let bytes = enos_domain::private_file::read(path).map_err(|e| {
        SignerError::Config(format!(
            "the EnOS API credential of environment {environment}: {e} (write it with `enos-signer enos-api set-credential`)"
        ))
    })?;
    let file: CredentialFile = serde_json::from_slice(&bytes).map_err(|e| {
        SignerError::Config(format!(
            "{}: not a credential file written by enos-signer: {e}",
            path.display()
        ))
    })?;
    let sealed = SealedSecret {
        scheme: file.scheme,
        bytes: unhex(&file.sealed_hex).ok_or_else(|| {
            SignerError::Config(format!("{}: the sealed secret is not hex", path.display()))
        })?,
    };
    let credential = ApiCredential {
        access_key: file.access_key,
        sealed,
        reference: reference(environment)?,
        custody,
    };
    credential.signature_blocking(b"")?;
    Ok(credential)
}
