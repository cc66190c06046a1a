//! `enos-signer registry …`: registry administration that works on the
//! stores themselves (no running signer needed).

use std::path::PathBuf;

use anyhow::Result;
use anyhow::bail;
use clap::Subcommand;
use enos_registry::PostgresRegistry;
use enos_signer_svc::{
    SignerConfig,
    config::{AuditSinkConfig, RegistryConfig},
    ops::registry_copy,
};

/// Registry administration.
#[derive(Subcommand)]
pub(crate) enum RegistryCommand {
    /// Copy every record of the registry `--from` names into the one `--to`
    /// names (redb ↔ PostgreSQL). Secrets stay sealed (both configs must
    /// name the same custody); idempotent and resumable: run it again
    /// after an interruption. Creates or migrates the destination.
    Copy {
        /// The config of the registry to copy from.
        #[arg(long)]
        from: PathBuf,
        /// The config of the registry to copy into.
        #[arg(long)]
        to: PathBuf,
    },
    /// Apply the schema migrations this binary carries to the PostgreSQL
    /// registry (and audit table) the config names; keys are not touched.
    /// Safe to run from several hosts at once, and on a current schema.
    Migrate {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
    },
}

impl RegistryCommand {
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            RegistryCommand::Copy { from, to } => {
                let from = SignerConfig::load(&from)?;
                let to = SignerConfig::load(&to)?;
                let report = registry_copy::copy(&from, &to, |so_far| {
                    if so_far.read % 10_000 == 0 {
                        say_err!("{} records read", so_far.read);
                    }
                })
                .await?;
                say!(
                    "read {}, created {}, updated {}, unchanged {}, kept (newer in the destination) {}, product secrets copied {}",
                    report.read,
                    report.created,
                    report.updated,
                    report.unchanged,
                    report.kept_newer,
                    report.products_copied
                );
                Ok(())
            }
            RegistryCommand::Migrate { config } => {
                let config = SignerConfig::load(&config)?;
                let mut databases = Vec::new();
                if let RegistryConfig::Postgres(pg) = &config.registry {
                    databases.push(pg.clone());
                }
                if let AuditSinkConfig::Postgres(sink) = &config.audit.sink {
                    databases.push(sink.connection());
                }
                if databases.is_empty() {
                    bail!(
                        "the config names no PostgreSQL registry or audit table: nothing to migrate"
                    );
                }
                for db in databases {
                    let applied = PostgresRegistry::create(&db)?;
                    say!(
                        "{}: applied {applied:?}; schema at version {}",
                        db.display_target(),
                        enos_registry::postgres::migrations::latest()
                    );
                }
                Ok(())
            }
        }
    }
}
