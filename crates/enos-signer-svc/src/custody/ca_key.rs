//! The CA key in software custody: an ECDSA P-256 key made with ring,
//! its PKCS#8 sealed under the master key like a device secret, but with
//! associated data that binds it as a CA key (`enos-ca-key-v1|{label}`),
//! so that no sealed device or product secret ever opens as a CA key, nor
//! a CA key as a secret (their associated data start `enos-secret-v1|`
//! and `enos-product-secret-v1|`).
//!
//! Stored form ([`StoredCaKey::bytes`]): `0x01 ‖ label length (1 byte) ‖
//! label ‖ nonce (24) ‖ ciphertext ‖ tag`. The label is in clear because
//! [`Custody::ca_signer`](enos_custody::Custody::ca_signer) needs it to
//! rebuild the associated data; changing it breaks the seal.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use enos_custody::{CaSigner, CustodyError, StoredCaKey, p256};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
};
use zeroize::Zeroizing;

use super::{NONCE_LEN, SoftwareCustody};

/// The scheme tag of a software-custody CA key.
pub const SOFTWARE_CA_SCHEME: &str = "aead-xchacha20poly1305-ca-v1";

/// The format byte of the stored form.
const FORMAT: u8 = 1;

/// The associated data of a CA key named `label`.
fn associated_data(label: &str) -> Vec<u8> {
    format!("enos-ca-key-v1|{label}").into_bytes()
}

/// Makes and seals a new CA key named `label`.
pub(super) fn create(custody: &SoftwareCustody, label: &str) -> Result<StoredCaKey, CustodyError> {
    p256::check_label(label)?;
    let rng = SystemRandom::new();
    // ring's Document cannot be wiped; its bytes are copied at once into
    // a buffer that is.
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map(|document| Zeroizing::new(document.as_ref().to_vec()))
        .map_err(|_| CustodyError::Unavailable("no randomness for a CA key".into()))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
        .map_err(|_| CustodyError::InvalidCaKey("ring refused the key it made".into()))?;
    let public_key_der = p256::spki_from_point(key.public_key().as_ref())?;
    let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let aad = associated_data(label);
    let ciphertext = custody
        .cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &pkcs8,
                aad: &aad,
            },
        )
        .map_err(|_| CustodyError::Config("encryption failed".into()))?;
    let mut bytes = Vec::with_capacity(2 + label.len() + NONCE_LEN + ciphertext.len());
    bytes.push(FORMAT);
    // check_label bounds it to 64 bytes.
    bytes.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
    bytes.extend_from_slice(label.as_bytes());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&ciphertext);
    Ok(StoredCaKey {
        scheme: SOFTWARE_CA_SCHEME.into(),
        bytes,
        public_key_der,
    })
}

/// Opens `stored` once into a signer that keeps the key in memory.
pub(super) fn signer(
    custody: &SoftwareCustody,
    stored: &StoredCaKey,
) -> Result<Arc<dyn CaSigner>, CustodyError> {
    if stored.scheme != SOFTWARE_CA_SCHEME {
        return Err(CustodyError::WrongScheme {
            expected: SOFTWARE_CA_SCHEME.into(),
            found: stored.scheme.clone(),
        });
    }
    let (label, sealed) = split(&stored.bytes).ok_or(CustodyError::Integrity)?;
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let pkcs8 = Zeroizing::new(custody.open_xchacha(nonce, ciphertext, &associated_data(label))?);
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|_| CustodyError::InvalidCaKey("the sealed key is not a P-256 PKCS#8 key".into()))?;
    // The seal covers the private key only: the stored public key must be
    // this key's, or certificates would name a key that did not sign them.
    if p256::point_from_spki(&stored.public_key_der)? != key.public_key().as_ref() {
        return Err(CustodyError::InvalidCaKey(
            "the stored public key is not the sealed key's".into(),
        ));
    }
    Ok(Arc::new(SoftwareCaSigner {
        key,
        rng: SystemRandom::new(),
        public_key_der: stored.public_key_der.clone(),
    }))
}

/// `(label, nonce ‖ ciphertext ‖ tag)` of a stored form, if it parses.
fn split(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&format, rest) = bytes.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if format != FORMAT || rest.len() < usize::from(len) + NONCE_LEN {
        return None;
    }
    let (label, sealed) = rest.split_at(usize::from(len));
    Some((std::str::from_utf8(label).ok()?, sealed))
}

/// A software CA key, opened.
///
/// ring keeps the private scalar inside [`EcdsaKeyPair`] and offers no way
/// to wipe it (nor does safe Rust); the PKCS#8 plaintext it was read from
/// is wiped as soon as the key is parsed, and this value lives as long as
/// the signer is a CA.
struct SoftwareCaSigner {
    /// The key, parsed once: a sign is then one ECDSA operation.
    key: EcdsaKeyPair,
    /// ECDSA's per-signature randomness (ring mixes it with the key).
    rng: SystemRandom,
    /// Returned by [`CaSigner::public_key_der`].
    public_key_der: Vec<u8>,
}

impl CaSigner for SoftwareCaSigner {
    fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        self.key
            .sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| CustodyError::Unavailable("ECDSA signing failed (no randomness)".into()))
    }
}

#[cfg(test)]
mod tests {
    use enos_custody::{Custody, SealedSecret, SecretRef};
    use enos_sign_core::{DeviceKey, DeviceSecret, ProductKey};
    use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

    use super::*;
    use crate::custody::SOFTWARE_SCHEME;

    fn verifies(public_key_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let point = p256::point_from_spki(public_key_der).expect("P-256");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(message, signature)
            .is_ok()
    }

    #[test]
    fn a_software_ca_key_is_sealed_and_signs_for_its_public_key() {
        let custody = SoftwareCustody::new(&[7u8; 32]);
        let stored = custody.create_ca_key("enos device CA").expect("create");
        assert_eq!(stored.scheme, SOFTWARE_CA_SCHEME);
        assert_eq!(stored.public_key_der.len(), 91, "a P-256 SPKI");
        let debug = format!("{stored:?}");
        assert_eq!(
            debug,
            format!(
                "StoredCaKey {{ scheme: \"{SOFTWARE_CA_SCHEME}\", len: {} }}",
                stored.bytes.len()
            )
        );

        let signer = custody.ca_signer(&stored).expect("open");
        assert_eq!(signer.public_key_der(), stored.public_key_der);
        let signature = signer.sign(b"tbsCertificate").expect("sign");
        assert!(verifies(
            &stored.public_key_der,
            b"tbsCertificate",
            &signature
        ));
        assert!(!verifies(&stored.public_key_der, b"another", &signature));
        // Two keys are two keys; each opens under the same master key.
        let other = custody.create_ca_key("enos device CA").expect("create");
        assert_ne!(other.public_key_der, stored.public_key_der);
        custody.ca_signer(&other).expect("open");
        // The stored form survives a restart: a new custody over the same
        // master key opens it.
        let again = SoftwareCustody::new(&[7u8; 32])
            .ca_signer(&stored)
            .expect("open after a restart");
        assert!(verifies(
            &stored.public_key_der,
            b"x",
            &again.sign(b"x").expect("sign")
        ));

        assert!(matches!(
            custody.create_ca_key("a|b"),
            Err(CustodyError::Config(_))
        ));
    }

    /// A sealed device or product secret never opens as a CA key, and a CA
    /// key never opens as a secret, even with its scheme tag rewritten:
    /// the associated data differ.
    #[test]
    fn secrets_and_ca_keys_never_open_as_each_other() {
        let custody = SoftwareCustody::new(&[7u8; 32]);
        let (pk, dk) = (
            ProductKey::new("Pk1").expect("pk"),
            DeviceKey::new("gw-001").expect("dk"),
        );
        let device = SecretRef {
            product_key: &pk,
            device_key: Some(&dk),
            version: 1,
        };
        let secret = DeviceSecret::new("aaabbbcc123".into()).expect("secret");
        let label = "enos device CA";
        let stored = custody.create_ca_key(label).expect("create");
        let header_len = 2 + label.len();

        for id in [device, SecretRef::product(&pk, 1)] {
            // A secret's seal dressed as a CA key.
            let sealed = custody.seal(id, &secret).expect("seal");
            let mut bytes = stored.bytes[..header_len].to_vec();
            bytes.extend_from_slice(&sealed.bytes);
            let forged = StoredCaKey {
                bytes,
                ..stored.clone()
            };
            assert!(matches!(
                custody.ca_signer(&forged),
                Err(CustodyError::Integrity)
            ));
            // The CA key dressed as a secret.
            let as_secret = SealedSecret {
                scheme: SOFTWARE_SCHEME.into(),
                bytes: stored.bytes[header_len..].to_vec(),
            };
            assert!(matches!(
                custody.open(id, &as_secret),
                Err(CustodyError::Integrity)
            ));
        }
        // Either kind under the other's scheme tag is refused before any
        // opening.
        let wrong_scheme = StoredCaKey {
            scheme: SOFTWARE_SCHEME.into(),
            ..stored.clone()
        };
        assert!(matches!(
            custody.ca_signer(&wrong_scheme),
            Err(CustodyError::WrongScheme { .. })
        ));
        // Relabelled: the seal breaks.
        let mut relabelled = stored.clone();
        relabelled.bytes[2] ^= 0x01;
        assert!(matches!(
            custody.ca_signer(&relabelled),
            Err(CustodyError::Integrity)
        ));
        // Another master key, tampering, truncation: refused.
        assert!(matches!(
            SoftwareCustody::new(&[8u8; 32]).ca_signer(&stored),
            Err(CustodyError::Integrity)
        ));
        let mut tampered = stored.clone();
        let last = tampered.bytes.len() - 1;
        tampered.bytes[last] ^= 1;
        assert!(matches!(
            custody.ca_signer(&tampered),
            Err(CustodyError::Integrity)
        ));
        let truncated = StoredCaKey {
            bytes: stored.bytes[..header_len + 10].to_vec(),
            ..stored.clone()
        };
        assert!(matches!(
            custody.ca_signer(&truncated),
            Err(CustodyError::Integrity)
        ));
        // Another key's public key next to this sealed key: refused, so a
        // certificate never names a key that did not sign it.
        let other = custody.create_ca_key(label).expect("create");
        let swapped = StoredCaKey {
            public_key_der: other.public_key_der,
            ..stored
        };
        assert!(matches!(
            custody.ca_signer(&swapped),
            Err(CustodyError::InvalidCaKey(_))
        ));
    }

    /// The CA key in software custody signs a root, a device certificate
    /// and a CRL through `enos_ca`, each verified with x509-parser against
    /// the CA certificate.
    #[test]
    fn a_software_ca_key_signs_a_root_a_device_certificate_and_a_crl_that_verify() {
        let custody = SoftwareCustody::new(&[9u8; 32]);
        let stored = custody.create_ca_key("enos device CA").expect("create");
        let signer = custody.ca_signer(&stored).expect("open");
        let root_key = enos_ca::bench_support::sign_and_verify(signer, "device disabled");
        assert_eq!(root_key, stored.public_key_der);
    }
}
