//! `enos-fleet`: a reconnect storm on this machine. N device identities,
//! N agents in this process (the real agent library: credential over mTLS,
//! backoff, MQTT), a scenario, the figures, the raw rumqttc anchor in the
//! same run, and optionally a picture. Loopback only; see docs/storms.md.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks on stdout

#[cfg(test)]
#[path = "enos-fleet/docs_commands.rs"]
mod docs_commands;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use enos_e2e::fleet::{
    self, FleetOptions, Scenario,
    enos_wave::{self, WaveBinaries},
    options::{MAX_AGENTS, MAX_ENOS_API_CONCURRENCY},
};
use enos_testkit::sandbox::SandboxBinary;

/// Reconnect storms against the signer and the EnOS sandbox on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "enos-fleet", version)]
struct Cli {
    /// connect, broker-restart, signer-restart, or all (each restart
    /// follows the first connect); or renew (the signer is the devices'
    /// CA: enrollment with tokens, one certificate lifetime of renewals;
    /// with --enos-certificates: a wave of EnOS certificate renewals).
    scenario: String,
    /// Agents (and raw clients) in the run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_AGENTS as u64))]
    agents: u64,
    /// How long each phase may take before the run fails (`2m`, `300s`).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    phase_timeout: Duration,
    /// The agents' backoff floor (`1s`, `500ms`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    backoff_min: Duration,
    /// The agents' backoff cap.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// The signer's per-identity rate limit: requests a second.
    #[arg(long, default_value_t = 2)]
    rate_per_second: u32,
    /// The signer's per-identity rate limit: burst.
    #[arg(long, default_value_t = 6)]
    rate_burst: u32,
    /// Skip the raw rumqttc anchor.
    #[arg(long)]
    no_raw: bool,
    /// Draw the run into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// renew: the certificates' lifetime (`10m`, `30s`, …).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// renew: when agents renew, as a fraction of the lifetime.
    #[arg(long, default_value_t = 2.0 / 3.0)]
    renew_at: f64,
    /// renew: ± this fraction of the lifetime, per certificate.
    #[arg(long, default_value_t = 0.1)]
    renew_jitter: f64,
    /// The enos-sandbox binary (default: beside this one, or built).
    #[arg(long, env = "ENOS_SANDBOX_BIN")]
    sandbox: Option<PathBuf>,
    /// renew: EnOS device certificates through the signer (issue 26):
    /// every gateway applies (setup), then all renew at once through the
    /// enos-signer binary to the sandbox's certificate API.
    #[arg(long)]
    enos_certificates: bool,
    /// With --enos-certificates: the signer's [enos_api] concurrency
    /// (calls to EnOS's API in flight at once).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=MAX_ENOS_API_CONCURRENCY as u64))]
    enos_api_concurrency: u64,
    /// With --enos-certificates: the enos-signer binary (default: beside
    /// this one, or built).
    #[arg(long, env = "ENOS_SIGNER_BIN")]
    signer: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(scenario) = Scenario::parse(&cli.scenario) else {
        eprintln!(
            "enos-fleet: unknown scenario {:?}: connect, broker-restart, signer-restart, all or renew",
            cli.scenario
        );
        return ExitCode::from(2);
    };
    let mut options = FleetOptions::new(usize::try_from(cli.agents).unwrap_or(MAX_AGENTS));
    options.scenario = scenario;
    options.phase_timeout = cli.phase_timeout;
    options.backoff_min = cli.backoff_min;
    options.backoff_max = cli.backoff_max;
    options.rate_per_second = cli.rate_per_second;
    options.rate_burst = cli.rate_burst;
    options.raw_anchor = !cli.no_raw;
    options.plot = cli.plot;
    options.progress = true;
    options.lifetime = cli.lifetime;
    options.renew_at = cli.renew_at;
    options.renew_jitter = cli.renew_jitter;
    options.enos_certificates = cli.enos_certificates;
    options.enos_api_concurrency =
        usize::try_from(cli.enos_api_concurrency).unwrap_or(MAX_ENOS_API_CONCURRENCY);
    if let Err(e) = options.validate() {
        eprintln!("enos-fleet: {e}");
        return ExitCode::from(2);
    }
    // Warnings only: thousands of agents at info would drown the figures.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENOS_FLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    enos_agent::install_crypto_provider();
    let binary = match cli.sandbox {
        Some(path) => SandboxBinary::at(path),
        None => match SandboxBinary::locate() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("enos-fleet: no enos-sandbox binary: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("enos-fleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if options.enos_certificates {
        let signer = match cli.signer {
            Some(path) => path,
            None => match enos_testkit::binaries::locate(&enos_testkit::binaries::SIGNER) {
                Ok(path) => path,
                Err(e) => {
                    eprintln!("enos-fleet: no enos-signer binary: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let binaries = WaveBinaries {
            sandbox: binary,
            signer,
        };
        let outcome = runtime.block_on(async {
            tokio::select! {
                r = enos_wave::run(&options, &binaries) => r,
                _ = tokio::signal::ctrl_c() => Err(enos_e2e::E2eError::failed("interrupted")),
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(2));
        return match outcome {
            Ok(figures) => {
                print!("{figures}");
                if figures.clean() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "enos-fleet: not every gateway renewed, or the API's bound was exceeded; see the figures"
                    );
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("enos-fleet: FAILED: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = fleet::run(&options, binary) => r,
            _ = tokio::signal::ctrl_c() => Err(enos_e2e::E2eError::failed("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(report) => {
            print!("{report}");
            if let Some(plot) = &options.plot {
                println!("picture: {}", plot.display());
            }
            let ok =
                report.phases.iter().all(|p| {
                    p.all_connected() && p.broker_refusals == 0 && p.resource_exhausted == 0
                }) && report.renew.as_ref().is_none_or(|r| r.clean());
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("enos-fleet: not every agent connected cleanly; see the figures");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("enos-fleet: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
