//! Logs to stderr, JSON or pretty, filtered by `RUST_LOG` or the config.
//! Colour only when stderr is a terminal: a redirected log (a file, the
//! journal, a pipe) holds no escape codes, whatever the format.

use std::io::IsTerminal as _;

use anyhow::{Result, anyhow};
use enos_signer_svc::config::{LogFormat, LoggingConfig};
use tracing_subscriber::EnvFilter;

pub(crate) fn init(config: &LoggingConfig) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(directive)?,
        _ => EnvFilter::try_new(&config.filter)
            .map_err(|e| anyhow!("logging.filter {:?}: {e}", config.filter))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
    installed.map_err(|e| anyhow!("installing the logger: {e}"))
}
