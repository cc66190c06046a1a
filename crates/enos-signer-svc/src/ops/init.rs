//! `enos-signer init`: creates the custody's key files, the audit key and
//! an empty registry, as the config names them.

use std::path::PathBuf;

use crate::{
    config::{AuditSinkConfig, RegistryConfig, SignerConfig},
    custody,
    error::{Result, SignerError},
    key_file,
};
use enos_registry as registry;

/// What [`init`] does about files that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse: nothing is created if any file exists (the CLI).
    Refuse,
    /// Keep existing files and create only the missing ones (tests).
    Keep,
}

/// Creates the keys and the registry. Returns the paths created.
pub fn init(config: &SignerConfig, existing: Existing) -> Result<Vec<PathBuf>> {
    let mut keys: Vec<PathBuf> = custody::key_files(&config.custody);
    keys.push(config.audit.key_file.clone());
    // A PostgreSQL registry is a schema, not a file: migrating it to this
    // binary's version is always safe, so it is never refused.
    let registry_file = match &config.registry {
        RegistryConfig::Redb { path } => Some(path.clone()),
        RegistryConfig::Postgres(_) => None,
    };
    if existing == Existing::Refuse {
        for path in keys.iter().chain(registry_file.as_ref()) {
            if path.exists() {
                return Err(SignerError::Config(format!(
                    "{} already exists; init never overwrites keys or a registry",
                    path.display()
                )));
            }
        }
    }
    let mut created = Vec::new();
    for key in keys {
        if !key.exists() {
            key_file::create(&key)?;
            created.push(key);
        }
    }
    match registry_file {
        Some(file) if file.exists() => {}
        Some(file) => {
            registry::create(&config.registry)?;
            created.push(file);
        }
        None => registry::create(&config.registry)?,
    }
    // The audit table may live in another database than the registry.
    if let AuditSinkConfig::Postgres(pg) = &config.audit.sink {
        registry::PostgresRegistry::create(&pg.connection())?;
    }
    Ok(created)
}
