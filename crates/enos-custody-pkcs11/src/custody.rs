//! [`Pkcs11Custody`]: the [`Custody`] implementation, with reconnection.
//!
//! Every operation holds a read lock on the connection for as long as it
//! uses a session. When a call fails in a way that means the token,
//! session or login is gone, the operation drops its session and asks for
//! a reconnect: under the write lock (so no session is in use) the old
//! connection is dropped — sessions closed, module finalised — and a new
//! one is made from the configuration: module initialised, token found,
//! PIN read again, keys found. The failed operation is then retried once.
//! While the token stays away, reconnects are tried at most once per
//! `retry_interval`; calls in between fail fast with the last reason.

use std::{
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use cryptoki::{mechanism::Mechanism, session::Session};
use enos_custody::{CaSigner, Custody, CustodyError, SealedSecret, SecretRef, StoredCaKey};
use enos_sign_core::{DeviceSecret, ExposeSecret, HexCase, Password, SignMethod, SignedFields};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    Pkcs11Config, Pkcs11Error,
    config::Pkcs11Settings,
    error::{Failure, classify, describe},
    ops::{self, OpError},
    pool::Connection,
    record::SCHEME,
    token::{Keys, ModuleClaim},
};

/// Whether [`Custody::open`] may read a secret out of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportPolicy {
    /// `open` is refused ([`CustodyError::Unsupported`]). What the signing
    /// service uses: no code path of the running service can take a
    /// plaintext secret out of the token.
    #[default]
    Refuse,
    /// `open` unwraps an extractable copy inside the token, reads it and
    /// destroys it. Only for `enos-signer custody migrate` moving secrets
    /// from HSM custody back to software custody.
    AllowForMigration,
}

/// Counters for health reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyStatus {
    /// Whether a connection to the token is up now.
    pub connected: bool,
    /// Successful reconnects since start.
    pub reconnects: u64,
    /// Why the last reconnect attempt failed, if the token is away.
    pub last_error: Option<String>,
}

/// Device secrets wrapped under a key that never leaves a PKCS#11 token.
///
/// See the crate documentation for the record format and the reasons.
pub struct Pkcs11Custody {
    /// Everything, shared with the CA signers made from this custody
    /// ([`Custody::ca_signer`]), which use the same connection, session
    /// pool and reconnection.
    pub(crate) shared: Arc<Shared>,
}

/// The connection and what it needs to recover, behind [`Pkcs11Custody`].
pub(crate) struct Shared {
    /// The connection, or `None` while the token is away.
    state: RwLock<State>,
    /// The resolved configuration, kept to reconnect.
    pub(crate) settings: Pkcs11Settings,
    /// Whether `open` may export.
    export: ExportPolicy,
    /// Successful reconnects, for [`Pkcs11Custody::status`].
    reconnects: AtomicU64,
    /// This custody's exclusive hold on the module; declared after
    /// `state` so that the module is finalised before it is released.
    _claim: ModuleClaim,
}

struct State {
    /// Up, or `None` after a loss until a reconnect succeeds.
    connection: Option<Connection>,
    /// Bumped by every successful (re)connect: an operation that failed
    /// on generation `g` only reconnects if nobody has since `g`.
    generation: u64,
    /// When the last reconnect was tried, and why it failed.
    last_failure: Option<(Instant, CustodyError)>,
    /// The token rejected the PIN: no more automatic attempts, as
    /// repeated wrong PINs lock real tokens.
    pin_rejected: bool,
}

impl std::fmt::Debug for Pkcs11Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Custody")
            .field("module", &self.shared.settings.module)
            .field("token", &self.shared.settings.token)
            .field("kek_label", &self.shared.settings.kek_label)
            .field("export", &self.shared.export)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Custody {
    /// Connects for signing: [`ExportPolicy::Refuse`].
    pub fn connect(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        Self::connect_with(config, ExportPolicy::Refuse)
    }

    /// Connects with an explicit export policy (the migration command
    /// passes [`ExportPolicy::AllowForMigration`]).
    ///
    /// Fails unless the module loads, the token is present, the PIN is
    /// accepted, the mechanisms are supported and both keys exist.
    pub fn connect_with(config: &Pkcs11Config, export: ExportPolicy) -> Result<Self, Pkcs11Error> {
        let settings = config.resolve()?;
        let claim = ModuleClaim::take(&settings.module)?;
        let connection = Connection::open(&settings)?;
        Ok(Pkcs11Custody {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    connection: Some(connection),
                    generation: 1,
                    last_failure: None,
                    pin_rejected: false,
                }),
                settings,
                export,
                reconnects: AtomicU64::new(0),
                _claim: claim,
            }),
        })
    }

    /// The size of the session pool: how many signs can run in the token
    /// at once, so how many threads should call [`Custody::sign`].
    pub fn sessions(&self) -> usize {
        self.shared.settings.sessions
    }

    /// Whether the token is reachable now, and why not.
    pub fn status(&self) -> CustodyStatus {
        let state = self
            .shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        CustodyStatus {
            connected: state.connection.is_some(),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            last_error: state.last_failure.as_ref().map(|(_, e)| e.to_string()),
        }
    }

    /// Runs `op` with a pooled session (see [`Shared::run_on`]).
    fn run<T>(&self, op: impl Fn(&Session, Keys) -> Result<T, OpError>) -> Result<T, CustodyError> {
        self.shared
            .run_on(|session, connection| op(session, connection.keys))
    }
}

impl Shared {
    /// Runs `op` with a pooled session of the current connection,
    /// reconnecting and retrying once if the token was lost.
    pub(crate) fn run_on<T>(
        &self,
        op: impl Fn(&Session, &Connection) -> Result<T, OpError>,
    ) -> Result<T, CustodyError> {
        let mut retried = false;
        loop {
            let (generation, lost) = {
                let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
                match &state.connection {
                    None => (state.generation, None),
                    Some(connection) => match self.attempt(connection, &op) {
                        Ok(value) => return Ok(value),
                        Err(Attempt::Failed(error)) => return Err(error),
                        Err(Attempt::Lost(reason)) => (state.generation, Some(reason)),
                    },
                }
            };
            if retried {
                let reason = lost.unwrap_or_else(|| "token unavailable".into());
                return Err(CustodyError::Unavailable(format!(
                    "token lost again right after reconnecting: {reason}"
                )));
            }
            self.reconnect(generation, lost)?;
            retried = true;
        }
    }

    fn attempt<T>(
        &self,
        connection: &Connection,
        op: &impl Fn(&Session, &Connection) -> Result<T, OpError>,
    ) -> Result<T, Attempt> {
        let session = connection
            .checkout()
            .map_err(|e| Attempt::Lost(describe(&e)))?;
        match op(&session, connection) {
            Ok(value) => {
                connection.give_back(session);
                Ok(value)
            }
            Err(error) => {
                connection.discard(session);
                Err(self.sort(error, &connection.token))
            }
        }
    }

    fn sort(&self, error: OpError, token: &str) -> Attempt {
        let error = match error {
            OpError::Malformed => return Attempt::Failed(CustodyError::Integrity),
            OpError::Refused(error) => return Attempt::Failed(error),
            OpError::Ck(error) => error,
        };
        match classify(&error) {
            Failure::Lost => Attempt::Lost(format!("token {token:?}: {}", describe(&error))),
            Failure::Integrity => Attempt::Failed(CustodyError::Integrity),
            Failure::Refused => Attempt::Failed(CustodyError::Config(format!(
                "token {token:?} refused an operation HSM custody needs: {}",
                describe(&error)
            ))),
            Failure::Other => Attempt::Failed(CustodyError::Unavailable(format!(
                "token {token:?}: {}",
                describe(&error)
            ))),
        }
    }

    /// Drops the connection seen at `generation` and makes a new one,
    /// unless another thread already did or the last try was too recent.
    fn reconnect(&self, generation: u64, lost: Option<String>) -> Result<(), CustodyError> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.generation != generation && state.connection.is_some() {
            return Ok(());
        }
        // Close every session and finalise the module before anything else:
        // no operation holds one (they hold the read lock while they do).
        state.connection = None;
        if state.pin_rejected {
            return Err(CustodyError::from(Pkcs11Error::WrongPin {
                token: self.settings.token.to_string(),
            }));
        }
        if let Some((at, error)) = &state.last_failure {
            let elapsed = at.elapsed();
            if elapsed < self.settings.retry_interval {
                let wait = self.settings.retry_interval - elapsed;
                return Err(CustodyError::Unavailable(format!(
                    "{}; next reconnect attempt in {} ms",
                    strip_prefix(error),
                    wait.as_millis()
                )));
            }
        }
        match Connection::open(&self.settings) {
            Ok(connection) => {
                state.connection = Some(connection);
                state.generation += 1;
                state.last_failure = None;
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                state.pin_rejected = matches!(error, Pkcs11Error::WrongPin { .. });
                let error = match (CustodyError::from(error), lost) {
                    (CustodyError::Unavailable(why), Some(lost)) => {
                        CustodyError::Unavailable(format!("{lost}; reconnecting failed: {why}"))
                    }
                    (error, _) => error,
                };
                let reported = clone_error(&error);
                state.last_failure = Some((Instant::now(), error));
                Err(reported)
            }
        }
    }
}

/// Why one attempt failed.
enum Attempt {
    /// Retry after reconnecting.
    Lost(String),
    /// Final.
    Failed(CustodyError),
}

/// The message without the variant's own prefix, to re-wrap it.
fn strip_prefix(error: &CustodyError) -> String {
    match error {
        CustodyError::Unavailable(message) | CustodyError::Config(message) => message.clone(),
        other => other.to_string(),
    }
}

/// `CustodyError` is not `Clone`; the kept copy and the returned one are
/// rebuilt from the same parts.
fn clone_error(error: &CustodyError) -> CustodyError {
    match error {
        CustodyError::Config(message) => CustodyError::Config(message.clone()),
        CustodyError::Unavailable(message) => CustodyError::Unavailable(message.clone()),
        other => CustodyError::Unavailable(other.to_string()),
    }
}

fn digest_mechanism(method: SignMethod) -> Result<Mechanism<'static>, CustodyError> {
    match method {
        SignMethod::HmacSha1 => Ok(Mechanism::Sha1),
        SignMethod::HmacSha256 => Ok(Mechanism::Sha256),
        // SoftHSM2 digests a sensitive key only with SHA-1/SHA-2
        // (CKR_KEY_INDIGESTIBLE otherwise, by design), and cryptoki 0.10
        // has no way to name CKM_MD5 at all.
        SignMethod::HmacMd5 => Err(CustodyError::Unsupported(
            "hmacmd5: HSM custody cannot digest a key with CKM_MD5 (cryptoki has no CKM_MD5, and SoftHSM2 refuses C_DigestKey on a sensitive key for MD5 with CKR_KEY_INDIGESTIBLE); use hmacsha256 or hmacsha1",
        )),
    }
}

impl Custody for Pkcs11Custody {
    fn scheme(&self) -> &str {
        SCHEME
    }

    fn seal(&self, id: SecretRef<'_>, secret: &DeviceSecret) -> Result<SealedSecret, CustodyError> {
        let ad = id.associated_data();
        let bytes = self.run(|session, keys| {
            ops::seal(session, keys, &ad, secret.expose_secret().as_bytes())
        })?;
        Ok(SealedSecret {
            scheme: SCHEME.to_owned(),
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
        check_scheme(sealed)?;
        let mechanism = digest_mechanism(method)?;
        let ad = id.associated_data();
        let mut content = Vec::with_capacity(256);
        fields.write_content(|chunk| content.extend_from_slice(chunk));
        let digest = self.run(|session, keys| {
            ops::sign(session, keys, &ad, &sealed.bytes, &content, &mechanism)
        })?;
        encode_password(&digest, case)
    }

    fn digest_sha256(
        &self,
        id: SecretRef<'_>,
        sealed: &SealedSecret,
        content: &[u8],
    ) -> Result<[u8; 32], CustodyError> {
        check_scheme(sealed)?;
        let ad = id.associated_data();
        let digest = self.run(|session, keys| {
            ops::sign(
                session,
                keys,
                &ad,
                &sealed.bytes,
                content,
                &Mechanism::Sha256,
            )
        })?;
        digest.as_slice().try_into().map_err(|_| {
            CustodyError::Unavailable("the token's SHA-256 digest is not 32 bytes".into())
        })
    }

    fn check(&self) -> Result<(), CustodyError> {
        // One round trip on a pooled session that reads the key-encryption
        // key's class: the token is there, logged in, and holds the key
        // (a session query alone is answered from the library's memory).
        self.run(|session, keys| {
            session
                .get_attributes(keys.kek, &[cryptoki::object::AttributeType::Class])
                .map(|_| ())
                .map_err(OpError::from)
        })
    }

    fn create_ca_key(&self, label: &str) -> Result<StoredCaKey, CustodyError> {
        crate::ca::create(&self.shared, label)
    }

    fn ca_signer(&self, key: &StoredCaKey) -> Result<Arc<dyn CaSigner>, CustodyError> {
        crate::ca::signer(&self.shared, key)
    }

    fn open(&self, id: SecretRef<'_>, sealed: &SealedSecret) -> Result<DeviceSecret, CustodyError> {
        if self.shared.export == ExportPolicy::Refuse {
            return Err(CustodyError::Unsupported(
                "this HSM custody was connected for signing; only `custody migrate` may export secrets",
            ));
        }
        check_scheme(sealed)?;
        let ad = id.associated_data();
        let value = self.run(|session, keys| ops::export(session, keys, &ad, &sealed.bytes))?;
        let text = std::str::from_utf8(&value).map_err(|_| CustodyError::Integrity)?;
        Ok(DeviceSecret::new(text.to_owned())?)
    }
}

fn check_scheme(sealed: &SealedSecret) -> Result<(), CustodyError> {
    if sealed.scheme != SCHEME {
        return Err(CustodyError::WrongScheme {
            expected: SCHEME.to_owned(),
            found: sealed.scheme.clone(),
        });
    }
    Ok(())
}

/// Hex in the requested case, through a stack buffer that is wiped.
fn encode_password(digest: &[u8], case: HexCase) -> Result<Password, CustodyError> {
    let mut buffer = Zeroizing::new([0u8; 64]);
    let hex = match case {
        HexCase::Upper => base16ct::upper::encode_str(digest, &mut buffer[..]),
        HexCase::Lower => base16ct::lower::encode_str(digest, &mut buffer[..]),
    }
    .map_err(|_| CustodyError::Unavailable("the token returned an oversized digest".into()))?;
    let password = Password::from_hex(hex)?;
    buffer.zeroize();
    Ok(password)
}
