//! CPU per call by stage of the signer's request path (issue 24), from
//! `perf`: `cargo bench -p enos-signer-svc --bench load -- --profile`.
//!
//! While a phase runs, `perf record` samples this process on its
//! `task-clock` every [`PERIOD_NS`] of CPU with frame-pointer call chains;
//! each sample of a signer thread (named `test-signer`; the clients' run
//! on other threads) is put in the stage of the innermost frame of its
//! stack that names one (see [`RULES`]), so that a hash under the audit
//! HMAC counts for the audit HMAC and the same hash under rustls for TLS.
//! µs of CPU per call = samples × period / calls.
//!
//! Frames are what the compiler left: an inlined function counts for its
//! caller's stage. The standard library and libc have no frame pointers,
//! so a sample in `memcpy` or `malloc` skips its direct caller and lands
//! in the one above it (the same stage nearly always). For readable
//! stacks build with frame pointers and line tables, as
//! `docs/benchmarks.md` says.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// CPU between two samples (ns of `task-clock`).
pub(crate) const PERIOD_NS: u64 = 50_000;

/// The signer's threads (its runtime's name, see `enos_testkit::signer`).
const SIGNER_THREAD: &str = "test-signer";

/// Stages, in the order of the table: what a call goes through.
pub(crate) const STAGES: &[&str] = &[
    "syscalls: socket send/recv, epoll, wakeups",
    "TLS records (rustls)",
    "HTTP/2 (h2, hyper)",
    "gRPC framing, protobuf, routing (tonic, prost)",
    "tower: concurrency limit",
    "tower: load shedding",
    "tower: timeout",
    "connection limits, preface deadline (Limited)",
    "identity extraction + certificate re-verification",
    "rate limiter",
    "registry + cache lookup",
    "custody sign (incl. thread hand-off)",
    "audit: record build",
    "audit: JSON",
    "audit: HMAC",
    "audit: sink write",
    "metrics",
    "issuance service (fields, policy, response)",
    "health service",
    "tokio runtime (scheduling, timers)",
    "allocator, memcpy (caller unknown)",
    "other",
];

/// (substring of a frame's symbol, stage; `None`: not a stage of its own,
/// look further out). The first rule matching a frame decides; the
/// innermost frame with a stage decides the sample.
const RULES: &[(&str, Option<&str>)] = &[
    // Our own code first: these name what a library call below them does.
    ("enos_signer_svc::audit::password_hmac", Some("audit: HMAC")),
    (
        "enos_signer_svc::audit::Audit::password_hmac",
        Some("audit: HMAC"),
    ),
    (
        "enos_signer_svc::audit::write_file",
        Some("audit: sink write"),
    ),
    (
        "enos_signer_svc::audit::write_log",
        Some("audit: sink write"),
    ),
    (
        "enos_signer_svc::audit::postgres",
        Some("audit: sink write"),
    ),
    ("enos_signer_svc::audit::batch", Some("audit: sink write")),
    ("enos_signer_svc::audit::serialise", Some("audit: JSON")),
    ("enos_signer_svc::audit::json", Some("audit: JSON")),
    ("AuditRecord as serde", Some("audit: JSON")),
    ("serde_json", Some("audit: JSON")),
    (
        "enos_signer_svc::audit::AuditRecord::new",
        Some("audit: record build"),
    ),
    (
        "enos_signer_svc::audit::identity_name",
        Some("audit: record build"),
    ),
    ("enos_signer_svc::audit", Some("audit: record build")),
    (
        "enos_signer_svc::custody",
        Some("custody sign (incl. thread hand-off)"),
    ),
    ("enos_custody", Some("custody sign (incl. thread hand-off)")),
    (
        "enos_sign_core",
        Some("custody sign (incl. thread hand-off)"),
    ),
    (
        "enos_signer_svc::services::activation",
        Some("custody sign (incl. thread hand-off)"),
    ),
    ("enos_registry", Some("registry + cache lookup")),
    ("enos_signer_svc::state::rate_limit", Some("rate limiter")),
    ("governor", Some("rate limiter")),
    (
        "enos_signer_svc::listener::peer",
        Some("identity extraction + certificate re-verification"),
    ),
    (
        "SignerState::identif",
        Some("identity extraction + certificate re-verification"),
    ),
    (
        "peer_certs",
        Some("identity extraction + certificate re-verification"),
    ),
    (
        "x509_parser",
        Some("identity extraction + certificate re-verification"),
    ),
    (
        "webpki",
        Some("identity extraction + certificate re-verification"),
    ),
    ("enos_signer_svc::listener::metrics", Some("metrics")),
    ("prometheus_client", Some("metrics")),
    (
        "enos_signer_svc::listener::limits",
        Some("connection limits, preface deadline (Limited)"),
    ),
    (
        "enos_signer_svc::services::credentials",
        Some("issuance service (fields, policy, response)"),
    ),
    (
        "enos_signer_svc::services::caller",
        Some("issuance service (fields, policy, response)"),
    ),
    (
        "enos_signer_svc::services::convert",
        Some("issuance service (fields, policy, response)"),
    ),
    (
        "enos_signer_svc::state::policy",
        Some("issuance service (fields, policy, response)"),
    ),
    (
        "enos_signer_svc::state",
        Some("issuance service (fields, policy, response)"),
    ),
    (
        "enos_domain",
        Some("issuance service (fields, policy, response)"),
    ),
    ("tonic_health", Some("health service")),
    (
        "enos_signer_svc::listener::readiness",
        Some("health service"),
    ),
    // tonic's own layers (`Server::timeout`, `load_shed`), then tower's.
    ("grpc_timeout", Some("tower: timeout")),
    ("GrpcTimeout", Some("tower: timeout")),
    (
        "ConnectInfo",
        Some("identity extraction + certificate re-verification"),
    ),
    ("tower::limit", Some("tower: concurrency limit")),
    ("tower::load_shed", Some("tower: load shedding")),
    ("tower::timeout", Some("tower: timeout")),
    ("tokio_rustls", Some("TLS records (rustls)")),
    ("rustls", Some("TLS records (rustls)")),
    ("aws_lc", Some("TLS records (rustls)")),
    (
        "tonic",
        Some("gRPC framing, protobuf, routing (tonic, prost)"),
    ),
    (
        "prost",
        Some("gRPC framing, protobuf, routing (tonic, prost)"),
    ),
    (
        "enos_signer_proto",
        Some("gRPC framing, protobuf, routing (tonic, prost)"),
    ),
    ("h2::", Some("HTTP/2 (h2, hyper)")),
    ("<h2", Some("HTTP/2 (h2, hyper)")),
    ("hyper", Some("HTTP/2 (h2, hyper)")),
    ("http::", Some("HTTP/2 (h2, hyper)")),
    ("<http", Some("HTTP/2 (h2, hyper)")),
    // Timers and semaphores are work of whoever calls them.
    ("tokio::runtime::time", None),
    ("tokio::time", None),
    ("tokio::sync", None),
    ("tokio::", Some("tokio runtime (scheduling, timers)")),
    ("mio::", Some("tokio runtime (scheduling, timers)")),
];

/// A running `perf record` of this process.
pub(crate) struct Recording {
    /// The `perf` process.
    child: Child,
    /// Its output file.
    data: PathBuf,
}

/// How long `perf` takes to attach to every thread: wait this long after
/// [`record`] before the phase starts.
pub(crate) const ATTACH: Duration = Duration::from_millis(500);

/// Starts recording this process into `dir`, or says why not.
pub(crate) fn record(dir: &Path, name: &str) -> Result<Recording, String> {
    let data = dir.join(format!("{name}.perf.data"));
    let child = Command::new("perf")
        .args(["record", "-q", "-e", "task-clock", "-c"])
        .arg(PERIOD_NS.to_string())
        .args(["--call-graph", "fp", "-p"])
        .arg(std::process::id().to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run perf (Debian: apt-get install linux-perf): {e}"))?;
    Ok(Recording { child, data })
}

/// CPU of one phase, by stage.
pub(crate) struct Profile {
    /// Samples of the signer's threads per stage.
    pub(crate) signer: BTreeMap<&'static str, u64>,
    /// Samples of every other thread (the benchmark's clients).
    pub(crate) clients: u64,
}

impl Recording {
    /// Stops recording and reads the samples.
    pub(crate) fn finish(mut self) -> Result<Profile, String> {
        let pid = self.child.id().to_string();
        // SIGINT: perf writes its file out and exits.
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let _ = self.child.wait();
        let script = Command::new("perf")
            .args(["script", "-F", "comm,ip,sym,dso", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("perf script: {e}"))?;
        let _ = std::fs::remove_file(&self.data);
        let text = String::from_utf8_lossy(&script.stdout);
        let mut profile = Profile {
            signer: BTreeMap::new(),
            clients: 0,
        };
        for sample in text.split("\n\n") {
            let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
            let Some(header) = lines.next() else { continue };
            if !header.trim_start().starts_with(SIGNER_THREAD) {
                profile.clients += 1;
                continue;
            }
            let frames: Vec<&str> = lines.collect();
            *profile.signer.entry(classify(&frames)).or_default() += 1;
        }
        Ok(profile)
    }
}

/// The stage of one sample (frames innermost first).
fn classify(frames: &[&str]) -> &'static str {
    let in_kernel = frames.first().is_some_and(|f| f.contains("[kernel"));
    for frame in frames.iter().filter(|f| !f.contains("[kernel")) {
        let Some((_, stage)) = RULES.iter().find(|(pattern, _)| frame.contains(pattern)) else {
            continue;
        };
        let Some(stage) = stage else { continue };
        // A syscall made by our own stages counts for them (the audit
        // file's write, wherever the compiler inlined it); any other for
        // the socket and the runtime.
        if in_kernel && stage.starts_with("audit") {
            return "audit: sink write";
        }
        if in_kernel && !is_own(stage) {
            return STAGES[0];
        }
        return STAGES
            .iter()
            .find(|s| *s == stage)
            .copied()
            .unwrap_or("other");
    }
    if in_kernel {
        return STAGES[0];
    }
    if frames.first().is_some_and(|f| is_allocator(f)) {
        return "allocator, memcpy (caller unknown)";
    }
    "other"
}

/// Stages whose syscalls are theirs, not the socket's.
fn is_own(stage: &str) -> bool {
    stage.starts_with("audit") || stage.starts_with("custody") || stage.starts_with("registry")
}

fn is_allocator(frame: &str) -> bool {
    [
        "malloc", "free", "memcpy", "memmove", "realloc", "cfree", "_int_",
    ]
    .iter()
    .any(|p| frame.contains(p))
}

/// Prints the table of `issue` beside `floor` (µs of CPU per call).
pub(crate) fn print(issue: (&Profile, usize), floor: (&Profile, usize)) {
    let per_call = |samples: u64, calls: usize| -> f64 {
        if calls == 0 {
            return 0.0;
        }
        samples as f64 * PERIOD_NS as f64 / 1e3 / calls as f64
    };
    println!(
        "\nCPU per call by stage (µs; perf task-clock every {} µs, signer threads only):",
        PERIOD_NS / 1000
    );
    println!(
        "| {:<52} | {:>10} | {:>12} | {:>8} |",
        "stage", "issuance", "Health/Check", "added"
    );
    println!("|{:-<54}|{:->12}|{:->14}|{:->10}|", "", "", "", "");
    let (mut total_i, mut total_f) = (0.0, 0.0);
    for stage in STAGES {
        let i = per_call(issue.0.signer.get(stage).copied().unwrap_or(0), issue.1);
        let f = per_call(floor.0.signer.get(stage).copied().unwrap_or(0), floor.1);
        total_i += i;
        total_f += f;
        println!("| {stage:<52} | {i:>10.1} | {f:>12.1} | {:>8.1} |", i - f);
    }
    println!(
        "| {:<52} | {total_i:>10.1} | {total_f:>12.1} | {:>8.1} |",
        "**signer total**",
        total_i - total_f
    );
    println!(
        "| {:<52} | {:>10.1} | {:>12.1} | {:>8.1} |",
        "(the benchmark's clients, same process)",
        per_call(issue.0.clients, issue.1),
        per_call(floor.0.clients, floor.1),
        per_call(issue.0.clients, issue.1) - per_call(floor.0.clients, floor.1)
    );
    println!(
        "calls measured: issuance {}, Health/Check {}",
        issue.1, floor.1
    );
}
