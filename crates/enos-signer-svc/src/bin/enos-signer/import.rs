//! `enos-signer import FILE.csv`: streams the rows to the running signer,
//! which checks them all and writes all or none. A row whose secret
//! differs from the registry's is refused unless `--replace-secrets`; a
//! row whose secret is the registry's changes nothing. Both runs print
//! what the import changes (or would change).

use std::{
    io::IsTerminal as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use enos_domain::device_file;
use enos_signer_proto::v1::{self, admin_client::AdminClient};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Connection;

/// Rows per streamed message.
const CHUNK: usize = 500;

/// How often a progress line is printed when stderr is not a terminal.
const PROGRESS_LINE_INTERVAL: Duration = Duration::from_secs(2);

/// The sending's progress: a bar on a terminal; elsewhere (a script, CI,
/// a log file) lines on stderr, the first, one every
/// [`PROGRESS_LINE_INTERVAL`] and the last, since a bar's redraws are not
/// shown (or fill a file with carriage returns).
#[derive(Clone)]
enum Progress {
    Bar(ProgressBar),
    Lines {
        total: u64,
        state: Arc<Mutex<(u64, Option<Instant>)>>,
    },
}

impl Progress {
    fn new(total: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rows")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message("sending");
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                total,
                state: Arc::new(Mutex::new((0, None))),
            }
        }
    }

    fn inc(&self, rows: u64) {
        match self {
            Progress::Bar(bar) => bar.inc(rows),
            Progress::Lines { total, state } => {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                state.0 += rows;
                let due = state
                    .1
                    .is_none_or(|at| at.elapsed() >= PROGRESS_LINE_INTERVAL);
                if due || state.0 == *total {
                    state.1 = Some(Instant::now());
                    let percent = (state.0 * 100).checked_div(*total).unwrap_or(100);
                    say_err!("import: sent {}/{} rows ({percent}%)", state.0, total);
                }
            }
        }
    }

    fn finish(&self) {
        match self {
            Progress::Bar(bar) => bar.finish_and_clear(),
            Progress::Lines { .. } => {}
        }
    }
}

/// How an import is run (the command line's flags).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Check every row, write nothing.
    pub(crate) dry_run: bool,
    /// Give existing devices the file's secret when it differs from the
    /// registry's (otherwise such rows are refused).
    pub(crate) replace_secrets: bool,
}

pub(crate) async fn run(file: &Path, options: Options, connection: &Connection) -> Result<()> {
    let Options {
        dry_run,
        replace_secrets,
    } = options;
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
    );
    let parsed = device_file::read(&bytes).with_context(|| format!("{}", file.display()))?;
    // Rows the CSV reader could not split make the import a dry run: the
    // signer still checks the rest, so one report names every bad row.
    let mut rows: Vec<v1::ImportRow> = Vec::with_capacity(parsed.rows.len());
    let mut unreadable: Vec<(u32, String)> = Vec::new();
    for row in parsed.rows {
        match row {
            Ok(row) => match v1::ImportRow::try_from(row) {
                Ok(row) => rows.push(row),
                Err(e) => unreadable.push((e.line, e.reason)),
            },
            Err(e) => unreadable.push((e.line, e.reason)),
        }
    }
    let dry_run = dry_run || !unreadable.is_empty();
    let total = rows.len() as u64;
    let all_rows = rows.len() + unreadable.len();

    let progress = Progress::new(total);
    let mut chunks: Vec<Vec<v1::ImportRow>> = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        chunks.push(rows.by_ref().take(CHUNK).collect());
    }
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let bar = progress.clone();
    let stream = futures::stream::iter(chunks.into_iter().enumerate().map(move |(i, rows)| {
        bar.inc(rows.len() as u64);
        v1::ImportDevicesRequest {
            rows,
            dry_run: i == 0 && dry_run,
            replace_secrets: i == 0 && replace_secrets,
        }
    }))
    .boxed();

    let mut client = AdminClient::new(connection.channel().await?);
    let response = client.import_devices(stream).await;
    progress.finish();
    let response = response.map_err(crate::handshake::status)?.into_inner();

    let mut errors: Vec<(u32, String)> = unreadable;
    errors.extend(response.errors.into_iter().map(|e| (e.line, e.message)));
    errors.sort_by_key(|(line, _)| *line);
    for (line, message) in &errors {
        say_err!("{}:{line}: {message}", file.display());
    }
    if !errors.is_empty() {
        bail!(
            "{} bad rows of {all_rows}; nothing was imported",
            errors.len()
        );
    }
    let counts = format!(
        "{} new, {} unchanged, {} changed secrets, {} changed bindings, {} changed enabled flags",
        response.new_devices,
        response.unchanged_devices,
        response.changed_secrets,
        response.changed_bindings,
        response.changed_enabled
    );
    if response.committed {
        say!("imported {} devices: {counts}", response.imported);
    } else {
        say!(
            "dry run: {} rows checked, all valid; the import would make {counts}; nothing written",
            response.checked
        );
    }
    Ok(())
}
