//! The operations inside one session: seal a secret, sign with a sealed
//! secret, export one for migration. See `record` for the format.

use cryptoki::{
    error::Error as CkError,
    mechanism::{Mechanism, ekdf::AesCbcDeriveParams},
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::Session,
};
use zeroize::Zeroizing;

use crate::{
    record::{IV_LEN, Malformed, Record, encode_body, mac_input, padded_len},
    token::Keys,
};

/// Why an in-session operation failed.
#[derive(Debug)]
pub(crate) enum OpError {
    /// A PKCS#11 call failed; the caller sorts it with `error::classify`.
    Ck(CkError),
    /// The record does not parse: tampered with or not ours.
    Malformed,
    /// Refused for a reason of its own, final (a CA key that is missing
    /// or unfit).
    Refused(enos_custody::CustodyError),
}

impl From<CkError> for OpError {
    fn from(error: CkError) -> Self {
        OpError::Ck(error)
    }
}

impl From<Malformed> for OpError {
    fn from(_: Malformed) -> Self {
        OpError::Malformed
    }
}

/// A session object destroyed when dropped, so that no early return
/// leaves a key behind in a pooled session. [`SessionKey::destroy`]
/// reports the failure the drop would swallow.
struct SessionKey<'s> {
    /// The session owning the object.
    session: &'s Session,
    /// The object; `None` once destroyed.
    handle: Option<ObjectHandle>,
}

impl<'s> SessionKey<'s> {
    fn new(session: &'s Session, handle: ObjectHandle) -> Self {
        SessionKey {
            session,
            handle: Some(handle),
        }
    }

    fn handle(&self) -> ObjectHandle {
        // Only `destroy`, which consumes self, takes the handle.
        self.handle.unwrap_or_else(|| unreachable!("handle taken"))
    }

    fn destroy(mut self) -> Result<(), CkError> {
        match self.handle.take() {
            Some(handle) => self.session.destroy_object(handle),
            None => Ok(()),
        }
    }
}

impl Drop for SessionKey<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Best effort on an error path: the object dies with its
            // session at the latest, and the caller discards the session.
            let _ = self.session.destroy_object(handle);
        }
    }
}

/// Seals `secret` for the reference whose associated data is `ad`.
pub(crate) fn seal(
    session: &Session,
    keys: Keys,
    ad: &[u8],
    secret: &[u8],
) -> Result<Vec<u8>, OpError> {
    let record_key = SessionKey::new(
        session,
        session.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                // Extractable only so that the KEK can wrap it.
                Attribute::Extractable(true),
                Attribute::Decrypt(true),
                Attribute::Encrypt(false),
                Attribute::Derive(false),
            ],
        )?,
    );
    let mut iv = [0u8; IV_LEN];
    session.generate_random_slice(&mut iv)?;
    let mut padded = Zeroizing::new(vec![0u8; padded_len(secret.len())]);
    padded[..secret.len()].copy_from_slice(secret);
    // "Decrypting" the secret gives the data that CBC-encrypt-data
    // derivation turns back into it (see `record`).
    let data = session.decrypt(&Mechanism::AesCbc(iv), record_key.handle(), &padded)?;
    let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, keys.kek, record_key.handle())?;
    record_key.destroy()?;
    let mut bytes = encode_body(secret.len(), &iv, &wrapped, &data)?;
    let tag = session.sign(&Mechanism::Sha256Hmac, keys.mac_key, &mac_input(ad, &bytes))?;
    bytes.extend_from_slice(&tag);
    Ok(bytes)
}

/// How a record's key is unwrapped for one sign: an AES session object
/// (never on the token), sensitive and not extractable, good for deriving
/// the secret and for nothing else.
pub(crate) fn record_key_template() -> [Attribute; 9] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(true),
        Attribute::Decrypt(false),
        Attribute::Encrypt(false),
    ]
}

/// Checks the record's tag and re-creates the secret inside the token as
/// a session key of exactly its length. `exportable` makes it readable,
/// for migration only.
fn materialise<'s>(
    session: &'s Session,
    keys: Keys,
    ad: &[u8],
    bytes: &[u8],
    exportable: bool,
) -> Result<SessionKey<'s>, OpError> {
    let record = Record::parse(bytes)?;
    // Before anything is unwrapped: a record from another device fails here.
    session.verify(
        &Mechanism::Sha256Hmac,
        keys.mac_key,
        &mac_input(ad, record.body),
        record.tag,
    )?;
    let record_key = SessionKey::new(
        session,
        session.unwrap_key(
            &Mechanism::AesKeyWrapPad,
            keys.kek,
            record.wrapped_key,
            &record_key_template(),
        )?,
    );
    let secret_len = u64::try_from(record.secret_len).map_err(|_| OpError::Malformed)?;
    let secret = SessionKey::new(
        session,
        session.derive_key(
            &Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new(record.iv, record.data)),
            record_key.handle(),
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(secret_len.into()),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(!exportable),
                Attribute::Extractable(exportable),
                Attribute::Derive(false),
            ],
        )?,
    );
    record_key.destroy()?;
    Ok(secret)
}

/// `DIGEST(content ‖ secret)` computed in the token; the digest bytes are
/// returned in a wiping buffer.
pub(crate) fn sign(
    session: &Session,
    keys: Keys,
    ad: &[u8],
    bytes: &[u8],
    content: &[u8],
    digest: &Mechanism<'_>,
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    let secret = materialise(session, keys, ad, bytes, false)?;
    session.digest_init(digest)?;
    session.digest_update(content)?;
    session.digest_key(secret.handle())?;
    let out = Zeroizing::new(session.digest_final()?);
    secret.destroy()?;
    Ok(out)
}

/// Reads the secret out of the token (migration only): the derived key
/// is made extractable, read once and destroyed.
pub(crate) fn export(
    session: &Session,
    keys: Keys,
    ad: &[u8],
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    let secret = materialise(session, keys, ad, bytes, true)?;
    let mut attributes = session.get_attributes(secret.handle(), &[AttributeType::Value])?;
    secret.destroy()?;
    let mut value = Zeroizing::new(Vec::new());
    // Moved, not copied, into the wiping buffer.
    for attribute in &mut attributes {
        if let Attribute::Value(bytes) = attribute {
            std::mem::swap(&mut *value, bytes);
        }
    }
    if value.is_empty() {
        return Err(OpError::Malformed);
    }
    Ok(value)
}
