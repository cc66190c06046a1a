//! The signer's CA key in the token: an EC P-256 key pair generated
//! inside it ([`create`]), the private half a token object that is
//! private, sensitive and never extractable, allowed to sign and nothing
//! else. Certificates are signed inside the token ([`Pkcs11CaSigner`]):
//! SHA-256 on the host, `C_Sign` with CKM_ECDSA in a pooled session, the
//! raw `r ‖ s` re-encoded as DER.
//!
//! The stored form ([`StoredCaKey::bytes`]) is the key pair's CKA_ID, 16
//! random bytes from the token: the key never leaves the token, the
//! registry only says which one it is.

use std::sync::Arc;

use cryptoki::{
    mechanism::Mechanism,
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::Session,
};
use enos_custody::{CaSigner, CustodyError, StoredCaKey, p256};
use ring::{
    digest::{SHA256, digest},
    signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey},
};

use crate::{custody::Shared, ops::OpError, pool::Connection};

/// The scheme tag of a CA key held in a PKCS#11 token.
pub const CA_SCHEME: &str = "pkcs11-ec-p256-v1";

/// The DER OID of prime256v1 (secp256r1), the CKA_EC_PARAMS of P-256.
pub(crate) const P256_PARAMS: [u8; 10] =
    [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The length of a CA key's CKA_ID.
const ID_LEN: usize = 16;

/// What [`Pkcs11CaSigner`] signs when it is made, to check that the key
/// found in the token signs for the public key stored with it.
const CHALLENGE: &[u8] = b"enos-ca-key-check-v1";

/// Generates a CA key pair named `label` in the token.
pub(crate) fn create(shared: &Shared, label: &str) -> Result<StoredCaKey, CustodyError> {
    p256::check_label(label)?;
    let settings = &shared.settings;
    if label == settings.kek_label || label == settings.mac_key_label {
        return Err(CustodyError::Config(format!(
            "the CA key label {label:?} is the label of a custody key"
        )));
    }
    let point = shared.run_on(|_, connection| {
        // Token objects need a read-write session; pooled ones are read-only.
        let session = connection.rw_session()?;
        generate(&session, label)
    })?;
    let (id, point) = point;
    Ok(StoredCaKey {
        scheme: CA_SCHEME.to_owned(),
        bytes: id,
        public_key_der: p256::spki_from_point(&point)?,
    })
}

/// Generates the pair; returns its CKA_ID and its public point.
fn generate(session: &Session, label: &str) -> Result<(Vec<u8>, Vec<u8>), OpError> {
    let mut id = vec![0u8; ID_LEN];
    session.generate_random_slice(&mut id)?;
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
            Attribute::Modifiable(false),
            Attribute::Derive(false),
        ]
    };
    let mut public = common(false);
    public.extend([
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ]);
    let mut private = common(true);
    private.extend([
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
    ]);
    let (public, private) =
        session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
    match ec_point(session, public) {
        Ok(point) => Ok((id, point)),
        Err(error) => {
            // A pair nobody can name is of no use: take it back.
            let _ = session.destroy_object(private);
            let _ = session.destroy_object(public);
            Err(error)
        }
    }
}

/// The uncompressed point of an EC public key object. PKCS#11 v2.40 says
/// CKA_EC_POINT is a DER OCTET STRING; some tokens give the raw point.
fn ec_point(session: &Session, public: ObjectHandle) -> Result<Vec<u8>, OpError> {
    let attributes = session.get_attributes(public, &[AttributeType::EcPoint])?;
    let value = attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::EcPoint(value) => Some(value),
            _ => None,
        })
        .unwrap_or_default();
    decode_ec_point(&value).ok_or_else(|| {
        OpError::Refused(CustodyError::InvalidCaKey(
            "the token's CA public key is not an uncompressed P-256 point".into(),
        ))
    })
}

/// The uncompressed P-256 point in a CKA_EC_POINT value: a DER OCTET
/// STRING (PKCS#11 v2.40) or, as some tokens give it, the raw point.
pub(crate) fn decode_ec_point(value: &[u8]) -> Option<Vec<u8>> {
    match value {
        [0x04, 0x41, rest @ ..] if rest.len() == p256::POINT_LEN => Some(rest.to_vec()),
        raw if raw.len() == p256::POINT_LEN && raw[0] == 0x04 => Some(raw.to_vec()),
        _ => None,
    }
}

/// A signer for `stored`: finds the key, checks that it is unexportable
/// and that it signs for the stored public key.
pub(crate) fn signer(
    shared: &Arc<Shared>,
    stored: &StoredCaKey,
) -> Result<Arc<dyn CaSigner>, CustodyError> {
    if stored.scheme != CA_SCHEME {
        return Err(CustodyError::WrongScheme {
            expected: CA_SCHEME.to_owned(),
            found: stored.scheme.clone(),
        });
    }
    let point = p256::point_from_spki(&stored.public_key_der)?.to_vec();
    let signer = Pkcs11CaSigner {
        shared: Arc::clone(shared),
        id: stored.bytes.clone(),
        public_key_der: stored.public_key_der.clone(),
    };
    shared.run_on(|session, connection| {
        let key = find(session, connection, &signer.id)?;
        check_unexportable(session, key)
    })?;
    let signature = signer.sign(CHALLENGE)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(CHALLENGE, &signature)
        .map_err(|_| {
            CustodyError::InvalidCaKey(
                "the token's CA key does not sign for the stored public key".into(),
            )
        })?;
    Ok(Arc::new(signer))
}

/// The private key `id`, from the connection's cache or the token.
fn find(session: &Session, connection: &Connection, id: &[u8]) -> Result<ObjectHandle, OpError> {
    if let Some(handle) = connection.cached_ca_key(id) {
        return Ok(handle);
    }
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Id(id.to_vec()),
    ])?;
    match found.as_slice() {
        [one] => {
            connection.cache_ca_key(id, *one);
            Ok(*one)
        }
        [] => Err(OpError::Refused(CustodyError::Config(format!(
            "token {:?} holds no CA key with this CKA_ID (was it deleted, or is this another token?)",
            connection.token
        )))),
        many => Err(OpError::Refused(CustodyError::Config(format!(
            "token {:?} holds {} CA keys with this CKA_ID",
            connection.token,
            many.len()
        )))),
    }
}

/// Refuses a CA key whose value could leave the token.
fn check_unexportable(session: &Session, key: ObjectHandle) -> Result<(), OpError> {
    let attributes = session.get_attributes(
        key,
        &[
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Sign,
        ],
    )?;
    let mut fine = [false; 4];
    for attribute in &attributes {
        match attribute {
            Attribute::Sensitive(v) => fine[0] = *v,
            Attribute::Extractable(v) => fine[1] = !*v,
            Attribute::NeverExtractable(v) => fine[2] = *v,
            Attribute::Sign(v) => fine[3] = *v,
            _ => {}
        }
    }
    if fine != [true; 4] {
        return Err(OpError::Refused(CustodyError::InvalidCaKey(
            "the token's CA key is not sensitive, never extractable and allowed to sign".into(),
        )));
    }
    Ok(())
}

/// A CA key in the token, found once; every sign is one C_Sign on a
/// pooled session, reconnecting like every custody call if the token
/// was lost. It shares the custody's connection: the module stays
/// claimed (and logged in) while a signer lives, even after the
/// `Pkcs11Custody` it came from is dropped.
struct Pkcs11CaSigner {
    /// The custody's connection and session pool.
    shared: Arc<Shared>,
    /// The key pair's CKA_ID.
    id: Vec<u8>,
    /// Returned by [`CaSigner::public_key_der`].
    public_key_der: Vec<u8>,
}

impl CaSigner for Pkcs11CaSigner {
    fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        // CKM_ECDSA signs a digest: SHA-256 here, which is public work
        // (CKM_ECDSA_SHA256 is not offered by every token).
        let hash = digest(&SHA256, message);
        let raw = self.shared.run_on(|session, connection| {
            let key = find(session, connection, &self.id)?;
            Ok(session.sign(&Mechanism::Ecdsa, key, hash.as_ref())?)
        })?;
        p256::signature_to_der(&raw)
    }
}
