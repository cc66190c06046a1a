//! Bad configuration and bad records get clear errors and lose nothing.

use enos_custody::{Custody, CustodyError, SealedSecret, SecretRef};
use enos_custody_pkcs11::{
    ExportPolicy, PinSource, Pkcs11Config, Pkcs11Custody, Pkcs11Error, TokenSelector, generate_kek,
    softhsm::{PIN_CREDENTIAL, SoftHsm, USER_PIN, isolated},
};
use enos_sign_core::{
    DeviceKey, DeviceSecret, ExposeSecret, HexCase, ProductKey, SignMethod, SignedFields,
    TimestampMs,
};

fn keys(product: &str, device: &str) -> (ProductKey, DeviceKey) {
    (
        ProductKey::new(product).expect("valid product key"),
        DeviceKey::new(device).expect("valid device key"),
    )
}

fn signed_fields(pk: &ProductKey, dk: &DeviceKey) -> SignedFields {
    SignedFields::with_device_key_as_client_id(pk.clone(), dk.clone(), TimestampMs::from_millis(1))
        .expect("valid fields")
}

fn ready(hsm: &SoftHsm) -> Pkcs11Custody {
    generate_kek(&hsm.config()).expect("create the keys");
    Pkcs11Custody::connect(&hsm.config()).expect("connect")
}

#[test]
fn wrong_pin_is_named_and_the_pin_is_not_shown() {
    isolated(
        "wrong_pin_is_named_and_the_pin_is_not_shown",
        "pin",
        "",
        |hsm| {
            generate_kek(&hsm.config()).expect("create the keys");
            let wrong = hsm.tokens().join("../wrong.pin");
            enos_custody_pkcs11::softhsm::write_pin_file(&wrong, "not-the-pin-4711\n");
            let config = Pkcs11Config {
                pin: Some(PinSource::File(wrong)),
                ..hsm.config()
            };
            let error = Pkcs11Custody::connect(&config).expect_err("wrong PIN");
            assert!(matches!(error, Pkcs11Error::WrongPin { .. }), "{error:?}");
            let message = error.to_string();
            assert!(
                message.contains("CKR_PIN_INCORRECT") && message.contains("pin"),
                "{message}"
            );
            assert!(!message.contains("4711") && !format!("{error:?}").contains("4711"));
            assert!(!message.contains(USER_PIN));
            assert!(matches!(CustodyError::from(error), CustodyError::Config(_)));
            // The right PIN still works: nothing was locked or lost.
            Pkcs11Custody::connect(&hsm.config()).expect("right PIN");
        },
    );
}

#[test]
fn missing_token_kek_and_module_are_named() {
    isolated(
        "missing_token_kek_and_module_are_named",
        "present",
        "",
        |hsm| {
            let absent_token = Pkcs11Config {
                token: Some(TokenSelector::Label("absent".into())),
                ..hsm.config()
            };
            let error = Pkcs11Custody::connect(&absent_token).expect_err("no such token");
            assert!(
                matches!(error, Pkcs11Error::TokenNotFound { .. }),
                "{error:?}"
            );
            assert!(
                error.to_string().contains("\"present\""),
                "lists the tokens present: {error}"
            );

            let error = Pkcs11Custody::connect(&hsm.config()).expect_err("no KEK yet");
            assert!(matches!(error, Pkcs11Error::KeyMissing { .. }), "{error:?}");
            assert!(error.to_string().contains("enos-custody-kek"), "{error}");
            assert!(error.to_string().contains("generate_kek"), "{error}");

            generate_kek(&hsm.config()).expect("create the keys");
            let again = generate_kek(&hsm.config()).expect_err("keys exist");
            assert!(matches!(again, Pkcs11Error::KeyExists { .. }), "{again:?}");
            let other_kek = Pkcs11Config {
                kek_label: Some("other-kek".into()),
                mac_key_label: Some("enos-custody-kek-mac".into()),
                ..hsm.config()
            };
            let error = Pkcs11Custody::connect(&other_kek).expect_err("no such KEK");
            assert!(error.to_string().contains("\"other-kek\""), "{error}");

            let no_module = Pkcs11Config {
                module: Some("/nonexistent/libpkcs11.so".into()),
                ..hsm.config()
            };
            let error = Pkcs11Custody::connect(&no_module).expect_err("no module");
            assert!(matches!(error, Pkcs11Error::Module { .. }), "{error:?}");
            assert!(
                error.to_string().contains("/nonexistent/libpkcs11.so"),
                "{error}"
            );

            let custody = Pkcs11Custody::connect(&hsm.config()).expect("connect");
            let second = Pkcs11Custody::connect(&hsm.config()).expect_err("module held");
            assert!(
                matches!(second, Pkcs11Error::ModuleInUse { .. }),
                "{second:?}"
            );
            drop(custody);
            Pkcs11Custody::connect(&hsm.config()).expect("released on drop");
        },
    );
}

#[test]
fn a_token_without_a_needed_mechanism_is_refused_by_name() {
    isolated(
        "a_token_without_a_needed_mechanism_is_refused_by_name",
        "nomech",
        // SoftHSM2 2.6 takes a whitelist; everything custody needs but
        // the derivation that re-creates a secret at its exact length.
        "slots.mechanisms = CKM_AES_KEY_WRAP_PAD,CKM_AES_KEY_GEN,CKM_AES_CBC,CKM_SHA256_HMAC,CKM_SHA_1,CKM_SHA256,CKM_GENERIC_SECRET_KEY_GEN",
        |hsm| {
            let error = Pkcs11Custody::connect(&hsm.config()).expect_err("mechanism disabled");
            assert!(
                matches!(error, Pkcs11Error::MechanismUnsupported { .. }),
                "{error:?}"
            );
            assert!(
                error.to_string().contains("CKM_AES_CBC_ENCRYPT_DATA"),
                "{error}"
            );
        },
    );
}

#[test]
fn a_record_copied_to_another_device_or_version_is_refused() {
    isolated(
        "a_record_copied_to_another_device_or_version_is_refused",
        "swap",
        "",
        |hsm| {
            let custody = ready(hsm);
            let (pk, alice) = keys("prod", "alice");
            let (_, bob) = keys("prod", "bob");
            let alice_v1 = SecretRef {
                product_key: &pk,
                device_key: Some(&alice),
                version: 1,
            };
            let alice_v2 = SecretRef {
                version: 2,
                ..alice_v1
            };
            let bob_v1 = SecretRef {
                product_key: &pk,
                device_key: Some(&bob),
                version: 1,
            };
            let alice_secret = DeviceSecret::new("alice-secret-0001".into()).expect("valid");
            let bob_secret = DeviceSecret::new("bob-secret-0002".into()).expect("valid");
            let alice_sealed = custody.seal(alice_v1, &alice_secret).expect("seal");
            let bob_sealed = custody.seal(bob_v1, &bob_secret).expect("seal");
            let fields = signed_fields(&pk, &bob);

            // Bob's record holding Alice's blob, and Alice's under version 2.
            for (id, sealed) in [
                (bob_v1, &alice_sealed),
                (alice_v2, &alice_sealed),
                (alice_v1, &bob_sealed),
            ] {
                let error = custody
                    .sign(id, sealed, &fields, SignMethod::HmacSha256, HexCase::Lower)
                    .expect_err("swapped record");
                assert!(matches!(error, CustodyError::Integrity), "{error:?}");
            }
            // Each flipped byte is caught, wherever it is.
            for position in 0..alice_sealed.bytes.len() {
                let mut tampered = alice_sealed.clone();
                tampered.bytes[position] ^= 0x01;
                let error = custody
                    .sign(
                        alice_v1,
                        &tampered,
                        &fields,
                        SignMethod::HmacSha256,
                        HexCase::Lower,
                    )
                    .expect_err("tampered record");
                assert!(
                    matches!(error, CustodyError::Integrity),
                    "byte {position}: {error:?}"
                );
            }
            let truncated = SealedSecret {
                bytes: alice_sealed.bytes[..alice_sealed.bytes.len() - 1].to_vec(),
                ..alice_sealed.clone()
            };
            assert!(matches!(
                custody.sign(
                    alice_v1,
                    &truncated,
                    &fields,
                    SignMethod::HmacSha1,
                    HexCase::Upper
                ),
                Err(CustodyError::Integrity)
            ));
            let software = SealedSecret {
                scheme: "aead-xchacha20poly1305-v1".into(),
                bytes: alice_sealed.bytes.clone(),
            };
            assert!(matches!(
                custody.sign(
                    alice_v1,
                    &software,
                    &fields,
                    SignMethod::HmacSha1,
                    HexCase::Upper
                ),
                Err(CustodyError::WrongScheme { .. })
            ));
            // Nothing was lost: the genuine records still sign, and the session
            // pool survived the failures.
            let fields = signed_fields(&pk, &alice);
            let password = custody
                .sign(
                    alice_v1,
                    &alice_sealed,
                    &fields,
                    SignMethod::HmacSha256,
                    HexCase::Lower,
                )
                .expect("genuine record");
            let expected = enos_sign_core::sign_with_case(
                &fields,
                SignMethod::HmacSha256,
                &alice_secret,
                HexCase::Lower,
            );
            assert_eq!(password.expose_secret(), expected.expose_secret());
            assert_eq!(
                custody.status().reconnects,
                0,
                "integrity failures are not token losses"
            );
        },
    );
}

#[test]
fn export_only_when_connected_for_migration() {
    isolated(
        "export_only_when_connected_for_migration",
        "export",
        "",
        |hsm| {
            let custody = ready(hsm);
            let (pk, dk) = keys("prod", "dev");
            let id = SecretRef {
                product_key: &pk,
                device_key: Some(&dk),
                version: 3,
            };
            let secret = DeviceSecret::new("exported-secret-99".into()).expect("valid");
            let sealed = custody.seal(id, &secret).expect("seal");
            let refused = custody.open(id, &sealed).expect_err("signing custody");
            assert!(
                matches!(refused, CustodyError::Unsupported(_)),
                "{refused:?}"
            );
            drop(custody);

            let migration =
                Pkcs11Custody::connect_with(&hsm.config(), ExportPolicy::AllowForMigration)
                    .expect("connect for migration");
            let opened = migration.open(id, &sealed).expect("export");
            assert_eq!(opened.expose_secret(), "exported-secret-99");
            let other = SecretRef { version: 4, ..id };
            assert!(matches!(
                migration.open(other, &sealed),
                Err(CustodyError::Integrity)
            ));
        },
    );
}

#[test]
fn unfit_keys_are_refused() {
    isolated("unfit_keys_are_refused", "unfit", "", |hsm| {
        // A KEK label that names the MAC key: wrong type and uses.
        generate_kek(&hsm.config()).expect("create the keys");
        let config = Pkcs11Config {
            kek_label: Some("enos-custody-kek-mac".into()),
            mac_key_label: Some("enos-custody-kek".into()),
            ..hsm.config()
        };
        let error = Pkcs11Custody::connect(&config).expect_err("swapped roles");
        assert!(matches!(error, Pkcs11Error::KeyUnfit { .. }), "{error:?}");
    });
}

#[test]
fn uri_and_systemd_credentials_configure_the_same_custody() {
    isolated(
        "uri_and_systemd_credentials_configure_the_same_custody",
        "uri",
        "",
        |hsm| {
            generate_kek(&hsm.config()).expect("create the keys");
            let uri = format!(
                "pkcs11:token={};object=enos-custody-kek?module-path={}&pin-source=file:{}",
                hsm.label(),
                hsm.module().display(),
                hsm.pin_file().display()
            );
            let config = Pkcs11Config {
                uri: Some(uri),
                ..Pkcs11Config::default()
            };
            let custody = Pkcs11Custody::connect(&config).expect("connect by URI");
            let (pk, dk) = keys("prod", "dev");
            let id = SecretRef {
                product_key: &pk,
                device_key: Some(&dk),
                version: 1,
            };
            let secret = DeviceSecret::new("by-uri-secret".into()).expect("valid");
            let sealed = custody.seal(id, &secret).expect("seal");
            drop(custody);
            // The same token, its PIN from $CREDENTIALS_DIRECTORY.
            let config = Pkcs11Config {
                pin: Some(PinSource::Credential(PIN_CREDENTIAL.into())),
                ..hsm.config()
            };
            let custody =
                Pkcs11Custody::connect(&config).expect("connect with a systemd credential");
            let fields = signed_fields(&pk, &dk);
            let password = custody
                .sign(id, &sealed, &fields, SignMethod::HmacSha1, HexCase::Upper)
                .expect("sign");
            let expected = enos_sign_core::sign_with_case(
                &fields,
                SignMethod::HmacSha1,
                &secret,
                HexCase::Upper,
            );
            assert_eq!(password.expose_secret(), expected.expose_secret());
        },
    );
}
