//! Who a certificate names: the one rule shared by the signer, which reads
//! it, and whoever issues certificates (the demo's PKI, the tests, an
//! operator's CA).
//!
//! A client certificate carries exactly one URI SAN under `spiffe://enos/`:
//!
//! | role | URI SAN |
//! |---|---|
//! | device (gateway) | `spiffe://enos/device/{productKey}/{deviceKey}` |
//! | admin | `spiffe://enos/admin/{name}` |
//!
//! `/` can appear in neither key (see `enos-sign-core`), so the path splits
//! unambiguously. Anything else is not an identity.

use core::fmt;

use enos_sign_core::{DeviceKey, ProductKey};

/// The URI prefix every identity starts with.
pub const URI_PREFIX: &str = "spiffe://enos/";

/// What an mTLS peer is allowed to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A device: it may get credentials for itself and sign logins for its
    /// bound sub-devices.
    Device {
        /// Its product key.
        product_key: ProductKey,
        /// Its device key.
        device_key: DeviceKey,
    },
    /// An operator or tool allowed to call the Admin service.
    Admin {
        /// A name for the audit log; `[A-Za-z0-9._-]`, 1 to 64 characters.
        name: String,
    },
}

/// Why a URI is not an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnIdentity(
    /// What is wrong, in words.
    pub &'static str,
);

impl fmt::Display for NotAnIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an enos identity: {}", self.0)
    }
}

impl std::error::Error for NotAnIdentity {}

impl PeerIdentity {
    /// The URI SAN to put into a certificate for this identity.
    pub fn to_uri(&self) -> String {
        match self {
            PeerIdentity::Device {
                product_key,
                device_key,
            } => format!("{URI_PREFIX}device/{product_key}/{device_key}"),
            PeerIdentity::Admin { name } => format!("{URI_PREFIX}admin/{name}"),
        }
    }

    /// Parses a URI SAN.
    pub fn from_uri(uri: &str) -> Result<Self, NotAnIdentity> {
        let path = uri
            .strip_prefix(URI_PREFIX)
            .ok_or(NotAnIdentity("the URI does not start with spiffe://enos/"))?;
        let mut parts = path.split('/');
        let identity = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("device"), Some(pk), Some(dk), None) => PeerIdentity::Device {
                product_key: ProductKey::new(pk)
                    .map_err(|_| NotAnIdentity("invalid productKey"))?,
                device_key: DeviceKey::new(dk).map_err(|_| NotAnIdentity("invalid deviceKey"))?,
            },
            (Some("admin"), Some(name), None, None) => {
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !valid {
                    return Err(NotAnIdentity("invalid admin name"));
                }
                PeerIdentity::Admin {
                    name: name.to_owned(),
                }
            }
            _ => {
                return Err(NotAnIdentity(
                    "expected device/{productKey}/{deviceKey} or admin/{name}",
                ));
            }
        };
        Ok(identity)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Device {
                product_key,
                device_key,
            } => write!(f, "device {product_key}/{device_key}"),
            PeerIdentity::Admin { name } => write!(f, "admin {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let device = PeerIdentity::Device {
            product_key: ProductKey::new("Pk1").expect("valid"),
            device_key: DeviceKey::new("AA:BB:CC").expect("valid"),
        };
        assert_eq!(device.to_uri(), "spiffe://enos/device/Pk1/AA:BB:CC");
        assert_eq!(PeerIdentity::from_uri(&device.to_uri()), Ok(device));
        let admin = PeerIdentity::Admin {
            name: "ops-1".into(),
        };
        assert_eq!(PeerIdentity::from_uri(&admin.to_uri()), Ok(admin));
        for bad in [
            "spiffe://enos/device/Pk1",
            "spiffe://enos/device/Pk1/dk/extra",
            "spiffe://enos/device/P|k/dk",
            "spiffe://other/device/Pk1/dk",
            "spiffe://enos/admin/",
            "spiffe://enos/admin/a b",
            "spiffe://enos/root/x",
            "",
        ] {
            assert!(PeerIdentity::from_uri(bad).is_err(), "{bad:?} accepted");
        }
    }
}
