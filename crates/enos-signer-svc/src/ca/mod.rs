//! The signer as the certificate authority of its devices' client
//! certificates (`[ca]`).
//!
//! The CA key is held by the custody like the device secrets: sealed
//! under the master key, or a non-extractable key in the HSM that signs
//! inside the token. The CA's chain and its key's stored form live in the
//! registry, so every replica serves the same CA; [`CertificateAuthority`]
//! re-reads them at most every [`REFRESH`], and at once after `ca
//! import-cert` changed them on another replica.
//!
//! | module | what it holds |
//! |---|---|
//! | `mod.rs` | [`CertificateAuthority`]: issue a device certificate for a CSR; the chain |
//! | [`token`] | enrollment tokens: made, hashed, checked for form |
//! | [`crl`] | the CRL: signed by the CA, published to a file and over HTTP |
//! | [`expiry`] | `enos_signer_certificates_expiring{within="7d"}` |

pub mod crl;
pub mod expiry;
pub mod token;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use enos_ca::{CaError, DeviceNames, RequestedKey, Validity};
use enos_custody::StoredCaKey;
use enos_registry::{CertificateRecord, DeviceId, Registry};
use enos_signer_proto::{identity::PeerIdentity, v1};
use tokio::sync::Mutex;

use crate::{
    config::CaConfig,
    custody::CustodyHandle,
    error::{Result, SignerError},
};

/// How long the CA read from the registry is used before it is read
/// again (a certificate installed by `ca import-cert` on another replica
/// is served within this).
pub const REFRESH: Duration = Duration::from_secs(30);

/// The largest CSR accepted: an RSA-4096 request is under 2 KiB; more is
/// not a request from our agent.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What `ca init` names the CA key in the custody (the token's label).
pub const KEY_LABEL: &str = "enos-signer-ca";

/// The key a certificate is signed with: the custody's CA key behind
/// rcgen's signing interface.
type CaKey = enos_ca::authority::CustodyKey;

/// The CA as read from the registry, ready to sign.
pub struct Authority {
    /// The CA certificate first, up to the root (DER): sent with every
    /// issued certificate, so that a device can present a full chain.
    pub chain_der: Vec<Vec<u8>>,
    /// The CA's name and key, for rcgen.
    issuer: rcgen::Issuer<'static, CaKey>,
    /// The stored form of the key this was built from: a new record with
    /// the same key and chain is the same authority.
    key: StoredCaKey,
}

impl Authority {
    /// The CA's name and key, for signing.
    pub fn issuer(&self) -> &rcgen::Issuer<'static, CaKey> {
        &self.issuer
    }
}

/// The signer's CA: its config, and the authority read from the registry.
pub struct CertificateAuthority {
    /// `[ca]`: lifetimes, token TTL, CRL settings.
    config: CaConfig,
    /// Where the CA row, certificates and tokens are.
    registry: Arc<dyn Registry>,
    /// Holds the CA key and signs with it.
    custody: CustodyHandle,
    /// The authority last read, and when: re-read after [`REFRESH`].
    loaded: Mutex<Option<(Arc<Authority>, Instant)>>,
    /// Notified when this replica issued or revoked a certificate: the
    /// expiring-certificates gauge counts again at once.
    changed: Arc<tokio::sync::Notify>,
}

/// A certificate just issued, and its registry record (not yet written).
pub struct Issued {
    /// What the caller gets.
    pub message: v1::IssuedCertificate,
    /// What the registry records.
    pub record: CertificateRecord,
}

impl CertificateAuthority {
    /// The CA of `config`, over the signer's registry and custody.
    pub fn new(config: CaConfig, registry: Arc<dyn Registry>, custody: CustodyHandle) -> Self {
        CertificateAuthority {
            config,
            registry,
            custody,
            loaded: Mutex::new(None),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// `[ca]`.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The custody holding the CA key.
    pub fn custody(&self) -> &CustodyHandle {
        &self.custody
    }

    /// Tells the gauges that certificates changed (issued, renewed,
    /// revoked on this replica).
    pub fn certificates_changed(&self) {
        self.changed.notify_one();
    }

    /// What [`CertificateAuthority::certificates_changed`] notifies.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changed)
    }

    /// The registry holding the CA, its certificates and tokens.
    pub fn registry_handle(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The CA as the registry has it (read again after [`REFRESH`]).
    /// FailedPrecondition until `ca init` made it, or while an
    /// intermediate awaits its certificate.
    pub async fn authority(&self) -> Result<Arc<Authority>> {
        let mut loaded = self.loaded.lock().await;
        if let Some((authority, at)) = loaded.as_ref()
            && at.elapsed() < REFRESH
        {
            return Ok(Arc::clone(authority));
        }
        let record = self.registry.get_ca().await?.ok_or_else(|| {
            SignerError::FailedPrecondition(
                "this signer has [ca] but no CA yet: run `enos-signer ca init`".into(),
            )
        })?;
        if record.chain_der.is_empty() {
            return Err(SignerError::FailedPrecondition(
                "the CA awaits its certificate: sign its request with your root and run `enos-signer ca import-cert`".into(),
            ));
        }
        let same = loaded.as_ref().is_some_and(|(authority, _)| {
            authority.key == record.key && authority.chain_der == record.chain_der
        });
        if !same {
            let key = record.key.clone();
            let signer = self
                .custody
                .run(move |custody| custody.ca_signer(&key))
                .await??;
            let ca_key = CaKey::new(signer).map_err(ca_internal)?;
            let issuer =
                enos_ca::authority::issuer(&record.chain_der[0], ca_key).map_err(ca_internal)?;
            let authority = Arc::new(Authority {
                chain_der: record.chain_der.clone(),
                issuer,
                key: record.key.clone(),
            });
            *loaded = Some((authority, Instant::now()));
        } else if let Some((_, at)) = loaded.as_mut() {
            *at = Instant::now();
        }
        Ok(Arc::clone(&loaded.as_ref().expect("set above").0))
    }

    /// The CA certificate chain (CA first), if the CA is ready.
    pub async fn chain(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self.authority().await?.chain_der.clone())
    }

    /// Reads `csr_der` (its signature verified, its key of an accepted
    /// kind), before anything costs more: InvalidArgument otherwise.
    pub fn requested_key(csr_der: &[u8]) -> Result<RequestedKey> {
        RequestedKey::from_csr(csr_der, MAX_CSR_BYTES)
            .map_err(|e| SignerError::invalid("csr_der", e))
    }

    /// A certificate for `device` and `key`, with the signer's names only
    /// (URI SAN `spiffe://enos/device/{pk}/{dk}`, clientAuth), a random
    /// serial and the product's lifetime. Signed by the custody (on the
    /// sign threads for an HSM); not recorded yet.
    pub async fn issue(&self, device: &DeviceId, key: RequestedKey) -> Result<Issued> {
        let authority = self.authority().await?;
        let identity = PeerIdentity::Device {
            product_key: device.product_key.clone(),
            device_key: device.device_key.clone(),
        };
        let names = DeviceNames {
            uri: identity.to_uri(),
            common_name: format!("{}/{}", device.product_key, device.device_key),
        };
        let lifetime = self.config.lifetime_of(device.product_key.as_str());
        let now = SystemTime::now();
        let validity = Validity::starting(now, lifetime).map_err(ca_internal)?;
        let signing = Arc::clone(&authority);
        let issued = self
            .custody
            .run(move |_| {
                enos_ca::issue::device_certificate(&key, &names, validity, &signing.issuer)
            })
            .await?
            .map_err(ca_internal)?;
        let serial = issued.serial.to_hex();
        let not_before_ms = millis(issued.validity.not_before);
        let not_after_ms = millis(issued.validity.not_after);
        Ok(Issued {
            message: v1::IssuedCertificate {
                certificate_der: issued.der().to_vec(),
                chain_der: authority.chain_der.clone(),
                serial: serial.clone(),
                not_before_ms,
                not_after_ms,
            },
            record: CertificateRecord {
                serial,
                device: device.clone(),
                not_before_ms,
                not_after_ms,
                issued_at_ms: millis(now),
                revoked: None,
                renewed_by: None,
            },
        })
    }
}

/// Milliseconds since the epoch (0 before it).
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A CA failure that is ours, not the caller's: logged, answered Internal,
/// or Unavailable when the custody cannot sign now (an HSM session lost:
/// retrying, here or at another replica, may succeed).
pub fn ca_internal(error: CaError) -> SignerError {
    match error {
        CaError::KeyUnavailable(reason) => {
            SignerError::Custody(enos_custody::CustodyError::Unavailable(reason))
        }
        other => SignerError::Ca(other.to_string()),
    }
}
