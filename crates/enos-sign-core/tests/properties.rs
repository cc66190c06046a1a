//! `sign` against a reference written the obvious way, and parse/build
//! round trips, over random valid inputs.

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, Freshness, HexCase, Md5Policy, MqttCredential,
    PresentedFields, PresentedLogin, ProductKey, SecureMode, SignMethod, SignedFields, TimestampMs,
    sign_with_case,
};
use md5::Md5;
use proptest::prelude::*;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The obvious implementation: build the string, digest it, format hex.
fn reference(f: &SignedFields, method: SignMethod, secret: &str, case: HexCase) -> String {
    reference_over_text(
        f.client_id.as_str(),
        f.device_key.as_str(),
        f.product_key.as_str(),
        &f.timestamp.to_string(),
        method,
        secret,
        case,
    )
}

/// The same over the fields' text, as a broker receives it.
fn reference_over_text(
    client_id: &str,
    device_key: &str,
    product_key: &str,
    timestamp: &str,
    method: SignMethod,
    secret: &str,
    case: HexCase,
) -> String {
    let content = format!(
        "clientId{client_id}deviceKey{device_key}productKey{product_key}timestamp{timestamp}{secret}"
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
        prop_assert_eq!(&parsed.fields, &PresentedFields::from(&f));
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

/// A signed clientId as the broker side accepts it: ASCII graphic, no `|`.
fn presented_client_id() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[!-{}~]{1,256}").expect("valid regex")
}

/// A timestamp as the SDKs send it: integer, or with a fraction.
fn presented_timestamp() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[0-9]{1,19}(\\.[0-9]{1,16})?").expect("valid regex")
}

/// A sign method name as sent: name or alias, in any case.
fn method_name() -> impl Strategy<Value = (SignMethod, String)> {
    (
        prop_oneof![
            Just((SignMethod::HmacSha1, "hmacsha1")),
            Just((SignMethod::HmacSha1, "sha1")),
            Just((SignMethod::HmacSha256, "hmacsha256")),
            Just((SignMethod::HmacSha256, "sha256")),
            Just((SignMethod::HmacMd5, "hmacmd5")),
            Just((SignMethod::HmacMd5, "md5")),
        ],
        any::<u64>(),
    )
        .prop_map(|((method, name), case_bits)| {
            let name = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if case_bits >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            (method, name)
        })
}

proptest! {
    /// Whatever the SDKs may send within the liberal grammar parses to
    /// exactly the text sent, and verifies against a digest of that text.
    #[test]
    fn liberal_logins_parse_as_sent_and_verify(
        client_id in presented_client_id(),
        device_key in ident(64),
        product_key in ident(32),
        timestamp in presented_timestamp(),
        (m, name) in method_name(),
        secret in "[!-~]{1,64}",
        c in case(),
        order in 0usize..6,
    ) {
        let params = [
            "securemode=2".to_owned(),
            format!("signmethod={name}"),
            format!("timestamp={timestamp}"),
        ];
        let permutation = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]][order];
        let section: Vec<&str> = permutation.iter().map(|&i| params[i].as_str()).collect();
        let mqtt_client_id = format!("{client_id}|{}|", section.join(","));
        let username = format!("{device_key}&{product_key}");
        let parsed = PresentedLogin::parse(&mqtt_client_id, &username, Md5Policy::Allow)
            .map_err(|e| TestCaseError::fail(format!("{mqtt_client_id:?} refused: {e}")))?;
        prop_assert_eq!(parsed.fields.client_id.as_str(), client_id.as_str());
        prop_assert_eq!(parsed.fields.timestamp.as_str(), timestamp.as_str());
        let integer = timestamp.split('.').next().expect("one part at least");
        prop_assert_eq!(parsed.fields.timestamp.millis().as_millis(), integer.parse::<u64>().expect("digits"));
        prop_assert_eq!(parsed.sign_method, m);
        let s = DeviceSecret::new(secret.clone()).expect("valid secret");
        let password = reference_over_text(&client_id, &device_key, &product_key, &timestamp, m, &secret, c);
        prop_assert!(parsed.verify(&password, &s, Freshness::Any).is_ok());
        // One more character anywhere in the signed text is another sign.
        let longer = reference_over_text(&client_id, &device_key, &product_key, &format!("{timestamp}0"), m, &secret, c);
        prop_assert!(parsed.verify(&longer, &s, Freshness::Any).is_err());
    }

    /// A character outside the grammar anywhere in the clientId is refused.
    #[test]
    fn a_foreign_character_in_the_client_id_is_refused(
        client_id in presented_client_id(),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![Just(' '), Just('\t'), Just('\u{7f}'), Just('\u{0}'), Just('é'), Just('中')],
    ) {
        let mut chars: Vec<char> = client_id.chars().collect();
        let position = at.index(chars.len() + 1);
        chars.insert(position, bad);
        let client_id: String = chars.into_iter().collect();
        let mqtt_client_id = format!("{client_id}|timestamp=1|");
        prop_assert!(PresentedLogin::parse(&mqtt_client_id, "d&p", Md5Policy::Refuse).is_err());
    }

    /// A timestamp that is not `digits[.digits]` is refused.
    #[test]
    fn a_timestamp_outside_the_grammar_is_refused(
        timestamp in presented_timestamp(),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![Just('+'), Just('-'), Just('e'), Just('E'), Just(' '), Just('x'), Just(','), Just('٣')],
    ) {
        let mut chars: Vec<char> = timestamp.chars().collect();
        let position = at.index(chars.len() + 1);
        chars.insert(position, bad);
        let broken: String = chars.into_iter().collect();
        prop_assert!(enos_sign_core::PresentedTimestamp::new(&broken).is_err());
        let mqtt_client_id = format!("c|timestamp={broken}|");
        prop_assert!(PresentedLogin::parse(&mqtt_client_id, "d&p", Md5Policy::Refuse).is_err());
    }
}
