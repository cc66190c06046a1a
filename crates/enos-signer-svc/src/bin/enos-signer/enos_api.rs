//! `enos-signer enos-api …`: the EnOS application's credential, sealed by
//! the custody into an environment's `credential_file`, and a check that
//! it gets a token. Run with the config of the signer (its custody); the
//! SecretKey comes from a file or a no-echo prompt, never argv.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use enos_signer_svc::{
    SignerConfig,
    config::EnosApiConfig,
    enos_api::{EnosApiClient, open_credential, seal_credential},
};

use crate::admin::SecretArgs;

/// EnOS's certificate API: the application's credential.
#[derive(Subcommand)]
pub(crate) enum EnosApiCommand {
    /// Seals the EnOS application's AccessKey and SecretKey into the
    /// environment's credential_file (mode 0600), with the custody of
    /// --config. The SecretKey is read from --secret-file or, without it,
    /// stdin (a prompt that does not echo on a terminal).
    SetCredential {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// The environment ([enos_api.environments.<name>]).
        #[arg(long)]
        environment: String,
        /// The application's AccessKey (an identifier, not a secret).
        #[arg(long)]
        access_key: String,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Opens the environment's credential and gets an access token from
    /// its API gateway: proves the credential, the URL and the trust.
    Check {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// The environment.
        #[arg(long)]
        environment: String,
        /// A device to list the EnOS certificates of, as `PK/DK` (the
        /// check then also proves a signed call).
        #[arg(long, value_name = "PK/DK")]
        device: Option<String>,
    },
}

fn environment<'a>(
    config: &'a SignerConfig,
    name: &str,
) -> Result<(
    &'a EnosApiConfig,
    &'a enos_signer_svc::config::EnosEnvironmentConfig,
)> {
    let api = config
        .enos_api
        .as_ref()
        .context("the config has no [enos_api] section")?;
    let env = api.environments.get(name).with_context(|| {
        format!(
            "no [enos_api.environments.{name}] in the config (it has: {})",
            api.environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    Ok((api, env))
}

pub(crate) async fn run(command: EnosApiCommand) -> Result<()> {
    match command {
        EnosApiCommand::SetCredential {
            config,
            environment: name,
            access_key,
            secret,
        } => {
            let config = SignerConfig::load(&config)?;
            let (_, env) = environment(&config, &name)?;
            let secret = secret.read()?;
            if secret.is_empty() {
                bail!("the SecretKey is empty");
            }
            let custody = enos_signer_svc::custody::build(&config.custody)?.into_custody();
            seal_credential(
                custody.as_ref(),
                &name,
                &access_key,
                &secret,
                &env.credential_file,
            )?;
            say!(
                "sealed the EnOS API credential of environment {name} (AccessKey {access_key}) into {}",
                env.credential_file.display()
            );
        }
        EnosApiCommand::Check {
            config,
            environment: name,
            device,
        } => {
            let config = SignerConfig::load(&config)?;
            let (api, env) = environment(&config, &name)?;
            let custody = enos_signer_svc::custody::build(&config.custody)?.into_custody();
            let credential = open_credential(Arc::clone(&custody), &name, &env.credential_file)?;
            let client = EnosApiClient::new(
                env,
                credential,
                Arc::new(tokio::sync::Semaphore::new(api.concurrency.get())),
                api.timeout,
            )?;
            client.check_token().await?;
            say!(
                "environment {name}: {} gave an access token",
                env.gateway_url
            );
            if let Some(device) = device {
                let (pk, dk) = device
                    .split_once('/')
                    .with_context(|| format!("--device {device:?} must be PK/DK"))?;
                for cert in client.list(pk, dk).await? {
                    say!(
                        "{pk}/{dk} certSN={} status={} expires_ms={}",
                        cert.cert_sn,
                        cert.status,
                        cert.expire_ms
                    );
                }
            }
        }
    }
    Ok(())
}
