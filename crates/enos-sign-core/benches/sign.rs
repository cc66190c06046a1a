//! `sign` against the raw digest of the same, pre-concatenated bytes.
//!
//! Criterion measures both per method; at the end the ratio of throughputs
//! (raw time / sign time; 1.0 means sign costs nothing beyond the digest)
//! is printed from the estimates this run wrote. Goal: ≥ 0.9.

#![allow(clippy::print_stdout, missing_docs)]

use std::path::PathBuf;

use std::hint::black_box;

use criterion::Criterion;
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ProductKey, SignMethod, SignedFields, TimestampMs, sign,
};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

fn raw<D: Digest>(bytes: &[u8]) -> usize {
    D::digest(bytes).len()
}

fn main() {
    let fields = SignedFields {
        client_id: ClientId::new("AA:BB:CC:DD:EE:FF").expect("valid"),
        device_key: DeviceKey::new("gateway-000123").expect("valid"),
        product_key: ProductKey::new("PkAbCd12").expect("valid"),
        timestamp: TimestampMs(1_764_000_000_000),
    };
    let secret_text = "hQ3vZ8rK2mN7pX4tW9yB1cF6";
    let secret = DeviceSecret::new(secret_text.to_owned()).expect("valid");
    let mut concatenated = Vec::new();
    fields.write_content(|c| concatenated.extend_from_slice(c));
    concatenated.extend_from_slice(secret_text.as_bytes());

    let mut criterion = Criterion::default().configure_from_args();
    for method in SignMethod::ALL {
        let mut group = criterion.benchmark_group(method.as_str());
        group.bench_function("sign", |b| {
            b.iter(|| sign(black_box(&fields), method, black_box(&secret)))
        });
        group.bench_function("raw_digest", |b| {
            b.iter(|| match method {
                SignMethod::HmacSha1 => raw::<Sha1>(black_box(&concatenated)),
                SignMethod::HmacSha256 => raw::<Sha256>(black_box(&concatenated)),
                SignMethod::HmacMd5 => raw::<Md5>(black_box(&concatenated)),
            })
        });
        group.finish();
    }
    criterion.final_summary();

    println!(
        "\nsign throughput relative to the raw digest of pre-concatenated bytes (goal >= 0.90):"
    );
    for method in SignMethod::ALL {
        match (
            mean_ns(method.as_str(), "sign"),
            mean_ns(method.as_str(), "raw_digest"),
        ) {
            (Some(sign_ns), Some(raw_ns)) => println!(
                "  {:<10}  sign {sign_ns:>8.1} ns  raw {raw_ns:>8.1} ns  ratio {:.2}x",
                method.as_str(),
                raw_ns / sign_ns
            ),
            _ => println!(
                "  {:<10}  (no estimates: run without --test)",
                method.as_str()
            ),
        }
    }
}

/// Reads the mean this run wrote to target/criterion/<group>/<id>/new/estimates.json.
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target
        .join("criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}
