//! The token going away mid-run: clear errors while it is away, recovery
//! without a restart once it is back.

use std::time::Duration;

use enos_custody::{Custody, CustodyError, SealedSecret, SecretRef};
use enos_custody_pkcs11::{
    Pkcs11Custody, generate_kek,
    softhsm::{SoftHsm, isolated},
};
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, HexCase, ProductKey, SignMethod, SignedFields,
    TimestampMs,
};

const EXPECTED: &str = "97AA97335D6EC3D7E1F9E3119501E399CC0B4125";

struct Device {
    fields: SignedFields,
}

impl Device {
    fn new() -> Self {
        Device {
            fields: SignedFields {
                client_id: ClientId::new("123").expect("valid"),
                device_key: DeviceKey::new("test").expect("valid"),
                product_key: ProductKey::new("123").expect("valid"),
                timestamp: TimestampMs::from_millis(1524448722000),
            },
        }
    }

    fn id(&self) -> SecretRef<'_> {
        SecretRef {
            product_key: &self.fields.product_key,
            device_key: Some(&self.fields.device_key),
            version: 1,
        }
    }

    fn sign(&self, custody: &Pkcs11Custody, sealed: &SealedSecret) -> Result<String, CustodyError> {
        custody
            .sign(
                self.id(),
                sealed,
                &self.fields,
                SignMethod::HmacSha1,
                HexCase::Upper,
            )
            .map(|password| password.expose_secret().to_owned())
    }
}

fn ready(hsm: &SoftHsm, device: &Device) -> (Pkcs11Custody, SealedSecret) {
    generate_kek(&hsm.config()).expect("create the keys");
    let custody = Pkcs11Custody::connect(&hsm.config()).expect("connect");
    let secret = DeviceSecret::new("aaabbbcc123".into()).expect("valid");
    let sealed = custody.seal(device.id(), &secret).expect("seal");
    (custody, sealed)
}

/// Longer than the fixture's 50 ms reconnect interval.
const PAST_RETRY_INTERVAL: Duration = Duration::from_millis(120);

#[test]
fn signing_fails_clearly_while_the_token_is_away_and_recovers_when_it_is_back() {
    isolated(
        "signing_fails_clearly_while_the_token_is_away_and_recovers_when_it_is_back",
        "away",
        "",
        |hsm| {
            let device = Device::new();
            let (custody, sealed) = ready(hsm, &device);
            assert_eq!(
                device.sign(&custody, &sealed).expect("token present"),
                EXPECTED
            );

            hsm.park_token();
            let error = device.sign(&custody, &sealed).expect_err("token away");
            let CustodyError::Unavailable(message) = &error else {
                panic!("expected Unavailable, got {error:?}");
            };
            // Says which token, what failed, and that reconnecting failed.
            assert!(message.contains("\"away\""), "{message}");
            assert!(message.contains("reconnecting failed"), "{message}");
            assert!(message.contains("no token label \"away\""), "{message}");
            let status = custody.status();
            assert!(!status.connected);
            assert!(status.last_error.is_some());

            // Within the retry interval: no new attempt, the same reason.
            let fast = device.sign(&custody, &sealed).expect_err("still away");
            assert!(
                fast.to_string().contains("next reconnect attempt in"),
                "{fast}"
            );
            // Sealing (importing) fails the same clear way.
            std::thread::sleep(PAST_RETRY_INTERVAL);
            let secret = DeviceSecret::new("another-secret".into()).expect("valid");
            assert!(matches!(
                custody.seal(device.id(), &secret),
                Err(CustodyError::Unavailable(_))
            ));

            hsm.restore_token();
            std::thread::sleep(PAST_RETRY_INTERVAL);
            assert_eq!(
                device.sign(&custody, &sealed).expect("token back"),
                EXPECTED
            );
            let status = custody.status();
            assert!(status.connected);
            assert_eq!(status.reconnects, 1);
            assert_eq!(status.last_error, None);
            // Records sealed before the loss are still good, and new ones work.
            let sealed_after = custody
                .seal(
                    device.id(),
                    &DeviceSecret::new("aaabbbcc123".into()).expect("valid"),
                )
                .expect("seal");
            assert_eq!(
                device.sign(&custody, &sealed_after).expect("sign"),
                EXPECTED
            );
        },
    );
}

#[test]
fn concurrent_signers_ride_out_a_token_loss() {
    isolated(
        "concurrent_signers_ride_out_a_token_loss",
        "ride",
        "",
        |hsm| {
            let device = Device::new();
            let (custody, sealed) = ready(hsm, &device);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let outcomes = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..6)
                    .map(|_| {
                        scope.spawn(|| {
                            let (mut ok, mut unavailable) = (0u32, 0u32);
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                match device.sign(&custody, &sealed) {
                                    Ok(password) => {
                                        assert_eq!(password, EXPECTED);
                                        ok += 1;
                                    }
                                    Err(CustodyError::Unavailable(_)) => unavailable += 1,
                                    Err(other) => panic!("unexpected error: {other:?}"),
                                }
                            }
                            (ok, unavailable)
                        })
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(100));
                hsm.park_token();
                std::thread::sleep(Duration::from_millis(200));
                hsm.restore_token();
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                workers
                    .into_iter()
                    .map(|worker| worker.join().expect("worker"))
                    .collect::<Vec<_>>()
            });
            let unavailable: u32 = outcomes.iter().map(|(_, u)| u).sum();
            assert!(unavailable > 0, "the loss was seen: {outcomes:?}");
            assert!(custody.status().connected);
            assert!(custody.status().reconnects >= 1);
            // Everyone signs again after the token came back.
            assert_eq!(device.sign(&custody, &sealed).expect("back"), EXPECTED);
        },
    );
}

#[test]
fn a_pin_rejected_on_reconnect_is_not_retried() {
    isolated(
        "a_pin_rejected_on_reconnect_is_not_retried",
        "repin",
        "",
        |hsm| {
            let device = Device::new();
            let (custody, sealed) = ready(hsm, &device);
            hsm.park_token();
            assert!(device.sign(&custody, &sealed).is_err());
            std::fs::write(hsm.pin_file(), "a-wrong-pin\n").expect("write");
            hsm.restore_token();
            std::thread::sleep(PAST_RETRY_INTERVAL);
            let error = device.sign(&custody, &sealed).expect_err("wrong PIN");
            assert!(matches!(error, CustodyError::Config(_)), "{error:?}");
            assert!(error.to_string().contains("CKR_PIN_INCORRECT"), "{error}");
            // Even with the right PIN back, no automatic retry: a restart is
            // the operator's explicit decision (wrong PINs lock real tokens).
            std::fs::write(
                hsm.pin_file(),
                format!("{}\n", enos_custody_pkcs11::softhsm::USER_PIN),
            )
            .expect("write");
            std::thread::sleep(PAST_RETRY_INTERVAL);
            assert!(matches!(
                device.sign(&custody, &sealed),
                Err(CustodyError::Config(_))
            ));
            drop(custody);
            let restarted = Pkcs11Custody::connect(&hsm.config()).expect("restart");
            assert_eq!(device.sign(&restarted, &sealed).expect("sign"), EXPECTED);
        },
    );
}

#[test]
fn check_follows_the_token_for_the_readiness_probe() {
    isolated(
        "check_follows_the_token_for_the_readiness_probe",
        "probe",
        "",
        |hsm| {
            let device = Device::new();
            let (custody, _sealed) = ready(hsm, &device);
            custody.check().expect("token present: ready");
            hsm.park_token();
            let error = custody.check().expect_err("token away: not ready");
            assert!(matches!(error, CustodyError::Unavailable(_)), "{error:?}");
            hsm.restore_token();
            std::thread::sleep(PAST_RETRY_INTERVAL);
            // The check itself reconnects: a replica taken out of service
            // gets no traffic that would.
            custody.check().expect("token back: ready again");
            assert_eq!(custody.status().reconnects, 1);
        },
    );
}
