//! A device's own key in a PKCS#11 token: the agent's `pkcs11:` key
//! (a TPM through tpm2-pkcs11, a secure element, SoftHSM2 in tests).
//!
//! The key pairs are EC P-256, generated in the token: the private half
//! is a token object that is private, sensitive and never extractable,
//! allowed to sign. Every pair carries the URI's `object` as its label
//! and a random CKA_ID; which of them is the device's key is decided by
//! its **certificate**: [`DeviceKeyToken::find`] looks the pair up by the
//! public key the certificate certifies. A renewal therefore needs no
//! rename inside the token (which PKCS#11 cannot do atomically with a
//! file): it makes a second pair under the same label, and promoting the
//! certificate file is the one atomic step that switches keys. Pairs no
//! certificate names any more are removed with
//! [`DeviceKeyToken::destroy_others`].

use std::{fmt, path::PathBuf, sync::Mutex};

use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    mechanism::Mechanism,
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::Session,
    slot::Slot,
};
use enos_custody::p256;
use ring::digest::{SHA256, digest};
use zeroize::Zeroizing;

use crate::{
    Pkcs11Error,
    ca::{P256_PARAMS, decode_ec_point},
    config::{PinSource, TokenSelector},
    error::describe,
    pin::read_pin,
    token::{find_slot, load, log_in, lost, open_session},
    uri::Pkcs11Uri,
};

/// A pair's CKA_ID and its uncompressed public point.
type IdAndPoint = (Vec<u8>, Vec<u8>);

/// The length of a device key's CKA_ID (random).
const ID_LEN: usize = 16;

/// A `pkcs11:` URI naming a device key: module, token, label and PIN
/// source. It holds no secret (`pin-value` is refused), so its text may
/// be shown in messages.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKeyUri {
    /// The URI as written, for messages.
    text: String,
    /// The PKCS#11 library to load.
    module: PathBuf,
    /// Which token.
    token: TokenSelector,
    /// The label every key pair of this device carries.
    label: String,
    /// Where the user PIN comes from.
    pin: PinSource,
}

impl fmt::Debug for DeviceKeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for DeviceKeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl DeviceKeyUri {
    /// Parses `pkcs11:token=…;object=…?module-path=…&pin-source=file:…`;
    /// all four are required (`type=private` is allowed).
    pub fn parse(text: &str) -> Result<Self, Pkcs11Error> {
        let uri = Pkcs11Uri::parse_for(text, "private", "a device key")?;
        let missing = |what: &str| {
            Pkcs11Error::InvalidConfig(format!("PKCS#11 URI of the device key: no {what}"))
        };
        let label = uri
            .object
            .ok_or_else(|| missing("`object=` (the key's label)"))?;
        if label.is_empty() || label.len() > 64 {
            return Err(Pkcs11Error::InvalidConfig(
                "PKCS#11 URI of the device key: `object=` must be 1 to 64 bytes".into(),
            ));
        }
        Ok(DeviceKeyUri {
            text: text.to_owned(),
            module: uri
                .module_path
                .ok_or_else(|| missing("`module-path=` (the PKCS#11 library)"))?,
            token: uri
                .token
                .ok_or_else(|| missing("`token=`, `slot-id=` or `serial=`"))?,
            label,
            pin: uri
                .pin_source
                .ok_or_else(|| missing("`pin-source=file:/path` (the user PIN)"))?,
        })
    }

    /// The label of the device's key pairs.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// One key pair of the device in the token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey {
    /// Its CKA_ID (the private and the public half share it).
    id: Vec<u8>,
    /// The private half, in the session that found it.
    private: ObjectHandle,
    /// Its SubjectPublicKeyInfo (DER), what a CSR and a certificate carry.
    public_key_der: Vec<u8>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("algorithm", &"ECDSA P-256")
            .field("id", &hex(&self.id))
            .finish()
    }
}

impl TokenKey {
    /// The SubjectPublicKeyInfo (DER).
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// The uncompressed public point (65 bytes).
    pub fn public_point(&self) -> &[u8] {
        // Built from a point, so it parses.
        p256::point_from_spki(&self.public_key_der).unwrap_or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The logged-in session a device key lives in.
struct Open {
    /// The module; the session holds it too.
    ctx: Pkcs11,
    /// The token's slot, to open a session again after one is lost.
    slot: Slot,
    /// The one session: the agent signs a handshake at a time.
    session: Session,
}

/// A device's token, opened and logged in. One per process (PKCS#11
/// allows one `C_Initialize` per module and process).
pub struct DeviceKeyToken {
    /// What was opened.
    uri: DeviceKeyUri,
    /// The token's label, for messages.
    token: String,
    /// Kept to log in again after a lost session; wiped on drop.
    pin: Zeroizing<String>,
    /// The session; calls are short and rare (a TLS handshake, a CSR).
    open: Mutex<Open>,
}

impl fmt::Debug for DeviceKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeyToken")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Whether a PKCS#11 failure means the session is gone (worth one new
/// session and login).
fn session_lost(error: &CkError) -> bool {
    matches!(
        error,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

impl DeviceKeyToken {
    /// Loads the module, finds the token and logs in (read-write: keys
    /// are made and removed as token objects).
    pub fn open(uri: &DeviceKeyUri) -> Result<Self, Pkcs11Error> {
        let ctx = load(&uri.module)?;
        let (slot, token) = find_slot(&ctx, &uri.token, &uri.module)?;
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY");
        let pin = read_pin(&uri.pin, credentials_dir.as_deref())?;
        let session = open_session(&ctx, slot, true).map_err(|e| lost(&token, &e))?;
        log_in(&session, &pin, &token)?;
        Ok(DeviceKeyToken {
            uri: uri.clone(),
            token,
            pin,
            open: Mutex::new(Open { ctx, slot, session }),
        })
    }

    /// The URI it was opened with.
    pub fn uri(&self) -> &DeviceKeyUri {
        &self.uri
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token
    }

    /// Runs `call` in the session; a lost session is opened and logged in
    /// again once.
    fn with_session<T>(
        &self,
        call: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, Pkcs11Error> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match call(&open.session) {
            Err(error) if session_lost(&error) => {
                let session =
                    open_session(&open.ctx, open.slot, true).map_err(|e| lost(&self.token, &e))?;
                log_in(&session, &self.pin, &self.token)?;
                open.session = session;
                call(&open.session).map_err(|e| self.failed(&e))
            }
            other => other.map_err(|e| self.failed(&e)),
        }
    }

    fn failed(&self, error: &CkError) -> Pkcs11Error {
        if session_lost(error) {
            lost(&self.token, error)
        } else {
            Pkcs11Error::Call(format!("token {:?}: {}", self.token, describe(error)))
        }
    }

    /// Generates a new P-256 pair labelled with the URI's `object`.
    pub fn generate(&self) -> Result<TokenKey, Pkcs11Error> {
        let label = self.uri.label.as_bytes().to_vec();
        let (id, private, point) = self.with_session(|session| {
            let mut id = vec![0u8; ID_LEN];
            session.generate_random_slice(&mut id)?;
            let common = |private: bool| {
                vec![
                    Attribute::Token(true),
                    Attribute::Private(private),
                    Attribute::Label(label.clone()),
                    Attribute::Id(id.clone()),
                ]
            };
            let mut public = common(false);
            public.extend([
                Attribute::EcParams(P256_PARAMS.to_vec()),
                Attribute::Verify(true),
            ]);
            let mut private = common(true);
            private.extend([
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
            ]);
            let (public, private) =
                session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
            let value = ec_point_value(session, public)?;
            Ok((id, private, value))
        })?;
        let point = decode_ec_point(&point).ok_or_else(|| {
            Pkcs11Error::Call(format!(
                "token {:?}: the new key's public half is not an uncompressed P-256 point",
                self.token
            ))
        })?;
        let public_key_der = p256::spki_from_point(&point)
            .map_err(|e| Pkcs11Error::Call(format!("token {:?}: {e}", self.token)))?;
        Ok(TokenKey {
            id,
            private,
            public_key_der,
        })
    }

    /// Every pair under the label: `(id, public point)`.
    fn pairs(&self) -> Result<Vec<IdAndPoint>, Pkcs11Error> {
        let label = self.uri.label.as_bytes().to_vec();
        self.with_session(|session| {
            let publics = session.find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(label.clone()),
            ])?;
            let mut pairs = Vec::with_capacity(publics.len());
            for public in publics {
                let attributes =
                    session.get_attributes(public, &[AttributeType::Id, AttributeType::EcPoint])?;
                let mut id = None;
                let mut point = None;
                for attribute in attributes {
                    match attribute {
                        Attribute::Id(value) => id = Some(value),
                        Attribute::EcPoint(value) => point = decode_ec_point(&value),
                        _ => {}
                    }
                }
                if let (Some(id), Some(point)) = (id, point) {
                    pairs.push((id, point));
                }
            }
            Ok(pairs)
        })
    }

    /// How many pairs carry the label (after a renewal and its pruning,
    /// one: the certificate's).
    pub fn pair_count(&self) -> Result<usize, Pkcs11Error> {
        Ok(self.pairs()?.len())
    }

    /// The private key with CKA_ID `id` under the label.
    fn private_key(&self, id: &[u8]) -> Result<Option<ObjectHandle>, Pkcs11Error> {
        let label = self.uri.label.as_bytes().to_vec();
        let found = self.with_session(|session| {
            session.find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(label.clone()),
                Attribute::Id(id.to_vec()),
            ])
        })?;
        Ok(found.first().copied())
    }

    /// The pair whose public key is `public_key_der` (a SubjectPublicKeyInfo,
    /// e.g. the one the device certificate certifies).
    pub fn find(&self, public_key_der: &[u8]) -> Result<TokenKey, Pkcs11Error> {
        let wanted = p256::point_from_spki(public_key_der).map_err(|_| {
            Pkcs11Error::InvalidConfig(
                "a certificate for a `pkcs11:` device key must certify an EC P-256 key".into(),
            )
        })?;
        for (id, point) in self.pairs()? {
            if point.as_slice() != wanted {
                continue;
            }
            if let Some(private) = self.private_key(&id)? {
                return Ok(TokenKey {
                    id,
                    private,
                    public_key_der: public_key_der.to_vec(),
                });
            }
        }
        Err(Pkcs11Error::DeviceKeyMissing {
            token: self.token.clone(),
            label: self.uri.label.clone(),
        })
    }

    /// Signs `message` with `key`: SHA-256 on the host, `C_Sign` with
    /// CKM_ECDSA in the token; the signature as DER (`Ecdsa-Sig-Value`).
    pub fn sign(&self, key: &TokenKey, message: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let hash = digest(&SHA256, message);
        let sign = |handle: ObjectHandle| {
            self.with_session(|session| session.sign(&Mechanism::Ecdsa, handle, hash.as_ref()))
        };
        let raw = match sign(key.private) {
            Ok(raw) => raw,
            // A handle from a lost session: find the key again by its id.
            Err(_) => match self.private_key(&key.id)? {
                Some(handle) => sign(handle)?,
                None => {
                    return Err(self.find(&key.public_key_der).err().unwrap_or_else(|| {
                        Pkcs11Error::Call(format!(
                            "token {:?}: the device key vanished",
                            self.token
                        ))
                    }));
                }
            },
        };
        p256::signature_to_der(&raw)
            .map_err(|e| Pkcs11Error::Call(format!("token {:?}: {e}", self.token)))
    }

    /// Removes every pair under the label whose public key is none of
    /// `keep` (SubjectPublicKeyInfos); returns how many were removed.
    pub fn destroy_others(&self, keep: &[&[u8]]) -> Result<usize, Pkcs11Error> {
        let keep: Vec<&[u8]> = keep
            .iter()
            .filter_map(|spki| p256::point_from_spki(spki).ok())
            .collect();
        let label = self.uri.label.as_bytes().to_vec();
        let mut removed = 0;
        for (id, point) in self.pairs()? {
            if keep.contains(&point.as_slice()) {
                continue;
            }
            removed += self.with_session(|session| {
                let objects = session
                    .find_objects(&[Attribute::Label(label.clone()), Attribute::Id(id.clone())])?;
                for object in &objects {
                    session.destroy_object(*object)?;
                }
                Ok(usize::from(!objects.is_empty()))
            })?;
        }
        Ok(removed)
    }
}

/// CKA_EC_POINT of a public key object, as the token gives it.
fn ec_point_value(session: &Session, public: ObjectHandle) -> Result<Vec<u8>, CkError> {
    let attributes = session.get_attributes(public, &[AttributeType::EcPoint])?;
    Ok(attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::EcPoint(value) => Some(value),
            _ => None,
        })
        .unwrap_or_default())
}
