//! `enos-signer custody …`: custody administration, with the service
//! stopped (it works on the registry file directly).

use std::{ops::ControlFlow, path::PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use enos_signer_svc::{
    SignerConfig,
    ops::custody_migrate::{self, Outcome},
};

/// Custody administration.
#[derive(Subcommand)]
pub(crate) enum CustodyCommand {
    /// Create the key-encryption key and the record MAC key on the HSM
    /// token that the config's `[custody] kind = "pkcs11"` names. Refuses
    /// if they exist.
    InitHsm {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
    },
    /// Re-seal every device secret from the custody of `--from-config` to
    /// the custody of `--config` (software ↔ HSM). Atomic per record and
    /// resumable: run it again after an interruption. Stop the service
    /// first; serve with `--config` afterwards.
    Migrate {
        /// The config to migrate to (its custody is the target).
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// The config the records were sealed under (same registry).
        #[arg(long)]
        from_config: PathBuf,
    },
}

impl CustodyCommand {
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            CustodyCommand::InitHsm { config } => {
                let config = SignerConfig::load(&config)?;
                custody_migrate::init_hsm(&config)?;
                say!("created the key-encryption key and the record MAC key on the token");
                Ok(())
            }
            CustodyCommand::Migrate {
                config,
                from_config,
            } => {
                let target = SignerConfig::load(&config)?;
                let source = SignerConfig::load(&from_config)?;
                let report = custody_migrate::migrate_configs(&target, &source, |id, outcome| {
                    if let Outcome::Failed(reason) = outcome {
                        say_err!("{id}: left unchanged: {reason}");
                    }
                    ControlFlow::Continue(())
                })
                .await?;
                for (product, reason) in &report.failed_products {
                    say_err!("product {product}: left unchanged: {reason}");
                }
                let failed = report.failed.len() + report.failed_products.len();
                say!(
                    "migrated {}, already migrated {}, left unchanged {failed}",
                    report.migrated,
                    report.already_migrated,
                );
                if failed > 0 {
                    bail!(
                        "{failed} records were left unchanged (nothing lost); fix the cause and run again"
                    );
                }
                Ok(())
            }
        }
    }
}
