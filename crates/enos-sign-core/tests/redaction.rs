//! No secret-bearing type ever prints its secret.

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, MqttCredential, Password, ProductKey,
    ProductSecret, SecureMode, SignMethod, SignedFields, SubDeviceLogin, TimestampMs, sign,
};

const SECRET: &str = "S3cr3tValueNobodySees";

fn fields() -> SignedFields {
    SignedFields {
        client_id: ClientId::new("gw-01").expect("valid"),
        device_key: DeviceKey::new("gw-01").expect("valid"),
        product_key: ProductKey::new("PkGw01").expect("valid"),
        timestamp: TimestampMs::from_millis(1_700_000_000_000),
    }
}

/// Fails if `printed` shows the secret or the password, in any case.
fn assert_hidden(printed: &str, password: &str) {
    let lower = printed.to_ascii_lowercase();
    assert!(
        !lower.contains(&SECRET.to_ascii_lowercase()),
        "secret leaked: {printed}"
    );
    assert!(
        !lower.contains(&password.to_ascii_lowercase()),
        "password leaked: {printed}"
    );
    // Not even a recognisable prefix of the password.
    assert!(
        !lower.contains(&password[..12].to_ascii_lowercase()),
        "password prefix leaked: {printed}"
    );
}

#[test]
fn debug_of_every_secret_bearing_type_is_redacted() {
    let device_secret = DeviceSecret::new(SECRET.to_owned()).expect("valid");
    let product_secret = ProductSecret::new(SECRET.to_owned()).expect("valid");
    for method in SignMethod::ALL {
        let password = sign(&fields(), method, &device_secret);
        let exposed = password.expose_secret().to_owned();
        let credential =
            MqttCredential::sign(fields(), SecureMode::DeviceSecret, method, &device_secret)
                .expect("fits");
        let product_credential =
            MqttCredential::sign(fields(), SecureMode::ProductSecret, method, &product_secret)
                .expect("fits");
        let login = SubDeviceLogin::sign(fields(), method, &device_secret, false);
        let parsed_back = Password::from_hex(&exposed).expect("hex");
        for printed in [
            format!("{device_secret:?}"),
            format!("{device_secret:#?}"),
            format!("{product_secret:?}"),
            format!("{password:?}"),
            format!("{parsed_back:?}"),
            format!("{credential:?}"),
            format!("{credential:#?}"),
            format!("{product_credential:?}"),
            format!("{login:?}"),
            format!("{login:#?}"),
        ] {
            assert_hidden(&printed, &exposed);
        }
        assert!(format!("{credential:?}").contains("REDACTED"));
    }
}

#[test]
fn errors_never_echo_secret_input() {
    let bad_secrets = [
        format!("{SECRET} "),
        format!("{SECRET}\n"),
        format!("{SECRET}\u{e9}"),
        SECRET.repeat(20),
    ];
    for bad in bad_secrets {
        for err in [
            DeviceSecret::new(bad.clone()).expect_err("refused"),
            ProductSecret::new(bad.clone()).expect_err("refused"),
        ] {
            let printed = format!("{err} {err:?}");
            assert!(
                !printed.contains(SECRET),
                "error leaked the secret: {printed}"
            );
        }
    }
    let err = Password::from_hex("97AA97335D6EC3D7E1F9E3119501E399CC0B412Z").expect_err("not hex");
    assert!(!format!("{err} {err:?}").contains("97AA9733"));
}
