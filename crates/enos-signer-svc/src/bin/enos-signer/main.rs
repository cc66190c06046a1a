//! `enos-signer`: serve the signer, create its keys, administer it.
//!
//! # Layout
//!
//! - `main.rs`: arguments (clap) and dispatch; `serve` and `init`.
//! - `custody.rs`: `custody init-hsm` and `custody migrate` (software ↔ HSM).
//! - `admin.rs`: admin subcommands, over mTLS with an admin certificate.
//! - `certificates.rs`: the CA (`[ca]`): `ca init`, `ca import-cert`, and
//!   over mTLS `enroll-token`, `revoke-tokens`, `revoke-cert`, `certs`.
//! - `import.rs`: `import FILE.csv`: progress bar, `--dry-run`, per-row report.
//! - `registry.rs`: `registry copy` (redb ↔ PostgreSQL).
//! - `handshake.rs`: a failed TLS handshake said with `--ca`/`--cert`.
//! - `logging.rs`: tracing, JSON or pretty.
//!
//! No secret is ever taken from argv: device secrets come from a file or
//! stdin, keys from files (mode 0600) or `$CREDENTIALS_DIRECTORY`.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a command-line tool talks on stdout

/// `println!` that a closed stdout cannot turn into a panic: a reader
/// that quit early (`| head -1`) has what it wanted, and the rest is
/// unread anyway.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that a closed stderr cannot turn into a panic.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod certificates;
mod custody;
#[cfg(test)]
mod docs_commands;
mod enos_api;
mod enos_cert;
mod handshake;
mod import;
mod logging;
mod registry;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use enos_registry::postgres::migrations;
use enos_signer_svc::{
    SignerConfig,
    config::RegistryConfig,
    ops::init::{Existing, init},
};

/// The enos signer: central custody of EnOS device secrets.
#[derive(Parser)]
#[command(name = "enos-signer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the master key, the audit key and an empty registry.
    Init {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
    },
    /// Serve until SIGTERM or SIGINT (then NOT_SERVING, drain, exit).
    Serve {
        /// The signer's config file.
        #[arg(long, env = "ENOS_SIGNER_CONFIG")]
        config: PathBuf,
    },
    /// Import devices from an EnOS console CSV export, all or nothing.
    Import {
        /// The CSV file (header with productKey,deviceKey,deviceSecret).
        file: PathBuf,
        /// Check every row, write nothing; print what the import would change.
        #[arg(long)]
        dry_run: bool,
        /// Give existing devices the file's secret where it differs from
        /// the registry's (a new secret version). Without it such rows are
        /// refused: an older file would undo a rotation.
        #[arg(long)]
        replace_secrets: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Custody administration (HSM keys, migration), service stopped.
    #[command(subcommand)]
    Custody(custody::CustodyCommand),
    /// Registry stores: copy every record between them.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// The CA of the devices' client certificates (`[ca]`).
    #[command(subcommand)]
    Ca(certificates::CaCommand),
    /// EnOS's certificate API: the application's credential in custody.
    #[command(subcommand)]
    EnosApi(enos_api::EnosApiCommand),
    /// A device's EnOS device certificates: list, revoke.
    #[command(subcommand)]
    EnosCert(enos_cert::EnosCertCommand),
    /// Registry administration over mTLS.
    #[command(flatten)]
    Admin(admin::AdminCommand),
    /// Enrollment tokens and certificates over mTLS.
    #[command(flatten)]
    Certificates(certificates::CertificateCommand),
}

/// How admin commands reach the running signer.
#[derive(Args, Clone)]
pub(crate) struct Connection {
    /// The signer's endpoint.
    #[arg(
        long,
        env = "ENOS_SIGNER_ENDPOINT",
        default_value = "https://127.0.0.1:7443"
    )]
    pub(crate) endpoint: String,
    /// CA certificate (PEM) that signed the signer's server certificate.
    #[arg(long, env = "ENOS_SIGNER_CA")]
    pub(crate) ca: PathBuf,
    /// Admin client certificate (PEM), URI SAN spiffe://enos/admin/{name}.
    #[arg(long, env = "ENOS_SIGNER_CERT")]
    pub(crate) cert: PathBuf,
    /// The admin certificate's private key (PEM).
    #[arg(long, env = "ENOS_SIGNER_KEY")]
    pub(crate) key: PathBuf,
}

/// Ends the process for a command-line error; a missing admin connection
/// flag also names the variable that sets it, which clap's own message
/// leaves to `--help`.
fn exit_naming_the_variables(error: clap::Error) -> ! {
    const FLAGS: [(&str, &str); 3] = [
        ("--ca <CA>", "ENOS_SIGNER_CA"),
        ("--cert <CERT>", "ENOS_SIGNER_CERT"),
        ("--key <KEY>", "ENOS_SIGNER_KEY"),
    ];
    if error.kind() == clap::error::ErrorKind::MissingRequiredArgument {
        let rendered = error.to_string();
        // The missing ones are listed before the usage line.
        let missing = rendered.split("Usage:").next().unwrap_or_default();
        let named: Vec<_> = FLAGS
            .iter()
            .filter(|(flag, _)| missing.contains(flag))
            .map(|(flag, var)| format!("{} or {var}", flag.split(' ').next().unwrap_or(flag)))
            .collect();
        if !named.is_empty() {
            let _ = error.print();
            say_err!(
                "note: the admin connection is set by flags or by the environment: {} (and --endpoint or ENOS_SIGNER_ENDPOINT)",
                named.join(", ")
            );
            std::process::exit(error.exit_code());
        }
    }
    error.exit()
}

impl Connection {
    pub(crate) async fn channel(&self) -> Result<tonic::transport::Channel> {
        if !self.endpoint.starts_with("https://") {
            anyhow::bail!(
                "--endpoint {:?} must be an https:// URL: the signer serves mTLS only (ENOS_SIGNER_ENDPOINT sets it too)",
                self.endpoint
            );
        }
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let identity = tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        handshake::remember(&self.endpoint, &self.ca, &self.cert, &self.key);
        enos_signer_svc::client::connect_mtls(&self.endpoint, &read(&self.ca)?, Some(identity))
            .await
            .map_err(|e| match handshake::explain(&e) {
                Some(message) => anyhow::anyhow!("connecting to {}: {message}", self.endpoint),
                None => anyhow::Error::from(e).context(format!("connecting to {}", self.endpoint)),
            })
    }
}

fn main() -> Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_naming_the_variables(e),
    };
    // One crypto provider, ring, for anything that asks for the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `serve` sizes its runtime from the config; the other commands are
    // short-lived clients on the default one.
    if let Command::Serve { config } = &cli.command {
        let config = SignerConfig::load(config)?;
        let runtime = config
            .server
            .runtime("enos-signer")
            .context("starting the async runtime")?;
        return runtime.block_on(serve(config));
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let result = match cli.command {
            Command::Init { config } => {
                let config = SignerConfig::load(&config)?;
                let created = init(&config, Existing::Refuse)?;
                for path in created {
                    say!("created {}", path.display());
                }
                if let RegistryConfig::Postgres(pg) = &config.registry {
                    say!(
                        "registry {}: schema at version {}",
                        pg.display_target(),
                        migrations::latest()
                    );
                }
                Ok(())
            }
            Command::Serve { .. } => unreachable!("served above"),
            Command::Import {
                file,
                dry_run,
                replace_secrets,
                connection,
            } => {
                let options = import::Options {
                    dry_run,
                    replace_secrets,
                };
                import::run(&file, options, &connection).await
            }
            Command::Custody(command) => command.run().await,
            Command::Registry(command) => command.run().await,
            Command::Ca(command) => command.run().await,
            Command::EnosApi(command) => enos_api::run(command).await,
            Command::EnosCert(command) => enos_cert::run(command).await,
            Command::Admin(command) => command.run().await,
            Command::Certificates(command) => command.run().await,
        };
        match result {
            Err(e) => Err(handshake::explain_error(e).await),
            ok => ok,
        }
    })
}

async fn serve(config: SignerConfig) -> Result<()> {
    logging::init(&config.logging)?;
    let listener = enos_signer_svc::server::bind(config.server.listen).await?;
    enos_signer_svc::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
