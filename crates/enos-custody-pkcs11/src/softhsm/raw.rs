//! The token work of one HSM custody sign, written against cryptoki
//! directly: the yardstick the benchmarks hold custody and issuance to.
//!
//! It follows the record layout of the `record` module by hand (not
//! through this crate's code, but for the record key's attribute template,
//! `ops`'s own, so that both unwrap the same key) and does what a sign does
//! on the token: check the record's MAC, unwrap the record key, derive the
//! secret at its length, digest `content ‖ secret`, destroy both session
//! keys. No pool, no error sorting, no reconnection: what custody adds on
//! top is what the benchmarks measure.
//!
//! Shared by `enos-custody-pkcs11`'s `hsm` benchmark and
//! `enos-signer-svc`'s `hsm_issuance` benchmark. Panics on any error
//! (benchmark support).
//!
//! [`RawCaSession`] is the yardstick of the CA key in the token (#25): a
//! raw `C_Sign` with CKM_ECDSA on the custody's CA key, and the key's
//! attributes as the token reports them.

use std::time::{Duration, Instant};

use cryptoki::{
    context::{CInitializeArgs, Pkcs11},
    error::{Error as CkError, RvError},
    mechanism::{Mechanism, ekdf::AesCbcDeriveParams},
    object::{Attribute, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};

use super::{SoftHsm, USER_PIN};
use crate::{DEFAULT_KEK_LABEL, ops::record_key_template};

/// The fixture's module, initialised, with its token found.
///
/// PKCS#11 allows one `C_Initialize` per process: no custody may be
/// connected to the same module while this lives. Dropping it (and every
/// [`RawSession`] from it) finalises the module.
pub struct RawToken {
    /// The module; each session holds a clone too.
    ctx: Pkcs11,
    /// The fixture token's slot.
    slot: Slot,
}

impl std::fmt::Debug for RawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawToken")
            .field("slot", &self.slot)
            .finish()
    }
}

impl RawToken {
    /// Loads and initialises the module and finds `hsm`'s token.
    pub fn open(hsm: &SoftHsm) -> Self {
        let ctx = Pkcs11::new(hsm.module()).expect("load the module");
        ctx.initialize(CInitializeArgs::OsThreads)
            .expect("initialise the module (is a custody still connected?)");
        let slot = ctx
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|slot| {
                ctx.get_token_info(*slot)
                    .is_ok_and(|info| info.label() == hsm.label())
            })
            .expect("the fixture token");
        RawToken { ctx, slot }
    }

    /// A logged-in session ready to sign `record` (a sealed record of this
    /// crate's scheme, bound to the associated data `ad`) over `content`.
    /// One per thread: a cryptoki `Session` is not `Sync`.
    pub fn session(&self, record: &[u8], ad: &[u8], content: &[u8]) -> RawSession {
        let session = self.ctx.open_ro_session(self.slot).expect("session");
        // Login state is per application: the second session finds it.
        match session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("login: {e}"),
        }
        let kek = find(&session, DEFAULT_KEK_LABEL);
        let mac_key = find(&session, &format!("{DEFAULT_KEK_LABEL}-mac"));

        // Layout (see the `record` module): format (1) ‖ secret length
        // (2, BE) ‖ IV (16) ‖ wrapped record key (40) ‖ sealed secret
        // (16·⌈n/16⌉) ‖ tag (32).
        let secret_len = usize::from(u16::from_be_bytes([record[1], record[2]]));
        let iv: [u8; 16] = record[3..19].try_into().expect("iv");
        let wrapped = record[19..59].to_vec();
        let data = record[59..59 + secret_len.div_ceil(16) * 16].to_vec();
        let (body, tag) = record.split_at(record.len() - 32);
        let mut mac_input = b"enos-custody/pkcs11-kwp-envelope-v1\0".to_vec();
        mac_input.extend_from_slice(&u32::try_from(ad.len()).expect("short").to_be_bytes());
        mac_input.extend_from_slice(ad);
        mac_input.extend_from_slice(body);
        RawSession {
            session,
            kek,
            mac_key,
            secret_len,
            iv,
            wrapped,
            data,
            mac_input,
            tag: tag.to_vec(),
            content: content.to_vec(),
        }
    }
}

impl RawToken {
    /// A logged-in session on the CA key pair whose CKA_ID is `id` (a
    /// [`StoredCaKey::bytes`](enos_custody::StoredCaKey::bytes) of this
    /// crate's custody).
    pub fn ca_session(&self, id: &[u8]) -> RawCaSession {
        let session = self.ctx.open_ro_session(self.slot).expect("session");
        match session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("login: {e}"),
        }
        let key = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.to_vec()),
            ])
            .expect("find")
            .into_iter()
            .next()
            .expect("the CA key");
        RawCaSession { session, key }
    }
}

impl RawToken {
    /// The raw C_Sign loop of #25: `threads` threads, each with its own
    /// session on the CA key `id`, signing a fixed SHA-256 digest with
    /// CKM_ECDSA for `duration`; signs per second, summed. No custody may
    /// be connected to the module meanwhile (see [`RawToken`]).
    pub fn c_sign_rate(&self, id: &[u8], threads: usize, duration: Duration) -> f64 {
        let sessions: Vec<RawCaSession> =
            (0..threads.max(1)).map(|_| self.ca_session(id)).collect();
        std::thread::scope(|scope| {
            // A session is `Send`, not `Sync`: each moves to its thread.
            let workers: Vec<_> = sessions
                .into_iter()
                .map(|session| {
                    scope.spawn(move || {
                        rate(duration, || {
                            std::hint::black_box(session.sign_digest(&[0x5a; 32]));
                        })
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a C_Sign worker"))
                .sum()
        })
    }
}

/// Calls `f` for `duration` after a short warm-up; calls per second.
pub fn rate(duration: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        for _ in 0..16 {
            f();
        }
        count += 16;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// The token's attributes of a CA private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaKeyAttributes {
    /// CKA_TOKEN: kept on the token.
    pub token: bool,
    /// CKA_PRIVATE: only after login.
    pub private: bool,
    /// CKA_SENSITIVE: its value is never revealed.
    pub sensitive: bool,
    /// CKA_EXTRACTABLE: could be wrapped out.
    pub extractable: bool,
    /// CKA_NEVER_EXTRACTABLE: never was extractable.
    pub never_extractable: bool,
    /// CKA_ALWAYS_SENSITIVE: always was sensitive.
    pub always_sensitive: bool,
    /// CKA_SIGN: may sign.
    pub sign: bool,
    /// CKA_DERIVE: may derive (it should not).
    pub derive: bool,
}

/// One session on the CA key, signing again and again.
pub struct RawCaSession {
    /// The logged-in session.
    session: Session,
    /// The CA private key.
    key: ObjectHandle,
}

impl std::fmt::Debug for RawCaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCaSession").finish_non_exhaustive()
    }
}

impl RawCaSession {
    /// One raw `C_Sign` with CKM_ECDSA of a 32-byte digest: `r ‖ s`.
    pub fn sign_digest(&self, digest: &[u8]) -> Vec<u8> {
        self.session
            .sign(&Mechanism::Ecdsa, self.key, digest)
            .expect("C_Sign")
    }

    /// The key's attributes.
    pub fn attributes(&self) -> CaKeyAttributes {
        use cryptoki::object::AttributeType as T;
        let mut seen = CaKeyAttributes::default();
        let read = self
            .session
            .get_attributes(
                self.key,
                &[
                    T::Token,
                    T::Private,
                    T::Sensitive,
                    T::Extractable,
                    T::NeverExtractable,
                    T::AlwaysSensitive,
                    T::Sign,
                    T::Derive,
                ],
            )
            .expect("attributes");
        for attribute in read {
            match attribute {
                Attribute::Token(v) => seen.token = v,
                Attribute::Private(v) => seen.private = v,
                Attribute::Sensitive(v) => seen.sensitive = v,
                Attribute::Extractable(v) => seen.extractable = v,
                Attribute::NeverExtractable(v) => seen.never_extractable = v,
                Attribute::AlwaysSensitive(v) => seen.always_sensitive = v,
                Attribute::Sign(v) => seen.sign = v,
                Attribute::Derive(v) => seen.derive = v,
                _ => {}
            }
        }
        seen
    }

    /// Whether the token refuses to reveal the key's value (CKA_VALUE
    /// reported as sensitive), as it must for this key.
    pub fn value_withheld(&self) -> bool {
        use cryptoki::object::{AttributeInfo, AttributeType};
        self.session
            .get_attribute_info_map(self.key, &[AttributeType::Value])
            .expect("attribute info")
            .get(&AttributeType::Value)
            .is_some_and(|info| matches!(info, AttributeInfo::Sensitive))
    }
}

/// One session and one record, signed again and again.
pub struct RawSession {
    /// The logged-in session every call uses.
    session: Session,
    /// The KEK the record key is wrapped under.
    kek: ObjectHandle,
    /// The key the record's tag is checked with.
    mac_key: ObjectHandle,
    /// The secret's length, the derived key's `CKA_VALUE_LEN`.
    secret_len: usize,
    /// The CBC IV of the derivation.
    iv: [u8; 16],
    /// The record key, wrapped with CKM_AES_KEY_WRAP_PAD.
    wrapped: Vec<u8>,
    /// The secret sealed under the record key.
    data: Vec<u8>,
    /// What the tag covers (domain, associated data, record body).
    mac_input: Vec<u8>,
    /// The record's HMAC-SHA256 tag.
    tag: Vec<u8>,
    /// The EnOS content the password digests.
    content: Vec<u8>,
}

impl std::fmt::Debug for RawSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSession").finish_non_exhaustive()
    }
}

impl RawSession {
    /// One sign's token work, SHA-1; returns the raw digest. With
    /// `check_mac` false the record's tag is not checked (to show what
    /// that check costs).
    pub fn sign(&self, check_mac: bool) -> Vec<u8> {
        let session = &self.session;
        if check_mac {
            session
                .verify(
                    &Mechanism::Sha256Hmac,
                    self.mac_key,
                    &self.mac_input,
                    &self.tag,
                )
                .expect("tag");
        }
        let record_key = session
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                self.kek,
                &self.wrapped,
                &record_key_template(),
            )
            .expect("unwrap");
        let key = session
            .derive_key(
                &Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new(self.iv, &self.data)),
                record_key,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen((self.secret_len as u64).into()),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Derive(false),
                ],
            )
            .expect("derive");
        session.destroy_object(record_key).expect("destroy");
        session.digest_init(&Mechanism::Sha1).expect("init");
        session.digest_update(&self.content).expect("update");
        session.digest_key(key).expect("digest key");
        let digest = session.digest_final().expect("final");
        session.destroy_object(key).expect("destroy");
        digest
    }
}

fn find(session: &Session, label: &str) -> ObjectHandle {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .expect("find")
        .into_iter()
        .next()
        .expect("the key")
}
