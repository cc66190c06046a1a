//! [`Sandbox`]: the test API. Runs the `enos-sandbox` binary as a child
//! process on free ports, and stops, restarts and reloads it.
//!
//! Why a child process: rumqttd has no stop API (its listener threads run
//! until the process ends), so an in-process broker could never be stopped
//! or restarted on the same port, and every test would leak one. A child
//! process stops cleanly when killed, frees its ports, restarts in tens of
//! milliseconds, and its stdout/stderr can be captured and scanned.
//!
//! All calls block (briefly: a start takes well under a second). They are
//! fine inside `#[tokio::test]`; the child is another process, so nothing
//! in the test's runtime needs to make progress meanwhile.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    broker::ReloadOutcome, error::SandboxError, ports::PortReservation, status::StatusLine,
};

/// The binary's name, as cargo builds it.
const BIN_NAME: &str = "enos-sandbox";

/// Where the `enos-sandbox` binary is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxBinary {
    /// The executable.
    path: PathBuf,
}

impl SandboxBinary {
    /// The environment variable that, when set, names the binary.
    pub const ENV_VAR: &'static str = "ENOS_SANDBOX_BIN";

    /// The binary at `path`. In this crate's own tests:
    /// `SandboxBinary::at(env!("CARGO_BIN_EXE_enos-sandbox"))`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        SandboxBinary { path: path.into() }
    }

    /// Finds the binary for another crate's tests, in this order:
    ///
    /// 1. `$ENOS_SANDBOX_BIN`, if set;
    /// 2. `enos-sandbox` in the cargo profile directory of the running
    ///    executable (`target/debug/` for `target/debug/deps/foo-…`):
    ///    `cargo test --workspace` builds it there before any test runs;
    /// 3. otherwise `cargo build -p enos-sandbox --bin enos-sandbox` (via
    ///    escargot, with the `$CARGO` that runs the tests), once.
    ///
    /// Caveat of 2: after changing the sandbox, `cargo test -p other` alone
    /// does not rebuild it; `cargo test --workspace` always does.
    pub fn locate() -> Result<Self, SandboxError> {
        if let Some(path) = std::env::var_os(Self::ENV_VAR) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(Self::at(path))
            } else {
                Err(SandboxError::Process(format!(
                    "{} names {}, which is not a file",
                    Self::ENV_VAR,
                    path.display()
                )))
            };
        }
        if let Ok(exe) = std::env::current_exe() {
            let sibling = exe
                .ancestors()
                .skip(1)
                .take(2)
                .map(|dir| dir.join(BIN_NAME))
                .find(|candidate| candidate.is_file());
            if let Some(path) = sibling {
                return Ok(Self::at(path));
            }
        }
        let run = escargot::CargoBuild::new()
            .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .package(BIN_NAME)
            .bin(BIN_NAME)
            .current_release()
            .run()
            .map_err(|e| SandboxError::Process(format!("cargo build -p {BIN_NAME}: {e}")))?;
        Ok(Self::at(run.path()))
    }

    /// The executable's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The TLS listener's files, as the binary's `--ca`, `--cert`, `--key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Client certificates must chain to this CA.
    pub ca: PathBuf,
    /// The server certificate (for 127.0.0.1).
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

/// Options for [`Sandbox`]; from [`Sandbox::builder`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    /// The binary to run.
    binary: SandboxBinary,
    /// `--devices`; re-read on every start and on reload.
    devices: PathBuf,
    /// `--ca/--cert/--key`: a TLS listener on a free port when set.
    tls: Option<TlsFiles>,
    /// `--any-timestamp`.
    any_timestamp: bool,
    /// `--freshness-window-secs`.
    freshness_window: Option<Duration>,
    /// `--allow-md5`.
    allow_md5: bool,
    /// `--console-user` and `--console-password-file`.
    console: Option<(String, PathBuf)>,
    /// `--tls-device-identity`.
    tls_device_identity: Option<String>,
    /// `RUST_LOG` of the child; "info" so that refusals are logged.
    log_filter: String,
    /// How long a start may take before it counts as failed.
    ready_timeout: Duration,
}

impl SandboxBuilder {
    /// Adds the TLS listener (on a free port) with these files.
    pub fn tls(
        mut self,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls = Some(TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Accepts any signed timestamp (`--any-timestamp`; the default).
    pub fn any_timestamp(mut self) -> Self {
        self.any_timestamp = true;
        self
    }

    /// Turns the freshness check on: the window either side of now (whole
    /// seconds; default: no check, as EnOS).
    pub fn freshness_window(mut self, window: Duration) -> Self {
        self.freshness_window = Some(window);
        self
    }

    /// Accepts `hmacmd5` (`--allow-md5`).
    pub fn allow_md5(mut self) -> Self {
        self.allow_md5 = true;
        self
    }

    /// Adds the console login (`--console-user`, `--console-password-file`):
    /// the cloud's side, which tests play to call devices' services.
    pub fn console(mut self, user: impl Into<String>, password_file: impl Into<PathBuf>) -> Self {
        self.console = Some((user.into(), password_file.into()));
        self
    }

    /// The rule naming a TLS client certificate's device
    /// (`--tls-device-identity`, e.g. `cn:{productKey}.{deviceKey}`).
    pub fn tls_device_identity(mut self, rule: impl Into<String>) -> Self {
        self.tls_device_identity = Some(rule.into());
        self
    }

    /// The child's `RUST_LOG` (default `info`).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// How long to wait for the child to listen (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Reserves free ports on 127.0.0.1 and starts the child.
    pub fn start(self) -> Result<Sandbox, SandboxError> {
        let mqtt = PortReservation::reserve((Ipv4Addr::LOCALHOST, 0).into())?;
        let tls = match &self.tls {
            Some(_) => Some(PortReservation::reserve((Ipv4Addr::LOCALHOST, 0).into())?),
            None => None,
        };
        let mut sandbox = Sandbox {
            options: self,
            mqtt,
            tls,
            child: None,
            log: Arc::new(Log::default()),
        };
        sandbox.start_again()?;
        Ok(sandbox)
    }

    fn args(&self, mqtt: SocketAddr, tls: Option<SocketAddr>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--devices".into(),
            self.devices.clone().into(),
            "--mqtt-addr".into(),
            mqtt.to_string().into(),
            "--exit-on-stdin-close".into(),
        ];
        if let (Some(files), Some(addr)) = (&self.tls, tls) {
            args.extend([
                "--tls-addr".into(),
                addr.to_string().into(),
                "--ca".into(),
                files.ca.clone().into(),
                "--cert".into(),
                files.cert.clone().into(),
                "--key".into(),
                files.key.clone().into(),
            ]);
        }
        if self.any_timestamp {
            args.push("--any-timestamp".into());
        }
        if let Some(window) = self.freshness_window {
            args.extend([
                "--freshness-window-secs".into(),
                window.as_secs().to_string().into(),
            ]);
        }
        if self.allow_md5 {
            args.push("--allow-md5".into());
        }
        if let Some((user, file)) = &self.console {
            args.extend([
                "--console-user".into(),
                user.into(),
                "--console-password-file".into(),
                file.into(),
            ]);
        }
        if let Some(rule) = &self.tls_device_identity {
            args.extend(["--tls-device-identity".into(), rule.into()]);
        }
        args
    }
}

/// The captured output of the child, shared with the reader threads.
#[derive(Debug, Default)]
struct Log {
    /// Guarded state.
    state: Mutex<LogState>,
    /// Signalled on every new line and on end of output.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct LogState {
    /// stdout and stderr of every run, line by line, in arrival order.
    text: String,
    /// Status lines of the current run.
    statuses: Vec<StatusLine>,
    /// The current run's stdout reached its end: the child is gone.
    ended: bool,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A reader thread never panics while holding the lock; recover
        // the text anyway rather than lose it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` says yes (`Some`) or the deadline passes.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&LogState) -> Option<T>,
    ) -> Option<T> {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |state| done(state).is_none())
            .unwrap_or_else(|p| p.into_inner());
        done(&state)
    }

    fn push_line(&self, line: &str, status: Option<StatusLine>) {
        let mut state = self.lock();
        state.text.push_str(line);
        state.text.push('\n');
        if let Some(status) = status {
            state.statuses.push(status);
        }
        self.changed.notify_all();
    }

    fn tail(&self) -> String {
        let state = self.lock();
        let lines: Vec<&str> = state.text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A running child and what reads its output.
#[derive(Debug)]
struct RunningChild {
    /// The process.
    child: Child,
    /// Its stdin; closing it makes the child exit (`--exit-on-stdin-close`),
    /// also when the test process dies without running destructors.
    stdin: Option<ChildStdin>,
    /// The stdout and stderr readers; they end with the child.
    readers: Vec<JoinHandle<()>>,
}

/// A position in a [`Sandbox`]'s captured output (a byte offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogMark(usize);

/// An `enos-sandbox` child process on free ports of 127.0.0.1.
///
/// The ports stay reserved for the life of this value, so
/// [`Sandbox::restart`] and [`Sandbox::start_again`] come back on the same
/// addresses. Dropping it kills the child.
#[derive(Debug)]
pub struct Sandbox {
    /// How to (re)start the child.
    options: SandboxBuilder,
    /// The plain listener's port.
    mqtt: PortReservation,
    /// The TLS listener's port, when configured.
    tls: Option<PortReservation>,
    /// The child, while running.
    child: Option<RunningChild>,
    /// Everything the child has written, across runs.
    log: Arc<Log>,
}

impl Sandbox {
    /// Options for a sandbox running `binary` with the device file `devices`.
    pub fn builder(binary: SandboxBinary, devices: impl Into<PathBuf>) -> SandboxBuilder {
        SandboxBuilder {
            binary,
            devices: devices.into(),
            tls: None,
            any_timestamp: false,
            freshness_window: None,
            allow_md5: false,
            console: None,
            tls_device_identity: None,
            log_filter: "info".into(),
            ready_timeout: Duration::from_secs(20),
        }
    }

    /// The plain MQTT listener: where EnOS's 11883 would be.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt.addr()
    }

    /// The TLS listener (EnOS's 18883), when configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(PortReservation::addr)
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.child.id())
    }

    /// Whether the child is running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.child.try_wait(), Ok(None)))
    }

    /// Everything the child wrote to stdout and stderr so far, across
    /// restarts: status lines and logs. Scan it for leaked secrets.
    pub fn logs(&self) -> String {
        self.log.lock().text.clone()
    }

    /// A position in the captured output: [`Sandbox::wait_for_log_since`]
    /// looks only at what comes after it.
    pub fn log_mark(&self) -> LogMark {
        LogMark(self.log.lock().text.len())
    }

    /// Waits until the captured output (of every run so far) contains
    /// `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), SandboxError> {
        self.wait_for_log_since(LogMark(0), needle, timeout)
    }

    /// Waits until the output written after `mark` contains `needle`: for
    /// "the *next* CONNECT is refused" after an earlier one was.
    pub fn wait_for_log_since(
        &self,
        mark: LogMark,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        self.log
            .wait_until(timeout, |s| {
                s.text
                    .get(mark.0..)
                    .is_some_and(|new| new.contains(needle))
                    .then_some(())
            })
            .ok_or_else(|| {
                SandboxError::Process(format!(
                    "{needle:?} did not appear in the sandbox log within {timeout:?}; last lines:\n{}",
                    self.log.tail()
                ))
            })
    }

    /// Re-reads the device file (SIGHUP to the child) and returns once the
    /// child has done so. On error (say, an invalid file) the previous
    /// devices stay in force. New CONNECTs and logins see the new file;
    /// open sessions of devices removed, disabled or given another secret
    /// are closed before this returns; other sessions stay open.
    pub fn reload_devices(&self) -> Result<ReloadOutcome, SandboxError> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| SandboxError::Process("the sandbox is stopped".into()))?;
        let is_reload = |s: &&StatusLine| {
            matches!(
                s,
                StatusLine::Reloaded { .. } | StatusLine::ReloadFailed { .. }
            )
        };
        let before = self.log.lock().statuses.iter().filter(is_reload).count();
        signal(&child.child, rustix::process::Signal::HUP)?;
        let outcome = self.log.wait_until(self.options.ready_timeout, |s| {
            if let Some(status) = s.statuses.iter().filter(is_reload).nth(before) {
                return Some(Some(status.clone()));
            }
            s.ended.then_some(None)
        });
        match outcome {
            Some(Some(StatusLine::Reloaded {
                devices,
                dropped_sessions,
            })) => Ok(ReloadOutcome {
                devices,
                dropped_sessions,
            }),
            Some(Some(StatusLine::ReloadFailed { reason })) => Err(SandboxError::Reload(reason)),
            Some(_) => Err(SandboxError::Process(format!(
                "the sandbox exited during reload; last lines:\n{}",
                self.log.tail()
            ))),
            None => Err(SandboxError::Process(
                "the sandbox did not confirm the reload in time".into(),
            )),
        }
    }

    /// Stops the child: closes its stdin and sends SIGTERM, then SIGKILL
    /// after 3 s. Open client connections see the socket close. Stopping a
    /// stopped sandbox does nothing.
    pub fn stop(&mut self) -> Result<(), SandboxError> {
        let Some(mut running) = self.child.take() else {
            return Ok(());
        };
        drop(running.stdin.take());
        // The child may already be gone; then there is nothing to signal.
        if matches!(running.child.try_wait(), Ok(None)) {
            let _ = signal(&running.child, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match running.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = running.child.kill();
                    running.child.wait().map_err(|e| {
                        SandboxError::Process(format!("waiting for the child: {e}"))
                    })?;
                    break;
                }
            }
        }
        for reader in running.readers {
            let _ = reader.join();
        }
        Ok(())
    }

    /// Starts the child again on the same ports after [`Sandbox::stop`];
    /// it reads the device file afresh. Does nothing while it runs.
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        if self.child.is_some() {
            return Ok(());
        }
        {
            let mut state = self.log.lock();
            state.statuses.clear();
            state.ended = false;
        }
        let args = self.options.args(self.mqtt_addr(), self.tls_addr());
        let mut child = Command::new(self.options.binary.path())
            .args(&args)
            .env("RUST_LOG", &self.options.log_filter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                SandboxError::Process(format!(
                    "cannot run {}: {e}",
                    self.options.binary.path().display()
                ))
            })?;
        let stdin = child.stdin.take();
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(read_lines(stdout, Arc::clone(&self.log), true));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(read_lines(stderr, Arc::clone(&self.log), false));
        }
        self.child = Some(RunningChild {
            child,
            stdin,
            readers,
        });

        let ready = self.log.wait_until(self.options.ready_timeout, |s| {
            let listening = s.statuses.iter().find_map(|st| match st {
                StatusLine::Listening { mqtt, tls } => Some((*mqtt, *tls)),
                _ => None,
            });
            match listening {
                Some(addrs) => Some(Ok(addrs)),
                None if s.ended => Some(Err("the sandbox exited before listening")),
                None => None,
            }
        });
        let failure = match ready {
            Some(Ok((mqtt, tls))) if mqtt == self.mqtt_addr() && tls == self.tls_addr() => None,
            Some(Ok(_)) => Some("the sandbox listens on other addresses than asked".to_owned()),
            Some(Err(reason)) => Some(reason.to_owned()),
            None => Some(format!(
                "the sandbox did not listen within {:?}",
                self.options.ready_timeout
            )),
        };
        match failure {
            None => Ok(()),
            Some(reason) => {
                let _ = self.stop();
                Err(SandboxError::Process(format!(
                    "{reason}; last lines:\n{}",
                    self.log.tail()
                )))
            }
        }
    }

    /// Stops and starts the child on the same ports: every session drops,
    /// clients must reconnect, and the device file is read afresh.
    pub fn restart(&mut self) -> Result<(), SandboxError> {
        self.stop()?;
        self.start_again()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut running) = self.child.take() {
            drop(running.stdin.take());
            let _ = running.child.kill();
            let _ = running.child.wait();
            for reader in running.readers {
                let _ = reader.join();
            }
        }
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) -> Result<(), SandboxError> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| SandboxError::Process("the child has no valid pid".into()))?;
    rustix::process::kill_process(pid, signal)
        .map_err(|e| SandboxError::Process(format!("cannot signal the sandbox: {e}")))
}

/// Copies a child stream into the log line by line; on stdout, also
/// parses status lines and marks the end of the run.
fn read_lines(
    stream: impl Read + Send + 'static,
    log: Arc<Log>,
    is_stdout: bool,
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
                    let line = line.trim_end_matches(['\n', '\r']);
                    let status = if is_stdout {
                        StatusLine::parse(line)
                    } else {
                        None
                    };
                    log.push_line(line, status);
                }
            }
        }
        if is_stdout {
            log.lock().ended = true;
            log.changed.notify_all();
        }
    })
}
