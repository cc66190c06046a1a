//! The devices the sandbox knows: [`DeviceRegistry`] loaded from a CSV
//! file, and [`DeviceStore`], which swaps in a reloaded registry.
//!
//! # The device file
//!
//! The device CSV file of [`enos_domain::device_file`] (the signer's
//! import file works as it is), read with the same reader. The sandbox
//! uses every column:
//!
//! | column | meaning here |
//! |---|---|
//! | `productKey`, `deviceKey`, `deviceSecret` | the device and the secret its passwords are signed with; an empty `deviceSecret`: a device *awaiting activation* (see [`crate::activation`]) |
//! | `productSecret` | the product's secret (securemode 3, dynamic activation): the same on every row of the product, or empty on all of them; a product without one does not allow dynamic activation |
//! | `enabled` | `true` (default when the column or value is absent) or `false`: a disabled device is refused (CONNECT) or answered 723 (`combine.login`) |
//! | `gatewayProductKey`, `gatewayDeviceKey` | the gateway a sub-device logs in through (`combine.login`); both empty for a directly connected device |
//!
//! Errors name the line and column; a secret never appears in one.
//! The file only says which devices await activation: the secrets handed
//! out by activations are kept apart ([`crate::activation`]), so that they
//! survive a reload.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

pub use enos_domain::DeviceId;
use enos_domain::device_file::{
    self, DEVICE_SECRET, DeviceRow, GATEWAY_DEVICE_KEY, GATEWAY_PRODUCT_KEY, PRODUCT_SECRET,
};
use enos_sign_core::{DeviceKey, DeviceSecret, ExposeSecret, ProductKey, ProductSecret};

use crate::error::SandboxError;

/// One device as the sandbox knows it. `Debug` redacts the secret.
#[derive(Debug, Clone)]
pub struct Device {
    /// Checks the device's passwords and sub-device signs; `None` for a
    /// device awaiting activation (an empty `deviceSecret` cell), whose
    /// secret, once activated, is kept by [`crate::activation`].
    pub secret: Option<DeviceSecret>,
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
    /// The products that have a product secret (and so allow dynamic
    /// activation), with it: securemode 3 logins are signed with it.
    product_secrets: HashMap<ProductKey, ProductSecret>,
}

impl DeviceRegistry {
    /// Reads and validates a device file. Nothing is accepted unless the
    /// whole file is valid.
    pub fn load(path: &Path) -> Result<Self, SandboxError> {
        let text = std::fs::read(path).map_err(|source| SandboxError::Read {
            path: path.to_owned(),
            cause: source,
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
        let file = device_file::read(csv_text).map_err(|e| error(1, e.to_string()))?;
        let mut devices = HashMap::new();
        // Each product's secret (or none) and the line that first said so.
        let mut products: HashMap<ProductKey, (Option<ProductSecret>, u32)> = HashMap::new();
        for row in file.rows {
            let row = row.map_err(|unreadable| error(unreadable.line.into(), unreadable.reason))?;
            let line = row.line;
            let (id, device, product_secret) = device(row).map_err(|r| error(line.into(), r))?;
            match products.get(&id.product_key) {
                None => {
                    products.insert(id.product_key.clone(), (product_secret, line));
                }
                Some((first, first_line)) => {
                    let same = match (first, &product_secret) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
                        _ => false,
                    };
                    if !same {
                        return Err(error(
                            line.into(),
                            format!(
                                "column {PRODUCT_SECRET}: product {} has another product secret \
                                 (or none) on line {first_line}; every row of a product has the \
                                 same one, or none has",
                                id.product_key
                            ),
                        ));
                    }
                }
            }
            if devices.insert(id.clone(), device).is_some() {
                return Err(error(line.into(), format!("device {id} appears twice")));
            }
        }
        let product_secrets = products
            .into_iter()
            .filter_map(|(pk, (secret, _))| secret.map(|s| (pk, s)))
            .collect();

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
        Ok(DeviceRegistry {
            devices,
            product_secrets,
        })
    }

    /// The secret of `product`, when it has one (and so allows dynamic
    /// activation).
    pub fn product_secret(&self, product: &ProductKey) -> Option<&ProductSecret> {
        self.product_secrets.get(product)
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

/// Checks one row with the sandbox's rules; returns the device and its
/// product's secret, if the row has one.
fn device(row: DeviceRow) -> Result<(DeviceId, Device, Option<ProductSecret>), String> {
    let product_key = ProductKey::new(&row.product_key).map_err(|e| e.to_string())?;
    let device_key = DeviceKey::new(&row.device_key).map_err(|e| e.to_string())?;
    // The errors name the column and position, never the value. An empty
    // cell: a device awaiting activation.
    let secret = match row.device_secret.expose_secret() {
        "" => None,
        written => Some(
            DeviceSecret::new(written.to_owned())
                .map_err(|e| format!("column {DEVICE_SECRET}: {e}"))?,
        ),
    };
    let product_secret = row
        .product_secret
        .as_ref()
        .map(|s| ProductSecret::new(s.expose_secret().to_owned()))
        .transpose()
        .map_err(|e| format!("column {PRODUCT_SECRET}: {e}"))?;
    let enabled = device_file::enabled(row.enabled.as_deref())?.unwrap_or(true);
    let gateway = match &row.gateway {
        None => None,
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
        product_secret,
    ))
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
        assert_eq!(
            a.secret.as_ref().map(ExposeSecret::expose_secret),
            Some("s3cretA")
        );
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
    fn product_secrets_and_devices_awaiting_activation() {
        let registry = parse(
            "productKey,deviceKey,deviceSecret,productSecret\n\
             dyn,a,,Prod-Secret-1\n\
             dyn,b,own-secret,Prod-Secret-1\n\
             fixed,c,,\n",
        )
        .expect("valid file");
        let pk = |p: &str| ProductKey::new(p).expect("pk");
        assert_eq!(
            registry
                .product_secret(&pk("dyn"))
                .map(ExposeSecret::expose_secret),
            Some("Prod-Secret-1")
        );
        assert!(registry.product_secret(&pk("fixed")).is_none());
        assert!(registry.get(&id("dyn", "a")).expect("a").secret.is_none());
        assert!(registry.get(&id("dyn", "b")).expect("b").secret.is_some());
        assert!(registry.get(&id("fixed", "c")).expect("c").secret.is_none());
    }

    #[test]
    fn a_product_has_one_product_secret_and_errors_never_show_it() {
        for text in [
            "productKey,deviceKey,deviceSecret,productSecret\ndyn,a,,Prod-Secret-1\ndyn,b,,Prod-Secret-2\n",
            "productKey,deviceKey,deviceSecret,productSecret\ndyn,a,,Prod-Secret-1\ndyn,b,,\n",
            "productKey,deviceKey,deviceSecret,productSecret\ndyn,a,,\ndyn,b,,Prod-Secret-2\n",
        ] {
            let message = parse(text).expect_err("two product secrets").to_string();
            assert!(message.contains("line 3"), "{message}");
            assert!(message.contains("productSecret"), "{message}");
            assert!(!message.contains("Prod-Secret"), "{message}");
        }
        let message = parse("productKey,deviceKey,deviceSecret,productSecret\ndyn,a,,bad secret\n")
            .expect_err("a space")
            .to_string();
        assert!(
            message.contains("line 2") && message.contains("productSecret"),
            "{message}"
        );
        assert!(!message.contains("bad secret"), "{message}");
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
        assert_eq!(
            device.secret.as_ref().map(ExposeSecret::expose_secret),
            Some("two")
        );

        std::fs::write(&path, "productKey,deviceKey\n").expect("write");
        assert!(store.reload().is_err());
        assert_eq!(store.current().len(), 2, "the previous registry stays");
    }
}
