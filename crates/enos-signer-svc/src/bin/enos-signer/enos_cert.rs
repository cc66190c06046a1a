//! `enos-signer enos-cert list|revoke PK DK`: a device's EnOS certificates
//! through EnOS's API, with the signer's config (its custody opens the
//! EnOS credential; its audit trail records each revocation), beside what
//! the registry records (which serial the device holds; a revocation is
//! marked there after it is audited). The registry is read when this
//! process can open it: always with PostgreSQL; with redb only while no
//! signer serves the file (redb has one process at a time), else the
//! command says so and works with EnOS alone.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use enos_registry::{DeviceId, EnosCertificateRecord, Registry};
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

/// The registry, or why not (printed once; EnOS's side still works).
fn registry(config: &SignerConfig) -> Option<std::sync::Arc<dyn Registry>> {
    match enos_registry::open(&config.registry) {
        Ok(registry) => Some(registry),
        Err(e) => {
            say_err!(
                "the registry cannot be read from here ({e}); EnOS's side only (with redb, run this while the signer is stopped, or revoke by deleting the device through the signer)"
            );
            None
        }
    }
}

/// The device of `pk`/`dk`, checked as the registry checks its keys.
fn device(pk: &str, dk: &str) -> Result<DeviceId> {
    Ok(DeviceId::new(
        enos_sign_core::ProductKey::new(pk).context("product key")?,
        enos_sign_core::DeviceKey::new(dk).context("device key")?,
    ))
}

/// What the registry says of one serial, for the listing's column.
fn registry_column(records: &[EnosCertificateRecord], sn: &str, now: u64) -> String {
    match records.iter().find(|r| r.cert_sn == sn) {
        Some(r) => {
            let status = r.status_at(now);
            match (&r.superseded_by, &r.revoked) {
                (_, Some(revoked)) => format!("{status} ({})", revoked.reason),
                (Some(by), None) => format!("{status} (by {by})"),
                (None, None) => status.to_owned(),
            }
        }
        None => "not-recorded".into(),
    }
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
            let id = device(&product_key, &device_key)?;
            let client = api(&config)?.client_for(&product_key)?;
            let certs = client.list(&product_key, &device_key).await?;
            let records = match registry(&config) {
                Some(registry) => Some(registry.enos_certificates_of(&id).await?),
                None => None,
            };
            let now = enos_domain::now_ms();
            if certs.is_empty() {
                say!("{product_key}/{device_key}: no EnOS certificate");
            }
            for cert in &certs {
                let column = records
                    .as_deref()
                    .map(|r| format!(" registry={}", registry_column(r, &cert.cert_sn, now)))
                    .unwrap_or_default();
                say!(
                    "{product_key}/{device_key} certSN={} status={} issued={} expires={}{column}",
                    cert.cert_sn,
                    status(cert.status),
                    date(cert.sign_ms),
                    date(cert.expire_ms)
                );
            }
            if let Some(records) = &records {
                for r in records
                    .iter()
                    .filter(|r| !certs.iter().any(|c| c.cert_sn == r.cert_sn))
                {
                    say!(
                        "{product_key}/{device_key} certSN={} status=not-listed-by-EnOS registry={}",
                        r.cert_sn,
                        registry_column(records, &r.cert_sn, now)
                    );
                }
                match enos_registry::enos_certificates::current(records, now) {
                    Some(held) => say!(
                        "{product_key}/{device_key} holds certSN={} (the registry's record; expires {})",
                        held.cert_sn,
                        date(i64::try_from(held.not_after_ms).unwrap_or(i64::MAX))
                    ),
                    None => say!(
                        "{product_key}/{device_key} holds no EnOS certificate the registry records as current"
                    ),
                }
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
            let id = device(&product_key, &device_key)?;
            let registry = registry(&config);
            let reason_name = reason
                .to_possible_value()
                .map_or_else(|| "unspecified".to_owned(), |v| v.get_name().to_owned());
            let serials: Vec<String> = match cert_sn {
                Some(sn) => vec![sn],
                None => {
                    let listed = client.list(&product_key, &device_key).await?;
                    if let Some(registry) = &registry {
                        // Revoked at EnOS already (on renew): recorded so.
                        for sn in enos_signer_svc::services::enos_records::learn_revocations(
                            registry.as_ref(),
                            &audit,
                            &id,
                            &listed,
                        )
                        .await?
                        {
                            say!(
                                "EnOS certificate {sn} of {product_key}/{device_key} was revoked at EnOS already: recorded"
                            );
                        }
                    }
                    listed
                        .into_iter()
                        .filter(|c| c.status == 0)
                        .map(|c| c.cert_sn)
                        .collect()
                }
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
                // Audited: now recorded (the registry never shows a
                // revocation the trail lacks).
                if let (Ok(()), Some(registry)) = (&result, &registry) {
                    registry
                        .revoke_enos_certificate(&id, &sn, &reason_name, enos_domain::now_ms())
                        .await
                        .context("recording the revocation in the registry")?;
                }
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
