//! The signer's CA key in a SoftHSM2 token (#25): generated in the token,
//! never extractable; a root, a device certificate and a CRL signed by
//! C_Sign inside the token verify with x509-parser against the CA
//! certificate; a stored key that is not this token's, or not this key's,
//! is refused; a lost token is recovered like every custody call.

use std::{sync::Arc, time::Duration};

use enos_custody::{CaSigner, Custody, CustodyError, StoredCaKey};
use enos_custody_pkcs11::{
    CA_SCHEME, DEFAULT_KEK_LABEL, Pkcs11Custody, generate_kek,
    softhsm::{isolated, raw::RawToken},
};

/// Longer than the fixture's 50 ms reconnect interval.
const PAST_RETRY_INTERVAL: Duration = Duration::from_millis(120);

/// Signs a root, a device certificate and a CRL with `signer`; verifies
/// all three against the root ([`enos_ca::bench_support::sign_and_verify`]).
fn sign_and_verify(signer: Arc<dyn CaSigner>) {
    enos_ca::bench_support::sign_and_verify(signer, "key compromise");
}

#[test]
fn an_hsm_ca_key_is_made_in_the_token_unexportable_and_signs_certificates_and_crls() {
    isolated(
        "an_hsm_ca_key_is_made_in_the_token_unexportable_and_signs_certificates_and_crls",
        "ca",
        "",
        |hsm| {
            generate_kek(&hsm.config()).expect("create the custody keys");
            let stored = {
                let custody = Pkcs11Custody::connect(&hsm.config()).expect("connect");
                let stored = custody.create_ca_key("enos device CA").expect("create");
                assert_eq!(stored.scheme, CA_SCHEME);
                assert_eq!(stored.bytes.len(), 16, "the key pair's CKA_ID");
                assert_eq!(stored.public_key_der.len(), 91, "a P-256 SPKI");
                let signer = custody.ca_signer(&stored).expect("find the key");
                assert_eq!(signer.public_key_der(), stored.public_key_der);
                sign_and_verify(signer);
                stored
            };

            // The key as the token reports it, with no custody connected
            // (one initialisation per process).
            {
                let token = RawToken::open(hsm);
                let raw = token.ca_session(&stored.bytes);
                let attributes = raw.attributes();
                assert!(!attributes.extractable, "CKA_EXTRACTABLE is false");
                assert!(attributes.never_extractable && attributes.always_sensitive);
                assert!(attributes.sensitive && attributes.private && attributes.token);
                assert!(attributes.sign && !attributes.derive);
                assert!(raw.value_withheld(), "the token withholds CKA_VALUE");
                assert_eq!(raw.sign_digest(&[7; 32]).len(), 64, "r ‖ s");
            }

            // A token object: a new connection (a restarted signer) finds
            // it again by its CKA_ID and signs with it.
            let custody = Pkcs11Custody::connect(&hsm.config()).expect("connect again");
            sign_and_verify(custody.ca_signer(&stored).expect("found after a restart"));
        },
    );
}

#[test]
fn a_stored_ca_key_that_is_not_this_tokens_is_refused_and_a_lost_token_recovers() {
    isolated(
        "a_stored_ca_key_that_is_not_this_tokens_is_refused_and_a_lost_token_recovers",
        "ca-refusals",
        "",
        |hsm| {
            generate_kek(&hsm.config()).expect("create the custody keys");
            let custody = Pkcs11Custody::connect(&hsm.config()).expect("connect");
            let stored = custody.create_ca_key("enos device CA").expect("create");
            let other = custody
                .create_ca_key("enos device CA")
                .expect("a second key");
            assert_ne!(other.bytes, stored.bytes);

            // A CKA_ID this token does not hold.
            let unknown = StoredCaKey {
                bytes: vec![0xee; 16],
                ..stored.clone()
            };
            let refused = custody.ca_signer(&unknown).err().expect("unknown id");
            assert!(
                matches!(&refused, CustodyError::Config(m) if m.contains("holds no CA key")),
                "{refused:?}"
            );
            // This token's key next to another key's public key.
            let swapped = StoredCaKey {
                public_key_der: other.public_key_der.clone(),
                ..stored.clone()
            };
            assert!(matches!(
                custody.ca_signer(&swapped),
                Err(CustodyError::InvalidCaKey(_))
            ));
            // A software key's stored form.
            let software = StoredCaKey {
                scheme: "aead-xchacha20poly1305-ca-v1".into(),
                ..stored.clone()
            };
            assert!(matches!(
                custody.ca_signer(&software),
                Err(CustodyError::WrongScheme { .. })
            ));
            // Labels: the custody's own key labels and bad ones are refused.
            for label in [DEFAULT_KEK_LABEL, "a|b", ""] {
                assert!(
                    matches!(custody.create_ca_key(label), Err(CustodyError::Config(_))),
                    "{label:?}"
                );
            }

            // The token goes away: a clear, retryable error; back: the
            // signer made before signs again (its cached handle died with
            // the old connection and is looked up anew).
            let signer = custody.ca_signer(&stored).expect("signer");
            signer.sign(b"before").expect("sign");
            hsm.park_token();
            let away = signer.sign(b"away").expect_err("token away");
            assert!(matches!(away, CustodyError::Unavailable(_)), "{away:?}");
            hsm.restore_token();
            std::thread::sleep(PAST_RETRY_INTERVAL);
            sign_and_verify(signer);
            assert_eq!(custody.status().reconnects, 1);
        },
    );
}
