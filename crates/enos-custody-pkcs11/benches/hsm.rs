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

use cryptoki::{
    context::{CInitializeArgs, Pkcs11},
    mechanism::{Mechanism, ekdf::AesCbcDeriveParams},
    object::{Attribute, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    types::AuthPin,
};
use enos_custody::{Custody, SecretRef};
use enos_custody_pkcs11::{
    DEFAULT_KEK_LABEL, Pkcs11Config, Pkcs11Custody, generate_kek,
    softhsm::{SoftHsm, USER_PIN},
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
        device_key: &fields.device_key,
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

/// The token work of one sign, written against cryptoki directly from the
/// record layout documented in the crate: check the MAC (optionally),
/// unwrap the record key, derive the secret at its length, digest.
fn raw(hsm: &SoftHsm, record: &[u8], ad: &[u8], content: &[u8], check_mac: bool) -> f64 {
    let ctx = Pkcs11::new(hsm.module()).expect("load the module");
    ctx.initialize(CInitializeArgs::OsThreads)
        .expect("initialise");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|slot| {
            ctx.get_token_info(*slot)
                .is_ok_and(|info| info.label() == hsm.label())
        })
        .expect("the fixture token");
    let session = ctx.open_ro_session(slot).expect("session");
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    let kek = find(&session, DEFAULT_KEK_LABEL);
    let mac_key = find(&session, &format!("{DEFAULT_KEK_LABEL}-mac"));

    let secret_len = usize::from(u16::from_be_bytes([record[1], record[2]]));
    let iv: [u8; 16] = record[3..19].try_into().expect("iv");
    let wrapped = &record[19..59];
    let data = &record[59..59 + secret_len.div_ceil(16) * 16];
    let (body, tag) = record.split_at(record.len() - 32);
    let mut mac_input = b"enos-custody/pkcs11-kwp-envelope-v1\0".to_vec();
    mac_input.extend_from_slice(&u32::try_from(ad.len()).expect("short").to_be_bytes());
    mac_input.extend_from_slice(ad);
    mac_input.extend_from_slice(body);

    let rate = rate(|| {
        if check_mac {
            session
                .verify(&Mechanism::Sha256Hmac, mac_key, &mac_input, tag)
                .expect("tag");
        }
        let record_key = session
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                kek,
                wrapped,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Derive(true),
                    Attribute::Decrypt(false),
                    Attribute::Encrypt(false),
                ],
            )
            .expect("unwrap");
        let key = session
            .derive_key(
                &Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new(iv, data)),
                record_key,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen((secret_len as u64).into()),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Derive(false),
                ],
            )
            .expect("derive");
        session.destroy_object(record_key).expect("destroy");
        session.digest_init(&Mechanism::Sha1).expect("init");
        session.digest_update(content).expect("update");
        session.digest_key(key).expect("digest key");
        black_box(session.digest_final().expect("final"));
        session.destroy_object(key).expect("destroy");
    });
    drop(session);
    drop(ctx);
    rate
}

fn find(session: &Session, label: &str) -> ObjectHandle {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .expect("find")
        .into_iter()
        .next()
        .expect("the key")
}
