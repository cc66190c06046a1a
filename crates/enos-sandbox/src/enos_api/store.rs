//! [`CertStore`]: every certificate the sandbox's EnOS CA issued, by its
//! serial (`certSN`), with the device it is bound to and whether it was
//! revoked; kept in `certificates.json` of the state directory (written
//! whole, then renamed, after each change) so that a restarted sandbox
//! still knows them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::ca::Authority;
use crate::{devices::DeviceId, error::SandboxError};

/// The first serial handed out (EnOS's samples are in this range).
const FIRST_SERIAL: u64 = 32_720;

/// A certificate's status in List: EnOS's `certStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// 0: valid.
    Valid = 0,
    /// 1: revoked.
    Revoked = 1,
    /// 2: expired.
    Expired = 2,
}

/// Why and when a certificate was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When, unix ms.
    pub at_ms: u64,
    /// EnOS's `reason` code (RFC 5280's).
    pub reason: u8,
    /// Who: `IoT_Hub` for a revocation through the API, as EnOS's samples.
    pub by: String,
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// `certSN`, also the certificate's serial number.
    pub serial: u64,
    /// The device it is bound to: its product key.
    pub product_key: String,
    /// The device it is bound to: its device key.
    pub device_key: String,
    /// The root that signed it.
    pub authority: Authority,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The request it was made from: a renewal without a CSR reuses it.
    pub csr_pem: String,
    /// The subject's CN, for the uniqueness check.
    pub common_name: String,
    /// The subject as List prints it.
    pub subject: String,
    /// The issuer as List prints it.
    pub issuer: String,
    /// The public key (SubjectPublicKeyInfo, DER, hex): one key is bound to
    /// one device (11833).
    pub public_key_hex: String,
    /// When it was signed, unix ms (`signDate`, `effetiveDate`).
    pub sign_ms: u64,
    /// `notAfter`, unix ms (`expireDate`).
    pub not_after_ms: u64,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
}

impl CertRecord {
    /// Its status at `now_ms`.
    pub fn status(&self, now_ms: u64) -> CertStatus {
        if self.revoked.is_some() {
            CertStatus::Revoked
        } else if now_ms >= self.not_after_ms {
            CertStatus::Expired
        } else {
            CertStatus::Valid
        }
    }

    /// Whether it is bound to `device`.
    pub fn is_for(&self, product_key: &str, device_key: &str) -> bool {
        self.product_key == product_key && self.device_key == device_key
    }
}

/// What is persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreState {
    /// The next `certSN`.
    pub next_serial: u64,
    /// Every certificate issued, by serial.
    pub certs: BTreeMap<u64, CertRecord>,
}

/// The issued certificates, shared by the API and the MQTTS listener.
#[derive(Debug)]
pub struct CertStore {
    /// `certificates.json`, or `None` in memory.
    path: Option<PathBuf>,
    /// The state.
    state: Mutex<StoreState>,
}

/// Now, unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A unix ms as a time.
pub fn time_of(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl CertStore {
    /// Opens `certificates.json` in `state_dir` (empty when absent), or an
    /// in-memory store.
    pub fn open(state_dir: Option<&Path>) -> Result<Self, SandboxError> {
        let path = state_dir.map(|d| d.join("certificates.json"));
        let mut state = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read(p).map_err(|e| SandboxError::Read {
                    path: p.clone(),
                    cause: e,
                })?;
                serde_json::from_slice(&text).map_err(|e| SandboxError::Config {
                    path: p.clone(),
                    message: e.to_string(),
                })?
            }
            _ => StoreState::default(),
        };
        state.next_serial = state.next_serial.max(FIRST_SERIAL);
        Ok(CertStore {
            path,
            state: Mutex::new(state),
        })
    }

    /// Runs `f` on the state and persists it when `f` succeeds; a failed
    /// write is an error of `f`'s kind (`Err(String)`).
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut StoreState) -> Result<T, String>,
    ) -> Result<Result<T, String>, String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&mut state);
        if result.is_ok()
            && let Some(path) = &self.path
        {
            let json = serde_json::to_vec_pretty(&*state).map_err(|e| e.to_string())?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, json)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(result)
    }

    /// A copy of the records for which `keep` holds.
    pub fn records(&self, keep: impl Fn(&CertRecord) -> bool) -> Vec<CertRecord> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.certs.values().filter(|r| keep(r)).cloned().collect()
    }

    /// Whether the certificate `der` (issued by the EnOS CA) may log in as
    /// `device` now: known by its serial, bound to that device, neither
    /// revoked nor expired. `Err` says why not.
    pub fn check_binding(&self, der: &[u8], device: &DeviceId) -> Result<(), String> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
        let serial = u64::try_from(certificate.serial.clone())
            .map_err(|_| "the EnOS certificate's serial is not one this CA issued".to_owned())?;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let record = state
            .certs
            .get(&serial)
            .ok_or_else(|| format!("EnOS certificate {serial} is not in the CA's records"))?;
        if !record.is_for(device.product_key.as_str(), device.device_key.as_str()) {
            return Err(format!(
                "EnOS certificate {serial} is bound to {}/{}, not {device}",
                record.product_key, record.device_key
            ));
        }
        match record.status(now_ms()) {
            CertStatus::Valid => Ok(()),
            CertStatus::Revoked => Err(format!("EnOS certificate {serial} is revoked")),
            CertStatus::Expired => Err(format!("EnOS certificate {serial} has expired")),
        }
    }
}
