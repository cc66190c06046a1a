//! [`ProcessLogs`]: every `tracing` event of this process (the signer and
//! the agents run in process in most scenarios), captured for the leak
//! scan.
//!
//! One global subscriber, installed once, writes formatted lines into a
//! shared buffer. Tests run in parallel threads of one process, so the
//! buffer holds every test's lines; a test scans all of it for its own
//! secrets, which covers the other tests' lines too.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// The filter: everything of ours and of the MQTT client at TRACE, the
/// HTTP/2 and TLS plumbing at DEBUG (their TRACE is per frame and byte
/// count, and carries no field values).
const FILTER: &str = "debug,enos_agent=trace,enos_signer_svc=trace,enos_signer=trace,\
                      enos_sandbox=trace,enos_e2e=trace,rumqttc=trace,rumqttd=trace";

/// The captured lines of this process.
#[derive(Debug, Clone, Default)]
pub struct ProcessLogs {
    /// Formatted log lines, appended by the subscriber.
    buffer: Arc<Mutex<Vec<u8>>>,
}

/// The writer handed to `tracing_subscriber::fmt`.
#[derive(Debug)]
pub struct BufferWriter {
    /// Shared with [`ProcessLogs`].
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ProcessLogs {
    type Writer = BufferWriter;

    fn make_writer(&'a self) -> Self::Writer {
        BufferWriter {
            buffer: Arc::clone(&self.buffer),
        }
    }
}

impl ProcessLogs {
    /// Installs the capturing subscriber (once per process) and returns
    /// the capture. If another global subscriber was installed first, the
    /// capture stays empty: [`ProcessLogs::is_capturing`] tells, and a
    /// scan must check it.
    pub fn install() -> &'static ProcessLogs {
        static LOGS: OnceLock<(ProcessLogs, bool)> = OnceLock::new();
        let (logs, _installed) = LOGS.get_or_init(|| {
            let logs = ProcessLogs::default();
            let installed = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(FILTER))
                .with_writer(logs.clone())
                .with_ansi(false)
                .with_target(true)
                .try_init()
                .is_ok();
            if installed {
                tracing::info!(target: "enos_e2e", "capturing this process's logs");
            }
            (logs, installed)
        });
        logs
    }

    /// Whether the subscriber is ours (something was captured).
    pub fn is_capturing(&self) -> bool {
        !self
            .buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
