//! Every forbidden character and every bound is refused with an error that
//! names the field and the reason.

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, Field, Freshness, Md5Policy, MqttCredential,
    PresentedClientId, PresentedLogin, ProductKey, ProductSecret, SecureMode, SignError,
    SignMethod, SignedFields, TimestampMs,
};

/// Characters that would forge a field, break a topic or a log line.
const FORBIDDEN: &[char] = &[
    '|', ',', '=', '&', ' ', '\t', '\n', '\r', '\0', '\u{7f}', '\u{1b}', '/', '+', '#', '%', '"',
    '\\', '\'', '?', '*', '$', ';', '<', '>', '\u{e9}', '\u{4e2d}', '\u{200b}', '\u{ff5c}',
];

type Ctor = fn(&str) -> Result<(), SignError>;

fn identities() -> [(Field, usize, Ctor); 3] {
    [
        (Field::ProductKey, ProductKey::MAX_LEN, |s| {
            ProductKey::new(s).map(drop)
        }),
        (Field::DeviceKey, DeviceKey::MAX_LEN, |s| {
            DeviceKey::new(s).map(drop)
        }),
        (Field::ClientId, ClientId::MAX_LEN, |s| {
            ClientId::new(s).map(drop)
        }),
    ]
}

#[test]
fn each_forbidden_character_is_refused_in_each_identity() {
    for (field, _, ctor) in identities() {
        for &c in FORBIDDEN {
            for (value, position) in [
                (format!("{c}ab"), 0),
                (format!("ab{c}"), 2),
                (format!("a{c}b"), 1),
            ] {
                let err = ctor(&value).expect_err("forbidden character accepted");
                match &err {
                    SignError::ForbiddenChar {
                        field: f,
                        found,
                        position: p,
                        ..
                    } => {
                        assert_eq!(*f, field);
                        assert_eq!(found.0, c);
                        assert_eq!(*p, position);
                    }
                    other => panic!("{field} {value:?}: unexpected {other:?}"),
                }
                let message = err.to_string();
                assert!(message.contains(&field.to_string()), "{message}");
                assert!(message.contains("forbidden character"), "{message}");
            }
        }
    }
}

#[test]
fn allowed_characters_pass() {
    for (_, _, ctor) in identities() {
        ctor("AZaz09-_.:@").expect("the documented set is accepted");
    }
    ClientId::new("AA:BB:CC:DD:EE:FF").expect("a MAC address is a client id");
}

#[test]
fn length_bounds_are_enforced() {
    for (field, max, ctor) in identities() {
        ctor(&"a".repeat(max)).expect("the bound itself is accepted");
        match ctor(&"a".repeat(max + 1)) {
            Err(SignError::TooLong {
                field: f,
                len,
                max: m,
            }) => {
                assert_eq!((f, len, m), (field, max + 1, max));
            }
            other => panic!("{field}: expected TooLong, got {other:?}"),
        }
        assert_eq!(ctor(""), Err(SignError::Empty { field }));
    }
    assert_eq!(
        ClientId::MAX_LEN,
        64,
        "the EnOS guide limits clientId to 64"
    );
}

#[test]
fn channel_device_key_is_the_only_exception() {
    DeviceKey::new(DeviceKey::CHANNEL).expect("%channel% is the securemode 4 device key");
    assert!(DeviceKey::new("%channel").is_err());
    assert!(ClientId::new(DeviceKey::CHANNEL).is_err());
}

#[test]
fn secrets_are_validated() {
    assert_eq!(
        DeviceSecret::new(String::new()).map(drop),
        Err(SignError::Empty {
            field: Field::DeviceSecret
        })
    );
    assert!(matches!(
        DeviceSecret::new("a".repeat(257)),
        Err(SignError::TooLong {
            field: Field::DeviceSecret,
            ..
        })
    ));
    DeviceSecret::new("a".repeat(256)).expect("the bound itself is accepted");
    for bad in ["ab c", "abc\n", "\tabc", "ab\u{e9}"] {
        assert!(matches!(
            ProductSecret::new(bad.to_owned()),
            Err(SignError::InvalidSecret {
                field: Field::ProductSecret,
                ..
            })
        ));
    }
}

#[test]
fn sign_methods_and_aliases() {
    for (name, method) in [
        ("hmacsha1", SignMethod::HmacSha1),
        ("sha1", SignMethod::HmacSha1),
        ("HmacSHA256", SignMethod::HmacSha256),
        ("sha256", SignMethod::HmacSha256),
    ] {
        assert_eq!(name.parse::<SignMethod>(), Ok(method));
    }
    assert_eq!(
        "hmacmd5".parse::<SignMethod>(),
        Err(SignError::Md5NotAllowed)
    );
    assert_eq!("md5".parse::<SignMethod>(), Err(SignError::Md5NotAllowed));
    assert_eq!(
        SignMethod::parse("md5", Md5Policy::Allow),
        Ok(SignMethod::HmacMd5)
    );
    assert!(matches!(
        "hmacsha512".parse::<SignMethod>(),
        Err(SignError::UnknownSignMethod(_))
    ));
    assert!(matches!(
        "1".parse::<SecureMode>(),
        Err(SignError::UnknownSecureMode(_))
    ));
    assert_eq!(
        "4".parse::<SecureMode>(),
        Ok(SecureMode::ChannelProductSecret)
    );
}

#[test]
fn timestamps_are_plain_decimal() {
    assert_eq!(
        "1524448722000".parse::<TimestampMs>(),
        Ok(TimestampMs(1_524_448_722_000))
    );
    for bad in [
        "",
        "+1",
        "-1",
        "1.5",
        " 1",
        "0x10",
        "123456789012345678901",
        "99999999999999999999",
    ] {
        assert!(bad.parse::<TimestampMs>().is_err(), "{bad:?} accepted");
    }
}

fn fields() -> SignedFields {
    SignedFields {
        client_id: ClientId::new("c1").expect("valid"),
        device_key: DeviceKey::new("d1").expect("valid"),
        product_key: ProductKey::new("p1").expect("valid"),
        timestamp: TimestampMs(1_000_000),
    }
}

#[test]
fn secret_kind_must_fit_the_secure_mode() {
    let device = DeviceSecret::new("x1".to_owned()).expect("valid");
    let product = ProductSecret::new("x1".to_owned()).expect("valid");
    assert!(matches!(
        MqttCredential::sign(
            fields(),
            SecureMode::ProductSecret,
            SignMethod::HmacSha1,
            &device
        ),
        Err(SignError::SecretKindMismatch { mode: 3, .. })
    ));
    assert!(matches!(
        MqttCredential::sign(
            fields(),
            SecureMode::DeviceSecret,
            SignMethod::HmacSha1,
            &product
        ),
        Err(SignError::SecretKindMismatch { mode: 2, .. })
    ));
}

#[test]
fn malformed_client_ids_and_usernames() {
    let parse = |cid: &str, user: &str| PresentedLogin::parse(cid, user, Md5Policy::Refuse);
    let ok_user = "d1&p1";
    for (cid, what) in [
        ("c1", "no parameter section"),
        (
            "c1|securemode=2,signmethod=hmacsha1,timestamp=1",
            "no closing |",
        ),
        (
            "c1|securemode=2|signmethod=hmacsha1,timestamp=1|",
            "three |",
        ),
        ("c1|securemode=2,signmethod=hmacsha1|", "no timestamp"),
        ("c1|securemode=2,signmethod,timestamp=1|", "no ="),
        (
            "c1|securemode=2,signmethod=hmacsha1,timestamp=1,extra=1|",
            "unknown parameter",
        ),
        ("c1||", "empty section"),
        (
            "|securemode=2,signmethod=hmacsha1,timestamp=1|",
            "empty clientId",
        ),
        (
            "c 1|securemode=2,signmethod=hmacsha1,timestamp=1|",
            "space in clientId",
        ),
        (
            "c1|securemode=9,signmethod=hmacsha1,timestamp=1|",
            "bad securemode",
        ),
        (
            "c1|securemode=2,signmethod=hmacmd5,timestamp=1|",
            "md5 not allowed",
        ),
        (
            "c1|securemode=2,signmethod=hmacsha1,timestamp=x|",
            "bad timestamp",
        ),
    ] {
        let err = parse(cid, ok_user).expect_err(what);
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(
        parse("c1|timestamp=1,timestamp=2|", ok_user),
        Err(SignError::DuplicateParameter("timestamp"))
    );
    for user in ["d1p1", "d1&p1&x", "&p1", "d1&", "d1 &p1"] {
        assert!(
            parse("c1|timestamp=1|", user).is_err(),
            "username {user:?} accepted"
        );
    }
    // The guide makes securemode and signmethod optional.
    let minimal = parse("c1|timestamp=1|", ok_user).expect("defaults apply");
    assert_eq!(minimal.secure_mode, SecureMode::DeviceSecret);
    assert_eq!(minimal.sign_method, SignMethod::HmacSha1);
    let md5 = PresentedLogin::parse(
        "c1|signmethod=hmacmd5,timestamp=1|",
        ok_user,
        Md5Policy::Allow,
    );
    assert_eq!(md5.map(|l| l.sign_method), Ok(SignMethod::HmacMd5));
}

#[test]
fn freshness_window() {
    let now = TimestampMs(10_000_000);
    let window = Freshness::Within {
        now,
        window_ms: 600_000,
    };
    window
        .check(TimestampMs(10_600_000))
        .expect("edge of the window");
    window
        .check(TimestampMs(9_400_000))
        .expect("edge of the window");
    assert_eq!(
        window.check(TimestampMs(9_399_999)),
        Err(SignError::Stale {
            skew_ms: -600_001,
            window_ms: 600_000
        })
    );
    assert!(window.check(TimestampMs(10_600_001)).is_err());
    Freshness::Any.check(TimestampMs(0)).expect("any timestamp");
}

#[test]
fn the_liberal_grammar_refuses_everything_outside_it() {
    let parse = |cid: &str| PresentedLogin::parse(cid, "d1&p1", Md5Policy::Refuse);
    let long_id = "c".repeat(PresentedClientId::MAX_LEN);
    let too_long_id = "c".repeat(PresentedClientId::MAX_LEN + 1);
    let max_timestamp = format!("{}.{}", u64::MAX, "9".repeat(16));
    for (cid, what) in [
        (
            "c1|timestamp=1|x|".to_owned(),
            "a second |-section".to_owned(),
        ),
        (
            "c1|timestamp=1|x".to_owned(),
            "text after the section".into(),
        ),
        ("c1|timestamp=+1|".into(), "a sign".into()),
        ("c1|timestamp=-1|".into(), "a minus sign".into()),
        ("c1|timestamp=1e12|".into(), "an exponent".into()),
        (
            "c1|timestamp=1.5E3|".into(),
            "an exponent after a fraction".into(),
        ),
        ("c1|timestamp= 1|".into(), "a leading space".into()),
        ("c1|timestamp=1 |".into(), "a trailing space".into()),
        ("c1|timestamp=|".into(), "an empty timestamp".into()),
        ("c1|timestamp=.5|".into(), "no integer part".into()),
        ("c1|timestamp=1.|".into(), "an empty fraction".into()),
        ("c1|timestamp=1.2.3|".into(), "two points".into()),
        ("c1|timestamp=1..2|".into(), "two points in a row".into()),
        ("c1|timestamp=١٢٣|".into(), "non-ASCII digits".into()),
        (
            format!("c1|timestamp={}|", "1".repeat(21)),
            "21 integer digits".into(),
        ),
        (
            "c1|timestamp=18446744073709551616|".into(),
            "beyond u64::MAX".into(),
        ),
        (
            format!("c1|timestamp=1.{}|", "1".repeat(17)),
            "17 fraction digits".into(),
        ),
        ("c 1|timestamp=1|".into(), "a space in the clientId".into()),
        (
            "c1é|timestamp=1|".into(),
            "non-ASCII in the clientId".into(),
        ),
        ("c1\u{7}|timestamp=1|".into(), "a control character".into()),
        ("|timestamp=1|".into(), "an empty clientId".into()),
        (
            format!("{too_long_id}|timestamp=1|"),
            "a clientId over 256".into(),
        ),
        (
            "c1|signmethod=sha1,signmethod=sha1,timestamp=1|".into(),
            "a parameter twice".into(),
        ),
        (
            "c1|timestamp=1,timestamp=1|".into(),
            "the timestamp twice".into(),
        ),
        (
            "c1|signmethod=sha512,timestamp=1|".into(),
            "an unknown sign method".into(),
        ),
        ("c1|timestamp=1,|".into(), "an empty parameter".into()),
    ] {
        let err = parse(&cid).expect_err(&what);
        assert!(!err.to_string().is_empty(), "{what}");
    }
    // The bounds themselves are accepted.
    parse(&format!("{long_id}|timestamp=1|")).expect("a clientId of 256");
    let at_bounds =
        parse(&format!("c1|timestamp={max_timestamp}|")).expect("u64::MAX and 16 fraction digits");
    assert_eq!(at_bounds.fields.timestamp.as_str(), max_timestamp);
    // Sign method names in any case, and the aliases.
    for (name, method) in [
        ("SHA256", SignMethod::HmacSha256),
        ("HmacSha1", SignMethod::HmacSha1),
        ("sha1", SignMethod::HmacSha1),
        ("HMACSHA256", SignMethod::HmacSha256),
    ] {
        let login = parse(&format!("c1|signmethod={name},timestamp=1|")).expect(name);
        assert_eq!(login.sign_method, method, "{name}");
    }
    // What the Java SDK puts in the clientId: braces, commas, equals signs.
    let java = parse("dk{ip=10.1.2.3,version=2.3.0,compress=GZIP}|timestamp=1|").expect("java");
    assert_eq!(
        java.fields.client_id.as_str(),
        "dk{ip=10.1.2.3,version=2.3.0,compress=GZIP}"
    );
    // The reason names the field.
    assert_eq!(
        parse("c1|timestamp=1e3|")
            .expect_err("exponent")
            .to_string(),
        "malformed timestamp: must be decimal digits, optionally with one . and fraction digits"
    );
}

#[test]
fn ids_holding_a_signed_field_name_are_refused() {
    // The ambiguity the rule closes: both logins would sign
    // "clientIdadeviceKeybdeviceKeycproductKey…" with one secret.
    assert!(matches!(
        DeviceKey::new("bdeviceKeyc"),
        Err(SignError::ReservedName {
            field: Field::DeviceKey,
            name: "deviceKey"
        })
    ));
    assert!(matches!(
        ClientId::new("adeviceKeyb"),
        Err(SignError::ReservedName {
            field: Field::ClientId,
            ..
        })
    ));
    for (value, name) in [
        ("xclientIdy", "clientId"),
        ("productKey", "productKey"),
        ("at-timestamp", "timestamp"),
    ] {
        for result in [
            ProductKey::new(value).map(drop),
            DeviceKey::new(value).map(drop),
            ClientId::new(value).map(drop),
        ] {
            match result {
                Err(SignError::ReservedName { name: found, .. }) => assert_eq!(found, name),
                other => panic!("{value:?} gave {other:?}"),
            }
        }
    }
    // Other spellings are fine: the content is case-sensitive.
    DeviceKey::new("DeviceKEY-01").expect("another case");
    DeviceKey::new("time-stamp").expect("not the name");
    let err = DeviceKey::new("bdeviceKeyc").expect_err("refused");
    assert!(
        err.to_string().contains("the name of a signed field"),
        "{err}"
    );
}
