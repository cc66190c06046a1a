//! `enos-agent`: run the agent, check a config, enroll the gateway, or
//! sign a login by hand.
#![forbid(unsafe_code)]
// `check` and `sign` answer on stdout.
#![allow(clippy::print_stdout)]

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

#[cfg(test)]
mod docs_commands;

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use enos_agent::{
    Agent, Config, GrpcSigner, SignerClient,
    enroll::{self, EnrollRequest},
    install_crypto_provider, notify,
    offline_sign::{self, SignRequest},
    pair::{self, PairPaths},
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "enos-agent",
    version,
    about = "Keeps a device connected to EnOS with credentials from the signer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connects to EnOS and stays connected until SIGTERM.
    Run {
        /// The agent config (TOML).
        #[arg(long, env = "ENOS_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Validates the config and reaches every endpoint it names: the
    /// signer (one credential, its password not printed), the EnOS broker
    /// (TCP/TLS, then a login up to CONNACK and DISCONNECT; EnOS keeps one
    /// session per device, so a running agent of this device reconnects
    /// once), and the local broker. Exits non-zero naming what failed.
    Check {
        /// The agent config (TOML).
        #[arg(long, env = "ENOS_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Shows the running agent's status (its status file), readably or as
    /// JSON.
    Status {
        /// The agent config (TOML) the agent runs with.
        #[arg(long, env = "ENOS_AGENT_CONFIG")]
        config: PathBuf,
        /// Print the status file's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Enrolls this gateway with a one-time token: makes its key here and
    /// writes the certificate the signer issues where `[signer]` `cert`
    /// and `key` point.
    Enroll {
        /// The agent config (TOML): the device, and where the pair goes.
        #[arg(long, env = "ENOS_AGENT_CONFIG")]
        config: PathBuf,
        /// The signer's enrollment listener, `https://host:port`.
        #[arg(long)]
        signer: String,
        /// The CA bundle that signs the signer's server certificate.
        #[arg(long)]
        ca: PathBuf,
        /// File holding the token from `enos-signer enroll-token` (mode
        /// 0600). Never argv.
        #[arg(long)]
        token_file: PathBuf,
        /// Replace a certificate that is still valid.
        #[arg(long)]
        force: bool,
    },
    /// Signs a device login offline and prints it as JSON, for debugging a
    /// device by hand.
    Sign {
        /// What to sign.
        #[command(flatten)]
        request: SignRequest,
        /// File holding the device secret, or `-` for stdin. Never argv.
        #[arg(long)]
        secret_file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sign {
            request,
            secret_file,
        } => sign(request, secret_file),
        Command::Check { config } => with_runtime(check(config)),
        Command::Status { config, json } => status(config, json),
        Command::Enroll {
            config,
            signer,
            ca,
            token_file,
            force,
        } => with_runtime(enroll(
            config,
            EnrollRequest {
                signer,
                ca,
                token_file,
                force,
            },
        )),
        Command::Run { config } => with_runtime(run(config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say_err!("enos-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread is plenty for one MQTT session, and keeps the RSS small.
fn with_runtime(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    install_crypto_provider();
    init_logging();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

/// The log filter variable of all three binaries.
const LOG_VARIABLE: &str = "RUST_LOG";
/// What the agent read before #29: a warning names its successor.
const OLD_LOG_VARIABLE: &str = "ENOS_AGENT_LOG";

/// Logs to stderr at `$RUST_LOG` (`info` when unset), as the signer and
/// the sandbox: a level, or `target=level` pairs, comma-separated
/// (`RUST_LOG=info,enos_agent=debug`). A [`Targets`] filter rather than an
/// `EnvFilter`: the same syntax without span and field filters, and
/// without the regex engine those pull into the binary (0.2 MiB of its
/// RSS). Colour only when stderr is a terminal.
fn init_logging() {
    use std::io::IsTerminal as _;

    use tracing_subscriber::{filter::Targets, prelude::*};
    let mut bad_filter = None;
    let filter = match std::env::var(LOG_VARIABLE) {
        Ok(spec) if !spec.trim().is_empty() => spec.parse::<Targets>().unwrap_or_else(|e| {
            bad_filter = Some(e.to_string());
            Targets::new().with_default(tracing::Level::INFO)
        }),
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .with(filter)
        .init();
    if let Some(e) = bad_filter {
        tracing::warn!(
            "{LOG_VARIABLE} is not a log filter ({e}): write a level or target=level pairs, such as {LOG_VARIABLE}=info,enos_agent=debug; logging at info"
        );
    }
    if std::env::var_os(OLD_LOG_VARIABLE).is_some() {
        tracing::warn!(
            "{OLD_LOG_VARIABLE} is no longer read: set {LOG_VARIABLE} instead (the same syntax, the variable of all three binaries)"
        );
    }
}

fn sign(request: SignRequest, secret_file: PathBuf) -> anyhow::Result<()> {
    let secret = if secret_file.as_os_str() == "-" {
        offline_sign::read_secret(std::io::stdin().lock(), "stdin")?
    } else {
        let file = std::fs::File::open(&secret_file)
            .with_context(|| format!("cannot open {}", secret_file.display()))?;
        offline_sign::read_secret(file, &secret_file.display().to_string())?
    };
    let out = offline_sign::sign(&request, &secret, enos_agent::now_ms())?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &out)?;
    writeln!(stdout)?;
    Ok(())
}

/// Reads the status file of the agent that runs with the config at
/// `path`: `[status] file`, or the default of `run` (systemd's runtime
/// directory, then beside the device certificate).
fn status(path: PathBuf, json: bool) -> anyhow::Result<()> {
    use enos_agent::config::{STATUS_FILE_NAME, SYSTEMD_RUNTIME_DIRECTORY};
    let config = Config::load(&path)?;
    let candidates = match &config.status.file {
        Some(file) => vec![file.clone()],
        None => {
            let mut candidates = Vec::new();
            if let Some(runtime) = std::env::var_os("RUNTIME_DIRECTORY") {
                candidates.push(config.default_status_file(Some(&runtime)));
            }
            candidates.push(PathBuf::from(SYSTEMD_RUNTIME_DIRECTORY).join(STATUS_FILE_NAME));
            candidates.push(config.default_status_file(None));
            candidates
        }
    };
    let Some(file) = candidates.iter().find(|p| p.exists()) else {
        let places: Vec<_> = candidates.iter().map(|p| p.display().to_string()).collect();
        anyhow::bail!(
            "no status file at {}: is `enos-agent run --config {}` running?",
            places.join(" or "),
            path.display()
        );
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the status file {}", file.display()))?;
    if json {
        say!("{}", text.trim_end());
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a status file", file.display()))?;
    for line in status_lines(&value) {
        say!("{line}");
    }
    say!("(from {}; --json prints all of it)", file.display());
    Ok(())
}

/// The status file, readably: one line per topic, times as RFC 3339.
fn status_lines(s: &serde_json::Value) -> Vec<String> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let count = |key: &str| s[key].as_u64().unwrap_or(0);
    let time = |v: &serde_json::Value| v.as_u64().map(rfc3339);
    let mut lines = vec![
        format!(
            "state: {} since {}",
            text(&s["state"]),
            time(&s["since_ms"]).unwrap_or_else(|| "?".into())
        ),
        format!("broker: {}", text(&s["broker"])),
        format!(
            "connects {}, refusals {}, network failures {}",
            count("connects"),
            count("refusals"),
            count("network_failures")
        ),
        format!(
            "credentials: {} issued, {} reused{}",
            count("credentials_issued"),
            count("credentials_reused"),
            time(&s["credential_expires_at_ms"])
                .map(|t| format!("; the one in use expires at {t}"))
                .unwrap_or_default()
        ),
    ];
    if let Some(error) = s["last_error"].as_str() {
        lines.push(format!("last error: {error}"));
    }
    if let Some(ms) = s["last_backoff_ms"].as_u64() {
        lines.push(format!(
            "last backoff: {ms} ms (ceiling {} ms)",
            s["last_backoff_ceiling_ms"].as_u64().unwrap_or(0)
        ));
    }
    lines.push(format!(
        "upstream: {} sent, {} queued, {} dropped; downstream: {} delivered, {} dropped",
        count("upstream_sent"),
        count("upstream_queued"),
        count("upstream_dropped"),
        count("downstream_delivered"),
        count("downstream_dropped")
    ));
    if let Some(up) = s["local_broker_connected"].as_bool() {
        lines.push(format!(
            "local broker: {}",
            if up { "connected" } else { "not connected" }
        ));
    }
    if let Some(activation) = s["activation"].as_str() {
        lines.push(format!("activation: {activation}"));
    }
    let certificate = &s["certificate"];
    if certificate.is_object() {
        let mut line = format!(
            "device certificate: valid until {}; renewal {}",
            time(&certificate["not_after_ms"]).unwrap_or_else(|| "?".into()),
            text(&certificate["renewal"])
        );
        if let Some(next) = time(&certificate["next_renewal_ms"]) {
            line.push_str(&format!(" at {next}"));
        }
        line.push_str(&format!(
            ", {} renewed since start",
            certificate["renewals"].as_u64().unwrap_or(0)
        ));
        lines.push(line);
        if let Some(error) = certificate["last_renewal_error"].as_str() {
            lines.push(format!("last renewal error: {error}"));
        }
    }
    let enos = &s["enos_certificate"];
    if enos.is_object() {
        let mut line = format!(
            "EnOS certificate: certSN {}, valid until {}",
            text(&enos["serial"]),
            time(&enos["not_after_ms"]).unwrap_or_else(|| "?".into()),
        );
        if let Some(next) = time(&enos["next_renewal_ms"]) {
            line.push_str(&format!("; renewal at {next}"));
        }
        line.push_str(&format!(
            ", {} renewed since start",
            enos["renewals"].as_u64().unwrap_or(0)
        ));
        lines.push(line);
        if let Some(error) = enos["last_error"].as_str() {
            lines.push(format!("last EnOS certificate error: {error}"));
        }
    }
    for sub in s["sub_devices"].as_array().into_iter().flatten() {
        let mut line = format!(
            "sub-device {}/{}: {}",
            text(&sub["product_key"]),
            text(&sub["device_key"]),
            text(&sub["state"])
        );
        if let Some(reason) = sub["reason"].as_str() {
            line.push_str(&format!(" ({reason})"));
        }
        lines.push(line);
    }
    lines
}

fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Finishes or undoes a certificate promotion a crash interrupted,
/// before the pair is read.
fn recover_pair(config: &Config) -> anyhow::Result<()> {
    pair::recover(&PairPaths {
        cert: config.signer.cert.clone(),
        key: config.signer.key.clone(),
    })?;
    Ok(())
}

async fn enroll(path: PathBuf, request: EnrollRequest) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let enrolled = enroll::enroll(&config, &request).await?;
    say!("{}", enrolled.report());
    Ok(())
}

async fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    say!("config {} is valid", path.display());
    recover_pair(&config)?;
    // Every endpoint is tried, each failure named; the exit code says
    // whether all of them answered.
    let mut failed: Vec<String> = Vec::new();
    let mut report = |step: &str, outcome: Result<String, String>| match outcome {
        Ok(line) => say!("ok: {line}"),
        Err(line) => {
            say!("FAILED: {line}");
            failed.push(step.to_owned());
        }
    };
    let signer = GrpcSigner::new(&config.signer, &config.device)?;
    let credential = match signer.issue_mqtt_credential().await {
        Ok(credential) => {
            let expiry = match credential.expires_at_ms {
                Some(ms) => {
                    let left = ms.saturating_sub(enos_agent::now_ms()) / 1000;
                    format!(
                        "it expires at {} (in {left} s); the password is not shown",
                        rfc3339(ms)
                    )
                }
                None => "it does not expire; the password is not shown".to_owned(),
            };
            report(
                "signer",
                Ok(format!(
                    "signer {} issued a credential for {}: client id {}; {expiry}",
                    credential.endpoint,
                    config.device.id(),
                    credential.mqtt_client_id
                )),
            );
            Some(credential)
        }
        Err(e) => {
            report("signer", Err(e.to_string()));
            None
        }
    };
    match enos_agent::certificate::CertificateInfo::read(&config.signer.cert) {
        Ok(info) => {
            let renewal = if config.renewal.enabled {
                format!(
                    "`run` renews it at about {}",
                    rfc3339(enos_agent::renewal::renewal_of_file(
                        &config.signer.cert,
                        &info,
                        &config.renewal
                    ))
                )
            } else {
                "not renewed by the agent ([renewal] enabled = false)".to_owned()
            };
            let now = enos_agent::now_ms();
            let cert = config.signer.cert.display();
            report(
                "device certificate",
                if info.not_after_ms <= now {
                    Err(format!(
                        "the device certificate {cert} expired at {}; `enos-agent enroll` gives a new one",
                        rfc3339(info.not_after_ms)
                    ))
                } else if now < info.not_before_ms {
                    Err(format!(
                        "the device certificate {cert} is not valid before {}; check this machine's clock",
                        rfc3339(info.not_before_ms)
                    ))
                } else {
                    Ok(format!(
                        "the device certificate {cert} is valid until {}; {renewal}",
                        rfc3339(info.not_after_ms)
                    ))
                },
            );
        }
        Err(e) => report("device certificate", Err(e.to_string())),
    }
    let reachable = enos_agent::check::enos_broker(&config).await;
    let reached = reachable.is_ok();
    report("EnOS broker", reachable);
    match (&credential, reached) {
        (Some(credential), true) => {
            report(
                "EnOS login",
                enos_agent::check::enos_login(&config, credential).await,
            );
        }
        (None, _) => report(
            "EnOS login",
            Err("EnOS login: not tried, the signer issued no credential".to_owned()),
        ),
        (_, false) => report(
            "EnOS login",
            Err("EnOS login: not tried, the EnOS broker is not reachable".to_owned()),
        ),
    }
    match &config.bridge {
        Some(bridge) => report(
            "local broker",
            enos_agent::check::local_broker(bridge).await,
        ),
        None => say!("local broker: none configured ([bridge])"),
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("check failed: {}", failed.join(", "))
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let default_status = config.status.file.is_none();
    let config = config.with_default_status_file();
    if let (true, Some(file)) = (default_status, &config.status.file) {
        tracing::info!(
            file = %file.display(),
            "status file (the default; [status] file sets another); `enos-agent status` reads it"
        );
    }
    recover_pair(&config)?;
    let signer = GrpcSigner::new(&config.signer, &config.device)?;
    let agent = Agent::new(config, signer);
    let shutdown = CancellationToken::new();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let on_signal = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: disconnecting"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: disconnecting"),
                () = shutdown.cancelled() => return,
            }
            notify::stopping();
            shutdown.cancel();
        }
    };
    let notifier = notify::run(agent.status(), shutdown.clone());
    notify::ready();
    let running = async {
        let result = agent.run(shutdown.clone()).await;
        // Whatever ended the agent ends the signal and notify tasks too.
        shutdown.cancel();
        result
    };
    let (result, (), ()) = tokio::join!(running, on_signal, notifier);
    result?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    #[test]
    fn enroll_takes_its_token_from_a_file_never_from_argv() {
        let cli = Cli::try_parse_from([
            "enos-agent",
            "enroll",
            "--config",
            "agent.toml",
            "--signer",
            "https://signer:7444",
            "--ca",
            "ca.pem",
            "--token-file",
            "t",
        ])
        .expect("parses");
        let Command::Enroll {
            signer,
            token_file,
            force,
            ..
        } = cli.command
        else {
            panic!("not enroll");
        };
        assert_eq!(signer, "https://signer:7444");
        assert_eq!(token_file, std::path::PathBuf::from("t"));
        assert!(!force);
        // No way to pass the token itself; every file is required.
        for args in [
            &["--token", "enr1_x"][..],
            &[
                "--config",
                "a.toml",
                "--signer",
                "https://s",
                "--ca",
                "c.pem",
            ][..],
            &["--config", "a.toml", "--ca", "c.pem", "--token-file", "t"][..],
        ] {
            let argv = ["enos-agent", "enroll"].iter().chain(args.iter());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
