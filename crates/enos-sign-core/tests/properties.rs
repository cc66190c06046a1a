//! `sign` against a reference written the obvious way, and parse/build
//! round trips, over random valid inputs.

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, Freshness, HexCase, Md5Policy, MqttCredential,
    PresentedLogin, ProductKey, SecureMode, SignMethod, SignedFields, TimestampMs, sign_with_case,
};
use md5::Md5;
use proptest::prelude::*;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The obvious implementation: build the string, digest it, format hex.
fn reference(f: &SignedFields, method: SignMethod, secret: &str, case: HexCase) -> String {
    let content = format!(
        "clientId{}deviceKey{}productKey{}timestamp{}{}",
        f.client_id, f.device_key, f.product_key, f.timestamp, secret
    );
    let digest: Vec<u8> = match method {
        SignMethod::HmacSha1 => Sha1::digest(content.as_bytes()).to_vec(),
        SignMethod::HmacSha256 => Sha256::digest(content.as_bytes()).to_vec(),
        SignMethod::HmacMd5 => Md5::digest(content.as_bytes()).to_vec(),
    };
    digest
        .iter()
        .map(|b| match case {
            HexCase::Upper => format!("{b:02X}"),
            HexCase::Lower => format!("{b:02x}"),
        })
        .collect()
}

fn ident(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.:@-]{{1,{max}}}")).expect("valid regex")
}

prop_compose! {
    fn signed_fields()(
        client_id in ident(64),
        device_key in ident(64),
        product_key in ident(32),
        timestamp in any::<u64>(),
    ) -> SignedFields {
        SignedFields {
            client_id: ClientId::new(client_id).expect("strategy yields valid ids"),
            device_key: DeviceKey::new(device_key).expect("strategy yields valid ids"),
            product_key: ProductKey::new(product_key).expect("strategy yields valid ids"),
            timestamp: TimestampMs(timestamp),
        }
    }
}

fn method() -> impl Strategy<Value = SignMethod> {
    prop_oneof![
        Just(SignMethod::HmacSha1),
        Just(SignMethod::HmacSha256),
        Just(SignMethod::HmacMd5)
    ]
}

fn case() -> impl Strategy<Value = HexCase> {
    prop_oneof![Just(HexCase::Upper), Just(HexCase::Lower)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sign_equals_the_reference(
        f in signed_fields(),
        m in method(),
        c in case(),
        secret in "[!-~]{1,256}",
    ) {
        let s = DeviceSecret::new(secret.clone()).expect("printable ASCII is a valid secret");
        let signed = sign_with_case(&f, m, &s, c);
        prop_assert_eq!(signed.expose_secret(), reference(&f, m, &secret, c));
        prop_assert_eq!(signed.expose_secret().len(), m.hex_len());
    }

    #[test]
    fn parse_inverts_build_and_verify_accepts(
        f in signed_fields(),
        m in method(),
        secret in "[!-~]{1,64}",
    ) {
        let s = DeviceSecret::new(secret).expect("valid secret");
        let credential = MqttCredential::sign(f.clone(), SecureMode::DeviceSecret, m, &s).expect("fits");
        let parsed = PresentedLogin::parse(&credential.mqtt_client_id, &credential.username, Md5Policy::Allow)
            .expect("a built credential parses");
        prop_assert_eq!(&parsed.fields, &f);
        prop_assert_eq!(parsed.sign_method, m);
        prop_assert_eq!(parsed.secure_mode, SecureMode::DeviceSecret);
        let password = credential.password.expose_secret();
        parsed.verify(password, &s, Freshness::Any).expect("its own password verifies");
        parsed.verify(&password.to_ascii_uppercase(), &s, Freshness::Any).expect("upper case verifies");
        parsed.verify(&password.to_ascii_lowercase(), &s, Freshness::Any).expect("lower case verifies");
    }

    #[test]
    fn any_changed_field_fails_verification(
        f in signed_fields(),
        m in method(),
        secret in "[!-~]{1,64}",
        delta in 1u64..1000,
    ) {
        let s = DeviceSecret::new(secret).expect("valid secret");
        let credential = MqttCredential::sign(f.clone(), SecureMode::DeviceSecret, m, &s).expect("fits");
        let password = credential.password.expose_secret();
        let mut later = f.clone();
        later.timestamp = TimestampMs(f.timestamp.0.wrapping_add(delta));
        prop_assert!(enos_sign_core::verify_sign(&later, m, password, &s).is_err());
        // Change the last character of the client id to a different one.
        let mut other = f.clone();
        let id = f.client_id.as_str();
        let replacement = if id.ends_with('x') { 'y' } else { 'x' };
        other.client_id = ClientId::new(format!("{}{replacement}", &id[..id.len() - 1])).expect("valid");
        prop_assert!(enos_sign_core::verify_sign(&other, m, password, &s).is_err());
    }
}
