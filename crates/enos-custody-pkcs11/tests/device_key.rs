//! A device's own key in a SoftHSM2 token (#25, the agent's `pkcs11:`
//! key): pairs are made in the token unexportable, found again by the
//! public key a certificate certifies, sign what verifies with that key,
//! and pairs no certificate names are removed.

use enos_custody_pkcs11::{DeviceKeyToken, DeviceKeyUri, Pkcs11Error, softhsm::isolated};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

fn verifies(key: &enos_custody_pkcs11::TokenKey, message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_point())
        .verify(message, signature)
        .is_ok()
}

#[test]
fn device_keys_are_made_in_the_token_found_by_public_key_and_pruned() {
    isolated(
        "device_keys_are_made_in_the_token_found_by_public_key_and_pruned",
        "gw",
        "",
        |hsm| {
            let uri = DeviceKeyUri::parse(&hsm.device_key_uri("device")).expect("a valid URI");
            assert_eq!(uri.label(), "device");
            let token = DeviceKeyToken::open(&uri).expect("open and log in");
            let first = token.generate().expect("a pair");
            let second = token.generate().expect("another pair");
            assert_ne!(first.public_key_der(), second.public_key_der());
            assert_eq!(first.public_key_der().len(), 91, "a P-256 SPKI");

            // Found again by the public key a certificate would carry.
            let found = token.find(second.public_key_der()).expect("found");
            assert_eq!(found.public_key_der(), second.public_key_der());
            let signature = token.sign(&found, b"handshake transcript").expect("sign");
            assert!(verifies(&second, b"handshake transcript", &signature));
            assert!(!verifies(&first, b"handshake transcript", &signature));
            assert!(!format!("{found:?}").contains("PRIVATE"));

            // Keep the second: the first goes, the second still signs.
            let removed = token
                .destroy_others(&[second.public_key_der()])
                .expect("prune");
            assert_eq!(removed, 1);
            match token.find(first.public_key_der()) {
                Err(Pkcs11Error::DeviceKeyMissing { label, .. }) => assert_eq!(label, "device"),
                other => panic!("the pruned key is gone, got {other:?}"),
            }
            let signature = token.sign(&found, b"again").expect("sign");
            assert!(verifies(&second, b"again", &signature));
            // Another label's keys are not this device's.
            drop(token);
        },
    );
}

#[test]
fn device_key_uris_need_all_four_parts_and_no_pin_value() {
    for (text, expected) in [
        ("pkcs11:token=gw;object=k?pin-source=file:/p", "module-path"),
        (
            "pkcs11:object=k?module-path=/m.so&pin-source=file:/p",
            "token=",
        ),
        (
            "pkcs11:token=gw?module-path=/m.so&pin-source=file:/p",
            "object=",
        ),
        ("pkcs11:token=gw;object=k?module-path=/m.so", "pin-source"),
        (
            "pkcs11:token=gw;object=k?module-path=/m.so&pin-value=1234",
            "pin-value",
        ),
        (
            "pkcs11:token=gw;object=k;type=secret-key?module-path=/m.so&pin-source=file:/p",
            "a device key is a `private`",
        ),
    ] {
        let error = DeviceKeyUri::parse(text).expect_err(text).to_string();
        assert!(error.contains(expected), "{text}: {error}");
        assert!(!error.contains("1234"), "{error}");
    }
    let uri = DeviceKeyUri::parse(
        "pkcs11:token=gw;object=k;type=private?module-path=/m.so&pin-source=file:/p",
    )
    .expect("valid");
    assert_eq!(uri.label(), "k");
}
