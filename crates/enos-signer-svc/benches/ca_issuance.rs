//! Certificate issuance over gRPC against a raw loop doing the same CA
//! work, in one run (#25): software CA and HSM CA (SoftHSM2).
//!
//! `cargo bench -p enos-signer-svc --bench ca_issuance`
//!
//! Each round measures, one after the other:
//! 1. raw software: `enos_ca::bench_support::SoftwareIssuance` on 2
//!    threads: ECDSA P-256 sign + DER encoding of the same device
//!    certificate (`issue`), and the same after reading and verifying the
//!    CSR (`issue_from_csr`, which every enrollment and renewal must do);
//! 2. raw HSM: C_Sign CKM_ECDSA on the token's CA key, 1 and 2 sessions,
//!    while no signer holds the module;
//! 3. `RenewCertificate` from N concurrent mTLS clients (each its own
//!    certificate of the signer's CA, connection and CSR) against a signer
//!    with software custody, then one with HSM custody on the same token.
//!
//! A renewal is the per-call path of the issue: identity, the revocation
//! lookup, the CSR check, the certificate signed by the custody's CA key,
//! an audit intent record (file, fail-closed), one registry transaction
//! (redb: a durable commit), the outcome record. The goals compare it
//! with the raw sign + encode (≥ 0.7×); the ratio to the raw loop that
//! also checks the CSR is printed beside it. Best of the rounds counts.
//!
//! `ENOS_BENCH_CLIENTS` (default 8), `ENOS_BENCH_SECS` (default 3),
//! `ENOS_BENCH_ROUNDS` (default 2) tune the run.
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use enos_ca::{
    DeviceNames,
    bench_support::{SoftwareIssuance, device_csr, parallel_issue_rate, rate},
};
use enos_custody_pkcs11::{
    Pkcs11Config, generate_kek,
    softhsm::{SoftHsm, raw::RawToken},
};
use enos_registry::{RedbRegistry, Registry};
use enos_signer_proto::v1::{
    CreateEnrollTokenRequest, DeviceRef, EnrollRequest, RenewCertificateRequest,
    certificates_client::CertificatesClient, enrollment_client::EnrollmentClient,
};
use enos_signer_svc::{
    client,
    config::{CaConfig, CustodyConfig},
};
use enos_testkit::{Identity, Pki, signer::TestSigner};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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
        let hsm = SoftHsm::create("ca-issuance", "");
        let status = hsm
            .child_command()
            .args(std::env::args_os().skip(1))
            .status()?;
        drop(hsm);
        std::process::exit(status.code().unwrap_or(1));
    };
    run(&hsm)
}

fn run(hsm: &SoftHsm) -> Result<()> {
    let clients = env_or("ENOS_BENCH_CLIENTS", 8) as usize;
    let secs = Duration::from_secs(env_or("ENOS_BENCH_SECS", 3));
    let rounds = env_or("ENOS_BENCH_ROUNDS", 2).max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = Pkcs11Config {
        sessions: Some(1),
        ..hsm.config()
    };
    generate_kek(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pki = Pki::new("bench")?;
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let ca = || CaConfig {
        enroll_listen: Some(([127, 0, 0, 1], 0).into()),
        ..CaConfig::default()
    };
    let hsm_config = config.clone();
    let (mut hsm_signer, mut software_signer) = runtime.block_on(async {
        let hsm_signer = TestSigner::start_with(dirs.0.path(), &pki, move |c| {
            c.custody = CustodyConfig::Pkcs11(hsm_config);
            c.ca = Some(ca());
            c.server.worker_threads = NonZeroUsize::new(cpus.saturating_sub(1).max(1));
        })
        .await?;
        let software_signer =
            TestSigner::start_with(dirs.1.path(), &pki, |c| c.ca = Some(ca())).await?;
        Result::Ok((hsm_signer, software_signer))
    })?;
    let software_clients = runtime.block_on(enrolled(&software_signer, clients))?;
    let hsm_clients = runtime.block_on(enrolled(&hsm_signer, clients))?;
    let hsm_key_id = {
        runtime.block_on(hsm_signer.stop());
        let registry = RedbRegistry::open(&dirs.0.path().canonicalize()?.join("registry.redb"))?;
        let ca = runtime.block_on(registry.get_ca())?.ok_or("no CA")?;
        ca.key.bytes
    };
    let csr = device_csr();
    let raw = SoftwareIssuance::new(
        &csr,
        DeviceNames {
            uri: format!("spiffe://enos/device/{PRODUCT_KEY}/bench-0"),
            common_name: format!("{PRODUCT_KEY}/bench-0"),
        },
        CaConfig::default().lifetime,
    );
    println!(
        "CA issuance benchmark: RenewCertificate from {clients} mTLS clients on 127.0.0.1 \
         (EC P-256 CSRs, 30-day certificates, audit file fail-closed, redb registry), \
         best of {rounds} rounds of {} s, {cpus} CPUs",
        secs.as_secs()
    );
    let mut best = Best::default();
    for round in 1..=rounds {
        let raw_sign = parallel_issue_rate(&raw, cpus, secs);
        let raw_csr = parallel(cpus, secs, || {
            std::hint::black_box(raw.issue_from_csr());
        });
        let token = RawToken::open(hsm);
        let c_sign_one = token.c_sign_rate(&hsm_key_id, 1, secs);
        let c_sign_two = token.c_sign_rate(&hsm_key_id, 2, secs);
        drop(token);

        let floor = runtime.block_on(calls(
            &software_signer,
            &software_clients,
            secs,
            Call::Health,
        ))?;
        let software = runtime.block_on(calls(
            &software_signer,
            &software_clients,
            secs,
            Call::Renew,
        ))?;
        runtime.block_on(hsm_signer.restart())?;
        let hsm_rate = runtime.block_on(calls(&hsm_signer, &hsm_clients, secs, Call::Renew))?;
        runtime.block_on(hsm_signer.stop());
        println!(
            "  round {round}: raw sign+encode {raw_sign:.0}/s, raw CSR check+sign+encode {raw_csr:.0}/s, \
             raw C_Sign 1/2 sessions {c_sign_one:.0}/{c_sign_two:.0}/s, \
             empty mTLS RPC {floor:.0}/s, gRPC software {software:.0}/s, gRPC HSM {hsm_rate:.0}/s"
        );
        best.floor = best.floor.max(floor);
        best.raw_sign = best.raw_sign.max(raw_sign);
        best.raw_csr = best.raw_csr.max(raw_csr);
        best.c_sign = best.c_sign.max(c_sign_one.max(c_sign_two));
        best.software = best.software.max(software);
        best.hsm = best.hsm.max(hsm_rate);
    }
    runtime.block_on(software_signer.stop());
    println!(
        "  raw software, sign + DER encoding:            {:>8.0} certificates/s",
        best.raw_sign
    );
    println!(
        "  raw software, CSR check + sign + encoding:    {:>8.0} certificates/s",
        best.raw_csr
    );
    println!(
        "  raw C_Sign CKM_ECDSA (best of 1, 2 sessions): {:>8.0} signs/s",
        best.c_sign
    );
    println!(
        "  Health/Check (an empty mTLS RPC, the floor): {:>8.0} RPS",
        best.floor
    );
    println!(
        "  RenewCertificate, software CA:                {:>8.0} RPS",
        best.software
    );
    println!(
        "  RenewCertificate, HSM CA:                     {:>8.0} RPS",
        best.hsm
    );
    println!(
        "  software CA / raw sign + encode: {:.2}  (goal >= 0.70); / raw with the CSR check: {:.2}",
        best.software / best.raw_sign,
        best.software / best.raw_csr
    );
    println!(
        "  HSM CA / raw C_Sign: {:.2}  (goal >= 0.70)",
        best.hsm / best.c_sign
    );
    println!(
        "  software CA / empty RPC: {:.2}; HSM CA / empty RPC: {:.2}",
        best.software / best.floor,
        best.hsm / best.floor
    );
    Ok(())
}

/// The best rate of each measurement over the rounds.
#[derive(Default)]
struct Best {
    raw_sign: f64,
    raw_csr: f64,
    c_sign: f64,
    software: f64,
    hsm: f64,
    floor: f64,
}

/// [`rate`] of `f` on `threads` threads at once, summed.
fn parallel(threads: usize, duration: Duration, f: impl Fn() + Sync) -> f64 {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| scope.spawn(|| rate(duration, &f)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("raw worker"))
            .sum()
    })
}

/// A client: its certificate of the signer's CA and a CSR for a new key.
struct Client {
    identity: Identity,
    csr: Vec<u8>,
}

/// `clients` devices, each enrolled with a token (the signer's own CA).
async fn enrolled(signer: &TestSigner, clients: usize) -> Result<Vec<Client>> {
    let mut admin = signer.admin().await;
    let enroll_channel = client::connect_mtls(
        &signer.enroll_uri().ok_or("no enrollment listener")?,
        signer.ca_pem(),
        None,
    )
    .await?;
    let mut enrollment = EnrollmentClient::new(enroll_channel);
    let mut out = Vec::with_capacity(clients);
    for i in 0..clients {
        let dk = format!("bench-{i}");
        signer
            .put_device(PRODUCT_KEY, &dk, &format!("secret-{i}-hQ3vZ8rK2mN7"))
            .await?;
        let token = admin
            .create_enroll_token(CreateEnrollTokenRequest {
                device: Some(DeviceRef::new(PRODUCT_KEY, &dk)),
                ttl_secs: 0,
            })
            .await?
            .into_inner()
            .token;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)?
            .der()
            .to_vec();
        let issued = enrollment
            .enroll(EnrollRequest {
                device: Some(DeviceRef::new(PRODUCT_KEY, &dk)),
                token,
                csr_der: csr.clone(),
            })
            .await?
            .into_inner();
        let identity = Identity::from_issued(
            std::iter::once(issued.certificate_der.as_slice())
                .chain(issued.chain_der.iter().map(Vec::as_slice)),
            key.serialize_pem(),
        );
        out.push(Client { identity, csr });
    }
    Ok(out)
}

/// What the clients call.
#[derive(Clone, Copy)]
enum Call {
    /// `RenewCertificate` with the client's CSR.
    Renew,
    /// `grpc.health.v1.Health/Check`: the floor of any call.
    Health,
}

/// Calls per second from every client, after a short warm-up; an error
/// fails the run.
async fn calls(
    signer: &TestSigner,
    clients: &[Client],
    duration: Duration,
    call: Call,
) -> Result<f64> {
    let mut channels = Vec::with_capacity(clients.len());
    for c in clients {
        channels.push(
            client::connect_mtls(
                &signer.uri(),
                signer.ca_pem(),
                Some(enos_testkit::signer::client_identity(&c.identity)),
            )
            .await?,
        );
    }
    flat_out(&channels, clients, Duration::from_millis(300), call).await?;
    let started = Instant::now();
    let done = flat_out(&channels, clients, duration, call).await?;
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Renewals completed by every client until `duration` has passed.
async fn flat_out(
    channels: &[Channel],
    clients: &[Client],
    duration: Duration,
    call: Call,
) -> Result<u64> {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = channels
        .iter()
        .zip(clients)
        .map(|(channel, c)| {
            let mut client = CertificatesClient::new(channel.clone());
            let mut health = HealthClient::new(channel.clone());
            let csr = c.csr.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    match call {
                        Call::Renew => client
                            .renew_certificate(RenewCertificateRequest {
                                csr_der: csr.clone(),
                            })
                            .await
                            .map(drop),
                        Call::Health => health.check(HealthCheckRequest::default()).await.map(drop),
                    }
                    .map_err(|s| format!("call failed: {s:?}"))?;
                    done += 1;
                }
                Result::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| e.to_string())??;
    }
    Ok(total)
}
