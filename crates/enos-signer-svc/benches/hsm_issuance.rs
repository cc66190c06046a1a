//! Issuance with HSM custody against a raw cryptoki loop doing the same
//! token work on the same token, in the same run; issuance with software
//! custody beside it (issue 7).
//!
//! `cargo bench -p enos-signer-svc --bench hsm_issuance`
//!
//! The benchmark re-runs itself in a child process whose `SOFTHSM2_CONF`
//! points to a fresh SoftHSM2 token (`enos_custody_pkcs11::softhsm`):
//! SoftHSM2 reads its configuration once per process, and setting the
//! environment of a running process is unsound.
//!
//! Each round measures, one after the other:
//! 1. raw: `softhsm::raw` (check the record's MAC, unwrap, derive, digest)
//!    in a loop on one session, then on two threads with a session each;
//! 2. HSM issuance: `IssueMqttCredential` from N concurrent mTLS clients
//!    (one device certificate and connection each) against a signer on
//!    127.0.0.1 with `[custody] kind = "pkcs11"` on the same token;
//! 3. software issuance: the same against a signer with software custody.
//!
//! PKCS#11 allows one `C_Initialize` per process, so the raw loop and the
//! HSM signer take turns: the signer is stopped (its custody dropped)
//! while the raw loop runs. The best round of each counts (the machine is
//! shared and noisy; the best round is the least disturbed). Goal:
//! HSM issuance ≥ 0.8 × the best raw rate.
//!
//! The HSM signer runs one sign thread per session and gives its async
//! workers the CPUs left (`server.worker_threads` = CPUs − sessions, at
//! least 1): SoftHSM2 computes on this host's CPUs, and on 2 CPUs the
//! token work otherwise loses its CPU to the requests feeding it.
//!
//! `ENOS_BENCH_CLIENTS` (default 16), `ENOS_BENCH_SECS` (per measurement,
//! default 3), `ENOS_BENCH_ROUNDS` (default 2), `ENOS_BENCH_HSM_SESSIONS`
//! (the custody's session pool, default 1) and `ENOS_BENCH_HSM_WORKERS`
//! (the HSM signer's async workers) tune the run.
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::{
    hint::black_box,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use enos_custody::{Custody, SecretRef};
use enos_custody_pkcs11::{
    Pkcs11Config, Pkcs11Custody, generate_kek,
    softhsm::{SoftHsm, raw::RawToken},
};
use enos_sign_core::{DeviceKey, DeviceSecret, ProductKey, SignedFields, TimestampMs};
use enos_signer_proto::v1::{IssueMqttCredentialRequest, credentials_client::CredentialsClient};
use enos_signer_svc::{client, config::CustodyConfig};
use enos_testkit::Pki;
use enos_testkit::signer::{TestSigner, client_identity};
use tonic::transport::Channel;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PRODUCT_KEY: &str = "PkBench";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let Some(hsm) = SoftHsm::in_child() else {
        let hsm = SoftHsm::create("issuance", "");
        let status = hsm
            .child_command()
            .args(std::env::args_os().skip(1))
            .status()?;
        // `exit` skips destructors: remove the token directory first.
        drop(hsm);
        std::process::exit(status.code().unwrap_or(1));
    };
    run(&hsm)
}

fn run(hsm: &SoftHsm) -> Result<()> {
    let clients = env_or("ENOS_BENCH_CLIENTS", 16) as usize;
    let secs = Duration::from_secs(env_or("ENOS_BENCH_SECS", 3));
    let rounds = env_or("ENOS_BENCH_ROUNDS", 2).max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sessions = env_or("ENOS_BENCH_HSM_SESSIONS", 1).max(1) as usize;
    // SoftHSM2 computes on this host's CPUs: the HSM signer's async workers
    // get the CPUs its sign threads (one per session) leave, as
    // `server.worker_threads` documents.
    let workers = env_or(
        "ENOS_BENCH_HSM_WORKERS",
        cpus.saturating_sub(sessions).max(1) as u64,
    )
    .max(1) as usize;
    let config = Pkcs11Config {
        sessions: Some(sessions),
        ..hsm.config()
    };
    generate_kek(&config)?;
    let (record, ad, content) = raw_work(&config)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pki = Pki::new("bench")?;
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let hsm_config = config.clone();
    let (mut hsm_signer, mut software_signer) = runtime.block_on(async {
        let hsm_signer = TestSigner::start_with(dirs.0.path(), &pki, move |c| {
            c.custody = CustodyConfig::Pkcs11(hsm_config);
            c.server.worker_threads = NonZeroUsize::new(workers);
        })
        .await?;
        let software_signer = TestSigner::start(dirs.1.path(), &pki).await?;
        for i in 0..clients {
            let (dk, secret) = (format!("bench-{i}"), format!("secret-{i}-hQ3vZ8rK2mN7"));
            hsm_signer.put_device(PRODUCT_KEY, &dk, &secret).await?;
            software_signer
                .put_device(PRODUCT_KEY, &dk, &secret)
                .await?;
        }
        Result::Ok((hsm_signer, software_signer))
    })?;
    let software_channels = runtime.block_on(connect(&software_signer, &pki, clients))?;
    runtime.block_on(hsm_signer.stop());

    println!(
        "HSM issuance benchmark: SoftHSM2 token, SHA-1, {clients} mTLS clients on 127.0.0.1, \
         {sessions} HSM session(s) and sign thread(s), {workers} async worker(s) in the HSM \
         signer (2 in the software one), best of {rounds} rounds of {} s per measurement, {cpus} CPUs",
        secs.as_secs(),
    );
    let mut best = Best::default();
    for round in 1..=rounds {
        // The raw loop while no custody holds the module.
        let token = RawToken::open(hsm);
        let raw_one = raw_rate(&token, 1, &record, &ad, &content, secs);
        let raw_two = raw_rate(&token, 2, &record, &ad, &content, secs);
        drop(token);

        runtime.block_on(hsm_signer.restart())?;
        let hsm_channels = runtime.block_on(connect(&hsm_signer, &pki, clients))?;
        let issued_hsm = runtime.block_on(issuance(&hsm_channels, secs));
        drop(hsm_channels);
        runtime.block_on(hsm_signer.stop());

        let issued_software = runtime.block_on(issuance(&software_channels, secs));
        println!(
            "  round {round}: raw 1 thread {raw_one:.0}/s, raw 2 threads {raw_two:.0}/s, \
             HSM issuance {:.0}/s ({} errors), software issuance {:.0}/s ({} errors)",
            issued_hsm.rate, issued_hsm.errors, issued_software.rate, issued_software.errors
        );
        best.raw_one = best.raw_one.max(raw_one);
        best.raw_two = best.raw_two.max(raw_two);
        best.hsm = best.hsm.max(issued_hsm.rate);
        best.software = best.software.max(issued_software.rate);
        best.errors += issued_hsm.errors + issued_software.errors;
    }
    runtime.block_on(software_signer.stop());

    let raw_best = best.raw_one.max(best.raw_two);
    println!(
        "  raw cryptoki, same token work, 1 session:           {:>9.0} signs/s",
        best.raw_one
    );
    println!(
        "  raw cryptoki, same token work, 2 threads/sessions:  {:>9.0} signs/s",
        best.raw_two
    );
    println!(
        "  IssueMqttCredential, HSM custody:                   {:>9.0} RPS",
        best.hsm
    );
    println!(
        "  IssueMqttCredential, software custody:              {:>9.0} RPS",
        best.software
    );
    println!(
        "  HSM issuance / best raw: {:.2}  (goal >= 0.80)",
        best.hsm / raw_best
    );
    println!(
        "  HSM issuance / raw 1 session: {:.2}",
        best.hsm / best.raw_one
    );
    println!(
        "  software issuance / HSM issuance: {:.1}x",
        best.software / best.hsm
    );
    if best.errors > 0 {
        return Err(format!("{} issuance calls failed", best.errors).into());
    }
    Ok(())
}

/// The best rate of each measurement over the rounds.
#[derive(Default)]
struct Best {
    raw_one: f64,
    raw_two: f64,
    hsm: f64,
    software: f64,
    /// Failed issuance calls over all rounds: any makes the run fail.
    errors: usize,
}

/// A sealed record and the content one issuance digests, for the raw
/// loop: sealed by the custody on the fixture token (then disconnected).
fn raw_work(config: &Pkcs11Config) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let (pk, dk) = (ProductKey::new(PRODUCT_KEY)?, DeviceKey::new("bench-0")?);
    let id = SecretRef {
        product_key: &pk,
        device_key: Some(&dk),
        version: 1,
    };
    let secret = DeviceSecret::new("secret-0-hQ3vZ8rK2mN7".to_owned())?;
    let sealed = {
        let custody = Pkcs11Custody::connect(config)?;
        custody.seal(id, &secret)?
    };
    let fields = SignedFields::with_device_key_as_client_id(
        pk.clone(),
        dk.clone(),
        TimestampMs::from_millis(1_764_000_000_000),
    )?;
    let mut content = Vec::new();
    fields.write_content(|chunk| content.extend_from_slice(chunk));
    Ok((sealed.bytes, id.associated_data(), content))
}

/// Signs per second through `sessions` raw sessions, one thread each.
fn raw_rate(
    token: &RawToken,
    sessions: usize,
    record: &[u8],
    ad: &[u8],
    content: &[u8],
    duration: Duration,
) -> f64 {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..sessions)
            .map(|_| {
                scope.spawn(|| {
                    let session = token.session(record, ad, content);
                    for _ in 0..50 {
                        black_box(session.sign(true));
                    }
                    let start = Instant::now();
                    let mut count = 0u64;
                    while start.elapsed() < duration {
                        for _ in 0..16 {
                            black_box(session.sign(true));
                        }
                        count += 16;
                    }
                    count as f64 / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("raw worker"))
            .sum()
    })
}

/// One mTLS connection per client, each with its device's certificate.
async fn connect(signer: &TestSigner, pki: &Pki, clients: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(clients);
    for i in 0..clients {
        let identity = pki.device(PRODUCT_KEY, &format!("bench-{i}"))?;
        channels.push(
            client::connect_mtls(
                &signer.uri(),
                signer.ca_pem(),
                Some(client_identity(&identity)),
            )
            .await?,
        );
    }
    Ok(channels)
}

/// What one issuance measurement gives.
struct Issued {
    /// Credentials issued per second.
    rate: f64,
    /// Calls that failed.
    errors: usize,
}

/// Every client issues as fast as it can for a short warm-up, then for
/// `duration`.
async fn issuance(channels: &[Channel], duration: Duration) -> Issued {
    flat_out(channels, Duration::from_millis(300)).await;
    let started = Instant::now();
    let (issued, errors) = flat_out(channels, duration).await;
    Issued {
        rate: issued as f64 / started.elapsed().as_secs_f64(),
        errors,
    }
}

/// (issued, failed) calls of every client until `duration` has passed.
async fn flat_out(channels: &[Channel], duration: Duration) -> (u64, usize) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = channels
        .iter()
        .map(|channel| {
            let mut client = CredentialsClient::new(channel.clone());
            tokio::spawn(async move {
                let (mut issued, mut errors) = (0u64, 0usize);
                while Instant::now() < deadline {
                    match client
                        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
                        .await
                    {
                        Ok(_) => issued += 1,
                        Err(_) => errors += 1,
                    }
                }
                (issued, errors)
            })
        })
        .collect();
    let mut total = (0, 0);
    for task in tasks {
        let (issued, errors) = task.await.unwrap_or((0, 1));
        total.0 += issued;
        total.1 += errors;
    }
    total
}
