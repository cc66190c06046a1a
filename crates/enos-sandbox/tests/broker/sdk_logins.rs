//! The sandbox accepts a CONNECT exactly as each official EnOS SDK sends
//! it, and a `combine.login` as the Java and Python SDKs send it. The
//! passwords are known answers computed apart from this project (Python's
//! hashlib over the content written beside each), the same ones
//! `enos-sign-core`'s `sdk_logins` test checks.

use serde_json::json;

use crate::common::{Fixture, Login, WAIT, assert_bad_login, connect, credential, now_ms};

const DEVICES: &str = "\
productKey,deviceKey,deviceSecret,enabled,gatewayProductKey,gatewayDeviceKey
PkSdk8Zx,dkR,SdkSecret-0123456789,,,
PkSdk8Zx,gwJ,GwSecret-abcdef,,,
PkSub01,subJ,SubSecret-98765,,PkSdk8Zx,gwJ
";

const USERNAME: &str = "dkR&PkSdk8Zx";

/// (SDK, MQTT client id, password) for device PkSdk8Zx/dkR with secret
/// `SdkSecret-0123456789`.
const SDK_CONNECTS: &[(&str, &str, &str)] = &[
    (
        // clientIddkRdeviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221.4375
        "Python 0.1.1, hmacsha1",
        "dkR|securemode=2,signmethod=hmacsha1,timestamp=1796063142221.4375|",
        "BB2D5ECE04CA4BA917CC1A5F0FA2A1A95123B2AC",
    ),
    (
        "Python 0.1.1, hmacsha256",
        "dkR|securemode=2,signmethod=hmacsha256,timestamp=1796063142221.4375|",
        "dbaa190f98d3b80504dfe4d791560ebc87d90f5e0da776f81540c48e039c8e7b",
    ),
    (
        // clientIddkR{ip=10.1.2.3,version=2.3.0}deviceKeydkRproductKeyPkSdk8Zxtimestamp1796063142221
        "Java 2.3, sha256",
        "dkR{ip=10.1.2.3,version=2.3.0}|securemode=2,signmethod=sha256,timestamp=1796063142221|",
        "64f6d1122e0a40ab0fb6afb238641bccb7e68e2851f69e5c041809921a3f6ed3",
    ),
    (
        "Java 2.3, sha1 with compress",
        "dkR{ip=10.1.2.3,version=2.3.0,compress=GZIP}|securemode=2,signmethod=sha1,timestamp=1796063142221|",
        "096F7CD0E0CBC2B4E7C76E06674D9B3B4E5638D8",
    ),
    (
        "Node, sha256 upper hex",
        "dkR|securemode=2,signmethod=sha256,timestamp=1796063142221|",
        "8E2CEF1D18638F2F6B6FD0146F7C9B479B1211542D712676D83583F01924B014",
    ),
    (
        // clientIdPkSdk8Zx.dkRdeviceKeydkRproductKeyPkSdk8Zxtimestamp2524608000000
        "C, fixed 2050 timestamp",
        "PkSdk8Zx.dkR|securemode=2,signmethod=sha256,timestamp=2524608000000|",
        "78BBFF2D5C32459559B85E7CE1321F65E2DE1B9FA83FAB45782745E9436775ED",
    ),
];

fn login(client_id: &str, password: &str) -> Login {
    Login {
        client_id: client_id.to_owned(),
        username: USERNAME.to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn every_official_sdk_connect_is_accepted_by_default() {
    let fixture = Fixture::with_devices(DEVICES);
    // The default: no freshness check, as EnOS (these timestamps are
    // months old, or in 2050).
    let sandbox = fixture.start();
    for (sdk, client_id, password) in SDK_CONNECTS {
        let mark = sandbox.log_mark();
        let connected = connect(sandbox.mqtt_addr(), login(client_id, password), None)
            .await
            .unwrap_or_else(|e| panic!("{sdk}: {e}"));
        sandbox
            .wait_for_log_since(
                mark,
                "accepted MQTT CONNECT listener=\"enos-mqtt\" device=PkSdk8Zx/dkR",
                WAIT,
            )
            .unwrap_or_else(|e| panic!("{sdk}: {e}"));
        connected.client.disconnect().await.expect("disconnect");
    }
    let logs = sandbox.logs();
    for (_, _, password) in SDK_CONNECTS {
        assert!(!logs.contains(password), "a password reached the log");
        assert!(!logs.contains(&password.to_ascii_lowercase()));
    }
    assert!(!logs.contains("SdkSecret-0123456789"));
}

#[tokio::test]
async fn an_sdk_connect_with_a_wrong_secret_is_refused() {
    let fixture =
        Fixture::with_devices(&DEVICES.replace("SdkSecret-0123456789", "another-secret-4242"));
    let sandbox = fixture.start();
    for (sdk, client_id, password) in SDK_CONNECTS {
        let mark = sandbox.log_mark();
        assert_bad_login(
            &sandbox,
            login(client_id, password),
            "password does not match for device PkSdk8Zx/dkR",
        )
        .await;
        assert!(
            sandbox
                .wait_for_log_since(mark, "refused MQTT CONNECT", WAIT)
                .is_ok(),
            "{sdk}: refused without a log line"
        );
    }
}

#[tokio::test]
async fn sdk_connects_are_judged_by_the_freshness_window_when_one_is_set() {
    let fixture = Fixture::with_devices(DEVICES);
    let sandbox = fixture
        .sandbox()
        .freshness_window(std::time::Duration::from_secs(600))
        .start()
        .expect("starts");
    let (_, client_id, password) = SDK_CONNECTS[0];
    assert_bad_login(
        &sandbox,
        login(client_id, password),
        "reason=stale timestamp for device PkSdk8Zx/dkR",
    )
    .await;
}

#[tokio::test]
async fn combine_login_as_the_java_and_python_sdks_send_it() {
    let fixture = Fixture::with_devices(DEVICES);
    let sandbox = fixture.start();
    let gateway = credential(
        "PkSdk8Zx",
        "gwJ",
        "GwSecret-abcdef",
        enos_sign_core::SignMethod::HmacSha1,
        now_ms(),
    );
    let mut gw = connect(sandbox.mqtt_addr(), &gateway, None)
        .await
        .expect("gateway connects");
    let topic = "/ext/session/PkSdk8Zx/gwJ/combine/login";
    for (sdk, client_id, timestamp, method, sign) in [
        (
            // clientIdPkSub01.subJ.1796063142221deviceKeysubJproductKeyPkSub01timestamp1796063142221
            "Java: clientId pk.dk.timestamp, sha256",
            "PkSub01.subJ.1796063142221",
            json!("1796063142221"),
            "sha256",
            "60c59e0ac87f628b732a28ec59912a1c1c214601121492c843b99ecffffd82d1",
        ),
        (
            // clientIdsubJdeviceKeysubJproductKeyPkSub01timestamp1796063142221.4375
            "Python: float timestamp, hmacsha1",
            "subJ",
            json!("1796063142221.4375"),
            "hmacsha1",
            "01162EFA23A8BE7980393BDF85C8ED940ADC6F88",
        ),
        (
            "a JSON number with a fraction, signed as its decimal text",
            "subJ",
            json!(1796063142221.4375),
            "hmacsha1",
            "01162EFA23A8BE7980393BDF85C8ED940ADC6F88",
        ),
    ] {
        let request = json!({
            "id": "1",
            "version": "1.0",
            "method": "combine.login",
            "params": {
                "productKey": "PkSub01",
                "deviceKey": "subJ",
                "clientId": client_id,
                "timestamp": timestamp,
                "signMethod": method,
                "sign": sign,
                "secureMode": "2",
                "cleanSession": "true",
            },
        });
        let reply = gw.request(topic, &request).await;
        assert_eq!(reply["code"], 200, "{sdk}: {reply}");
        // The same request with the sign of another secret fails the check.
        let mut wrong = request.clone();
        wrong["params"]["sign"] = json!("0".repeat(sign.len()));
        let reply = gw.request(topic, &wrong).await;
        assert_eq!(reply["code"], 742, "{sdk}: {reply}");
    }
}
