//! [`TestDevice`]s with random secrets, and the CSV files that carry them to
//! the sandbox (EnOS's view) and to the signer (its import).

use std::{fmt, path::Path};

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, MqttCredential, ProductKey, SecureMode,
    SignMethod, SignedFields, TimestampMs,
};
use zeroize::Zeroizing;

use crate::error::{E2eError, Result};

/// The header both CSV readers understand (the sandbox finds columns by
/// name; the signer's import is the EnOS console export format).
const CSV_HEADER: &str =
    "productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey\n";

/// A device as EnOS registers it. `Debug` hides the secret.
#[derive(Clone)]
pub struct TestDevice {
    /// Its product key.
    pub product_key: String,
    /// Its device key.
    pub device_key: String,
    /// Its device secret: random, wiped on drop, never printed.
    secret: Zeroizing<String>,
    /// Whether EnOS (the sandbox) lets it in.
    pub enabled: bool,
    /// The gateway it is a sub-device of, if any.
    pub gateway: Option<(String, String)>,
}

impl fmt::Debug for TestDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDevice")
            .field("product_key", &self.product_key)
            .field("device_key", &self.device_key)
            .field("secret", &"[REDACTED]")
            .field("enabled", &self.enabled)
            .field("gateway", &self.gateway)
            .finish()
    }
}

impl TestDevice {
    /// An enabled device with a fresh random secret.
    pub fn new(product_key: &str, device_key: &str) -> Result<Self> {
        Ok(TestDevice {
            product_key: product_key.to_owned(),
            device_key: device_key.to_owned(),
            secret: random_secret()?,
            enabled: true,
            gateway: None,
        })
    }

    /// This device as a sub-device of `gateway`.
    pub fn behind(mut self, gateway: &TestDevice) -> Self {
        self.gateway = Some((gateway.product_key.clone(), gateway.device_key.clone()));
        self
    }

    /// `pk/dk`, as the logs name devices.
    pub fn id(&self) -> String {
        format!("{}/{}", self.product_key, self.device_key)
    }

    /// The secret, for the few places that must hand it on (the CSV
    /// files, the admin API, signing).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Replaces the secret with a fresh random one; returns the old one.
    pub fn rotate(&mut self) -> Result<Zeroizing<String>> {
        Ok(std::mem::replace(&mut self.secret, random_secret()?))
    }

    /// Signs a login for now with the current secret (clientId = deviceKey,
    /// hmacsha1), as a device SDK holding the secret would.
    pub fn sign_login(&self) -> Result<MqttCredential> {
        sign_login(self, &self.secret)
    }
}

/// Signs a login for `device` with `secret` (possibly an old one).
pub fn sign_login(device: &TestDevice, secret: &str) -> Result<MqttCredential> {
    let bad = |e: enos_sign_core::SignError| E2eError::failed(format!("signing a login: {e}"));
    let fields = SignedFields {
        client_id: ClientId::new(&device.device_key).map_err(bad)?,
        device_key: DeviceKey::new(&device.device_key).map_err(bad)?,
        product_key: ProductKey::new(&device.product_key).map_err(bad)?,
        timestamp: TimestampMs::from_millis(enos_agent::now_ms()),
    };
    let secret = DeviceSecret::new(secret.to_owned()).map_err(bad)?;
    MqttCredential::sign(
        fields,
        SecureMode::DeviceSecret,
        SignMethod::HmacSha1,
        &secret,
    )
    .map_err(bad)
}

/// The password of `credential`, for an MQTT CONNECT only.
pub fn password(credential: &MqttCredential) -> &str {
    credential.password.expose_secret()
}

/// 24 random alphanumerics (~143 bits): what a console would generate.
pub fn random_secret() -> Result<Zeroizing<String>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = Zeroizing::new([0u8; 24]);
    getrandom::fill(&mut bytes[..])
        .map_err(|e| E2eError::failed(format!("no randomness for a secret: {e}")))?;
    let mut secret = Zeroizing::new(String::with_capacity(24));
    for b in bytes.iter() {
        // 256 % 62 != 0: a slight bias, irrelevant for throwaway secrets.
        secret.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    Ok(secret)
}

/// Writes `devices` as CSV (mode 0600: it holds secrets).
pub fn write_csv(path: &Path, devices: &[&TestDevice]) -> Result<()> {
    write_device_file(path, devices, &[], &[])
}

/// Writes the sandbox's device file for dynamic activation: `devices`,
/// then `awaiting` with an empty `deviceSecret` (devices that await
/// activation), and a `productSecret` column holding each product's
/// secret from `product_secrets` (mode 0600).
pub fn write_sandbox_csv(
    path: &Path,
    devices: &[&TestDevice],
    awaiting: &[&TestDevice],
    product_secrets: &[(&str, &str)],
) -> Result<()> {
    write_device_file(path, devices, awaiting, product_secrets)
}

fn write_device_file(
    path: &Path,
    devices: &[&TestDevice],
    awaiting: &[&TestDevice],
    product_secrets: &[(&str, &str)],
) -> Result<()> {
    let with_products = !product_secrets.is_empty();
    let mut csv = Zeroizing::new(String::from(CSV_HEADER.trim_end()));
    if with_products {
        csv.push_str(",productSecret");
    }
    csv.push('\n');
    let rows = devices
        .iter()
        .map(|d| (*d, true))
        .chain(awaiting.iter().map(|d| (*d, false)));
    for (d, with_secret) in rows {
        let (gpk, gdk) = d.gateway.clone().unwrap_or_default();
        let product_secret = product_secrets
            .iter()
            .find(|(pk, _)| *pk == d.product_key)
            .map_or("", |(_, secret)| secret);
        let mut fields = vec![
            d.product_key.as_str(),
            d.device_key.as_str(),
            if with_secret { d.secret() } else { "" },
            if d.enabled { "true" } else { "false" },
            gpk.as_str(),
            gdk.as_str(),
        ];
        if with_products {
            fields.push(product_secret);
        }
        // Pushed piece by piece: no unwiped temporary holds the secret.
        for (i, field) in fields.into_iter().enumerate() {
            if i > 0 {
                csv.push(',');
            }
            csv.push_str(field);
        }
        csv.push('\n');
    }
    enos_testkit::write_private(path, csv.as_bytes())
        .map_err(|e| E2eError::failed(format!("writing {}: {e}", path.display())))
}

/// Every file under `dir`, recursively (for scans of what a run left).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}
