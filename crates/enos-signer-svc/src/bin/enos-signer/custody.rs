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
    /// Re-seal every device secret from the custody of `--from` to the
    /// custody of `--to` (software ↔ HSM). Atomic per record and
    /// resumable: run it again after an interruption. Stop the service
    /// first; serve with the `--to` config afterwards. The flags are
    /// `registry copy`'s (`--config` and `--from-config` still work).
    Migrate {
        /// The config to migrate to (its custody is the target).
        #[arg(long = "to", alias = "config", env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// The config the records were sealed under (same registry).
        #[arg(long = "from", alias = "from-config")]
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::CustodyCommand;
    use crate::{Cli, Command};

    /// #29 item 10: `custody migrate` takes `registry copy`'s `--from` and
    /// `--to`; the old `--from-config` and `--config` still work.
    #[test]
    fn migrate_takes_from_and_to_and_the_old_names() {
        for args in [
            ["--from", "old.toml", "--to", "new.toml"],
            ["--from-config", "old.toml", "--config", "new.toml"],
        ] {
            let cli = Cli::try_parse_from(
                ["enos-signer", "custody", "migrate"]
                    .into_iter()
                    .chain(args),
            )
            .expect("parses");
            let Command::Custody(CustodyCommand::Migrate {
                config,
                from_config,
            }) = cli.command
            else {
                panic!("not custody migrate");
            };
            assert_eq!(config, std::path::Path::new("new.toml"), "{args:?}");
            assert_eq!(from_config, std::path::Path::new("old.toml"), "{args:?}");
        }
    }
}
