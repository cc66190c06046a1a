//! [`ChildProcess`]: a program run as a child with its output captured
//! line by line, stopped with SIGTERM (or SIGKILL) and killed on drop.
//!
//! Every child of the demo and of the suite goes through here, so that no
//! process outlives its owner on any path: an error, a panic or a normal
//! end all drop the guard, which kills and reaps the child.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::error::{E2eError, Result};

/// Lines a child wrote, shared with the threads that read them.
#[derive(Debug, Default)]
pub struct OutputLog {
    /// Every line of stdout and stderr, in arrival order.
    lines: Mutex<Vec<String>>,
    /// Signalled on every new line.
    changed: Condvar,
}

impl OutputLog {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        // A reader thread never panics while holding the lock; keep the
        // lines anyway if one did.
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: String) {
        self.lock().push(line);
        self.changed.notify_all();
    }

    /// Everything so far, one line per line.
    pub fn text(&self) -> String {
        let mut text = self.lock().join("\n");
        text.push('\n');
        text
    }

    /// How many lines arrived so far: a mark for [`OutputLog::wait_for`].
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lock();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for a line after the first `since` lines that contains
    /// `needle`; returns it.
    pub fn wait_for(&self, since: usize, needle: &str, timeout: Duration) -> Option<String> {
        let found = |lines: &Vec<String>| {
            lines
                .iter()
                .skip(since)
                .find(|l| l.contains(needle))
                .cloned()
        };
        let lines = self.lock();
        let (lines, _) = self
            .changed
            .wait_timeout_while(lines, timeout, |lines| found(lines).is_none())
            .unwrap_or_else(|p| p.into_inner());
        found(&lines)
    }
}

/// A running child. Dropping it kills and reaps the child.
#[derive(Debug)]
pub struct ChildProcess {
    /// A short name for messages (`signer`, `agent`, …).
    name: String,
    /// The process, until it has been reaped.
    child: Option<Child>,
    /// Its output, across the whole run.
    log: Arc<OutputLog>,
    /// The threads copying stdout and stderr into `log`.
    readers: Vec<JoinHandle<()>>,
}

impl ChildProcess {
    /// Runs `program` with `args` and extra environment; stdin is closed,
    /// stdout and stderr are captured.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, env: &[(&str, &OsStr)]) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .map_err(E2eError::io(format!("cannot run {}", program.display())))?;
        let log = Arc::new(OutputLog::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(copy_lines(out, Arc::clone(&log)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(copy_lines(err, Arc::clone(&log)));
        }
        Ok(ChildProcess {
            name: name.to_owned(),
            child: Some(child),
            log,
            readers,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The captured output.
    pub fn log(&self) -> &Arc<OutputLog> {
        &self.log
    }

    /// Whether the child has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for a line containing `needle` (among lines after `since`);
    /// fails early, with the output's tail, if the child exits first.
    pub fn wait_for_line(
        &mut self,
        since: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let slice =
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now()));
            if let Some(line) = self.log.wait_for(since, needle, slice) {
                return Ok(line);
            }
            if !self.is_running() {
                return Err(E2eError::failed(format!(
                    "{} exited before logging {needle:?}; its last lines:\n{}",
                    self.name,
                    self.log.tail(15)
                )));
            }
            if Instant::now() >= deadline {
                return Err(E2eError::failed(format!(
                    "{} did not log {needle:?} within {timeout:?}; its last lines:\n{}",
                    self.name,
                    self.log.tail(15)
                )));
            }
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after it).
    /// Returns the exit status; a SIGKILL after the grace is an error.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(E2eError::failed(format!("{} is not running", self.name)));
        };
        if matches!(child.try_wait(), Ok(None)) {
            signal(child, rustix::process::Signal::TERM)?;
        }
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.reap();
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    self.kill();
                    return Err(E2eError::failed(format!(
                        "{} did not stop within {grace:?} of SIGTERM and was killed; its last lines:\n{}",
                        self.name,
                        self.log.tail(15)
                    )));
                }
            }
        }
    }

    /// SIGKILL, as a crash would; reaps the child.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.reap();
    }

    /// Waits for an exit the child makes by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(E2eError::failed(format!("{} is not running", self.name)));
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.reap();
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    return Err(E2eError::Timeout {
                        what: format!("{} to exit", self.name),
                        after: timeout,
                    });
                }
                Err(e) => return Err(E2eError::io(format!("waiting for {}", self.name))(e)),
            }
        }
    }

    /// Forgets the reaped child and joins the output readers (they end
    /// with the child's output).
    fn reap(&mut self) {
        self.child = None;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) -> Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| E2eError::failed("a child without a valid pid"))?;
    rustix::process::kill_process(pid, signal)
        .map_err(|e| E2eError::io("signalling a child")(e.into()))
}

fn copy_lines(stream: impl Read + Send + 'static, log: Arc<OutputLog>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    log.push(line.trim_end_matches(['\n', '\r']).to_owned());
                }
            }
        }
    })
}

/// Runs a program to its end (up to `timeout`) and returns its exit
/// status and output. The child is killed if it overruns.
pub fn run_to_end(
    name: &str,
    program: &Path,
    args: &[&OsStr],
    env: &[(&str, &OsStr)],
    timeout: Duration,
) -> Result<(ExitStatus, String)> {
    let mut child = ChildProcess::spawn(name, program, args, env)?;
    let status = child.wait_exit(timeout);
    let output = child.log().text();
    Ok((status?, output))
}
