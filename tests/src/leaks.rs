//! [`LeakScan`]: no secret and no issued password may appear in any log.
//!
//! The secrets are known (the suite generated them). The issued passwords
//! are not handed to the test, and must not be: they are reconstructed
//! from the signer's audit trail. Each issuance record names the device,
//! the signed clientId, the sign method and the signed timestamp; with the device's secret (the
//! current one or an earlier one, after a rotation) the password is
//! recomputed, and it counts only if its HMAC under the audit key equals
//! the record's `password_hmac`. So the scan provably looks for exactly the
//! passwords the signer issued, and fails if any issuance cannot be
//! reconstructed.

use std::{collections::HashMap, path::Path};

use aho_corasick::AhoCorasick;
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, HexCase, Md5Policy, ProductKey, SignMethod,
    SignedFields, TimestampMs, sign_with_case,
};
use zeroize::Zeroizing;

use crate::{
    devices::TestDevice,
    error::{E2eError, Result},
};

/// What the audit trail says was issued and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSummary {
    /// Issuances (`outcome = ok` with a password HMAC), every one
    /// reconstructed.
    pub issued: usize,
    /// Refusals by outcome (`failed_precondition`, `resource_exhausted`, …).
    pub refused: HashMap<String, usize>,
    /// Issuances per device (`pk/dk`).
    pub issued_per_device: HashMap<String, usize>,
    /// Refusals per device (`pk/dk`) and outcome.
    pub refused_per_device: HashMap<(String, String), usize>,
}

impl AuditSummary {
    /// Refusals with `outcome` (e.g. `resource_exhausted`).
    pub fn refused(&self, outcome: &str) -> usize {
        self.refused.get(outcome).copied().unwrap_or(0)
    }
}

/// One successful issuance in the audit trail.
#[derive(Debug, Clone)]
pub struct Issuance {
    /// `issue_mqtt_credential` or `sign_sub_device_login`.
    pub event: String,
    /// When the signer recorded it (ms since the epoch).
    pub time_ms: u64,
    /// The device signed for, `pk/dk`.
    pub device: String,
    /// The record itself.
    record: serde_json::Value,
}

impl Issuance {
    /// Every successful issuance in `audit_file`.
    pub fn read_all(audit_file: &Path) -> Result<Vec<Issuance>> {
        let text = std::fs::read_to_string(audit_file)
            .map_err(E2eError::io(format!("reading {}", audit_file.display())))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let record: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                E2eError::failed(format!("{}:{}: not JSON: {e}", audit_file.display(), n + 1))
            })?;
            let event = record["event"].as_str().unwrap_or_default().to_owned();
            if record["password_hmac"].is_string()
                && (event == "issue_mqtt_credential" || event == "sign_sub_device_login")
            {
                out.push(Issuance {
                    event,
                    time_ms: record["time_ms"].as_u64().unwrap_or_default(),
                    device: record["device"].as_str().unwrap_or_default().to_owned(),
                    record,
                });
            }
        }
        Ok(out)
    }

    /// Whether `secret` reproduces this issuance's password (checked
    /// against its HMAC under the audit key in `audit_key`).
    pub fn signed_with(&self, secret: &str, audit_key: &Path) -> Result<bool> {
        let key = enos_signer_svc::key_file::load(audit_key)?;
        let hmac = self.record["password_hmac"].as_str().unwrap_or_default();
        Ok(reconstruct(&self.record, &self.device, [secret], |p| {
            enos_signer_svc::audit::password_hmac(&key, p) == hmac
        })
        .is_some())
    }
}

/// The secrets and passwords to look for.
#[derive(Default)]
pub struct LeakScan {
    /// Every secret each device (`pk/dk`) has had, oldest first.
    secrets: HashMap<String, Vec<Zeroizing<String>>>,
    /// Other values that must not leak, with a name for the report.
    others: Vec<(String, Zeroizing<String>)>,
    /// Issued passwords recovered from audit trails, with their issuance.
    passwords: Vec<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for LeakScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakScan")
            .field("devices", &self.secrets.len())
            .field("passwords", &self.passwords.len())
            .finish_non_exhaustive()
    }
}

impl LeakScan {
    /// An empty scan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device`'s current secret.
    pub fn device(&mut self, device: &TestDevice) {
        let known = self.secrets.entry(device.id()).or_default();
        if !known.iter().any(|s| s.as_str() == device.secret()) {
            known.push(Zeroizing::new(device.secret().to_owned()));
        }
    }

    /// Adds every device's current secret.
    pub fn devices<'a>(&mut self, devices: impl IntoIterator<Item = &'a TestDevice>) {
        for d in devices {
            self.device(d);
        }
    }

    /// Adds an earlier secret of `device` (kept after a rotation).
    pub fn old_secret(&mut self, device: &TestDevice, secret: &str) {
        self.secrets
            .entry(device.id())
            .or_default()
            .insert(0, Zeroizing::new(secret.to_owned()));
    }

    /// Adds any other value that must not appear (a key file's contents…).
    pub fn other(&mut self, name: &str, value: &str) {
        self.others
            .push((name.to_owned(), Zeroizing::new(value.to_owned())));
    }

    /// How many issued passwords are known.
    pub fn password_count(&self) -> usize {
        self.passwords.len()
    }

    /// Reads an audit trail (JSON lines) and recovers every issued password
    /// and sub-device sign, checked against its HMAC under `audit_key`.
    pub fn audit_trail(&mut self, audit_file: &Path, audit_key: &Path) -> Result<AuditSummary> {
        let key = enos_signer_svc::key_file::load(audit_key)?;
        let text = std::fs::read_to_string(audit_file)
            .map_err(E2eError::io(format!("reading {}", audit_file.display())))?;
        let mut summary = AuditSummary::default();
        for (n, line) in text.lines().enumerate() {
            let record: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                E2eError::failed(format!("{}:{}: not JSON: {e}", audit_file.display(), n + 1))
            })?;
            let event = record["event"].as_str().unwrap_or_default();
            if event != "issue_mqtt_credential" && event != "sign_sub_device_login" {
                continue;
            }
            let device = record["device"].as_str().unwrap_or_default().to_owned();
            let outcome = record["outcome"].as_str().unwrap_or_default().to_owned();
            let Some(hmac) = record["password_hmac"].as_str() else {
                *summary.refused.entry(outcome.clone()).or_default() += 1;
                *summary
                    .refused_per_device
                    .entry((device, outcome))
                    .or_default() += 1;
                continue;
            };
            let at = format!("{}:{} ({event} for {device})", audit_file.display(), n + 1);
            let secrets = self
                .secrets
                .get(&device)
                .map(|known| known.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .unwrap_or_default();
            let password = reconstruct(&record, &device, secrets, |p| {
                enos_signer_svc::audit::password_hmac(&key, p) == hmac
            });
            let password = password.ok_or_else(|| {
                E2eError::failed(format!(
                    "{at}: no known secret of {device} reproduces the issued password"
                ))
            })?;
            self.passwords.push((at, password));
            summary.issued += 1;
            *summary.issued_per_device.entry(device).or_default() += 1;
        }
        Ok(summary)
    }

    /// Looks for every secret and password in `text` (case-insensitively),
    /// and fails naming what leaked where, never the value itself.
    pub fn scan(&self, source: &str, text: &str) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        let mut values: Vec<&str> = Vec::new();
        for (device, secrets) in &self.secrets {
            for (i, s) in secrets.iter().enumerate() {
                names.push(format!("secret #{} of {device}", i + 1));
                values.push(s);
            }
        }
        for (name, value) in &self.others {
            names.push(name.clone());
            values.push(value);
        }
        for (at, password) in &self.passwords {
            names.push(format!("the password issued at {at}"));
            values.push(password);
        }
        if values.is_empty() {
            return Err(E2eError::failed("the leak scan has nothing to look for"));
        }
        let finder = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&values)
            .map_err(|e| E2eError::failed(format!("building the leak scan: {e}")))?;
        let leaks: Vec<String> = finder
            .find_iter(text)
            .map(|m| {
                let line = text[..m.start()].matches('\n').count() + 1;
                format!("{} in {source}, line {line}", names[m.pattern().as_usize()])
            })
            .take(10)
            .collect();
        if leaks.is_empty() {
            Ok(())
        } else {
            Err(E2eError::failed(format!("leaked: {}", leaks.join("; "))))
        }
    }
}

/// The password of an issuance record, if one of `secrets` reproduces it.
fn reconstruct<'a>(
    record: &serde_json::Value,
    device: &str,
    secrets: impl IntoIterator<Item = &'a str>,
    matches: impl Fn(&str) -> bool,
) -> Option<Zeroizing<String>> {
    let (pk, dk) = device.split_once('/')?;
    let method = SignMethod::parse(record["sign_method"].as_str()?, Md5Policy::Allow).ok()?;
    let fields = SignedFields {
        // The record names the signed clientId.
        client_id: ClientId::new(record["client_id"].as_str()?).ok()?,
        device_key: DeviceKey::new(dk).ok()?,
        product_key: ProductKey::new(pk).ok()?,
        timestamp: TimestampMs::from_millis(record["timestamp_ms"].as_u64()?),
    };
    for secret in secrets {
        let secret = DeviceSecret::new(secret.to_owned()).ok()?;
        for case in [HexCase::Upper, HexCase::Lower] {
            let password = sign_with_case(&fields, method, &secret, case);
            if matches(password.expose_secret()) {
                return Some(Zeroizing::new(password.expose_secret().to_owned()));
            }
        }
    }
    None
}
