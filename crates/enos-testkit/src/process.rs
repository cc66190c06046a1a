//! [`ChildProcess`]: a program run as a child with its output captured
//! line by line, signalled (SIGTERM, SIGHUP), killed on drop.
//!
//! Every child of the tests and of the demo goes through here (the
//! sandbox fixture, the signer and agent binaries, Mosquitto), so that no
//! process outlives its owner on any path: an error, a panic or a normal
//! end all drop the guard, which kills and reaps the child.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::error::HarnessError;

/// This module's result.
type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// One line a child wrote.
#[derive(Debug, Clone)]
pub struct Line {
    /// Whether it came on stdout (status lines for a driving program)
    /// rather than stderr (logs).
    pub stdout: bool,
    /// The line, without its line ending.
    pub text: String,
}

/// Every line so far, and whether the current run's stdout has ended.
#[derive(Debug, Default)]
pub struct Lines {
    /// stdout and stderr, in arrival order, across runs.
    lines: Vec<Line>,
    /// The current run closed its stdout: it has exited (or soon will).
    stdout_closed: bool,
}

impl Lines {
    /// The stdout lines after the first `since` lines.
    pub fn stdout_since(&self, since: usize) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .skip(since)
            .filter(|l| l.stdout)
            .map(|l| l.text.as_str())
    }

    /// Whether the current run's stdout has ended.
    pub fn stdout_closed(&self) -> bool {
        self.stdout_closed
    }
}

/// Lines one or more runs of a child wrote, shared with the threads that
/// read them.
#[derive(Debug, Default)]
pub struct OutputLog {
    /// Guarded lines.
    state: Mutex<Lines>,
    /// Signalled on every new line and at the end of stdout.
    changed: Condvar,
}

impl OutputLog {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A reader thread never panics while holding the lock; keep the
        // lines anyway if one did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, stdout: bool, text: String) {
        self.lock().lines.push(Line { stdout, text });
        self.changed.notify_all();
    }

    fn close_stdout(&self, closed: bool) {
        self.lock().stdout_closed = closed;
        self.changed.notify_all();
    }

    /// Everything so far, one line per line.
    pub fn text(&self) -> String {
        let lines = self.lock();
        let mut text = String::new();
        for line in &lines.lines {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }

    /// How many lines arrived so far: a mark for [`OutputLog::wait_for`].
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.lock().lines.is_empty()
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = &self.lock().lines;
        let tail: Vec<&str> = lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        tail.join("\n")
    }

    /// What `read` makes of the lines so far.
    pub fn with_lines<T>(&self, read: impl FnOnce(&Lines) -> T) -> T {
        read(&self.lock())
    }

    /// Waits until `done` says yes (`Some`) or `timeout` passes; returns
    /// its last answer.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Lines) -> Option<T>,
    ) -> Option<T> {
        let lines = self.lock();
        let (lines, _) = self
            .changed
            .wait_timeout_while(lines, timeout, |lines| done(lines).is_none())
            .unwrap_or_else(|p| p.into_inner());
        done(&lines)
    }

    /// Waits for a line after the first `since` lines that contains
    /// `needle`; returns it.
    pub fn wait_for(&self, since: usize, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_until(timeout, |lines| {
            lines
                .lines
                .iter()
                .skip(since)
                .find(|l| l.text.contains(needle))
                .map(|l| l.text.clone())
        })
    }
}

/// A running child. Dropping it kills and reaps the child.
#[derive(Debug)]
pub struct ChildProcess {
    /// A short name for messages (`signer`, `agent`, …).
    name: String,
    /// The process, until it has been reaped.
    child: Option<Child>,
    /// Its stdin when piped: a child that exits when its stdin closes
    /// (the sandbox's `--exit-on-stdin-close`) also exits when the test
    /// process dies without running destructors.
    stdin: Option<ChildStdin>,
    /// Its output, across the whole run (and earlier runs sharing it).
    log: Arc<OutputLog>,
    /// The threads copying stdout and stderr into `log`.
    readers: Vec<JoinHandle<()>>,
}

impl ChildProcess {
    /// Runs `program` with `args` and extra environment; stdin is closed,
    /// stdout and stderr are captured into a new log.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, env: &[(&str, &OsStr)]) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        Self::start(name, &mut command, Arc::new(OutputLog::default()))
    }

    /// Runs `command` (whose stdin the caller chose: a piped stdin is kept
    /// open until [`ChildProcess::close_stdin`] or the end) with stdout
    /// and stderr appended to `log`, which may hold earlier runs' lines.
    pub fn start(name: &str, command: &mut Command, log: Arc<OutputLog>) -> Result<Self> {
        log.close_stdout(false);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: command.get_program().into(),
                source,
            })?;
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(copy_lines(out, Arc::clone(&log), true));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(copy_lines(err, Arc::clone(&log), false));
        }
        Ok(ChildProcess {
            name: name.to_owned(),
            stdin: child.stdin.take(),
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

    /// Closes the child's stdin (when it was piped).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// SIGHUP (the sandbox reloads its device file on it).
    pub fn hang_up(&self) -> Result<()> {
        match &self.child {
            Some(child) => signal(&self.name, child, rustix::process::Signal::HUP),
            None => Err(self.not_running()),
        }
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
                return Err(HarnessError::Failed(format!(
                    "{} exited before logging {needle:?}; its last lines:\n{}",
                    self.name,
                    self.log.tail(15)
                )));
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Failed(format!(
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
            return Err(self.not_running());
        };
        if matches!(child.try_wait(), Ok(None)) {
            signal(&self.name, child, rustix::process::Signal::TERM)?;
        }
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.reap();
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    self.kill();
                    return Err(HarnessError::Failed(format!(
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
        self.close_stdin();
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
                return Err(self.not_running());
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.reap();
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    return Err(HarnessError::Failed(format!(
                        "{} did not exit within {timeout:?}; its last lines:\n{}",
                        self.name,
                        self.log.tail(15)
                    )));
                }
                Err(source) => {
                    return Err(HarnessError::Os {
                        child: self.name.clone(),
                        action: "waiting for the exit",
                        source,
                    });
                }
            }
        }
    }

    fn not_running(&self) -> HarnessError {
        HarnessError::Failed(format!("{} is not running", self.name))
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

fn signal(name: &str, child: &Child, signal: rustix::process::Signal) -> Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| HarnessError::Failed(format!("{name} has no valid pid")))?;
    rustix::process::kill_process(pid, signal).map_err(|e| HarnessError::Os {
        child: name.to_owned(),
        action: "sending a signal",
        source: e.into(),
    })
}

/// Copies a child stream into the log line by line; the end of stdout is
/// recorded (the child is gone, or going).
fn copy_lines(
    stream: impl Read + Send + 'static,
    log: Arc<OutputLog>,
    stdout: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    log.push(stdout, line.trim_end_matches(['\n', '\r']).to_owned());
                }
            }
        }
        if stdout {
            log.close_stdout(true);
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
