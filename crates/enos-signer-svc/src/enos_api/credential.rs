//! The EnOS application's credential in custody: the AccessKey (an
//! identifier, kept readable) and the SecretKey sealed by the custody, as
//! a device secret is, under the reference `enos-api.<environment>` (so
//! that the seal of one environment's secret opens as no device's or
//! product's, and no other environment's). Written to the environment's
//! `credential_file` (mode 0600) by `enos-signer enos-api set-credential`;
//! never in the config, never logged.

use std::path::Path;

use enos_custody::{Custody, SealedSecret, SecretRef};
use enos_sign_core::{DeviceSecret, ExposeSecret, ProductKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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

/// The credential, opened: what the client signs with.
pub struct ApiCredential {
    /// The AccessKey.
    pub access_key: String,
    /// The SecretKey: wiped on drop, never printed.
    pub secret_key: Zeroizing<String>,
}

impl std::fmt::Debug for ApiCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCredential")
            .field("access_key", &self.access_key)
            .field("secret_key", &"[REDACTED]")
            .finish()
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

/// Reads `path` (owner-only) and opens `environment`'s SecretKey with
/// `custody`. An HSM custody connected for signing refuses to open it
/// (it exports no secret); see docs/enos-certificates.md.
pub fn open_credential(
    custody: &dyn Custody,
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
    let product = reference(environment)?;
    let secret = custody.open(SecretRef::product(&product, 1), &sealed)?;
    Ok(ApiCredential {
        access_key: file.access_key,
        secret_key: Zeroizing::new(secret.expose_secret().to_owned()),
    })
}
