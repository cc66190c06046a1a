//! `enos-sandbox`: a local EnOS-compatible MQTT broker that checks signed
//! device credentials. See the library docs and README for the details.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`); the status lines of
//! `enos_sandbox::StatusLine` go to stdout. SIGHUP reloads the device
//! file; SIGTERM or SIGINT stops.
#![forbid(unsafe_code)]
// Status lines on stdout are this program's interface.
#![allow(clippy::print_stdout)]

#[cfg(test)]
mod docs_commands;

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use enos_sandbox::{ConfigFile, Overrides, RunningBroker, Settings, StatusLine, listen_watch};
use tokio::{
    io::AsyncReadExt,
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info};
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
};

/// A local EnOS-compatible MQTT broker that checks signed device credentials.
#[derive(Debug, Parser)]
#[command(name = "enos-sandbox", version)]
struct Cli {
    /// TOML config file; the flags below override it.
    #[arg(long, value_name = "FILE.toml", env = "ENOS_SANDBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Device CSV file (header: productKey,deviceKey,deviceSecret[,enabled][,gatewayProductKey,gatewayDeviceKey]).
    #[arg(long, value_name = "FILE.csv")]
    devices: Option<PathBuf>,
    /// Plain MQTT listener (default 127.0.0.1:11883; port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    mqtt_addr: Option<SocketAddr>,
    /// TLS listener (default 127.0.0.1:18883 when --ca, --cert and --key are given).
    #[arg(long, value_name = "HOST:PORT")]
    tls_addr: Option<SocketAddr>,
    /// CA that client certificates must chain to (PEM).
    #[arg(long, value_name = "CA.pem")]
    ca: Option<PathBuf>,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "CERT.pem")]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "KEY.pem")]
    key: Option<PathBuf>,
    /// Accept any signed timestamp: the default, as EnOS checks no freshness.
    #[arg(long, conflicts_with = "freshness_window")]
    any_timestamp: bool,
    /// Check freshness: refuse a signed timestamp further than this from
    /// now (`30s`, `5m`; default: no check, as EnOS). For testing
    /// short-lived credentials.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    freshness_window: Option<Duration>,
    /// Renamed to --freshness-window (a duration with its unit); refused
    /// with that name.
    #[arg(long, value_name = "SECS", hide = true)]
    freshness_window_secs: Option<String>,
    /// Accept the weak hmacmd5 sign method.
    #[arg(long)]
    allow_md5: bool,
    /// Which device a TLS client certificate belongs to:
    /// `uri:TEMPLATE` (a URI SAN) or `cn:TEMPLATE` (the common name), with
    /// {productKey} and {deviceKey} (default
    /// `uri:spiffe://enos/device/{productKey}/{deviceKey}`).
    #[arg(long, value_name = "RULE")]
    tls_device_identity: Option<String>,
    /// A CRL file (PEM or DER) of the client CA, e.g. the signer's
    /// `[ca] crl_file`; repeat for several. Re-read when it changes.
    #[arg(long = "crl", value_name = "FILE")]
    crls: Vec<PathBuf>,
    /// The console login's user name: the cloud's side (service calls to
    /// devices, anything they send), from loopback on the plain listener.
    #[arg(long, value_name = "NAME", requires = "console_password_file")]
    console_user: Option<String>,
    /// The file holding the console's password.
    #[arg(long, value_name = "PATH", requires = "console_user")]
    console_password_file: Option<PathBuf>,
    /// EnOS's certificate API listener (needs `[enos_api]` in --config;
    /// port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    enos_api_addr: Option<SocketAddr>,
    /// Record every device PUBLISH in FILE, one JSON line each (received
    /// time, device, topic, QoS, envelope id, payload), appended: what
    /// tests read to see what arrived.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Exit when stdin closes: a parent that dies takes the sandbox with it.
    #[arg(long)]
    exit_on_stdin_close: bool,
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            devices: self.devices.clone(),
            mqtt_addr: self.mqtt_addr,
            tls_addr: self.tls_addr,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            any_timestamp: self.any_timestamp,
            freshness_window: self.freshness_window,
            allow_md5: self.allow_md5,
            tls_device_identity: self.tls_device_identity.clone(),
            crls: self.crls.clone(),
            console_user: self.console_user.clone(),
            console_password_file: self.console_password_file.clone(),
            enos_api_addr: self.enos_api_addr,
            record: self.record.clone(),
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The subscriber is up before anything that can fail.
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (watch_layer, watch) = listen_watch();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter),
        )
        // Sees rumqttd's listener events whatever RUST_LOG says.
        .with(watch_layer.with_filter(Targets::new().with_target("rumqttd", tracing::Level::INFO)))
        .init();
    if let Some(secs) = &cli.freshness_window_secs {
        let secs = secs.trim();
        let example = if !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) {
            format!("{secs}s")
        } else {
            "300s".to_owned()
        };
        anyhow::bail!(
            "--freshness-window-secs was renamed: pass --freshness-window {example} (a duration with its unit)"
        );
    }

    let file = match &cli.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let settings = Settings::resolve(file, cli.overrides())?;

    // The front proxies every connection: use both cores of a small host.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(settings, watch, cli.exit_on_stdin_close))
}

async fn serve(
    settings: Settings,
    watch: enos_sandbox::ListenWatch,
    exit_on_stdin_close: bool,
) -> anyhow::Result<()> {
    // Handlers first: a SIGHUP right after "listening" must not kill us.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let broker = RunningBroker::start(&settings, &watch)?;
    info!(
        mqtt = %broker.mqtt_addr(),
        tls = %broker.tls_addr().map_or("off".to_owned(), |a| a.to_string()),
        devices = %settings.devices.display(),
        "enos-sandbox listening"
    );
    if let Some(addr) = broker.enos_api_addr() {
        let scheme = match &settings.enos_api {
            Some(api) if api.tls.is_some() => "https",
            _ => "http",
        };
        info!(addr = %addr, scheme, "EnOS certificate API listening");
        status(StatusLine::EnosApi {
            url: format!("{scheme}://{addr}"),
        });
    }
    status(StatusLine::Listening {
        mqtt: broker.mqtt_addr(),
        tls: broker.tls_addr(),
    });

    let stdin_closed = async {
        if exit_on_stdin_close {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 256];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stdin_closed);

    loop {
        tokio::select! {
            _ = hangup.recv() => match broker.reload_devices() {
                Ok(outcome) => {
                    info!(
                        devices = outcome.devices,
                        dropped_sessions = outcome.dropped_sessions,
                        "reloaded the device file"
                    );
                    status(StatusLine::Reloaded {
                        devices: outcome.devices,
                        dropped_sessions: outcome.dropped_sessions,
                    });
                }
                Err(e) => {
                    error!(error = %e, "reload failed; the previous devices stay in force");
                    status(StatusLine::ReloadFailed { reason: e.to_string() });
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            () = &mut stdin_closed => break,
        }
    }
    // rumqttd cannot drain; its threads end with the process.
    info!("enos-sandbox stopping");
    Ok(())
}

fn status(line: StatusLine) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (nobody reading) must not stop the broker.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
