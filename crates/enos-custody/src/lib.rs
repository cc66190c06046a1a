//! Custody of device secrets, behind one trait.
//!
//! The registry stores a [`SealedSecret`] per device; only a [`Custody`]
//! can turn it back into a signature. Software custody seals with an AEAD
//! under a master key and opens the secret for the duration of one sign;
//! HSM custody wraps under a key that never leaves a PKCS#11 token and
//! digests inside the token. The signer service sees neither: it calls
//! [`Custody::sign`].
//!
//! # Layout
//!
//! - [`Custody`]: seal, sign, and (for migration only) open.
//! - [`SecretRef`]: which secret, bound into every seal so that a sealed
//!   secret copied to another record fails to open.
//! - [`SealedSecret`]: the stored form, tagged with the scheme that made it.
//! - [`StoredCaKey`], [`CaSigner`]: the signer's CA key, made and used by
//!   the same custody as the secrets ([`Custody::create_ca_key`],
//!   [`Custody::ca_signer`]); [`p256`] holds the encodings both custodies
//!   share.
//! - [`CustodyError`]: the one error type; it never contains secret material.
#![forbid(unsafe_code)]

pub mod p256;

use core::fmt;
use std::sync::Arc;

use enos_domain::DeviceId;
use enos_sign_core::{
    DeviceKey, DeviceSecret, HexCase, Password, ProductKey, SignMethod, SignedFields,
};

/// Names one version of one secret: a device's, or a product's (the
/// secret of dynamic activation, `securemode=3`). Every [`Custody`] binds
/// all parts into the sealed form (AEAD associated data, or the wrapped
/// blob's context), so swapping blobs between records, or passing a
/// product's sealed secret off as a device's, is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretRef<'a> {
    /// The device's (or the product's) product key.
    pub product_key: &'a ProductKey,
    /// The device's key; `None` for the product's own secret.
    pub device_key: Option<&'a DeviceKey>,
    /// The secret's version: 1 at creation, +1 per rotation.
    pub version: u32,
}

impl<'a> SecretRef<'a> {
    /// Version `version` of `device`'s secret.
    pub fn of(device: &'a DeviceId, version: u32) -> Self {
        SecretRef {
            product_key: &device.product_key,
            device_key: Some(&device.device_key),
            version,
        }
    }

    /// Version `version` of the secret of `product`.
    pub fn product(product: &'a ProductKey, version: u32) -> Self {
        SecretRef {
            product_key: product,
            device_key: None,
            version,
        }
    }

    /// A canonical byte string of the reference, for associated data:
    /// `enos-secret-v1|{productKey}|{deviceKey}|{version}` for a device,
    /// `enos-product-secret-v1|{productKey}|{version}` for a product. `|`
    /// is in neither key, so the encoding is unambiguous, and the two
    /// prefixes keep the two kinds apart.
    pub fn associated_data(&self) -> Vec<u8> {
        match self.device_key {
            Some(device_key) => format!(
                "enos-secret-v1|{}|{}|{}",
                self.product_key, device_key, self.version
            ),
            None => format!(
                "enos-product-secret-v1|{}|{}",
                self.product_key, self.version
            ),
        }
        .into_bytes()
    }
}

/// A device (or product) secret as the registry stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// Which custody made it (for example `aead-xchacha20poly1305-v1` or
    /// `pkcs11-aes-kwp-v1`), so that a migration knows what each record
    /// holds and a mismatch is refused instead of misread.
    pub scheme: String,
    /// The sealed bytes; opaque outside the custody that made them.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("scheme", &self.scheme)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A CA signing key as the registry stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCaKey {
    /// Which custody made it (for example `aead-xchacha20poly1305-ca-v1`
    /// or `pkcs11-ec-p256-v1`), so that a key is never handed to a custody
    /// that would misread it.
    pub scheme: String,
    /// Sealed PKCS#8 (software) or the token object's CKA_ID/label (HSM);
    /// opaque outside the custody that made it.
    pub bytes: Vec<u8>,
    /// The key's SubjectPublicKeyInfo, DER: what the CA certificate (or the
    /// intermediate's request) carries, readable without the custody.
    pub public_key_der: Vec<u8>,
}

impl fmt::Debug for StoredCaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes are sealed or a token reference, but a Debug print
        // has no use for them: scheme and size only.
        f.debug_struct("StoredCaKey")
            .field("scheme", &self.scheme)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Signs with a CA key: ECDSA P-256, SHA-256, DER-encoded (X9.62)
/// signature.
///
/// Blocking like [`Custody`]: an HSM signs in the token.
pub trait CaSigner: Send + Sync + 'static {
    /// The key's SubjectPublicKeyInfo, DER.
    fn public_key_der(&self) -> &[u8];

    /// ECDSA P-256 over SHA-256 of `message`; the signature DER-encoded
    /// (`Ecdsa-Sig-Value`), as a certificate or CRL carries it.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError>;
}

/// Keeps device secrets and signs with them.
///
/// Implementations are cheap to share (`Send + Sync`) and blocking: an HSM
/// call may take milliseconds, so async callers run them on a blocking pool
/// where that matters.
pub trait Custody: Send + Sync + 'static {
    /// The scheme tag this custody writes into [`SealedSecret::scheme`].
    fn scheme(&self) -> &str;

    /// Seals a secret for storage under `id`. The plaintext is not kept.
    fn seal(&self, id: SecretRef<'_>, secret: &DeviceSecret) -> Result<SealedSecret, CustodyError>;

    /// Signs `fields` with the sealed secret: `HEX(DIGEST(content ‖ secret))`
    /// exactly as [`enos_sign_core::sign_with_case`] computes it.
    fn sign(
        &self,
        id: SecretRef<'_>,
        sealed: &SealedSecret,
        fields: &SignedFields,
        method: SignMethod,
        case: HexCase,
    ) -> Result<Password, CustodyError>;

    /// `SHA-256(content ‖ secret)` over arbitrary `content`, computed where
    /// the secret is, as [`Custody::sign`] computes a password: the EnOS
    /// API's request signatures and token requests (issue 26) end with the
    /// application's SecretKey, so an HSM holds that key as it holds a
    /// device secret and the signer never sees it.
    fn digest_sha256(
        &self,
        id: SecretRef<'_>,
        sealed: &SealedSecret,
        content: &[u8],
    ) -> Result<[u8; 32], CustodyError>;

    /// Opens a sealed secret into plaintext. For migration between
    /// custodies only; an HSM custody may refuse with
    /// [`CustodyError::Unsupported`].
    fn open(&self, id: SecretRef<'_>, sealed: &SealedSecret) -> Result<DeviceSecret, CustodyError>;

    /// Fails unless the custody could sign now: an HSM custody asks the
    /// token over a pooled session (reconnecting if it was lost). The
    /// signer's readiness probe calls it every few seconds, so it must be
    /// cheap; a custody whose keys are in memory has nothing to check.
    fn check(&self) -> Result<(), CustodyError> {
        Ok(())
    }

    /// Makes a new CA key (ECDSA P-256) named `label`, held by this
    /// custody: sealed under the master key (software), or a
    /// non-extractable key pair generated in the token (HSM). The
    /// returned form is what the registry stores.
    fn create_ca_key(&self, label: &str) -> Result<StoredCaKey, CustodyError> {
        let _ = label;
        Err(CustodyError::Unsupported("this custody holds no CA key"))
    }

    /// A signer for `key`, as [`Custody::create_ca_key`] made it. Opens or
    /// finds the key once (and checks that it signs for its public key);
    /// every [`CaSigner::sign`] then uses it.
    fn ca_signer(&self, key: &StoredCaKey) -> Result<Arc<dyn CaSigner>, CustodyError> {
        let _ = key;
        Err(CustodyError::Unsupported("this custody holds no CA key"))
    }
}

/// What can go wrong in a custody. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustodyError {
    /// The sealed secret was made by another scheme.
    #[error("sealed secret uses scheme {found:?}, this custody handles {expected:?}")]
    WrongScheme {
        /// The scheme this custody handles.
        expected: String,
        /// The record's scheme.
        found: String,
    },
    /// The sealed secret does not open under this key and reference: it
    /// was tampered with, copied from another record, or sealed under
    /// another key.
    #[error(
        "sealed secret failed its integrity check (wrong key, or bound to another device or version)"
    )]
    Integrity,
    /// The key store (HSM token) cannot be reached now; retrying later may
    /// succeed.
    #[error("custody unavailable: {0}")]
    Unavailable(String),
    /// The custody is misconfigured (wrong PIN, missing key, unsupported
    /// mechanism); retrying will not help.
    #[error("custody misconfigured: {0}")]
    Config(String),
    /// The operation is not supported by this custody.
    #[error("not supported by this custody: {0}")]
    Unsupported(&'static str),
    /// A CA key (or what the custody returned for one) is malformed or
    /// of another kind than ECDSA P-256, or does not sign for the public
    /// key stored with it.
    #[error("invalid CA key: {0}")]
    InvalidCaKey(String),
    /// A secret read back from custody is not a valid secret.
    #[error("invalid secret in custody: {0}")]
    InvalidSecret(#[from] enos_sign_core::SignError),
}
