//! [`Sandbox`]: the `enos-sandbox` binary as a child process on free
//! ports, stopped, restarted and reloaded by the test.
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
//!
//! ```no_run
//! use std::time::Duration;
//! use enos_testkit::sandbox::{Sandbox, SandboxBinary};
//!
//! # fn main() -> Result<(), enos_testkit::HarnessError> {
//! // In the sandbox's own tests: SandboxBinary::at(env!("CARGO_BIN_EXE_enos-sandbox")).
//! let binary = SandboxBinary::locate()?;
//! let mut sandbox = Sandbox::builder(binary, "devices.csv")
//!     .tls("ca.pem", "server.pem", "server.key")
//!     .start()?;
//! let mqtt = sandbox.mqtt_addr();            // 127.0.0.1:<free port>
//! let mqtts = sandbox.tls_addr();            // Some(127.0.0.1:<free port>)
//! // … connect clients; rewrite devices.csv, then:
//! sandbox.reload_devices()?;                 // SIGHUP; returns once applied
//! sandbox.restart()?;                        // same ports, all sessions dropped
//! sandbox.wait_for_log("refused MQTT CONNECT", Duration::from_secs(5))?;
//! assert!(!sandbox.logs().contains("the-device-secret"));
//! sandbox.stop()?;                           // also on drop
//! # Ok(())
//! # }
//! ```

use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use enos_sandbox::{PortReservation, ReloadOutcome, StatusLine};

use crate::{
    binaries::{self, SANDBOX},
    error::HarnessError,
    process::{ChildProcess, Lines, OutputLog},
};

/// This module's result.
type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Where the `enos-sandbox` binary is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxBinary {
    /// The executable.
    path: PathBuf,
}

impl SandboxBinary {
    /// The environment variable that, when set, names the binary.
    pub const ENV_VAR: &'static str = SANDBOX.env;

    /// The binary at `path`. In the sandbox's own tests:
    /// `SandboxBinary::at(env!("CARGO_BIN_EXE_enos-sandbox"))`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        SandboxBinary { path: path.into() }
    }

    /// Finds the binary for another crate's tests: `$ENOS_SANDBOX_BIN`,
    /// else beside the test executable, else `cargo build` (see
    /// [`binaries`]).
    pub fn locate() -> Result<Self> {
        binaries::locate(&SANDBOX).map(Self::at)
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
    /// `--freshness-window`.
    freshness_window: Option<Duration>,
    /// `--allow-md5`.
    allow_md5: bool,
    /// `--console-user` and `--console-password-file`.
    console: Option<(String, PathBuf)>,
    /// `--tls-device-identity`.
    tls_device_identity: Option<String>,
    /// `--crl`, each.
    crls: Vec<PathBuf>,
    /// `RUST_LOG` of the child; "info" so that refusals are logged.
    log_filter: String,
    /// How long a start may take before it counts as failed.
    ready_timeout: Duration,
    /// `--config`: a TOML file (for what has no flag, as `[enos_api]`).
    config: Option<PathBuf>,
    /// `--enos-api-addr` on a free port: the config file's `[enos_api]`.
    enos_api: bool,
    /// `--record`: every device PUBLISH as a JSON line in this file.
    record: Option<PathBuf>,
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

    /// Checks TLS client certificates against the CRL in `file`
    /// (`--crl`), re-read when it changes.
    pub fn tls_crl(mut self, file: impl Into<PathBuf>) -> Self {
        self.crls.push(file.into());
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

    /// Runs with `--config FILE` (the flags still win over it).
    pub fn config(mut self, file: impl Into<PathBuf>) -> Self {
        self.config = Some(file.into());
        self
    }

    /// Serves EnOS's certificate API (`[enos_api]` of the
    /// [`SandboxBuilder::config`] file) on a free port of 127.0.0.1.
    pub fn enos_api(mut self) -> Self {
        self.enos_api = true;
        self
    }

    /// The child's `RUST_LOG` (default `info`).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Records every device PUBLISH in `file` (`--record`), one JSON line
    /// each, appended across restarts: [`Sandbox::received`] reads it.
    pub fn record(mut self, file: impl Into<PathBuf>) -> Self {
        self.record = Some(file.into());
        self
    }

    /// How long to wait for the child to listen (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Reserves free ports on 127.0.0.1 and starts the child.
    pub fn start(self) -> Result<Sandbox> {
        let mqtt = PortReservation::reserve((Ipv4Addr::LOCALHOST, 0).into())?;
        let tls = match &self.tls {
            Some(_) => Some(PortReservation::reserve((Ipv4Addr::LOCALHOST, 0).into())?),
            None => None,
        };
        let enos_api = match self.enos_api {
            true => Some(PortReservation::reserve((Ipv4Addr::LOCALHOST, 0).into())?),
            false => None,
        };
        let mut sandbox = Sandbox {
            options: self,
            mqtt,
            tls,
            enos_api,
            child: None,
            run_start: 0,
            log: Arc::new(OutputLog::default()),
        };
        sandbox.start_again()?;
        Ok(sandbox)
    }

    fn args(
        &self,
        mqtt: SocketAddr,
        tls: Option<SocketAddr>,
        enos_api: Option<SocketAddr>,
    ) -> Vec<OsString> {
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
        for crl in &self.crls {
            args.extend(["--crl".into(), crl.clone().into()]);
        }
        if let Some(config) = &self.config {
            args.extend(["--config".into(), config.clone().into()]);
        }
        if let Some(addr) = enos_api {
            args.extend(["--enos-api-addr".into(), addr.to_string().into()]);
        }
        if let Some(record) = &self.record {
            args.extend(["--record".into(), record.clone().into()]);
        }
        if self.any_timestamp {
            args.push("--any-timestamp".into());
        }
        if let Some(window) = self.freshness_window {
            args.extend([
                "--freshness-window".into(),
                format!("{}ms", window.as_millis()).into(),
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

/// A position in a [`Sandbox`]'s captured output (a line count).
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
    /// EnOS's certificate API's port, when configured.
    enos_api: Option<PortReservation>,
    /// The child, while running.
    child: Option<ChildProcess>,
    /// Where the current run's lines begin in `log`: its status lines are
    /// the ones that count.
    run_start: usize,
    /// Everything the child has written, across runs.
    log: Arc<OutputLog>,
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
            crls: Vec::new(),
            config: None,
            enos_api: false,
            record: None,
            log_filter: "info".into(),
            ready_timeout: Duration::from_secs(20),
        }
    }

    /// The plain MQTT listener: where EnOS's 11883 would be.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt.addr()
    }

    /// EnOS's certificate API's address, if configured (HTTP or HTTPS as
    /// the config file's `[enos_api]` says).
    pub fn enos_api_addr(&self) -> Option<SocketAddr> {
        self.enos_api.as_ref().map(PortReservation::addr)
    }

    /// The TLS listener (EnOS's 18883), when configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(PortReservation::addr)
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildProcess::pid)
    }

    /// Whether the child is running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Everything the child wrote to stdout and stderr so far, across
    /// restarts: status lines and logs. Scan it for leaked secrets.
    pub fn logs(&self) -> String {
        self.log.text()
    }

    /// A position in the captured output: [`Sandbox::wait_for_log_since`]
    /// looks only at what comes after it.
    pub fn log_mark(&self) -> LogMark {
        LogMark(self.log.len())
    }

    /// Waits until the captured output (of every run so far) contains
    /// `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_since(LogMark(0), needle, timeout)
    }

    /// Waits until a line written after `mark` contains `needle`: for
    /// "the *next* CONNECT is refused" after an earlier one was.
    pub fn wait_for_log_since(&self, mark: LogMark, needle: &str, timeout: Duration) -> Result<()> {
        match self.log.wait_for(mark.0, needle, timeout) {
            Some(_) => Ok(()),
            None => Err(HarnessError::Failed(format!(
                "{needle:?} did not appear in the sandbox log within {timeout:?}; last lines:\n{}",
                self.log.tail(20)
            ))),
        }
    }

    /// Re-reads the device file (SIGHUP to the child) and returns once the
    /// child has done so. On error (say, an invalid file) the previous
    /// devices stay in force. New CONNECTs and logins see the new file;
    /// open sessions of devices removed, disabled or given another secret
    /// are closed before this returns; other sessions stay open.
    pub fn reload_devices(&self) -> Result<ReloadOutcome> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| HarnessError::Failed("the sandbox is stopped".into()))?;
        let run_start = self.run_start;
        let reloads = |lines: &Lines| -> Vec<StatusLine> {
            lines
                .stdout_since(run_start)
                .filter_map(StatusLine::parse)
                .filter(|s| {
                    matches!(
                        s,
                        StatusLine::Reloaded { .. } | StatusLine::ReloadFailed { .. }
                    )
                })
                .collect()
        };
        let before = self.log.with_lines(|lines| reloads(lines).len());
        child.hang_up()?;
        let outcome = self.log.wait_until(self.options.ready_timeout, |lines| {
            if let Some(status) = reloads(lines).into_iter().nth(before) {
                return Some(Some(status));
            }
            lines.stdout_closed().then_some(None)
        });
        match outcome {
            Some(Some(StatusLine::Reloaded {
                devices,
                dropped_sessions,
            })) => Ok(ReloadOutcome {
                devices,
                dropped_sessions,
            }),
            Some(Some(StatusLine::ReloadFailed { reason })) => Err(HarnessError::Reload(reason)),
            Some(_) => Err(HarnessError::Failed(format!(
                "the sandbox exited during reload; last lines:\n{}",
                self.log.tail(20)
            ))),
            None => Err(HarnessError::Failed(
                "the sandbox did not confirm the reload in time".into(),
            )),
        }
    }

    /// What the sandbox recorded (`SandboxBuilder::record`), across its
    /// runs, oldest first: one JSON object per device PUBLISH with
    /// `received_ms`, `device`, `topic`, `qos`, `id`, `payload`, as text
    /// (the tests parse it). Empty without a record file or before
    /// anything arrived; a last line not yet whole is left out.
    pub fn received(&self) -> Vec<String> {
        let Some(path) = &self.options.record else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole.lines().map(str::to_owned).collect()
    }

    /// Stops the child: closes its stdin and sends SIGTERM, then SIGKILL
    /// after 3 s. Open client connections see the socket close. Stopping a
    /// stopped sandbox does nothing.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.close_stdin();
        match child.terminate(Duration::from_secs(3)) {
            // Killed after the grace: stopped all the same.
            Ok(_) | Err(HarnessError::Failed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts the child again on the same ports after [`Sandbox::stop`];
    /// it reads the device file afresh. Does nothing while it runs.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.run_start = self.log.len();
        let args = self
            .options
            .args(self.mqtt_addr(), self.tls_addr(), self.enos_api_addr());
        let mut command = Command::new(self.options.binary.path());
        command
            .args(&args)
            .env("RUST_LOG", &self.options.log_filter)
            .stdin(Stdio::piped());
        self.child = Some(ChildProcess::start(
            "enos-sandbox",
            &mut command,
            Arc::clone(&self.log),
        )?);

        let run_start = self.run_start;
        let ready = self.log.wait_until(self.options.ready_timeout, |lines| {
            let listening = lines
                .stdout_since(run_start)
                .filter_map(StatusLine::parse)
                .find_map(|st| match st {
                    StatusLine::Listening { mqtt, tls } => Some((mqtt, tls)),
                    _ => None,
                });
            match listening {
                Some(addrs) => Some(Ok(addrs)),
                None if lines.stdout_closed() => Some(Err("the sandbox exited before listening")),
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
                Err(HarnessError::Failed(format!(
                    "{reason}; last lines:\n{}",
                    self.log.tail(20)
                )))
            }
        }
    }

    /// Stops and starts the child on the same ports: every session drops,
    /// clients must reconnect, and the device file is read afresh.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The child goes before the port reservations do.
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}
