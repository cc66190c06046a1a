//! HSM custody signs exactly as software does: the reference vectors for
//! every method and both hex cases, and every secret length.

use enos_custody::{Custody, CustodyError, SecretRef};
use enos_custody_pkcs11::{Pkcs11Custody, generate_kek, softhsm::isolated};
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, HexCase, MAX_SECRET_LEN, ProductKey,
    SignMethod, SignedFields, TimestampMs, sign_with_case,
};

fn fields(client_id: &str, device_key: &str, product_key: &str, ts: u64) -> SignedFields {
    SignedFields {
        client_id: ClientId::new(client_id).expect("valid client id"),
        device_key: DeviceKey::new(device_key).expect("valid device key"),
        product_key: ProductKey::new(product_key).expect("valid product key"),
        timestamp: TimestampMs::from_millis(ts),
    }
}

fn id(fields: &SignedFields) -> SecretRef<'_> {
    SecretRef {
        product_key: &fields.product_key,
        device_key: Some(&fields.device_key),
        version: 1,
    }
}

/// Runs `body` in its own SoftHSM2 child process (see [`isolated`]), with
/// a custody connected to a fresh token labelled `label`.
fn with_custody(test: &str, label: &str, body: impl FnOnce(&Pkcs11Custody)) {
    isolated(test, label, "", |hsm| {
        generate_kek(&hsm.config()).expect("create the KEK and MAC key");
        body(&Pkcs11Custody::connect(&hsm.config()).expect("connect"));
    });
}

#[test]
fn reference_vectors_for_every_method_and_case() {
    with_custody(
        "reference_vectors_for_every_method_and_case",
        "kat",
        |custody| {
            // (fields, secret, method, password as published)
            let first = fields("123", "test", "123", 1524448722000);
            let second = fields("123456", "test", "654321", 1548753362502);
            let rows = [
                (
                    &first,
                    "aaabbbcc123",
                    SignMethod::HmacSha1,
                    "97AA97335D6EC3D7E1F9E3119501E399CC0B4125",
                ),
                (
                    &first,
                    "aaabbbcc123",
                    SignMethod::HmacSha256,
                    "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab5",
                ),
                (
                    &second,
                    "abcdefg",
                    SignMethod::HmacSha256,
                    "b99032d49c706f7b27b22ab5cd2dd3c56a31e1bcbbc83ba0a2a6bb3272fbb166",
                ),
            ];
            for (fields, secret_text, method, published) in rows {
                let secret = DeviceSecret::new(secret_text.to_owned()).expect("valid secret");
                let sealed = custody.seal(id(fields), &secret).expect("seal");
                assert_eq!(sealed.scheme, enos_custody_pkcs11::SCHEME);
                assert!(
                    !sealed
                        .bytes
                        .windows(secret_text.len())
                        .any(|w| w == secret_text.as_bytes()),
                    "the sealed record contains the plaintext secret"
                );
                for case in [HexCase::Upper, HexCase::Lower] {
                    let password = custody
                        .sign(id(fields), &sealed, fields, method, case)
                        .expect("sign in the token");
                    let software = sign_with_case(fields, method, &secret, case);
                    assert_eq!(password.expose_secret(), software.expose_secret());
                    let expected = match case {
                        HexCase::Upper => published.to_ascii_uppercase(),
                        HexCase::Lower => published.to_ascii_lowercase(),
                    };
                    assert_eq!(password.expose_secret(), expected, "{method:?} {case:?}");
                }
            }
        },
    );
}

#[test]
fn md5_is_refused_with_the_mechanism_named() {
    with_custody(
        "md5_is_refused_with_the_mechanism_named",
        "md5",
        |custody| {
            let fields = fields("123", "test", "123", 1524448722000);
            let secret = DeviceSecret::new("aaabbbcc123".into()).expect("valid secret");
            let sealed = custody.seal(id(&fields), &secret).expect("seal");
            for case in [HexCase::Upper, HexCase::Lower] {
                match custody.sign(id(&fields), &sealed, &fields, SignMethod::HmacMd5, case) {
                    // A token and binding that can digest a sensitive key with
                    // MD5 must give the published answer.
                    Ok(password) => assert_eq!(
                        password.expose_secret().to_ascii_lowercase(),
                        "b68f36460ca32c41a108ed39582dafba"
                    ),
                    Err(CustodyError::Unsupported(why)) => {
                        assert!(why.contains("CKM_MD5"), "{why}");
                        assert!(why.contains("hmacmd5"), "{why}");
                    }
                    Err(other) => panic!("unexpected error for MD5: {other}"),
                }
            }
        },
    );
}

#[test]
fn every_secret_length_signs_like_software() {
    with_custody(
        "every_secret_length_signs_like_software",
        "lengths",
        |custody| {
            let fields = fields("dev-1", "dev-1", "prod", 1764000000000);
            // Printable, not repeating with the AES block or KWP granularity.
            let alphabet: Vec<char> = ('!'..='~').collect();
            let lengths = (1..=40).chain([47, 48, 49, 64, 65, 127, 128, 200, MAX_SECRET_LEN]);
            for len in lengths {
                let text: String = (0..len)
                    .map(|i| alphabet[(i * 7 + len) % alphabet.len()])
                    .collect();
                let secret = DeviceSecret::new(text).expect("valid secret");
                let sealed = custody.seal(id(&fields), &secret).expect("seal");
                for method in [SignMethod::HmacSha1, SignMethod::HmacSha256] {
                    let password = custody
                        .sign(id(&fields), &sealed, &fields, method, method.sdk_hex_case())
                        .expect("sign");
                    let software = sign_with_case(&fields, method, &secret, method.sdk_hex_case());
                    assert_eq!(
                        password.expose_secret(),
                        software.expose_secret(),
                        "secret of {len} bytes, {method:?}"
                    );
                }
            }
        },
    );
}

#[test]
fn concurrent_signs_share_the_session_pool() {
    with_custody(
        "concurrent_signs_share_the_session_pool",
        "pool",
        |custody| {
            let fields = fields("123", "test", "123", 1524448722000);
            let secret = DeviceSecret::new("aaabbbcc123".into()).expect("valid secret");
            let sealed = custody.seal(id(&fields), &secret).expect("seal");
            // Twice as many threads as sessions (4): some wait for a session.
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| {
                        for _ in 0..50 {
                            let password = custody
                                .sign(
                                    id(&fields),
                                    &sealed,
                                    &fields,
                                    SignMethod::HmacSha1,
                                    HexCase::Upper,
                                )
                                .expect("sign");
                            assert_eq!(
                                password.expose_secret(),
                                "97AA97335D6EC3D7E1F9E3119501E399CC0B4125"
                            );
                        }
                    });
                }
            });
            assert_eq!(custody.status().reconnects, 0);
        },
    );
}

/// The EnOS API's documented request signature (issue 26), computed in
/// the token: `SHA-256(token ‖ sorted query ‖ body ‖ timestamp ‖ SecretKey)`
/// with the application's SecretKey sealed as a product-level secret, so
/// that HSM custody holds the EnOS API credential as it holds device
/// secrets.
#[test]
fn the_enos_api_signature_of_the_documented_example() {
    with_custody(
        "the_enos_api_signature_of_the_documented_example",
        "api",
        |custody| {
            let reference = ProductKey::new("enos-api.prod").expect("reference");
            let id = SecretRef::product(&reference, 1);
            let secret = DeviceSecret::new("xxxappSecretxxx".to_owned()).expect("secret");
            let sealed = custody.seal(id, &secret).expect("seal");
            let body = "{\n  \"count\": 20,\n  \"page\": 1,\n  \"desc\": \"描述\"\n}";
            let content = format!("xxxxaaaxxxxk1v1k2v2k3v3{body}1572574909697");
            let digest = custody
                .digest_sha256(id, &sealed, content.as_bytes())
                .expect("digest in the token");
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex,
                "59828328f6c1f9771015dc74e4929ae30f518a35a3d2353972c2ea46556fc981"
            );
            // Bound to its reference: another environment's does not open it.
            let other = ProductKey::new("enos-api.test").expect("reference");
            let refused = custody
                .digest_sha256(SecretRef::product(&other, 1), &sealed, b"x")
                .expect_err("another reference");
            assert!(
                matches!(
                    refused,
                    CustodyError::Integrity | CustodyError::Unavailable(_)
                ),
                "{refused:?}"
            );
        },
    );
}
