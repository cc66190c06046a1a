//! HSM custody signing against a raw cryptoki loop doing the same token
//! work on the same token, in the same run; software signing beside it.
//!
//! `cargo bench -p enos-custody-pkcs11 --bench hsm`
//!
//! The benchmark re-runs itself in a child process whose `SOFTHSM2_CONF`
//! points to a fresh token (see `softhsm`). PKCS#11 allows one
//! initialisation per process, so the raw loop and the custody take turns:
//! three rounds of each, alternating, and the best round of each counts
//! (the machine is shared and noisy; the best round is the least
//! disturbed). Goal: custody ≥ 0.8 × raw.

#![allow(clippy::print_stdout, missing_docs)]

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use enos_custody::{Custody, SecretRef};
use enos_custody_pkcs11::{
    Pkcs11Config, Pkcs11Custody, generate_kek,
    softhsm::{SoftHsm, raw::RawToken},
};
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, HexCase, ProductKey, SignMethod, SignedFields, TimestampMs,
    sign,
};

const ROUND: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 3;

fn main() {
    let Some(hsm) = SoftHsm::in_child() else {
        let hsm = SoftHsm::create("bench", "");
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

fn run(hsm: &SoftHsm) {
    let fields = SignedFields {
        client_id: ClientId::new("AA:BB:CC:DD:EE:FF").expect("valid"),
        device_key: DeviceKey::new("gateway-000123").expect("valid"),
        product_key: ProductKey::new("PkAbCd12").expect("valid"),
        timestamp: TimestampMs::from_millis(1_764_000_000_000),
    };
    let secret = DeviceSecret::new("hQ3vZ8rK2mN7pX4tW9yB1cF6".to_owned()).expect("valid");
    let id = SecretRef {
        product_key: &fields.product_key,
        device_key: Some(&fields.device_key),
        version: 1,
    };
    let config = Pkcs11Config {
        sessions: Some(2),
        ..hsm.config()
    };
    generate_kek(&config).expect("create the keys");
    let sealed = {
        let custody = Pkcs11Custody::connect(&config).expect("connect");
        custody.seal(id, &secret).expect("seal")
    };
    let mut content = Vec::new();
    fields.write_content(|chunk| content.extend_from_slice(chunk));
    let ad = id.associated_data();

    println!(
        "HSM custody benchmark: SoftHSM2 token, SHA-1, one thread, best of {ROUNDS} rounds of {} ms",
        ROUND.as_millis()
    );
    let mut best = [0f64; 3];
    for _ in 0..ROUNDS {
        best[0] = best[0].max(raw(hsm, &sealed.bytes, &ad, &content, true));
        best[1] = best[1].max(raw(hsm, &sealed.bytes, &ad, &content, false));
        let custody = Pkcs11Custody::connect(&config).expect("connect");
        best[2] = best[2].max(rate(|| {
            black_box(
                custody
                    .sign(id, &sealed, &fields, SignMethod::HmacSha1, HexCase::Upper)
                    .expect("sign"),
            );
        }));
    }
    let [raw_same, raw_no_mac, custody] = best;
    let threads = {
        let custody = Pkcs11Custody::connect(&config).expect("connect");
        two_threads(|| {
            black_box(
                custody
                    .sign(id, &sealed, &fields, SignMethod::HmacSha1, HexCase::Upper)
                    .expect("sign"),
            );
        })
    };
    let software = rate(|| {
        black_box(sign(black_box(&fields), SignMethod::HmacSha1, &secret));
    });

    println!(
        "  raw cryptoki, same token work (verify MAC, unwrap, derive, digest): {raw_same:>10.0} signs/s"
    );
    println!(
        "  raw cryptoki, without the MAC check:                              {raw_no_mac:>10.0} signs/s"
    );
    println!(
        "  Pkcs11Custody::sign:                                              {custody:>10.0} signs/s"
    );
    println!(
        "  Pkcs11Custody::sign, 2 threads, 2 sessions:                       {threads:>10.0} signs/s"
    );
    println!(
        "  software enos_sign_core::sign:                                    {software:>10.0} signs/s"
    );
    println!(
        "  custody / raw (same work): {:.2}  (goal >= 0.80)",
        custody / raw_same
    );
    println!(
        "  custody / raw (no MAC check): {:.2}",
        custody / raw_no_mac
    );
    println!("  software / custody: {:.0}x", software / custody);
}

/// Calls `f` for one round; returns calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    // Warm up: the first calls open sessions and fill caches.
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < ROUND {
        for _ in 0..64 {
            f();
        }
        count += 64;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn two_threads(f: impl Fn() + Sync) -> f64 {
    let rates: Vec<f64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2).map(|_| scope.spawn(|| rate(&f))).collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    rates.iter().sum()
}

/// The token work of one sign through cryptoki directly, one session,
/// for one round (see `softhsm::raw`).
fn raw(hsm: &SoftHsm, record: &[u8], ad: &[u8], content: &[u8], check_mac: bool) -> f64 {
    let token = RawToken::open(hsm);
    let session = token.session(record, ad, content);
    rate(|| {
        black_box(session.sign(check_mac));
    })
}
