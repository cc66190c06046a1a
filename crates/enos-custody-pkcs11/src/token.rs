//! Getting to the token: loading the module (once per process), finding
//! the slot, checking mechanisms, logging in, finding the two keys; and
//! [`generate_kek`], which creates them.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use cryptoki::{
    context::{CInitializeArgs, Pkcs11},
    error::{Error as CkError, RvError},
    mechanism::{Mechanism, MechanismType},
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};
use zeroize::Zeroizing;

use crate::{
    Pkcs11Config, Pkcs11Error,
    config::{Pkcs11Settings, TokenSelector},
    error::describe,
    pin::read_pin,
};

/// Role names used in messages.
pub(crate) const KEK_ROLE: &str = "key-encryption key";
/// Role names used in messages.
pub(crate) const MAC_ROLE: &str = "record MAC key";

/// The mechanisms custody uses, what for, and the capability flag the
/// token must announce for each.
const REQUIRED: &[(MechanismType, &str, Capability)] = &[
    (
        MechanismType::AES_KEY_WRAP_PAD,
        "wrapping record keys under the KEK",
        Capability::WrapUnwrap,
    ),
    (
        MechanismType::AES_KEY_GEN,
        "creating record keys",
        Capability::Generate,
    ),
    (
        MechanismType::AES_CBC,
        "sealing secrets under record keys",
        Capability::Decrypt,
    ),
    (
        MechanismType::AES_CBC_ENCRYPT_DATA,
        "re-creating a secret as an in-token key of its exact length",
        Capability::Derive,
    ),
    (
        MechanismType::SHA256_HMAC,
        "binding records to their device (MAC)",
        Capability::SignVerify,
    ),
    (
        MechanismType::SHA1,
        "hmacsha1 passwords (C_DigestKey)",
        Capability::Digest,
    ),
    (
        MechanismType::SHA256,
        "hmacsha256 passwords (C_DigestKey)",
        Capability::Digest,
    ),
];

#[derive(Clone, Copy)]
enum Capability {
    WrapUnwrap,
    Generate,
    Decrypt,
    Derive,
    SignVerify,
    Digest,
}

/// Paths of modules held by a live custody in this process.
static CLAIMED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Exclusive use of one PKCS#11 module in this process, released on drop.
///
/// PKCS#11 allows one `C_Initialize` per process, and recovering from a
/// lost token finalises and re-initialises the module: two custodies on
/// one module would pull it from under each other.
#[derive(Debug)]
pub(crate) struct ModuleClaim {
    /// The canonical path, the registry key.
    path: PathBuf,
}

impl ModuleClaim {
    pub(crate) fn take(module: &Path) -> Result<Self, Pkcs11Error> {
        let path = module.canonicalize().map_err(|e| Pkcs11Error::Module {
            path: module.to_owned(),
            reason: e.to_string(),
        })?;
        let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
        if claimed.contains(&path) {
            return Err(Pkcs11Error::ModuleInUse { path });
        }
        claimed.push(path.clone());
        Ok(ModuleClaim { path })
    }
}

impl Drop for ModuleClaim {
    fn drop(&mut self) {
        CLAIMED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| p != &self.path);
    }
}

/// A loaded, initialised module with the token found and logged in.
pub(crate) struct Login {
    /// The module; every session holds a clone, the last drop finalises.
    pub(crate) ctx: Pkcs11,
    /// The token's slot.
    pub(crate) slot: Slot,
    /// The token's label, for messages.
    pub(crate) token: String,
    /// Kept to log in sessions opened later (login state ends when the
    /// last session closes). Wiped on drop.
    pub(crate) pin: Zeroizing<String>,
    /// The session the login was made in; the connection keeps it open as
    /// the anchor of the login state.
    pub(crate) session: Session,
}

/// Loads the module, finds the token, checks mechanisms and logs in.
pub(crate) fn login(settings: &Pkcs11Settings, read_write: bool) -> Result<Login, Pkcs11Error> {
    let ctx = load(&settings.module)?;
    let (slot, token) = find_slot(&ctx, &settings.token, &settings.module)?;
    check_mechanisms(&ctx, slot, &token)?;
    let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY");
    let pin = read_pin(&settings.pin, credentials_dir.as_deref())?;
    let session = open_session(&ctx, slot, read_write).map_err(|e| lost(&token, &e))?;
    log_in(&session, &pin, &token)?;
    Ok(Login {
        ctx,
        slot,
        token,
        pin,
        session,
    })
}

pub(crate) fn load(module: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let fail = |reason: String| Pkcs11Error::Module {
        path: module.to_owned(),
        reason,
    };
    let ctx = Pkcs11::new(module).map_err(|e| fail(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::OsThreads) {
        Ok(()) => Ok(ctx),
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Err(fail(
            "already initialised by another part of this process; one part of a process owns a module"
                .into(),
        )),
        Err(e) => Err(fail(describe(&e))),
    }
}

pub(crate) fn find_slot(
    ctx: &Pkcs11,
    selector: &TokenSelector,
    module: &Path,
) -> Result<(Slot, String), Pkcs11Error> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| Pkcs11Error::Unavailable(describe(&e)))?;
    let mut present = Vec::new();
    for slot in slots {
        // A slot whose token vanished between the two calls is skipped.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end().to_owned();
        let matches = match selector {
            TokenSelector::Label(wanted) => label == wanted.trim_end(),
            TokenSelector::Slot(id) => slot.id() == *id,
            TokenSelector::Serial(serial) => info.serial_number().trim_end() == serial.trim_end(),
        };
        if matches {
            return Ok((slot, label));
        }
        present.push(format!("{label:?} (slot {})", slot.id()));
    }
    Err(Pkcs11Error::TokenNotFound {
        selector: selector.to_string(),
        module: module.to_owned(),
        present: present.join(", "),
    })
}

fn check_mechanisms(ctx: &Pkcs11, slot: Slot, token: &str) -> Result<(), Pkcs11Error> {
    let available = ctx
        .get_mechanism_list(slot)
        .map_err(|e| Pkcs11Error::Unavailable(describe(&e)))?;
    for (mechanism, purpose, capability) in REQUIRED {
        let unsupported = || Pkcs11Error::MechanismUnsupported {
            mechanism: mechanism.to_string(),
            purpose,
            token: token.to_owned(),
        };
        if !available.contains(mechanism) {
            return Err(unsupported());
        }
        let info = ctx
            .get_mechanism_info(slot, *mechanism)
            .map_err(|_| unsupported())?;
        let capable = match capability {
            Capability::WrapUnwrap => info.wrap() && info.unwrap(),
            Capability::Generate => info.generate(),
            Capability::Decrypt => info.decrypt(),
            Capability::Derive => info.derive(),
            Capability::SignVerify => info.sign() && info.verify(),
            Capability::Digest => info.digest(),
        };
        if !capable {
            return Err(unsupported());
        }
    }
    Ok(())
}

/// Opens a session. Read-only sessions suffice for session objects;
/// only [`generate_kek`] writes token objects.
pub(crate) fn open_session(ctx: &Pkcs11, slot: Slot, read_write: bool) -> Result<Session, CkError> {
    if read_write {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
}

/// Logs the user in; an application that is already logged in (login is
/// per token, not per session) is fine.
pub(crate) fn log_in(session: &Session, pin: &str, token: &str) -> Result<(), Pkcs11Error> {
    let auth = AuthPin::new(pin.to_owned());
    match session.login(UserType::User, Some(&auth)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(Pkcs11Error::WrongPin {
            token: token.to_owned(),
        }),
        Err(
            e @ CkError::Pkcs11(
                RvError::PinLocked
                | RvError::PinExpired
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::UserPinNotInitialized,
                _,
            ),
        ) => Err(Pkcs11Error::LoginRefused {
            token: token.to_owned(),
            reason: describe(&e),
        }),
        Err(e) => Err(lost(token, &e)),
    }
}

pub(crate) fn lost(token: &str, error: &CkError) -> Pkcs11Error {
    Pkcs11Error::Unavailable(format!("token {token:?}: {}", describe(error)))
}

/// The KEK and MAC key handles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keys {
    /// Wraps and unwraps record keys.
    pub(crate) kek: ObjectHandle,
    /// Computes and checks record tags.
    pub(crate) mac_key: ObjectHandle,
}

/// Finds both keys and checks that they are what custody expects:
/// sensitive, never extractable, on the token, allowed their one use.
pub(crate) fn find_keys(
    session: &Session,
    settings: &Pkcs11Settings,
    token: &str,
) -> Result<Keys, Pkcs11Error> {
    let kek = find_key(session, &settings.kek_label, KEK_ROLE, token)?;
    check_key(
        session,
        kek,
        KEK_ROLE,
        &settings.kek_label,
        token,
        KeyType::AES,
        &[AttributeType::Wrap, AttributeType::Unwrap],
    )?;
    let mac_key = find_key(session, &settings.mac_key_label, MAC_ROLE, token)?;
    check_key(
        session,
        mac_key,
        MAC_ROLE,
        &settings.mac_key_label,
        token,
        KeyType::GENERIC_SECRET,
        &[AttributeType::Sign, AttributeType::Verify],
    )?;
    Ok(Keys { kek, mac_key })
}

fn find_key(
    session: &Session,
    label: &str,
    role: &'static str,
    token: &str,
) -> Result<ObjectHandle, Pkcs11Error> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| lost(token, &e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Pkcs11Error::KeyMissing {
            role,
            label: label.to_owned(),
            token: token.to_owned(),
        }),
        many => Err(Pkcs11Error::KeyAmbiguous {
            role,
            label: label.to_owned(),
            token: token.to_owned(),
            count: many.len(),
        }),
    }
}

fn check_key(
    session: &Session,
    key: ObjectHandle,
    role: &'static str,
    label: &str,
    token: &str,
    key_type: KeyType,
    uses: &[AttributeType],
) -> Result<(), Pkcs11Error> {
    let unfit = |reason: String| Pkcs11Error::KeyUnfit {
        role,
        label: label.to_owned(),
        token: token.to_owned(),
        reason,
    };
    let mut wanted = vec![
        AttributeType::KeyType,
        AttributeType::Sensitive,
        AttributeType::Extractable,
    ];
    wanted.extend_from_slice(uses);
    let attributes = session
        .get_attributes(key, &wanted)
        .map_err(|e| lost(token, &e))?;
    let mut seen_type = None;
    let mut flags = Vec::new();
    for attribute in &attributes {
        match attribute {
            Attribute::KeyType(t) => seen_type = Some(*t),
            Attribute::Sensitive(v) => flags.push((AttributeType::Sensitive, *v)),
            Attribute::Extractable(v) => flags.push((AttributeType::Extractable, *v)),
            Attribute::Wrap(v) => flags.push((AttributeType::Wrap, *v)),
            Attribute::Unwrap(v) => flags.push((AttributeType::Unwrap, *v)),
            Attribute::Sign(v) => flags.push((AttributeType::Sign, *v)),
            Attribute::Verify(v) => flags.push((AttributeType::Verify, *v)),
            _ => {}
        }
    }
    let flag = |t: AttributeType| flags.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
    if seen_type != Some(key_type) {
        return Err(unfit(format!("it is not a {key_type} key")));
    }
    if flag(AttributeType::Sensitive) != Some(true) {
        return Err(unfit("it is not CKA_SENSITIVE".into()));
    }
    if flag(AttributeType::Extractable) != Some(false) {
        return Err(unfit(
            "it is CKA_EXTRACTABLE: its value could leave the token".into(),
        ));
    }
    for use_ in uses {
        if flag(*use_) != Some(true) {
            return Err(unfit(format!("it lacks {use_}")));
        }
    }
    Ok(())
}

/// Creates the KEK (AES-256) and the record MAC key (HMAC-SHA256, 256
/// bits) on the configured token: token objects, private, sensitive,
/// never extractable, each allowed only its one use.
///
/// Refuses with [`Pkcs11Error::KeyExists`] when either label is taken, so
/// running it twice cannot replace the keys every record depends on.
pub fn generate_kek(config: &Pkcs11Config) -> Result<(), Pkcs11Error> {
    let settings = config.resolve()?;
    let _claim = ModuleClaim::take(&settings.module)?;
    let login = login(&settings, true)?;
    let session = &login.session;
    for label in [&settings.kek_label, &settings.mac_key_label] {
        let found = session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| lost(&login.token, &e))?;
        if !found.is_empty() {
            return Err(Pkcs11Error::KeyExists {
                label: label.clone(),
                token: login.token.clone(),
            });
        }
    }
    let common = |label: &str| {
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Derive(false),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::ValueLen(32.into()),
        ]
    };
    let mut kek = common(&settings.kek_label);
    kek.extend([
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
    ]);
    let mut mac = common(&settings.mac_key_label);
    mac.extend([
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
    ]);
    let created = |role: &'static str| {
        move |e: CkError| Pkcs11Error::Call(format!("creating the {role}: {}", describe(&e)))
    };
    let kek = session
        .generate_key(&Mechanism::AesKeyGen, &kek)
        .map_err(created(KEK_ROLE))?;
    if let Err(error) = session.generate_key(&Mechanism::GenericSecretKeyGen, &mac) {
        // Half a key pair would make the next run refuse with KeyExists:
        // take the KEK back (nothing can have been sealed under it yet).
        let _ = session.destroy_object(kek);
        return Err(created(MAC_ROLE)(error));
    }
    Ok(())
}
