//! `enos-signer registry …`: registry administration that works on the
//! stores themselves (no running signer needed).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use enos_signer_svc::{SignerConfig, registry_copy};

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
}

impl RegistryCommand {
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            RegistryCommand::Copy { from, to } => {
                let from = SignerConfig::load(&from)?;
                let to = SignerConfig::load(&to)?;
                let report = registry_copy::copy(&from, &to, |so_far| {
                    if so_far.read % 10_000 == 0 {
                        eprintln!("{} records read", so_far.read);
                    }
                })
                .await?;
                println!(
                    "read {}, created {}, updated {}, unchanged {}, kept (newer in the destination) {}",
                    report.read,
                    report.created,
                    report.updated,
                    report.unchanged,
                    report.kept_newer
                );
                Ok(())
            }
        }
    }
}
