//! The CA's commands (`[ca]`): `ca init` and `ca import-cert` on the
//! config (service stopped or running), and over mTLS with an admin
//! certificate `enroll-token`, `revoke-tokens`, `revoke-cert`, `certs`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use enos_signer_proto::v1::{self, admin_client::AdminClient};
use enos_signer_svc::{
    SignerConfig,
    ops::ca::{CaInitOutcome, CaKind},
};

use crate::Connection;

/// `enos-signer ca …`.
#[derive(Subcommand)]
pub(crate) enum CaCommand {
    /// Make the CA: its key in custody (sealed, or in the HSM), then a
    /// self-signed root, or (--intermediate) a request for your own root.
    Init {
        /// The signer's config file (with a [ca] section).
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// Make a request for an intermediate instead of a root; install
        /// the certificate your root issues with `ca import-cert`.
        #[arg(long)]
        intermediate: bool,
        /// The CA's common name.
        #[arg(long, default_value = "enos-signer device CA")]
        common_name: String,
        /// How long a root is valid (`10y`, `5y`, …).
        #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
        validity: Duration,
        /// Where to write the root certificate or the request (PEM);
        /// without it, stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing CA: every certificate it issued stops being
        /// trusted, and its devices must enroll again.
        #[arg(long)]
        replace: bool,
    },
    /// Install the certificate your root issued for `ca init --intermediate`:
    /// a PEM file with it first, then the chain up to the root.
    ImportCert {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
        /// The PEM chain file.
        chain: PathBuf,
    },
}

impl CaCommand {
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            CaCommand::Init {
                config,
                intermediate,
                common_name,
                validity,
                out,
                replace,
            } => {
                let config = SignerConfig::load(&config)?;
                let kind = if intermediate {
                    CaKind::Intermediate { common_name }
                } else {
                    CaKind::Root {
                        common_name,
                        validity,
                    }
                };
                let (pem, what) = match enos_signer_svc::ops::ca::init(&config, kind, replace)
                    .await?
                {
                    CaInitOutcome::Root { certificate_pem } => {
                        (certificate_pem, "root certificate")
                    }
                    CaInitOutcome::Intermediate { request_pem } => (
                        request_pem,
                        "request: have your root sign it (CA:TRUE, pathlen:0), then run `enos-signer ca import-cert`",
                    ),
                };
                match out {
                    Some(path) => {
                        std::fs::write(&path, pem)
                            .with_context(|| format!("writing {}", path.display()))?;
                        say!("CA made; {what} written to {}", path.display());
                    }
                    None => {
                        say_err!("CA made; {what}:");
                        {
                            use std::io::Write as _;
                            let _ = write!(std::io::stdout(), "{pem}");
                        }
                    }
                }
            }
            CaCommand::ImportCert { config, chain } => {
                let config = SignerConfig::load(&config)?;
                let pem = std::fs::read(&chain)
                    .with_context(|| format!("reading {}", chain.display()))?;
                let count = enos_signer_svc::ops::ca::import_cert(&config, &pem).await?;
                say!(
                    "CA certificate installed ({count} certificates in its chain); every replica serves it within 30 s"
                );
            }
        }
        Ok(())
    }
}

/// The CA's admin commands.
#[derive(Subcommand)]
pub(crate) enum CertificateCommand {
    /// Print a one-time enrollment token for a device (or, with --csv, one
    /// per device of an EnOS CSV export: productKey,deviceKey,token,expiresAt).
    EnrollToken {
        /// The product key (not with --csv).
        #[arg(required_unless_present = "csv", conflicts_with = "csv")]
        product_key: Option<String>,
        /// The device key (not with --csv).
        #[arg(required_unless_present = "csv", conflicts_with = "csv")]
        device_key: Option<String>,
        /// How long the token is valid (at most 30 days; default: the
        /// signer's `[ca] token_ttl`, 24 h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// A CSV file with productKey and deviceKey columns.
        #[arg(long)]
        csv: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a device's unused enrollment tokens.
    RevokeTokens {
        /// The product key.
        product_key: String,
        /// The device key.
        device_key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a certificate by SERIAL (hex), or every certificate of PK DK.
    RevokeCert {
        /// SERIAL, or PRODUCT_KEY DEVICE_KEY.
        #[arg(num_args = 1..=2, required = true)]
        target: Vec<String>,
        /// Why (kept in the audit trail and the registry).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List a device's certificates, newest first.
    Certs {
        /// The product key.
        product_key: String,
        /// The device key.
        device_key: String,
        #[command(flatten)]
        connection: Connection,
    },
}

fn status(e: tonic::Status) -> anyhow::Error {
    crate::handshake::status(e)
}

/// `ms` since the epoch as RFC 3339.
fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl CertificateCommand {
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            CertificateCommand::EnrollToken {
                product_key,
                device_key,
                ttl,
                csv,
                connection,
            } => {
                let ttl_secs = ttl.map_or(0, |t| t.as_secs().max(1));
                let devices = match (csv, product_key, device_key) {
                    (Some(file), _, _) => devices_of_csv(&file)?,
                    (None, Some(pk), Some(dk)) => vec![v1::DeviceRef::new(pk, dk)],
                    _ => bail!("give PRODUCT_KEY DEVICE_KEY, or --csv FILE"),
                };
                let mut client = AdminClient::new(connection.channel().await?);
                if devices.len() == 1 {
                    let device = devices.into_iter().next().expect("one device");
                    let shown = format!("{}/{}", device.product_key, device.device_key);
                    let token = client
                        .create_enroll_token(v1::CreateEnrollTokenRequest {
                            device: Some(device),
                            ttl_secs,
                        })
                        .await
                        .map_err(status)
                        .with_context(|| format!("token for {shown}"))?
                        .into_inner();
                    say_err!(
                        "one-time token for {shown}, valid until {}:",
                        time(token.expires_at_ms)
                    );
                    say!("{}", token.token);
                } else {
                    // A thousand a call: one call, one rate-limit token.
                    for chunk in devices.chunks(1000) {
                        let tokens = client
                            .create_enroll_tokens(v1::CreateEnrollTokensRequest {
                                devices: chunk.to_vec(),
                                ttl_secs,
                            })
                            .await
                            .map_err(status)?
                            .into_inner()
                            .tokens;
                        for token in tokens {
                            let device = token.device.unwrap_or_default();
                            say!(
                                "{},{},{},{}",
                                device.product_key,
                                device.device_key,
                                token.token,
                                time(token.expires_at_ms)
                            );
                        }
                    }
                }
            }
            CertificateCommand::RevokeTokens {
                product_key,
                device_key,
                connection,
            } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let revoked = client
                    .revoke_enroll_tokens(v1::DeviceRef::new(
                        product_key.clone(),
                        device_key.clone(),
                    ))
                    .await
                    .map_err(status)?
                    .into_inner()
                    .revoked;
                say!("{revoked} unused tokens of {product_key}/{device_key} revoked");
            }
            CertificateCommand::RevokeCert {
                target,
                reason,
                connection,
            } => {
                let target = match target.as_slice() {
                    [serial] => v1::revoke_certificate_request::Target::Serial(serial.clone()),
                    [pk, dk] => v1::revoke_certificate_request::Target::Device(v1::DeviceRef::new(
                        pk.clone(),
                        dk.clone(),
                    )),
                    _ => bail!("give SERIAL, or PRODUCT_KEY DEVICE_KEY"),
                };
                let mut client = AdminClient::new(connection.channel().await?);
                let serials = client
                    .revoke_certificate(v1::RevokeCertificateRequest {
                        target: Some(target),
                        reason,
                    })
                    .await
                    .map_err(status)?
                    .into_inner()
                    .serials;
                if serials.is_empty() {
                    say!("nothing to revoke (already revoked, or none issued)");
                }
                for serial in serials {
                    say!("revoked {serial}");
                }
            }
            CertificateCommand::Certs {
                product_key,
                device_key,
                connection,
            } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let list = client
                    .list_certificates(v1::DeviceRef::new(product_key, device_key))
                    .await
                    .map_err(status)?
                    .into_inner();
                for c in list.certificates {
                    let status =
                        v1::CertificateStatus::try_from(c.status).map_or("unknown", |s| match s {
                            v1::CertificateStatus::Active => "active",
                            v1::CertificateStatus::Revoked => "revoked",
                            v1::CertificateStatus::Expired => "expired",
                            v1::CertificateStatus::Unspecified => "unknown",
                        });
                    let renewed = if c.renewed_by.is_empty() {
                        String::new()
                    } else {
                        format!(" renewed_by={}", c.renewed_by)
                    };
                    say!(
                        "{} {status} not_before={} not_after={}{renewed}",
                        c.serial,
                        time(c.not_before_ms),
                        time(c.not_after_ms)
                    );
                }
            }
        }
        Ok(())
    }
}

/// The devices of an EnOS console CSV export (its productKey and
/// deviceKey columns; the secret column, if any, is not read).
fn devices_of_csv(path: &PathBuf) -> Result<Vec<v1::DeviceRef>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("{}: empty file", path.display());
    };
    let columns: Vec<&str> = header
        .split(',')
        .map(|c| c.trim().trim_matches('"'))
        .collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .with_context(|| format!("{}: no {name} column in the header", path.display()))
    };
    let (pk, dk) = (column("productKey")?, column("deviceKey")?);
    lines
        .map(|(number, line)| {
            let fields: Vec<&str> = line
                .split(',')
                .map(|f| f.trim().trim_matches('"'))
                .collect();
            match (fields.get(pk), fields.get(dk)) {
                (Some(p), Some(d)) if !p.is_empty() && !d.is_empty() => {
                    Ok(v1::DeviceRef::new(*p, *d))
                }
                _ => bail!(
                    "{}:{}: no productKey or deviceKey",
                    path.display(),
                    number + 1
                ),
            }
        })
        .collect()
}
