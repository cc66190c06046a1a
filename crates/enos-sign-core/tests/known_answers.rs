//! Every known answer from shared/reference/enos-protocol-facts.md.

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, HexCase, MqttCredential, ProductKey,
    SecureMode, SignMethod, SignedFields, SubDeviceLogin, TimestampMs, sign, sign_with_case,
    verify_sign,
};

fn fields(client_id: &str, device_key: &str, product_key: &str, ts: u64) -> SignedFields {
    SignedFields {
        client_id: ClientId::new(client_id).expect("valid clientId"),
        device_key: DeviceKey::new(device_key).expect("valid deviceKey"),
        product_key: ProductKey::new(product_key).expect("valid productKey"),
        timestamp: TimestampMs::from_millis(ts),
    }
}

fn guide_fields() -> SignedFields {
    fields("123", "test", "123", 1_524_448_722_000)
}

fn secret(s: &str) -> DeviceSecret {
    DeviceSecret::new(s.to_owned()).expect("valid secret")
}

#[test]
fn guide_example_hmacsha1_is_plain_sha1_upper_hex() {
    let password = sign(
        &guide_fields(),
        SignMethod::HmacSha1,
        &secret("aaabbbcc123"),
    );
    assert_eq!(
        password.expose_secret(),
        "97AA97335D6EC3D7E1F9E3119501E399CC0B4125"
    );
}

#[test]
fn guide_example_is_not_a_real_hmac() {
    // Alibaba's keyed HMAC-SHA1 gives this; EnOS does not accept it.
    let password = sign(
        &guide_fields(),
        SignMethod::HmacSha1,
        &secret("aaabbbcc123"),
    );
    assert_ne!(
        password.expose_secret(),
        "33E6728E89DFB6FC2DC6D1EE959A550D3492EA8B"
    );
}

#[test]
fn guide_example_hmacsha256_lower_hex() {
    let password = sign(
        &guide_fields(),
        SignMethod::HmacSha256,
        &secret("aaabbbcc123"),
    );
    assert_eq!(
        password.expose_secret(),
        "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab5"
    );
}

#[test]
fn guide_example_hmacmd5_lower_hex() {
    let password = sign(&guide_fields(), SignMethod::HmacMd5, &secret("aaabbbcc123"));
    assert_eq!(password.expose_secret(), "b68f36460ca32c41a108ed39582dafba");
}

#[test]
fn second_vector_hmacsha256() {
    let f = fields("123456", "test", "654321", 1_548_753_362_502);
    let password = sign(&f, SignMethod::HmacSha256, &secret("abcdefg"));
    assert_eq!(
        password.expose_secret(),
        "b99032d49c706f7b27b22ab5cd2dd3c56a31e1bcbbc83ba0a2a6bb3272fbb166"
    );
}

#[test]
fn upper_case_on_request() {
    let password = sign_with_case(
        &guide_fields(),
        SignMethod::HmacSha256,
        &secret("aaabbbcc123"),
        HexCase::Upper,
    );
    assert_eq!(
        password.expose_secret(),
        "A82348B9C04B7DE8B26E83E51F3EA88D8665734A1135F79096C528785D15CAB5"
    );
    let lower = sign_with_case(
        &guide_fields(),
        SignMethod::HmacSha1,
        &secret("aaabbbcc123"),
        HexCase::Lower,
    );
    assert_eq!(
        lower.expose_secret(),
        "97aa97335d6ec3d7e1f9e3119501e399cc0b4125"
    );
}

#[test]
fn connect_triple_of_the_guide_example() {
    let credential = MqttCredential::sign(
        guide_fields(),
        SecureMode::DeviceSecret,
        SignMethod::HmacSha1,
        &secret("aaabbbcc123"),
    )
    .expect("device secret fits securemode 2");
    assert_eq!(
        credential.mqtt_client_id,
        "123|securemode=2,signmethod=hmacsha1,timestamp=1524448722000|"
    );
    assert_eq!(credential.username, "test&123");
    assert_eq!(
        credential.password.expose_secret(),
        "97AA97335D6EC3D7E1F9E3119501E399CC0B4125"
    );
}

#[test]
fn sub_device_login_signs_the_same_four_fields() {
    let login = SubDeviceLogin::sign(
        guide_fields(),
        SignMethod::HmacSha1,
        &secret("aaabbbcc123"),
        true,
    );
    assert_eq!(
        login.sign.expose_secret(),
        "97AA97335D6EC3D7E1F9E3119501E399CC0B4125"
    );
    assert_eq!(login.secure_mode, SecureMode::DeviceSecret);
    assert!(login.clean_session);
    assert_eq!(login.signed_fields(), guide_fields());
    verify_sign(
        &login.signed_fields(),
        login.sign_method,
        login.sign.expose_secret(),
        &secret("aaabbbcc123"),
    )
    .expect("its own sign verifies");
}

#[test]
fn verify_accepts_both_hex_cases_and_refuses_wrong_ones() {
    let s = secret("aaabbbcc123");
    let f = guide_fields();
    for presented in [
        "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab5",
        "A82348B9C04B7DE8B26E83E51F3EA88D8665734A1135F79096C528785D15CAB5",
        "a82348B9C04B7DE8b26e83e51f3ea88d8665734a1135f79096c528785d15cab5",
    ] {
        verify_sign(&f, SignMethod::HmacSha256, presented, &s).expect("either case verifies");
    }
    for wrong in [
        "",
        "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab6",
        "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab",
        "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab50",
        "97AA97335D6EC3D7E1F9E3119501E399CC0B4125",
    ] {
        assert!(
            verify_sign(&f, SignMethod::HmacSha256, wrong, &s).is_err(),
            "{wrong:?} must fail"
        );
    }
    assert!(
        verify_sign(
            &f,
            SignMethod::HmacSha256,
            "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab5",
            &secret("aaabbbcc124")
        )
        .is_err()
    );
}
