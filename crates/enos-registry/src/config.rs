//! [`RegistryConfig`]: which store, as the `[registry]` table of the
//! signer's config file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The registry backend. One variant per store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryConfig {
    /// The embedded default: one redb file.
    Redb {
        /// The database file; `enos-signer init` creates it.
        path: PathBuf,
    },
    /// A PostgreSQL database that any number of replicas share; see
    /// [`crate::postgres::PostgresConfig`] for the keys.
    Postgres(crate::postgres::PostgresConfig),
}
