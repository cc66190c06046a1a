//! Custody construction from the config ([`build`]) and the software
//! custody ([`SoftwareCustody`]).
//!
//! Adding a custody (an HSM over PKCS#11) means one config variant and one
//! match arm in [`build`]; nothing else in the service changes. Blocking
//! (HSM) signs run on [`sign_threads`], one thread per token session.

mod ca_key;
pub mod sign_threads;

use std::sync::Arc;

use chacha20poly1305::{
    XChaCha20Poly1305,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use enos_custody::{CaSigner, Custody, CustodyError, SealedSecret, SecretRef, StoredCaKey};
use enos_sign_core::{
    DeviceSecret, ExposeSecret, Field, HexCase, Password, ProductKey, ProductSecret, SignError,
    SignMethod, SignedFields,
};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    config::CustodyConfig,
    custody::sign_threads::SignThreads,
    error::{Result, SignerError},
    key_file,
};
use enos_registry::{DeviceId, DeviceRecord, ProductRecord};

/// A custody and how to call it: [`CustodyHandle::seal`] and
/// [`CustodyHandle::sign`] run the call on the sign threads when it may
/// block (an HSM), inline otherwise.
#[derive(Clone)]
pub struct CustodyHandle {
    /// Seals and signs.
    custody: Arc<dyn Custody>,
    /// Where calls run when they may block for long (an HSM round trip):
    /// one dedicated thread per token session, so that no other thread
    /// competes for the sessions. `None` for software custody, which takes
    /// microseconds and runs inline, sparing a thread hop per issuance.
    sign_threads: Option<Arc<SignThreads>>,
}

impl CustodyHandle {
    /// The custody's own readiness check ([`Custody::check`]), on a
    /// blocking thread: an HSM check is a token round trip.
    pub async fn check(&self) -> std::result::Result<(), String> {
        let custody = Arc::clone(&self.custody);
        match tokio::task::spawn_blocking(move || custody.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the check panicked: {e}")),
        }
    }

    /// Seals `secret` as version `version` of `id`'s. Synchronous, because
    /// it runs inside a registry transaction: on the sign threads it
    /// blocks the calling thread until a thread has sealed, as an inline
    /// HSM call would.
    pub fn seal(&self, id: &DeviceId, version: u32, secret: DeviceSecret) -> Result<SealedSecret> {
        let Some(threads) = &self.sign_threads else {
            return Ok(self.custody.seal(SecretRef::of(id, version), &secret)?);
        };
        let custody = Arc::clone(&self.custody);
        let id = id.clone();
        Ok(threads.run_blocking(move || custody.seal(SecretRef::of(&id, version), &secret))??)
    }

    /// Seals a product's secret as version `version` of `product`'s (the
    /// same seal as a device secret's, under the product's own reference,
    /// so that neither can pass for the other). Synchronous, like
    /// [`CustodyHandle::seal`].
    pub fn seal_product(
        &self,
        product: &ProductKey,
        version: u32,
        secret: ProductSecret,
    ) -> Result<SealedSecret> {
        // Custody seals secret text; a product secret is checked by the
        // same rules as a device secret, so this cannot fail on valid input.
        let secret =
            DeviceSecret::new(secret.expose_secret().to_owned()).map_err(CustodyError::from)?;
        let Some(threads) = &self.sign_threads else {
            return Ok(self
                .custody
                .seal(SecretRef::product(product, version), &secret)?);
        };
        let custody = Arc::clone(&self.custody);
        let product = product.clone();
        Ok(threads
            .run_blocking(move || custody.seal(SecretRef::product(&product, version), &secret))??)
    }

    /// Signs `fields` with `record`'s sealed secret (the SDKs' hex case
    /// for `method`); returns the fields with the password. A device that
    /// awaits activation has no secret to sign with: FailedPrecondition.
    pub async fn sign(
        &self,
        record: DeviceRecord,
        fields: SignedFields,
        method: SignMethod,
    ) -> Result<(SignedFields, Password)> {
        let Some(sealed) = record.sealed else {
            return Err(SignerError::FailedPrecondition(format!(
                "device {} awaits activation: it has no device secret yet",
                record.id
            )));
        };
        let id = record.id;
        let version = record.secret_version;
        self.sign_sealed(fields, method, move |custody, fields, method| {
            custody.sign(
                SecretRef::of(&id, version),
                &sealed,
                fields,
                method,
                method.sdk_hex_case(),
            )
        })
        .await
    }

    /// Signs `fields` with the product's sealed secret (a `securemode=3`
    /// login of a device awaiting activation).
    pub async fn sign_with_product(
        &self,
        record: ProductRecord,
        fields: SignedFields,
        method: SignMethod,
    ) -> Result<(SignedFields, Password)> {
        self.sign_sealed(fields, method, move |custody, fields, method| {
            custody.sign(
                SecretRef::product(&record.product_key, record.secret_version),
                &record.sealed,
                fields,
                method,
                method.sdk_hex_case(),
            )
        })
        .await
    }

    /// Runs `sign` on the sign threads (or inline for software custody).
    async fn sign_sealed(
        &self,
        fields: SignedFields,
        method: SignMethod,
        sign: impl FnOnce(
            &dyn Custody,
            &SignedFields,
            SignMethod,
        ) -> std::result::Result<Password, CustodyError>
        + Send
        + 'static,
    ) -> Result<(SignedFields, Password)> {
        let sign = move |custody: &dyn Custody| {
            let password = sign(custody, &fields, method)?;
            Ok((fields, password))
        };
        let Some(threads) = &self.sign_threads else {
            return sign(self.custody.as_ref());
        };
        let custody = Arc::clone(&self.custody);
        threads.run(move || sign(custody.as_ref())).await?
    }

    /// Whether `record`'s sealed secret is `secret` (an import's row
    /// against the registry). Every custody can sign, not every one can
    /// open (an HSM may refuse): the custody signs a challenge with the
    /// sealed secret, the plaintext signs the same challenge here, and
    /// the two passwords are compared in constant time. The challenge is
    /// the record's own fields at the current time with HMAC-SHA256, so
    /// two secrets give one password only by a SHA-256 collision.
    /// Synchronous, like [`CustodyHandle::seal`] (it runs inside a
    /// registry transaction). A record without a secret holds none.
    pub fn holds(&self, record: &DeviceRecord, secret: &DeviceSecret) -> Result<bool> {
        let Some(sealed) = record.sealed.clone() else {
            return Ok(false);
        };
        let id = record.id.clone();
        let version = record.secret_version;
        let fields = SignedFields {
            client_id: enos_sign_core::ClientId::from(&id.product_key),
            device_key: id.device_key.clone(),
            product_key: id.product_key.clone(),
            timestamp: enos_sign_core::TimestampMs::from_millis(enos_domain::now_ms()),
        };
        let (method, case) = (SignMethod::HmacSha256, HexCase::Lower);
        let expected = enos_sign_core::sign_with_case(&fields, method, secret, case);
        let custody = Arc::clone(&self.custody);
        let sign =
            move || custody.sign(SecretRef::of(&id, version), &sealed, &fields, method, case);
        let held = match &self.sign_threads {
            None => sign()?,
            Some(threads) => threads.run_blocking(sign)??,
        };
        Ok(held.matches_ignore_case(expected.expose_secret()))
    }

    /// Runs `call` where this custody's calls belong: on the sign threads
    /// for an HSM (a token round trip blocks), inline for software. The
    /// CA signs certificates and CRLs through here.
    pub async fn run<T, F>(&self, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Custody) -> T + Send + 'static,
    {
        let Some(threads) = &self.sign_threads else {
            return Ok(call(self.custody.as_ref()));
        };
        let custody = Arc::clone(&self.custody);
        threads.run(move || call(custody.as_ref())).await
    }

    /// Makes a new CA key named `label` in this custody
    /// ([`Custody::create_ca_key`]). Synchronous and rare (`ca init`): on
    /// the sign threads for an HSM, like [`CustodyHandle::seal`].
    pub fn create_ca_key(&self, label: &str) -> Result<StoredCaKey> {
        let Some(threads) = &self.sign_threads else {
            return Ok(self.custody.create_ca_key(label)?);
        };
        let custody = Arc::clone(&self.custody);
        let label = label.to_owned();
        Ok(threads.run_blocking(move || custody.create_ca_key(&label))??)
    }

    /// A signer for the stored CA key ([`Custody::ca_signer`]): opened
    /// (software) or found and checked (HSM) once. Its
    /// [`CaSigner::sign`] blocks on an HSM: run it where
    /// [`CustodyHandle::sign_threads`] says.
    pub fn ca_signer(&self, key: &StoredCaKey) -> Result<Arc<dyn CaSigner>> {
        let Some(threads) = &self.sign_threads else {
            return Ok(self.custody.ca_signer(key)?);
        };
        let custody = Arc::clone(&self.custody);
        let key = key.clone();
        Ok(threads.run_blocking(move || custody.ca_signer(&key))??)
    }

    /// The threads blocking custody calls run on (an HSM's), `None` when
    /// calls are cheap enough to run inline (software): where CA signs
    /// belong too.
    pub fn sign_threads(&self) -> Option<&Arc<SignThreads>> {
        self.sign_threads.as_ref()
    }

    /// The custody itself, for the migration, which drives its own calls
    /// (one record at a time, off the request path).
    pub fn into_custody(self) -> Arc<dyn Custody> {
        self.custody
    }
}

/// Builds the custody the config names.
pub fn build(config: &CustodyConfig) -> Result<CustodyHandle> {
    match config {
        CustodyConfig::Software { master_key_file } => {
            let key = key_file::load(master_key_file)?;
            Ok(CustodyHandle {
                custody: Arc::new(SoftwareCustody::new(&key)),
                sign_threads: None,
            })
        }
        CustodyConfig::Pkcs11(hsm) => {
            let custody =
                enos_custody_pkcs11::Pkcs11Custody::connect(hsm).map_err(CustodyError::from)?;
            // A token call takes tens of microseconds to milliseconds:
            // keep it off the async workers, one thread per session so
            // that a thread never waits for a session.
            let sign_threads = SignThreads::spawn(custody.sessions())?;
            Ok(CustodyHandle {
                custody: Arc::new(custody),
                sign_threads: Some(Arc::new(sign_threads)),
            })
        }
    }
}

/// The key files `enos-signer init` creates for this custody.
pub fn key_files(config: &CustodyConfig) -> Vec<std::path::PathBuf> {
    match config {
        CustodyConfig::Software { master_key_file } => vec![master_key_file.clone()],
        // The token's keys are made by `enos_custody_pkcs11::generate_kek`.
        CustodyConfig::Pkcs11(_) => Vec::new(),
    }
}

/// Seals secrets with XChaCha20-Poly1305 under a 256-bit master key.
///
/// The sealed form is `nonce (24 bytes) ‖ ciphertext ‖ tag`, with
/// [`SecretRef::associated_data`] as associated data: a sealed secret
/// copied to another device or version fails to open. A random 192-bit
/// nonce per seal is safe at any realistic number of seals.
///
/// Sealing (rare: put, rotate, import) uses RustCrypto's
/// `XChaCha20Poly1305`. Opening (every issuance) computes the same
/// construction from its two standard parts, the HChaCha20 subkey
/// (RustCrypto `chacha20::hchacha`) and ring's ChaCha20-Poly1305: for
/// secrets this short that measured 0.3 µs against 1.7 µs, whose backends
/// are built for long messages. A test opens RustCrypto's seals both ways.
pub struct SoftwareCustody {
    /// The AEAD keyed with the master key, for sealing.
    cipher: XChaCha20Poly1305,
    /// The master key itself, to derive the subkey of each open; wiped on
    /// drop.
    master_key: Zeroizing<[u8; 32]>,
}

pub use ca_key::SOFTWARE_CA_SCHEME;

/// The scheme tag of [`SoftwareCustody`].
pub const SOFTWARE_SCHEME: &str = "aead-xchacha20poly1305-v1";

/// XChaCha20's nonce length.
const NONCE_LEN: usize = 24;

impl SoftwareCustody {
    /// A custody under `master_key`.
    pub fn new(master_key: &[u8; 32]) -> Self {
        SoftwareCustody {
            cipher: XChaCha20Poly1305::new(master_key.into()),
            master_key: Zeroizing::new(*master_key),
        }
    }

    fn check_scheme(&self, sealed: &SealedSecret) -> Result<(), CustodyError> {
        if sealed.scheme != SOFTWARE_SCHEME {
            return Err(CustodyError::WrongScheme {
                expected: SOFTWARE_SCHEME.into(),
                found: sealed.scheme.clone(),
            });
        }
        Ok(())
    }

    /// Opens the sealed bytes; the plaintext is zeroized when dropped.
    fn decrypt(
        &self,
        id: SecretRef<'_>,
        sealed: &SealedSecret,
    ) -> Result<DeviceSecret, CustodyError> {
        self.check_scheme(sealed)?;
        if sealed.bytes.len() < NONCE_LEN {
            return Err(CustodyError::Integrity);
        }
        let (nonce, ciphertext) = sealed.bytes.split_at(NONCE_LEN);
        let aad = id.associated_data();
        let plaintext = self.open_xchacha(nonce, ciphertext, &aad)?;
        let text = String::from_utf8(plaintext).map_err(|e| {
            let position = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            SignError::InvalidSecret {
                field: Field::DeviceSecret,
                position,
                reason: "a sealed secret is not ASCII",
            }
        })?;
        // DeviceSecret takes the String over and zeroizes it on drop (also
        // when validation fails).
        Ok(DeviceSecret::new(text)?)
    }

    /// XChaCha20-Poly1305 open (draft-irtf-cfrg-xchacha §2.3): ChaCha20-
    /// Poly1305 under the subkey HChaCha20(key, nonce[..16]) with the
    /// nonce `0⁴ ‖ nonce[16..]`. The returned plaintext is the caller's to
    /// wipe; the subkey is wiped here.
    fn open_xchacha(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CustodyError> {
        let (prefix, suffix) = nonce.split_at(16);
        let mut subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(
            (&*self.master_key).into(),
            prefix.into(),
        );
        let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey).map(LessSafeKey::new);
        subkey.as_mut_slice().zeroize();
        let key = key.map_err(|_| CustodyError::Integrity)?;
        let mut inner_nonce = [0u8; 12];
        inner_nonce[4..].copy_from_slice(suffix);
        let mut buffer = ciphertext.to_vec();
        let opened = key
            .open_in_place(
                Nonce::assume_unique_for_key(inner_nonce),
                Aad::from(aad),
                &mut buffer,
            )
            .map(|plaintext| plaintext.len());
        match opened {
            Ok(len) => {
                // Drop the tag; what is left is the plaintext.
                buffer.truncate(len);
                Ok(buffer)
            }
            Err(_) => {
                // ring may have decrypted in place before the tag check
                // failed.
                buffer.zeroize();
                Err(CustodyError::Integrity)
            }
        }
    }
}

impl Custody for SoftwareCustody {
    fn scheme(&self) -> &str {
        SOFTWARE_SCHEME
    }

    fn seal(&self, id: SecretRef<'_>, secret: &DeviceSecret) -> Result<SealedSecret, CustodyError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = id.associated_data();
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CustodyError::Config("encryption failed".into()))?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Ok(SealedSecret {
            scheme: SOFTWARE_SCHEME.into(),
            bytes,
        })
    }

    fn sign(
        &self,
        id: SecretRef<'_>,
        sealed: &SealedSecret,
        fields: &SignedFields,
        method: SignMethod,
        case: HexCase,
    ) -> Result<Password, CustodyError> {
        // Open for this one sign only; `secret` is zeroized when it drops
        // at the end of this function.
        let secret = self.decrypt(id, sealed)?;
        Ok(enos_sign_core::sign_with_case(
            fields, method, &secret, case,
        ))
    }

    fn digest_sha256(
        &self,
        id: SecretRef<'_>,
        sealed: &SealedSecret,
        content: &[u8],
    ) -> Result<[u8; 32], CustodyError> {
        use sha2::{Digest, Sha256};
        let secret = self.decrypt(id, sealed)?;
        let mut hasher = Sha256::new();
        hasher.update(content);
        hasher.update(secret.expose_secret().as_bytes());
        Ok(hasher.finalize().into())
    }

    fn open(&self, id: SecretRef<'_>, sealed: &SealedSecret) -> Result<DeviceSecret, CustodyError> {
        self.decrypt(id, sealed)
    }

    fn create_ca_key(&self, label: &str) -> Result<StoredCaKey, CustodyError> {
        ca_key::create(self, label)
    }

    fn ca_signer(&self, key: &StoredCaKey) -> Result<Arc<dyn CaSigner>, CustodyError> {
        ca_key::signer(self, key)
    }
}

#[cfg(test)]
mod tests {
    use enos_sign_core::{ClientId, DeviceKey, ProductKey, TimestampMs};

    use super::*;

    fn ids() -> (ProductKey, DeviceKey, DeviceKey) {
        (
            ProductKey::new("123").expect("pk"),
            DeviceKey::new("test").expect("dk"),
            DeviceKey::new("other").expect("dk"),
        )
    }

    #[test]
    fn signs_the_known_answer_and_binds_the_record() {
        let custody = SoftwareCustody::new(&[7u8; 32]);
        let (pk, dk, other) = ids();
        let id = SecretRef {
            product_key: &pk,
            device_key: Some(&dk),
            version: 1,
        };
        let secret = DeviceSecret::new("aaabbbcc123".into()).expect("secret");
        let sealed = custody.seal(id, &secret).expect("seal");
        assert!(
            !sealed
                .bytes
                .windows(11)
                .any(|w| w == b"aaabbbcc123".as_slice())
        );
        let fields = SignedFields {
            client_id: ClientId::new("123").expect("cid"),
            device_key: dk.clone(),
            product_key: pk.clone(),
            timestamp: TimestampMs::from_millis(1524448722000),
        };
        let password = custody
            .sign(id, &sealed, &fields, SignMethod::HmacSha1, HexCase::Upper)
            .expect("sign");
        assert_eq!(
            password.expose_secret(),
            "97AA97335D6EC3D7E1F9E3119501E399CC0B4125"
        );

        // Copied to another device, or replayed as another version: refused.
        for wrong in [
            SecretRef {
                device_key: Some(&other),
                ..id
            },
            SecretRef { version: 2, ..id },
        ] {
            assert!(matches!(
                custody.sign(
                    wrong,
                    &sealed,
                    &fields,
                    SignMethod::HmacSha1,
                    HexCase::Upper
                ),
                Err(CustodyError::Integrity)
            ));
        }
        // Another master key: refused.
        let other_key = SoftwareCustody::new(&[8u8; 32]);
        assert!(matches!(
            other_key.open(id, &sealed),
            Err(CustodyError::Integrity)
        ));
        // Another scheme: refused, not misread.
        let foreign = SealedSecret {
            scheme: "pkcs11-aes-kwp-v1".into(),
            bytes: sealed.bytes.clone(),
        };
        assert!(matches!(
            custody.open(id, &foreign),
            Err(CustodyError::WrongScheme { .. })
        ));
        // Tampering: refused.
        let mut tampered = sealed.clone();
        let last = tampered.bytes.len() - 1;
        tampered.bytes[last] ^= 1;
        assert!(matches!(
            custody.open(id, &tampered),
            Err(CustodyError::Integrity)
        ));
    }

    /// The open path is XChaCha20-Poly1305 exactly: it opens what
    /// RustCrypto seals, at every secret length, and refuses a flipped bit.
    #[test]
    fn fast_open_is_xchacha20poly1305() {
        // draft-irtf-cfrg-xchacha-03, A.3.1.
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce: Vec<u8> = (0x40..0x58).collect();
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let sealed = hex(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb\
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452\
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9\
             21f9664c97637da9768812f615c68b13b52ec0875924c1c7987947deafd8780a\
             cf49",
        );
        let custody = SoftwareCustody::new(&key);
        let opened = custody
            .open_xchacha(&nonce, &sealed, &aad)
            .expect("the draft's vector opens");
        assert_eq!(opened, plaintext);

        for len in 1..=256usize {
            let secret: Vec<u8> = (0..len).map(|i| b'!' + (i * 7 % 90) as u8).collect();
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let aad = format!("enos-secret-v1|pk|dk|{len}");
            let mut sealed = custody
                .cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &secret,
                        aad: aad.as_bytes(),
                    },
                )
                .expect("seal");
            let opened = custody
                .open_xchacha(&nonce, &sealed, aad.as_bytes())
                .expect("opens");
            assert_eq!(opened, secret, "length {len}");
            let flip = len % sealed.len();
            sealed[flip] ^= 0x10;
            assert!(matches!(
                custody.open_xchacha(&nonce, &sealed, aad.as_bytes()),
                Err(CustodyError::Integrity)
            ));
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| {
                u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex")
            })
            .collect()
    }
}
