//! Known answers for every login form the official EnOS SDKs send
//! (shared/reference/enos-protocol-facts.md, "What each official SDK
//! actually sends"). The content strings and digests were computed apart
//! from this crate (Python's hashlib over the content string written out
//! below plus the secret), so the broker side is checked against the
//! SDKs' rule, not against itself.

use enos_sign_core::{
    DeviceSecret, Freshness, Md5Policy, PresentedLogin, SecureMode, SignError, SignMethod,
    TimestampMs,
};

const PRODUCT_KEY: &str = "PkSdk8Zx";
const DEVICE_KEY: &str = "dkR";
const USERNAME: &str = "dkR&PkSdk8Zx";
const SECRET: &str = "SdkSecret-0123456789";

/// One SDK's CONNECT: what it sends and what was signed.
struct SdkLogin {
    mqtt_client_id: &'static str,
    /// `clientId…deviceKey…productKey…timestamp…`, to which the secret is
    /// appended; written out so a reader sees exactly what is signed.
    content: &'static str,
    method: SignMethod,
    password: &'static str,
    /// The signed clientId and timestamp, as sent.
    client_id: &'static str,
    timestamp: &'static str,
}

const SDK_LOGINS: &[(&str, SdkLogin)] = &[
    (
        "Python 0.1.1, hmacsha1, float timestamp",
        SdkLogin {
            mqtt_client_id: "dkR|securemode=2,signmethod=hmacsha1,timestamp=1796063142221.4375|",
            content: "clientIddkRdeviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221.4375",
            method: SignMethod::HmacSha1,
            password: "BB2D5ECE04CA4BA917CC1A5F0FA2A1A95123B2AC",
            client_id: "dkR",
            timestamp: "1796063142221.4375",
        },
    ),
    (
        "Python 0.1.1, hmacsha256 (its default), float timestamp, lower hex",
        SdkLogin {
            mqtt_client_id: "dkR|securemode=2,signmethod=hmacsha256,timestamp=1796063142221.4375|",
            content: "clientIddkRdeviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221.4375",
            method: SignMethod::HmacSha256,
            password: "dbaa190f98d3b80504dfe4d791560ebc87d90f5e0da776f81540c48e039c8e7b",
            client_id: "dkR",
            timestamp: "1796063142221.4375",
        },
    ),
    (
        "Java 2.3, sha256, {ip,version} inside the signed clientId, lower hex",
        SdkLogin {
            mqtt_client_id: "dkR{ip=10.1.2.3,version=2.3.0}|securemode=2,signmethod=sha256,timestamp=1796063142221|",
            content: "clientIddkR{ip=10.1.2.3,version=2.3.0}deviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221",
            method: SignMethod::HmacSha256,
            password: "64f6d1122e0a40ab0fb6afb238641bccb7e68e2851f69e5c041809921a3f6ed3",
            client_id: "dkR{ip=10.1.2.3,version=2.3.0}",
            timestamp: "1796063142221",
        },
    ),
    (
        "Java 2.3, sha1 with compress, upper hex",
        SdkLogin {
            mqtt_client_id: "dkR{ip=10.1.2.3,version=2.3.0,compress=GZIP}|securemode=2,signmethod=sha1,timestamp=1796063142221|",
            content: "clientIddkR{ip=10.1.2.3,version=2.3.0,compress=GZIP}deviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221",
            method: SignMethod::HmacSha1,
            password: "096F7CD0E0CBC2B4E7C76E06674D9B3B4E5638D8",
            client_id: "dkR{ip=10.1.2.3,version=2.3.0,compress=GZIP}",
            timestamp: "1796063142221",
        },
    ),
    (
        "Node, sha256, upper hex",
        SdkLogin {
            mqtt_client_id: "dkR|securemode=2,signmethod=sha256,timestamp=1796063142221|",
            content: "clientIddkRdeviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221",
            method: SignMethod::HmacSha256,
            password: "8E2CEF1D18638F2F6B6FD0146F7C9B479B1211542D712676D83583F01924B014",
            client_id: "dkR",
            timestamp: "1796063142221",
        },
    ),
    (
        "C, productKey.deviceKey, sha256, the fixed 2050 timestamp, upper hex",
        SdkLogin {
            mqtt_client_id: "PkSdk8Zx.dkR|securemode=2,signmethod=sha256,timestamp=2524608000000|",
            content: "clientIdPkSdk8Zx.dkRdeviceKeydkRproductKeyPkSdk8Zxtimestamp2524608000000",
            method: SignMethod::HmacSha256,
            password: "78BBFF2D5C32459559B85E7CE1321F65E2DE1B9FA83FAB45782745E9436775ED",
            client_id: "PkSdk8Zx.dkR",
            timestamp: "2524608000000",
        },
    ),
];

fn secret(s: &str) -> DeviceSecret {
    DeviceSecret::new(s.to_owned()).expect("valid secret")
}

#[test]
fn every_sdk_login_parses_as_sent_and_verifies() {
    for (sdk, login) in SDK_LOGINS {
        let presented = PresentedLogin::parse(login.mqtt_client_id, USERNAME, Md5Policy::Refuse)
            .unwrap_or_else(|e| panic!("{sdk}: refused: {e}"));
        let fields = &presented.fields;
        assert_eq!(fields.client_id.as_str(), login.client_id, "{sdk}");
        assert_eq!(fields.timestamp.as_str(), login.timestamp, "{sdk}");
        assert_eq!(fields.device_key.as_str(), DEVICE_KEY, "{sdk}");
        assert_eq!(fields.product_key.as_str(), PRODUCT_KEY, "{sdk}");
        assert_eq!(presented.sign_method, login.method, "{sdk}");
        assert_eq!(presented.secure_mode, SecureMode::DeviceSecret, "{sdk}");
        // The content the test states is the one the fields spell.
        assert_eq!(
            login.content,
            format!(
                "clientId{}deviceKey{}productKey{}timestamp{}",
                fields.client_id, fields.device_key, fields.product_key, fields.timestamp
            ),
            "{sdk}"
        );
        presented
            .verify(login.password, &secret(SECRET), Freshness::Any)
            .unwrap_or_else(|e| panic!("{sdk}: password refused: {e}"));
        // Either hex case, as EnOS does.
        presented
            .verify(
                &login.password.to_ascii_lowercase(),
                &secret(SECRET),
                Freshness::Any,
            )
            .unwrap_or_else(|e| panic!("{sdk}: lower case refused: {e}"));
        presented
            .verify(
                &login.password.to_ascii_uppercase(),
                &secret(SECRET),
                Freshness::Any,
            )
            .unwrap_or_else(|e| panic!("{sdk}: upper case refused: {e}"));
        assert_eq!(
            presented.verify(login.password, &secret("another-secret"), Freshness::Any),
            Err(SignError::WrongPassword),
            "{sdk}: a wrong secret must be refused"
        );
    }
}

#[test]
fn java_md5_verifies_only_when_md5_is_allowed() {
    let cid = "dkR{ip=10.1.2.3,version=2.3.0}|securemode=2,signmethod=md5,timestamp=1796063142221|";
    assert_eq!(
        PresentedLogin::parse(cid, USERNAME, Md5Policy::Refuse),
        Err(SignError::Md5NotAllowed)
    );
    let presented = PresentedLogin::parse(cid, USERNAME, Md5Policy::Allow).expect("md5 allowed");
    // md5("clientIddkR{ip=10.1.2.3,version=2.3.0}deviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221" + secret)
    presented
        .verify(
            "eb6c4d3a74f5a947cdd7816103f4b374",
            &secret(SECRET),
            Freshness::Any,
        )
        .expect("the Java SDK's md5 login verifies");
}

#[test]
fn a_digit_more_or_less_in_the_timestamp_text_is_another_sign() {
    // The fraction is signed: the same millisecond with another fraction,
    // or the integer alone, must not verify with the Python password.
    let python = &SDK_LOGINS[0].1;
    for other in ["1796063142221", "1796063142221.437", "1796063142221.43750"] {
        let cid = format!("dkR|securemode=2,signmethod=hmacsha1,timestamp={other}|");
        let presented =
            PresentedLogin::parse(&cid, USERNAME, Md5Policy::Refuse).expect("well formed");
        assert_eq!(
            presented.verify(python.password, &secret(SECRET), Freshness::Any),
            Err(SignError::WrongPassword),
            "timestamp {other}"
        );
    }
}

#[test]
fn freshness_judges_the_whole_milliseconds_of_a_fractional_timestamp() {
    let python = &SDK_LOGINS[0].1;
    let presented =
        PresentedLogin::parse(python.mqtt_client_id, USERNAME, Md5Policy::Refuse).expect("parses");
    assert_eq!(
        presented.fields.timestamp.millis(),
        TimestampMs::from_millis(1_796_063_142_221)
    );
    let at = |now: u64| Freshness::Within {
        now: TimestampMs::from_millis(now),
        window_ms: 1_000,
    };
    presented
        .verify(python.password, &secret(SECRET), at(1_796_063_143_221))
        .expect("exactly at the window's edge");
    assert!(matches!(
        presented.verify(python.password, &secret(SECRET), at(1_796_063_143_222)),
        Err(SignError::Stale { .. })
    ));
}
