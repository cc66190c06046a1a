//! The CA key of #25, raw loops against custody in the same run:
//!
//! - software: "ECDSA P-256 sign + DER encoding of the same certificate"
//!   (`enos_ca::bench_support::SoftwareIssuance::issue`, a ring key in
//!   memory), the same with the CSR read and checked first, and a bare
//!   ring ECDSA sign to show what the encoding costs;
//! - HSM (SoftHSM2): a raw `C_Sign` CKM_ECDSA loop on the CA key
//!   (`softhsm::raw::RawToken::c_sign_rate`), `Pkcs11CaSigner::sign`
//!   (SHA-256 on the host, the session pool, r‖s → DER), and a whole
//!   device certificate signed in the token through
//!   `enos_ca::authority::CustodyKey`; one thread, then two.
//!
//! `cargo bench -p enos-custody-pkcs11 --bench ca`
//!
//! Re-runs itself in a child process against a fresh token (see
//! `softhsm`). PKCS#11 allows one initialisation per process, so the raw
//! loop and the custody take turns; the best of `ENOS_BENCH_ROUNDS`
//! (default 2) rounds of `ENOS_BENCH_SECS` (default 1.5) seconds per
//! measurement counts: the machine is shared and noisy, and the best
//! round is the least disturbed. The signer's gRPC benchmark reuses the
//! same raw loops to print its own ratios.

#![allow(clippy::print_stdout, missing_docs)]

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, SystemTime},
};

use enos_ca::{
    DeviceNames, RequestedKey, Validity, authority,
    bench_support::{SoftwareIssuance, device_csr, parallel_issue_rate, rate},
    issue::device_certificate,
};
use enos_custody::Custody;
use enos_custody_pkcs11::{
    Pkcs11Config, Pkcs11Custody, generate_kek,
    softhsm::{SoftHsm, raw::RawToken},
};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair},
};

const LIFETIME: Duration = Duration::from_secs(30 * 86_400);

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let Some(hsm) = SoftHsm::in_child() else {
        let hsm = SoftHsm::create("ca-bench", "");
        let status = hsm
            .child_command()
            .args(std::env::args_os().skip(1))
            .status()
            .expect("run the benchmark against the fixture token");
        // `exit` skips destructors: remove the token directory first.
        drop(hsm);
        std::process::exit(status.code().unwrap_or(1));
    };
    run(&hsm);
}

fn names() -> DeviceNames {
    DeviceNames {
        uri: "spiffe://enos/device/PkBench/gateway-000123".into(),
        common_name: "PkBench/gateway-000123".into(),
    }
}

/// What one round measured, in operations per second.
#[derive(Default, Clone, Copy)]
struct Figures {
    ring_sign: f64,
    software_issue: f64,
    software_issue_2: f64,
    software_from_csr: f64,
    raw_c_sign: f64,
    raw_c_sign_2: f64,
    custody_sign: f64,
    hsm_issue: f64,
    hsm_issue_2: f64,
}

impl Figures {
    fn best(self, other: Figures) -> Figures {
        Figures {
            ring_sign: self.ring_sign.max(other.ring_sign),
            software_issue: self.software_issue.max(other.software_issue),
            software_issue_2: self.software_issue_2.max(other.software_issue_2),
            software_from_csr: self.software_from_csr.max(other.software_from_csr),
            raw_c_sign: self.raw_c_sign.max(other.raw_c_sign),
            raw_c_sign_2: self.raw_c_sign_2.max(other.raw_c_sign_2),
            custody_sign: self.custody_sign.max(other.custody_sign),
            hsm_issue: self.hsm_issue.max(other.hsm_issue),
            hsm_issue_2: self.hsm_issue_2.max(other.hsm_issue_2),
        }
    }
}

fn run(hsm: &SoftHsm) {
    let round = Duration::from_secs_f64(env_or("ENOS_BENCH_SECS", 1.5));
    let rounds = env_or("ENOS_BENCH_ROUNDS", 2.0).max(1.0) as usize;
    let config = Pkcs11Config {
        sessions: Some(2),
        ..hsm.config()
    };
    generate_kek(&config).expect("create the custody keys");
    let stored = Pkcs11Custody::connect(&config)
        .expect("connect")
        .create_ca_key("enos bench CA")
        .expect("create the CA key in the token");
    let csr = device_csr();
    let requested = RequestedKey::from_csr(&csr, 16 * 1024).expect("csr");
    let software = SoftwareIssuance::new(&csr, names(), LIFETIME);
    let tbs_len = software.issue().der().len();
    let ring_key = {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("a ring key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a ring key")
    };
    let message = vec![0x42u8; tbs_len];
    println!(
        "CA key benchmark (#25): P-256 device certificate of {tbs_len} bytes, SoftHSM2 token with 2 sessions, best of {rounds} rounds of {} ms per figure",
        round.as_millis()
    );

    let mut best = Figures::default();
    for _ in 0..rounds {
        let mut figures = Figures::default();
        let rng = SystemRandom::new();
        figures.ring_sign = rate(round, || {
            black_box(ring_key.sign(&rng, &message).expect("sign"));
        });
        figures.software_issue = rate(round, || {
            black_box(software.issue());
        });
        figures.software_issue_2 = parallel_issue_rate(&software, 2, round);
        figures.software_from_csr = rate(round, || {
            black_box(software.issue_from_csr());
        });
        {
            let token = RawToken::open(hsm);
            figures.raw_c_sign = token.c_sign_rate(&stored.bytes, 1, round);
            figures.raw_c_sign_2 = token.c_sign_rate(&stored.bytes, 2, round);
        }
        {
            let custody = Pkcs11Custody::connect(&config).expect("connect");
            let signer = custody.ca_signer(&stored).expect("the CA key");
            figures.custody_sign = rate(round, || {
                black_box(signer.sign(&message).expect("sign"));
            });
            let key = authority::CustodyKey::new(Arc::clone(&signer)).expect("key");
            let validity = Validity::starting(SystemTime::now(), 365 * LIFETIME).expect("validity");
            let root = authority::self_signed_root("enos bench CA", validity, &key).expect("root");
            let issuer = authority::custody_issuer(root.der(), signer).expect("issuer");
            let issue = || {
                let validity = Validity::starting(SystemTime::now(), LIFETIME).expect("validity");
                black_box(
                    device_certificate(&requested, &names(), validity, &issuer).expect("issued"),
                );
            };
            figures.hsm_issue = rate(round, issue);
            figures.hsm_issue_2 = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..2).map(|_| scope.spawn(|| rate(round, issue))).collect();
                workers.into_iter().map(|w| w.join().expect("worker")).sum()
            });
        }
        best = best.best(figures);
    }

    let f = best;
    println!("  software (ring key in memory)");
    println!(
        "    ECDSA P-256 sign only (ring):                          {:>9.0} /s",
        f.ring_sign
    );
    println!(
        "    raw issuance: sign + DER encoding, 1 thread:           {:>9.0} /s",
        f.software_issue
    );
    println!(
        "    raw issuance: sign + DER encoding, 2 threads:          {:>9.0} /s",
        f.software_issue_2
    );
    println!(
        "    raw issuance with the CSR read and checked, 1 thread:  {:>9.0} /s",
        f.software_from_csr
    );
    println!("  HSM (SoftHSM2)");
    println!(
        "    raw C_Sign CKM_ECDSA, 1 thread:                        {:>9.0} /s",
        f.raw_c_sign
    );
    println!(
        "    raw C_Sign CKM_ECDSA, 2 threads (a session each):      {:>9.0} /s",
        f.raw_c_sign_2
    );
    println!(
        "    Pkcs11CaSigner::sign (SHA-256, pool, DER), 1 thread:   {:>9.0} /s",
        f.custody_sign
    );
    println!(
        "    device certificate signed in the token, 1 thread:      {:>9.0} /s",
        f.hsm_issue
    );
    println!(
        "    device certificate signed in the token, 2 threads:     {:>9.0} /s",
        f.hsm_issue_2
    );
    println!("  ratios");
    println!(
        "    software: encoding's share of raw issuance:            {:>9.2}",
        1.0 - f.software_issue / f.ring_sign
    );
    println!(
        "    software: with CSR check / raw issuance:               {:>9.2}",
        f.software_from_csr / f.software_issue
    );
    println!(
        "    HSM: custody sign / raw C_Sign (1 thread):             {:>9.2}",
        f.custody_sign / f.raw_c_sign
    );
    println!(
        "    HSM: issuance / raw C_Sign (1 thread):                 {:>9.2}",
        f.hsm_issue / f.raw_c_sign
    );
    println!(
        "    HSM: issuance / raw C_Sign (2 threads):                {:>9.2}",
        f.hsm_issue_2 / f.raw_c_sign_2
    );
}
