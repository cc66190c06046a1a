//! [`LoopPki`]: one throwaway CA for the whole loop, its files on disk.
//!
//! One CA signs the signer's and the broker's server certificates and the
//! device and admin client certificates: the signer trusts it for mTLS,
//! the sandbox's TLS listener (EnOS's 18883) and Mosquitto require client
//! certificates chaining to it.

use std::path::{Path, PathBuf};

use enos_testkit::{Identity, IdentityFiles, Pki};

use crate::{
    devices::TestDevice,
    error::{E2eError, Result},
};

/// The CA and the files written so far.
pub struct LoopPki {
    /// Issues every certificate.
    pub pki: Pki,
    /// Where the files go.
    pub dir: PathBuf,
    /// The CA certificate file.
    pub ca: PathBuf,
}

impl std::fmt::Debug for LoopPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopPki")
            .field("dir", &self.dir)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

fn pki_error(e: Box<dyn std::error::Error + Send + Sync>) -> E2eError {
    E2eError::Component(e)
}

impl LoopPki {
    /// A new CA named `name`, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(E2eError::io(format!("creating {}", dir.display())))?;
        let pki = Pki::new(name).map_err(pki_error)?;
        let ca = pki.write_ca(dir).map_err(pki_error)?;
        Ok(LoopPki {
            pki,
            dir: dir.to_owned(),
            ca,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.pki.ca_pem()
    }

    /// A server certificate for 127.0.0.1, written as `stem.pem`/`stem.key`.
    pub fn server(&self, stem: &str) -> Result<IdentityFiles> {
        self.pki
            .server(&[])
            .and_then(|id| id.write(&self.dir, stem))
            .map_err(pki_error)
    }

    /// The device certificate of `device`
    /// (`spiffe://enos/device/{pk}/{dk}`), written to the directory.
    pub fn device(&self, device: &TestDevice) -> Result<(IdentityFiles, Identity)> {
        let identity = self
            .pki
            .device(&device.product_key, &device.device_key)
            .map_err(pki_error)?;
        let stem = format!("device-{}-{}", device.product_key, device.device_key);
        let files = identity.write(&self.dir, &stem).map_err(pki_error)?;
        Ok((files, identity))
    }

    /// An admin certificate (`spiffe://enos/admin/{name}`), written.
    pub fn admin(&self, name: &str) -> Result<IdentityFiles> {
        self.pki
            .admin(name)
            .and_then(|id| id.write(&self.dir, &format!("admin-{name}")))
            .map_err(pki_error)
    }
}
