//! `enos-signer enos-cert list|revoke PK DK`: a device's EnOS certificates
//! through EnOS's API, with the signer's config (its custody opens the
//! EnOS credential; its audit trail records each revocation).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use enos_signer_svc::{SignerConfig, audit::AuditRecord, enos_api::EnosApi};

/// RFC 5280 reasons EnOS's revoke takes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Reason {
    /// 0.
    Unspecified,
    /// 1.
    KeyCompromise,
    /// 3.
    AffiliationChanged,
    /// 4: replaced by a renewal.
    Superseded,
    /// 5: the device is retired.
    CessationOfOperation,
    /// 6.
    CertificateHold,
    /// 9.
    PrivilegeWithdrawn,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::Unspecified => 0,
            Reason::KeyCompromise => 1,
            Reason::AffiliationChanged => 3,
            Reason::Superseded => 4,
            Reason::CessationOfOperation => 5,
            Reason::CertificateHold => 6,
            Reason::PrivilegeWithdrawn => 9,
        }
    }
}

/// A device's EnOS device certificates.
#[derive(Subcommand)]
pub(crate) enum EnosCertCommand {
    /// Lists the device's EnOS certificates: serial, status, dates.
    List {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// Product key.
        product_key: String,
        /// Device key.
        device_key: String,
    },
    /// Revokes the device's valid EnOS certificates (or the one of
    /// --cert-sn); each revocation is audited.
    Revoke {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// Product key.
        product_key: String,
        /// Device key.
        device_key: String,
        /// Only this EnOS serial (certSN).
        #[arg(long)]
        cert_sn: Option<String>,
        /// Why (EnOS's RFC 5280 reason).
        #[arg(long, value_enum, default_value = "unspecified")]
        reason: Reason,
    },
}

fn api(config: &SignerConfig) -> Result<EnosApi> {
    let section = config
        .enos_api
        .clone()
        .context("the config has no [enos_api] section")?;
    let custody = enos_signer_svc::custody::build(&config.custody)?.into_custody();
    Ok(EnosApi::new(section, custody))
}

fn date(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

fn status(code: i64) -> &'static str {
    match code {
        0 => "valid",
        1 => "revoked",
        2 => "expired",
        _ => "unknown",
    }
}

pub(crate) async fn run(command: EnosCertCommand) -> Result<()> {
    match command {
        EnosCertCommand::List {
            config,
            product_key,
            device_key,
        } => {
            let config = SignerConfig::load(&config)?;
            let client = api(&config)?.client_for(&product_key)?;
            let certs = client.list(&product_key, &device_key).await?;
            if certs.is_empty() {
                say!("{product_key}/{device_key}: no EnOS certificate");
            }
            for cert in certs {
                say!(
                    "{product_key}/{device_key} certSN={} status={} issued={} expires={}",
                    cert.cert_sn,
                    status(cert.status),
                    date(cert.sign_ms),
                    date(cert.expire_ms)
                );
            }
        }
        EnosCertCommand::Revoke {
            config,
            product_key,
            device_key,
            cert_sn,
            reason,
        } => {
            let config = SignerConfig::load(&config)?;
            let client = api(&config)?.client_for(&product_key)?;
            let audit = enos_signer_svc::audit::Audit::open(&config.audit)?;
            let serials: Vec<String> = match cert_sn {
                Some(sn) => vec![sn],
                None => client
                    .list(&product_key, &device_key)
                    .await?
                    .into_iter()
                    .filter(|c| c.status == 0)
                    .map(|c| c.cert_sn)
                    .collect(),
            };
            if serials.is_empty() {
                say!("{product_key}/{device_key}: no valid EnOS certificate to revoke");
            }
            let mut failed = 0;
            for sn in serials {
                let result = client
                    .revoke(&product_key, &device_key, &sn, reason.code())
                    .await;
                let mut record = AuditRecord::new(
                    "revoke_enos_certificate",
                    None,
                    Some(format!("{product_key}/{device_key}")),
                    if result.is_ok() { "ok" } else { "refused" },
                );
                record.serial = Some(sn.clone());
                record.detail = Some(match &result {
                    Ok(()) => format!("reason {reason:?} (EnOS CLI)"),
                    Err(e) => format!("reason {reason:?} (EnOS CLI): {e}"),
                });
                audit
                    .record(&record)
                    .await
                    .context("auditing the revocation")?;
                match result {
                    Ok(()) => say!(
                        "revoked EnOS certificate {sn} of {product_key}/{device_key} ({reason:?})"
                    ),
                    Err(e) => {
                        failed += 1;
                        say_err!("EnOS certificate {sn} of {product_key}/{device_key}: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} revocation(s) failed");
            }
        }
    }
    Ok(())
}
