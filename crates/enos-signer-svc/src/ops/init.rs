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

/// Creates the registry and the keys. Returns the paths created.
///
/// All or nothing: everything is checked first (no key or registry file
/// exists, their directories exist and are writable); then the registry
/// is created or migrated (the step that needs the database and its
/// rights), then the keys, last. A failure removes what this run wrote, so
/// a second run after the fix starts clean; a PostgreSQL schema already
/// migrated stays (migrating again is a no-op). Errors name the fix.
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
    for path in keys.iter().chain(registry_file.as_ref()) {
        check_directory(path)?;
    }
    let mut created = Created(Vec::new());
    match registry_file {
        Some(file) if file.exists() => {}
        Some(file) => {
            registry::create(&config.registry)?;
            created.0.push(file);
        }
        None => registry::create(&config.registry).map_err(explain_database)?,
    }
    // The audit table may live in another database than the registry.
    if let AuditSinkConfig::Postgres(pg) = &config.audit.sink {
        registry::PostgresRegistry::create(&pg.connection()).map_err(explain_database)?;
    }
    for key in keys {
        if !key.exists() {
            key_file::create(&key)?;
            created.0.push(key);
        }
    }
    Ok(std::mem::take(&mut created.0))
}

/// Files this run created, removed on drop unless taken: an `init` that
/// fails half way leaves nothing a second run would refuse.
struct Created(Vec<PathBuf>);

impl Drop for Created {
    fn drop(&mut self) {
        for path in self.0.drain(..) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "init failed: removed what it had created")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "init failed and could not remove what it had created")
                }
            }
        }
    }
}

/// Fails unless `path`'s directory exists and is a directory, naming the
/// command that makes it.
fn check_directory(path: &std::path::Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(SignerError::Config(format!(
            "{} is not a directory (it should hold {})",
            dir.display(),
            path.display()
        ))),
        Err(_) => Err(SignerError::Config(format!(
            "directory {} does not exist (it should hold {}): create it first, owned by the signer's user and mode 0700, e.g. `install -d -m 0700 -o enos-signer {}`",
            dir.display(),
            path.display(),
            dir.display()
        ))),
    }
}

/// A database error of `init`, with the fix for the common one: the
/// owner role may not create the roles the migrations make.
fn explain_database(error: registry::RegistryError) -> SignerError {
    let message = error.to_string();
    if message.contains("permission denied") {
        return SignerError::Config(format!(
            "{message}: the registry's owner role needs CREATEROLE and CREATE on the database (`ALTER ROLE … CREATEROLE; GRANT CREATE ON DATABASE … TO …`), or run `enos-signer registry migrate` once as a role that has them; no key was written"
        ));
    }
    error.into()
}
