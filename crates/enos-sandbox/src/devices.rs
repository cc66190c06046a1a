//! The devices the sandbox knows: [`DeviceRegistry`] loaded from a CSV
//! file, and [`DeviceStore`], which swaps in a reloaded registry.
//!
//! # The device file
//!
//! A CSV file with a header row. Columns are found by name, in any order;
//! columns the sandbox does not know are ignored, so the signer's import
//! file works as it is.
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `productKey` | yes | the device's product key |
//! | `deviceKey` | yes | the device's key within its product |
//! | `deviceSecret` | yes | the secret its passwords are signed with |
//! | `enabled` | no | `true` (default when the column or value is absent) or `false`: a disabled device is refused (CONNECT) or answered 723 (`combine.login`) |
//! | `gatewayProductKey`, `gatewayDeviceKey` | no, as a pair | the gateway a sub-device logs in through (`combine.login`); both empty for a directly connected device |
//!
//! Errors name the line and column; a secret never appears in one.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use enos_sign_core::{DeviceKey, DeviceSecret, ProductKey};

use crate::error::SandboxError;

/// A device's identity: product key and device key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// The product the device belongs to.
    pub product_key: ProductKey,
    /// The device within its product.
    pub device_key: DeviceKey,
}

impl DeviceId {
    /// The identity `(product_key, device_key)`.
    pub fn new(product_key: ProductKey, device_key: DeviceKey) -> Self {
        DeviceId {
            product_key,
            device_key,
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.product_key, self.device_key)
    }
}

/// One device as the sandbox knows it. `Debug` redacts the secret.
#[derive(Debug, Clone)]
pub struct Device {
    /// Checks the device's passwords and sub-device signs.
    pub secret: DeviceSecret,
    /// A disabled device is refused, as EnOS refuses a disabled device.
    pub enabled: bool,
    /// For a sub-device: the only gateway it may log in through.
    pub gateway: Option<DeviceId>,
}

/// All devices from one device file.
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry {
    /// Keyed by identity: lookups happen on every CONNECT and login.
    devices: HashMap<DeviceId, Device>,
}

const PRODUCT_KEY: &str = "productKey";
const DEVICE_KEY: &str = "deviceKey";
const DEVICE_SECRET: &str = "deviceSecret";
const ENABLED: &str = "enabled";
const GATEWAY_PRODUCT_KEY: &str = "gatewayProductKey";
const GATEWAY_DEVICE_KEY: &str = "gatewayDeviceKey";

/// Where each known column is in the file.
struct Columns {
    /// `productKey`.
    product_key: usize,
    /// `deviceKey`.
    device_key: usize,
    /// `deviceSecret`.
    device_secret: usize,
    /// `enabled`, when present.
    enabled: Option<usize>,
    /// `gatewayProductKey` and `gatewayDeviceKey`, when both present.
    gateway: Option<(usize, usize)>,
}

impl DeviceRegistry {
    /// Reads and validates a device file. Nothing is accepted unless the
    /// whole file is valid.
    pub fn load(path: &Path) -> Result<Self, SandboxError> {
        let text = std::fs::read(path).map_err(|source| SandboxError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses device-file contents; `path` only names the file in errors.
    pub fn parse(path: &Path, csv_text: &[u8]) -> Result<Self, SandboxError> {
        let error = |line: u64, reason: String| SandboxError::Devices {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(csv_text);
        let headers = reader
            .headers()
            .map_err(|e| error(1, csv_reason(&e)))?
            .clone();
        let columns = Columns::find(&headers).map_err(|reason| error(1, reason))?;

        let mut devices = HashMap::new();
        let mut record = csv::StringRecord::new();
        loop {
            let line = reader.position().line();
            match reader.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(error(line, csv_reason(&e))),
            }
            let line = record.position().map_or(line, csv::Position::line);
            let (id, device) = columns.device(&record).map_err(|r| error(line, r))?;
            if devices.insert(id.clone(), device).is_some() {
                return Err(error(line, format!("device {id} appears twice")));
            }
        }

        // Every gateway named must itself be a device of this file, and a
        // directly connected one.
        for (id, device) in &devices {
            if let Some(gateway) = &device.gateway {
                match devices.get(gateway) {
                    None => {
                        return Err(error(
                            0,
                            format!("the gateway {gateway} of sub-device {id} is not in the file"),
                        ));
                    }
                    Some(gw) if gw.gateway.is_some() => {
                        return Err(error(
                            0,
                            format!(
                                "the gateway {gateway} of sub-device {id} is itself a sub-device"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(DeviceRegistry { devices })
    }

    /// The device `id`, if known.
    pub fn get(&self, id: &DeviceId) -> Option<&Device> {
        self.devices.get(id)
    }

    /// How many devices the file holds.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the file holds no device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// A csv error in words. csv's own messages for these kinds hold positions
/// and counts, never field values; deserialization (which could echo a
/// value) is not used.
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not valid UTF-8", err.field() + 1)
        }
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the record has {len} fields but the header has {expected_len}"),
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => "malformed CSV".to_owned(),
    }
}

impl Columns {
    fn find(headers: &csv::StringRecord) -> Result<Self, String> {
        let index = |name: &str| headers.iter().position(|h| h == name);
        let required = |name: &str| {
            index(name).ok_or_else(|| {
                format!(
                    "the header row has no {name} column; it needs at least \
                     {PRODUCT_KEY},{DEVICE_KEY},{DEVICE_SECRET}"
                )
            })
        };
        let gateway = match (index(GATEWAY_PRODUCT_KEY), index(GATEWAY_DEVICE_KEY)) {
            (Some(pk), Some(dk)) => Some((pk, dk)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{GATEWAY_PRODUCT_KEY} and {GATEWAY_DEVICE_KEY} go together: one is missing"
                ));
            }
        };
        Ok(Columns {
            product_key: required(PRODUCT_KEY)?,
            device_key: required(DEVICE_KEY)?,
            device_secret: required(DEVICE_SECRET)?,
            enabled: index(ENABLED),
            gateway,
        })
    }

    fn device(&self, record: &csv::StringRecord) -> Result<(DeviceId, Device), String> {
        let field = |i: usize| record.get(i).unwrap_or_default();
        let product_key = ProductKey::new(field(self.product_key)).map_err(|e| e.to_string())?;
        let device_key = DeviceKey::new(field(self.device_key)).map_err(|e| e.to_string())?;
        // The error names the column and position, never the value.
        let secret = DeviceSecret::new(field(self.device_secret).to_owned())
            .map_err(|e| format!("column {DEVICE_SECRET}: {e}"))?;
        let enabled = match self.enabled.map(field) {
            None | Some("") => true,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(format!("column {ENABLED} must be true or false")),
        };
        let gateway = match self.gateway.map(|(pk, dk)| (field(pk), field(dk))) {
            None | Some(("", "")) => None,
            Some((pk, dk)) if !pk.is_empty() && !dk.is_empty() => Some(DeviceId::new(
                ProductKey::new(pk).map_err(|e| format!("column {GATEWAY_PRODUCT_KEY}: {e}"))?,
                DeviceKey::new(dk).map_err(|e| format!("column {GATEWAY_DEVICE_KEY}: {e}"))?,
            )),
            Some(_) => {
                return Err(format!(
                    "{GATEWAY_PRODUCT_KEY} and {GATEWAY_DEVICE_KEY} are both set or both empty"
                ));
            }
        };
        let id = DeviceId::new(product_key, device_key);
        if gateway.as_ref() == Some(&id) {
            return Err(format!("device {id} names itself as its gateway"));
        }
        Ok((
            id,
            Device {
                secret,
                enabled,
                gateway,
            },
        ))
    }
}

/// The device registry in force, replaced whole on reload so that a
/// CONNECT sees either the old or the new file, never a mix.
#[derive(Debug)]
pub struct DeviceStore {
    /// The file reloads read.
    path: PathBuf,
    /// The registry in force; readers clone the `Arc` and drop the lock.
    current: RwLock<Arc<DeviceRegistry>>,
}

impl DeviceStore {
    /// Loads `path`; fails when the file is invalid.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SandboxError> {
        let path = path.into();
        let registry = DeviceRegistry::load(&path)?;
        Ok(DeviceStore {
            path,
            current: RwLock::new(Arc::new(registry)),
        })
    }

    /// The device file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry in force.
    pub fn current(&self) -> Arc<DeviceRegistry> {
        // A poisoned lock still holds a whole registry: replacing it is
        // the only write, and it cannot panic half-way.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the file. On error the registry in force stays, and the
    /// error says why; on success returns how many devices are now known.
    pub fn reload(&self) -> Result<usize, SandboxError> {
        let registry = Arc::new(DeviceRegistry::load(&self.path)?);
        let count = registry.len();
        match self.current.write() {
            Ok(mut guard) => *guard = registry,
            Err(poisoned) => *poisoned.into_inner() = registry,
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use enos_sign_core::ExposeSecret;

    use super::*;

    fn parse(text: &str) -> Result<DeviceRegistry, SandboxError> {
        DeviceRegistry::parse(Path::new("devices.csv"), text.as_bytes())
    }

    fn id(pk: &str, dk: &str) -> DeviceId {
        DeviceId::new(
            ProductKey::new(pk).expect("valid product key"),
            DeviceKey::new(dk).expect("valid device key"),
        )
    }

    #[test]
    fn minimal_file_with_extra_columns_in_any_order() {
        let registry = parse(
            "deviceSecret,comment,deviceKey,productKey\n\
             s3cretA,first device,devA,pk1\n\
             s3cretB,,devB,pk1\n",
        )
        .expect("valid file");
        assert_eq!(registry.len(), 2);
        let a = registry.get(&id("pk1", "devA")).expect("devA is known");
        assert_eq!(a.secret.expose_secret(), "s3cretA");
        assert!(a.enabled);
        assert!(a.gateway.is_none());
        assert!(registry.get(&id("pk1", "devC")).is_none());
    }

    #[test]
    fn enabled_and_gateway_columns() {
        let registry = parse(
            "productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey\n\
             gwpk,gw1,gwsecret,true,,\n\
             subpk,sub1,subsecret,,gwpk,gw1\n\
             subpk,sub2,subsecret2,FALSE,gwpk,gw1\n",
        )
        .expect("valid file");
        let sub1 = registry.get(&id("subpk", "sub1")).expect("sub1 is known");
        assert!(sub1.enabled);
        assert_eq!(sub1.gateway, Some(id("gwpk", "gw1")));
        assert!(!registry.get(&id("subpk", "sub2")).expect("sub2").enabled);
    }

    #[test]
    fn errors_name_the_line_and_never_the_secret() {
        let err = parse("productKey,deviceKey,deviceSecret\npk,dk,ok\npk,dk2,bad secret!\n")
            .expect_err("a secret with a space is invalid");
        let message = err.to_string();
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("deviceSecret"), "{message}");
        assert!(!message.contains("bad secret"), "{message}");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let cases = [
            ("productKey,deviceKey\npk,dk\n", "no deviceSecret column"),
            (
                "productKey,deviceKey,deviceSecret\npk,dk,s\npk,dk,t\n",
                "appears twice",
            ),
            (
                "productKey,deviceKey,deviceSecret,enabled\npk,dk,s,maybe\n",
                "true or false",
            ),
            (
                "productKey,deviceKey,deviceSecret,gatewayProductKey\npk,dk,s,gw\n",
                "go together",
            ),
            (
                "productKey,deviceKey,deviceSecret,gatewayProductKey,gatewayDeviceKey\npk,dk,s,gw,\n",
                "both set or both empty",
            ),
            (
                "productKey,deviceKey,deviceSecret,gatewayProductKey,gatewayDeviceKey\npk,dk,s,gw,gw1\n",
                "not in the file",
            ),
            (
                "productKey,deviceKey,deviceSecret\npk|x,dk,s\n",
                "forbidden character",
            ),
            ("productKey,deviceKey,deviceSecret\npk,dk\n", "fields"),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }

    #[test]
    fn reload_keeps_the_old_registry_on_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("devices.csv");
        std::fs::write(&path, "productKey,deviceKey,deviceSecret\npk,dk,one\n").expect("write");
        let store = DeviceStore::open(&path).expect("valid file");

        std::fs::write(
            &path,
            "productKey,deviceKey,deviceSecret\npk,dk,two\npk,dk2,x\n",
        )
        .expect("write");
        assert_eq!(store.reload().expect("valid file"), 2);
        let current = store.current();
        let device = current.get(&id("pk", "dk")).expect("still known");
        assert_eq!(device.secret.expose_secret(), "two");

        std::fs::write(&path, "productKey,deviceKey\n").expect("write");
        assert!(store.reload().is_err());
        assert_eq!(store.current().len(), 2, "the previous registry stays");
    }
}
