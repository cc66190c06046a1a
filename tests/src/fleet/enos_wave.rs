//! `enos-fleet renew --enos-certificates` (issue 26 item 6): a renewal
//! wave of EnOS device certificates through the signer to the sandbox's
//! certificate API.
//!
//! The signer is the real `enos-signer` binary (a child process, so that
//! its own CPU can be read from `/proc/<pid>/stat`), its `[enos_api]`
//! pointing at the sandbox's API over HTTPS with `concurrency` from the
//! options; the credential is sealed with `enos-signer enos-api
//! set-credential` and the gateways are imported with `enos-signer
//! import`, as an operator does. Each simulated gateway holds its mTLS
//! identity (a client certificate of the run's CA) and its own gRPC
//! channel; it applies for its EnOS certificate (setup, not timed), makes
//! a fresh P-256 key and a CSR with the signer's subject template, then
//! every gateway renews at once: the wave.
//!
//! Measured across the wave: renewals and failures (by gRPC code), wall
//! time, each renewal's latency at the gateway; from the signer's
//! `/metrics`, the time its EnOS client spent in exchanges with the API,
//! queued for a permit, and the most calls in flight; the CPU (utime +
//! stime) of the signer, of the sandbox and of this process.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use enos_sandbox::PortReservation;
use enos_signer_proto::v1::{
    ApplyEnosCertificateRequest, RenewEnosCertificateRequest,
    enos_certificates_client::EnosCertificatesClient,
};
use enos_signer_svc::config::{
    EnosApiConfig, EnosEnvironmentConfig, MetricsConfig, PolicyConfig, RateLimitConfig,
    SubjectTemplate,
};
use enos_testkit::{Identity, process::run_to_end, sandbox::Sandbox, sandbox::SandboxBinary};
use futures::StreamExt;
use tokio::time::Instant;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::{
    devices::{self, TestDevice},
    error::{E2eError, Result},
    fleet::{limits, options::FleetOptions, world::PRODUCT_KEY},
    pki::LoopPki,
    signer::{self, AdminEnv, SignerProcess},
};

/// The EnOS organisation the sandbox serves.
const ORG_ID: &str = "o15724268424841";
/// The application's AccessKey (an identifier, not a secret).
const APP_KEY: &str = "fleet-app-key";
/// The signer's name for the sandbox's environment.
const ENVIRONMENT: &str = "fleet";
/// Gateways applying at once during the setup (not timed).
const SETUP_PARALLEL: usize = 32;
/// File descriptors per gateway (its gRPC channel) and the signer's side
/// of it, in this process and its children.
const FDS_PER_GATEWAY: u64 = 2;

/// What the wave measured.
#[derive(Debug, Clone, Default)]
pub struct EnosWaveFigures {
    /// Gateways in the wave.
    pub gateways: usize,
    /// `[enos_api] concurrency` of the signer.
    pub concurrency: usize,
    /// Renewals answered with a certificate.
    pub renewed: usize,
    /// Renewals that failed, by gRPC code (or `timeout`): counted, never
    /// hidden.
    pub failures: BTreeMap<String, usize>,
    /// The first failure's message, to say why.
    pub first_failure: Option<String>,
    /// From the wave's start to its last answer.
    pub wall: Duration,
    /// Each renewal's latency at the gateway, sorted.
    pub latencies: Vec<Duration>,
    /// Exchanges with EnOS's API during the wave, every operation.
    pub api_exchanges: u64,
    /// Of them, `renew`.
    pub api_renews: u64,
    /// Seconds spent in exchanges with the API during the wave (sum).
    pub api_seconds: f64,
    /// Seconds the calls waited for a concurrency permit (sum).
    pub queue_seconds: f64,
    /// The signer's own time serving the renewals (sum of its
    /// `renew_enos_certificate` latencies).
    pub rpc_seconds: f64,
    /// The most exchanges with the API in flight at once since the signer
    /// started (its `enos_api_in_flight_peak`).
    pub peak_in_flight: u64,
    /// The signer process's CPU (utime + stime) across the wave.
    pub signer_cpu: Duration,
    /// The sandbox's CPU across the wave (EnOS's stand-in, same cores).
    pub sandbox_cpu: Duration,
    /// This process's CPU across the wave (the gateways' gRPC clients).
    pub fleet_cpu: Duration,
}

impl EnosWaveFigures {
    /// Renewals that failed.
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// Whether the wave is what the issue asks: every gateway renewed and
    /// the API's bound held.
    pub fn clean(&self) -> bool {
        self.renewed == self.gateways
            && self.failed() == 0
            && self.peak_in_flight <= self.concurrency as u64
    }

    /// Renewals a second over the wave.
    pub fn per_second(&self) -> f64 {
        self.renewed as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }

    fn per_renewal(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1000.0 / self.renewed.max(1) as f64
    }
}

impl fmt::Display for EnosWaveFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wall = self.wall.as_secs_f64().max(1e-9);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let pct = |part: f64, whole: f64| 100.0 * part / whole.max(1e-9);
        writeln!(
            f,
            "enos-fleet: EnOS certificate renewal wave: {} gateways through the signer (enos-signer, [enos_api] concurrency {}) to the sandbox's API over HTTPS, 127.0.0.1",
            self.gateways, self.concurrency
        )?;
        writeln!(f, "[enos renew]")?;
        writeln!(
            f,
            "  renewed:                     {} of {}, failed {}{}",
            self.renewed,
            self.gateways,
            self.failed(),
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.failures)
            }
        )?;
        if let Some(first) = &self.first_failure {
            writeln!(f, "  first failure:               {first}")?;
        }
        writeln!(f, "  wall time:                   {wall:.2} s")?;
        writeln!(f, "  renewals/s:                  {:.1}", self.per_second())?;
        writeln!(
            f,
            "  latency at the gateway:      p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0))
        )?;
        let per_call = self.api_seconds * 1000.0 / self.api_exchanges.max(1) as f64;
        writeln!(
            f,
            "  EnOS API exchanges:          {} ({} renew), {per_call:.1} ms each on average",
            self.api_exchanges, self.api_renews
        )?;
        let in_flight = self.api_seconds / wall;
        writeln!(
            f,
            "  waiting on the API:          {:.0} % of wall time x {} permits (mean {in_flight:.2} calls in flight)",
            pct(in_flight, self.concurrency as f64),
            self.concurrency
        )?;
        let n = self.renewed.max(1) as f64;
        let rpc = self.rpc_seconds * 1000.0 / n;
        let api = self.api_seconds * 1000.0 / n;
        let queue = self.queue_seconds * 1000.0 / n;
        writeln!(
            f,
            "  signer's time per renewal:   {rpc:.1} ms: in the API {api:.1} ms ({:.0} %), queued for a permit {queue:.1} ms ({:.0} %), the rest {:.1} ms",
            pct(api, rpc),
            pct(queue, rpc),
            (rpc - api - queue).max(0.0)
        )?;
        writeln!(
            f,
            "  calls in flight, most:       {} (bound {}: {})",
            self.peak_in_flight,
            self.concurrency,
            if self.peak_in_flight <= self.concurrency as u64 {
                "held"
            } else {
                "EXCEEDED"
            }
        )?;
        writeln!(
            f,
            "  signer CPU:                  {:.2} ms per renewal ({:.2} cores over the wave)",
            self.per_renewal(self.signer_cpu),
            self.signer_cpu.as_secs_f64() / wall
        )?;
        writeln!(
            f,
            "  sandbox CPU (EnOS's part):   {:.2} ms per renewal ({:.2} cores)",
            self.per_renewal(self.sandbox_cpu),
            self.sandbox_cpu.as_secs_f64() / wall
        )?;
        writeln!(
            f,
            "  enos-fleet CPU (gateways):   {:.2} ms per renewal ({:.2} cores)",
            self.per_renewal(self.fleet_cpu),
            self.fleet_cpu.as_secs_f64() / wall
        )?;
        writeln!(
            f,
            "  machine:                     {} cores shared by the three",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )
    }
}

/// The binaries the wave runs.
#[derive(Debug, Clone)]
pub struct WaveBinaries {
    /// `enos-sandbox`.
    pub sandbox: SandboxBinary,
    /// `enos-signer`.
    pub signer: PathBuf,
}

/// One simulated gateway.
struct Gateway {
    /// Its device key.
    device_key: String,
    /// Its channel to the signer, over mTLS with its own certificate.
    client: EnosCertificatesClient<Channel>,
    /// The serial of its current EnOS certificate.
    cert_sn: String,
}

/// Runs the wave: `options.agents` gateways, `options.enos_api_concurrency`.
pub async fn run(options: &FleetOptions, binaries: &WaveBinaries) -> Result<EnosWaveFigures> {
    options.validate().map_err(E2eError::failed)?;
    let say = |what: String| {
        if options.progress {
            #[allow(clippy::print_stderr)] // progress of a long run, asked for
            {
                eprintln!("enos-fleet: {what}");
            }
        }
    };
    let count = options.agents;
    limits::raise_fd_limit(count as u64 * FDS_PER_GATEWAY + 512)?;
    let dir = tempfile::tempdir().map_err(E2eError::io("creating a temporary directory"))?;
    let pki = LoopPki::new(&dir.path().join("pki"), "fleet-ca")?;
    let devices = (0..count)
        .map(|i| TestDevice::new(PRODUCT_KEY, &format!("gw-{i:05}")))
        .collect::<Result<Vec<_>>>()?;
    let csv = dir.path().join("devices.csv");
    devices::write_csv(&csv, &devices.iter().collect::<Vec<_>>())?;

    say(format!(
        "{count} gateways: the sandbox's EnOS API, the signer (enos-signer serve), enos-signer import"
    ));
    let secret = random_secret()?;
    let secret_file = dir.path().join("enos-app.secret");
    enos_testkit::pki::write_private(&secret_file, secret.as_bytes())
        .map_err(E2eError::Component)?;
    let api_server = pki.server("enos-apigw")?;
    let sandbox_config = dir.path().join("sandbox.toml");
    // No state_dir: the EnOS CA and its records in memory (written whole
    // after each change otherwise, which would time the file, not the API).
    std::fs::write(
        &sandbox_config,
        format!(
            "[enos_api]\nlisten = \"127.0.0.1:0\"\norg_id = \"{ORG_ID}\"\napp_key = \"{APP_KEY}\"\n\
             app_secret_file = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            secret_file.display(),
            api_server.cert.display(),
            api_server.key.display()
        ),
    )
    .map_err(E2eError::io("writing the sandbox's config"))?;
    let sandbox = Sandbox::builder(binaries.sandbox.clone(), &csv)
        .config(&sandbox_config)
        .enos_api()
        // Its log of every answer would cost the cores the signer uses.
        .log_filter("warn")
        .start()?;
    let api_addr = sandbox
        .enos_api_addr()
        .ok_or_else(|| E2eError::failed("the sandbox serves no EnOS API"))?;

    let reservation = PortReservation::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| E2eError::failed(format!("reserving the signer's port: {e}")))?;
    let metrics_reservation = PortReservation::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| E2eError::failed(format!("reserving the metrics port: {e}")))?;
    let signer_dir = dir.path().join("signer");
    let (mut config, files) = signer::write_config(
        &signer_dir,
        &pki,
        reservation.addr(),
        PolicyConfig::default(),
    )?;
    config.metrics = Some(MetricsConfig::on(metrics_reservation.addr()));
    config.rate_limit = Some(RateLimitConfig {
        per_second: options.rate_per_second,
        burst: options.rate_burst,
    });
    // Every gateway connects from 127.0.0.1, as a fleet behind one NAT.
    config.server.limits.max_connections_per_ip = 0;
    let concurrency = std::num::NonZeroUsize::new(options.enos_api_concurrency)
        .ok_or_else(|| E2eError::failed("--enos-api-concurrency must be at least 1"))?;
    config.enos_api = Some(EnosApiConfig {
        concurrency,
        timeout: Duration::from_secs(15),
        valid_day: 730,
        environments: [(
            ENVIRONMENT.to_owned(),
            EnosEnvironmentConfig {
                gateway_url: format!("https://{api_addr}"),
                org_id: ORG_ID.into(),
                credential_file: signer_dir.join("enos-api-fleet.sealed"),
                ca_file: Some(pki.ca.clone()),
                products: vec!["*".into()],
            },
        )]
        .into(),
        subject: SubjectTemplate::default(),
        product_subjects: BTreeMap::new(),
    });
    std::fs::write(&files.config, config.to_toml()?)
        .map_err(E2eError::io("writing the signer's config"))?;
    signer::init(&binaries.signer, &files.config)?;
    let (status, output) = run_to_end(
        "enos-signer enos-api set-credential",
        &binaries.signer,
        &[
            OsStr::new("enos-api"),
            OsStr::new("set-credential"),
            OsStr::new("--config"),
            files.config.as_os_str(),
            OsStr::new("--environment"),
            OsStr::new(ENVIRONMENT),
            OsStr::new("--access-key"),
            OsStr::new(APP_KEY),
            OsStr::new("--secret-file"),
            secret_file.as_os_str(),
        ],
        &[],
        Duration::from_secs(20),
    )?;
    if !status.success() {
        return Err(E2eError::failed(format!(
            "`enos-signer enos-api set-credential` failed ({status}):\n{output}"
        )));
    }
    let mut signer = SignerProcess::new(
        &binaries.signer,
        &files.config,
        reservation.addr(),
        Some(reservation),
    );
    signer.start()?;
    let signer_pid = signer
        .pid()
        .ok_or_else(|| E2eError::failed("the signer has no process id"))?;
    let sandbox_pid = sandbox
        .pid()
        .ok_or_else(|| E2eError::failed("the sandbox has no process id"))?;
    let admin = pki.admin("fleet-admin")?;
    AdminEnv {
        endpoint: signer.uri(),
        ca: pki.ca.clone(),
        cert: admin.cert,
        key: admin.key,
    }
    .run(&binaries.signer, &[OsStr::new("import"), csv.as_os_str()])?;

    say(format!(
        "{count} gateways apply for their EnOS certificates (setup, {SETUP_PARALLEL} at a time)"
    ));
    let template = SubjectTemplate::default();
    let mut clients = Vec::with_capacity(count);
    for device in &devices {
        let (_, identity) = pki.device(device)?;
        clients.push((
            device.device_key.clone(),
            channel(&signer.uri(), &pki, &identity)?,
        ));
    }
    let applied: Vec<Result<Gateway>> = futures::stream::iter(clients)
        .map(|(device_key, mut client)| {
            let template = &template;
            async move {
                let csr_pem = csr(template, &device_key)?;
                let issued = client
                    .apply_enos_certificate(ApplyEnosCertificateRequest { csr_pem })
                    .await
                    .map_err(|e| E2eError::failed(format!("{device_key}: apply (setup): {e:?}")))?
                    .into_inner();
                Ok(Gateway {
                    device_key,
                    client,
                    cert_sn: issued.cert_sn,
                })
            }
        })
        .buffer_unordered(SETUP_PARALLEL)
        .collect()
        .await;
    let gateways = applied.into_iter().collect::<Result<Vec<_>>>()?;
    // Each gateway's new key and CSR, made before the wave: the gateways'
    // key generation is theirs, not the signer's.
    let mut ready = Vec::with_capacity(gateways.len());
    for gateway in gateways {
        let csr_pem = csr(&template, &gateway.device_key)?;
        ready.push((gateway, csr_pem));
    }

    say(format!(
        "the wave: {count} gateways renew at once, [enos_api] concurrency {concurrency}"
    ));
    let scraper = pki.device(&TestDevice::new(PRODUCT_KEY, "prometheus")?)?.1;
    let metrics_addr = metrics_reservation.addr();
    let before = scrape(metrics_addr, pki.ca_pem(), &scraper).await?;
    let cpu_before = (cpu_of(signer_pid)?, cpu_of(sandbox_pid)?, own_cpu()?);
    let start = Instant::now();
    let deadline = start + options.phase_timeout;
    let calls: Vec<_> = ready
        .into_iter()
        .map(|(mut gateway, csr_pem)| {
            tokio::spawn(async move {
                let asked = Instant::now();
                let request = RenewEnosCertificateRequest {
                    csr_pem,
                    current_cert_sn: gateway.cert_sn.clone(),
                };
                let answer = tokio::time::timeout_at(
                    deadline,
                    gateway.client.renew_enos_certificate(request),
                )
                .await;
                let done = Instant::now();
                let outcome = match answer {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err((
                        format!("{:?}", status.code()),
                        format!("{}: {}", gateway.device_key, status.message()),
                    )),
                    Err(_) => Err((
                        "timeout".to_owned(),
                        format!("{}: no answer within the phase timeout", gateway.device_key),
                    )),
                };
                (done, done - asked, outcome)
            })
        })
        .collect();
    let mut figures = EnosWaveFigures {
        gateways: count,
        concurrency: concurrency.get(),
        ..EnosWaveFigures::default()
    };
    let mut last = start;
    for call in calls {
        let (done, latency, outcome) = call
            .await
            .map_err(|e| E2eError::failed(format!("a gateway's task failed: {e}")))?;
        last = last.max(done);
        figures.latencies.push(latency);
        match outcome {
            Ok(()) => figures.renewed += 1,
            Err((code, message)) => {
                *figures.failures.entry(code).or_default() += 1;
                figures.first_failure.get_or_insert(message);
            }
        }
    }
    figures.wall = last - start;
    let cpu_after = (cpu_of(signer_pid)?, cpu_of(sandbox_pid)?, own_cpu()?);
    let after = scrape(metrics_addr, pki.ca_pem(), &scraper).await?;
    figures.latencies.sort();
    figures.signer_cpu = cpu_after.0.saturating_sub(cpu_before.0);
    figures.sandbox_cpu = cpu_after.1.saturating_sub(cpu_before.1);
    figures.fleet_cpu = cpu_after.2.saturating_sub(cpu_before.2);
    let delta = |sum: fn(&str) -> f64| sum(&after) - sum(&before);
    figures.api_seconds =
        delta(|t| prefixed_sum(t, "enos_signer_enos_api_request_duration_seconds_sum{"));
    figures.api_exchanges =
        delta(|t| prefixed_sum(t, "enos_signer_enos_api_request_duration_seconds_count{")) as u64;
    figures.api_renews = delta(|t| {
        sample(
            t,
            r#"enos_signer_enos_api_request_duration_seconds_count{operation="renew"}"#,
        )
    }) as u64;
    figures.queue_seconds = delta(|t| sample(t, "enos_signer_enos_api_queue_seconds_sum"));
    figures.rpc_seconds = delta(|t| {
        sample(
            t,
            r#"enos_signer_issue_duration_seconds_sum{rpc="renew_enos_certificate"}"#,
        )
    });
    figures.peak_in_flight = sample(&after, "enos_signer_enos_api_in_flight_peak") as u64;

    say("stop".into());
    if let Err(e) = signer.stop() {
        say(format!("the signer did not stop cleanly: {e}"));
    }
    drop(sandbox);
    Ok(figures)
}

/// A lazily connected mTLS channel to `uri` with `identity`.
fn channel(
    uri: &str,
    pki: &LoopPki,
    identity: &Identity,
) -> Result<EnosCertificatesClient<Channel>> {
    let endpoint = enos_signer_svc::client::mtls_endpoint(
        uri,
        pki.ca_pem(),
        Some(enos_testkit::signer::client_identity(identity)),
    )
    .map_err(|e| E2eError::failed(format!("the signer's endpoint: {e}")))?
    // A fleet's first wave queues behind a thousand handshakes.
    .connect_timeout(Duration::from_secs(30));
    Ok(EnosCertificatesClient::new(endpoint.connect_lazy()))
}

/// A fresh P-256 key and its CSR (SHA256withECDSA) with the subject the
/// signer's `template` requires of `device_key` (of [`PRODUCT_KEY`]).
fn csr(template: &SubjectTemplate, device_key: &str) -> Result<String> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
    let bad = |e: rcgen::Error| E2eError::failed(format!("making a CSR: {e}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(bad)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in template.expand(PRODUCT_KEY, device_key) {
        let ty = match ty {
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            _ => DnType::CommonName,
        };
        params.distinguished_name.push(ty, value);
    }
    params
        .serialize_request(&key)
        .map_err(bad)?
        .pem()
        .map_err(bad)
}

/// 32 random bytes, hex: the EnOS application's SecretKey of the run.
fn random_secret() -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|e| E2eError::failed(format!("no randomness: {e}")))?;
    Ok(Zeroizing::new(
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// `GET /metrics` of the signer over mTLS with `identity`.
async fn scrape(addr: SocketAddr, ca_pem: &str, identity: &Identity) -> Result<String> {
    let config = crate::tls::client_config(ca_pem, Some(identity))?;
    tokio::task::spawn_blocking(move || -> Result<String> {
        use std::io::{Read, Write};
        let failed = |e: &dyn fmt::Display| E2eError::failed(format!("scraping {addr}: {e}"));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| failed(&e))?;
        let connection = rustls::ClientConnection::new(config, name).map_err(|e| failed(&e))?;
        let tcp = std::net::TcpStream::connect(addr).map_err(|e| failed(&e))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| failed(&e))?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .map_err(|e| failed(&e))?;
        let mut body = Vec::new();
        // The server may close without close_notify after the body.
        match tls.read_to_end(&mut body) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(failed(&e)),
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if !text.starts_with("HTTP/1.1 200") {
            return Err(failed(&text.lines().next().unwrap_or("no answer")));
        }
        Ok(text)
    })
    .await
    .map_err(|e| E2eError::failed(format!("scraping {addr}: {e}")))?
}

/// The value of the sample `series` (name and labels as exposed), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The sum of every sample whose series starts with `prefix`.
fn prefixed_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// utime + stime of process `pid` (`/proc/<pid>/stat`).
fn cpu_of(pid: u32) -> Result<Duration> {
    stat_cpu(&PathBuf::from(format!("/proc/{pid}/stat")))
}

/// utime + stime of this process.
fn own_cpu() -> Result<Duration> {
    stat_cpu(Path::new("/proc/self/stat"))
}

fn stat_cpu(path: &Path) -> Result<Duration> {
    let text = std::fs::read_to_string(path)
        .map_err(E2eError::io(format!("reading {}", path.display())))?;
    // The fields after the command name (in parentheses, which may hold
    // spaces): state is field 3, utime 14 and stime 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| E2eError::failed(format!("{}: no command name", path.display())))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| E2eError::failed(format!("{}: no field {}", path.display(), i + 3)))
    };
    // `rest` starts at field 3: utime is its 12th, stime its 13th.
    let ticks = tick(11)? + tick(12)?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}
