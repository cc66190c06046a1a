//! [`Capture`]: everything a test's tracing subscriber logs, in memory.

use std::sync::{Arc, Mutex};

/// Everything logged, in memory; clones share the buffer.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Installs a global subscriber at `level` writing here; the test
    /// binary must have no other.
    pub fn install(level: tracing::Level) -> Capture {
        let capture = Capture::default();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(capture.clone())
            .with_ansi(false)
            .try_init()
            .expect("the only subscriber in this test binary");
        capture
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}
