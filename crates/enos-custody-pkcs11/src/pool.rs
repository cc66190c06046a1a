//! [`Connection`]: one initialised module with its logged-in token, the
//! two key handles, and a pool of sessions.
//!
//! A cryptoki `Session` is `Send` but not `Sync`: one thread uses it at a
//! time. The pool hands each sign its own session and caps how many are
//! open (the token's own limit, and the parallelism it can really give).

use std::{
    collections::HashMap,
    sync::{Condvar, Mutex, MutexGuard, PoisonError},
};

use cryptoki::{
    context::Pkcs11, error::Error as CkError, object::ObjectHandle, session::Session, slot::Slot,
};
use zeroize::Zeroizing;

use crate::{
    Pkcs11Error,
    config::Pkcs11Settings,
    token::{Keys, find_keys, log_in, login, open_session},
};

/// Everything that lives and dies with one `C_Initialize`.
pub(crate) struct Connection {
    /// Handles of the KEK and MAC key, valid for this initialisation.
    pub(crate) keys: Keys,
    /// The token's label, for messages.
    pub(crate) token: String,
    /// Idle sessions and the count of open ones.
    sessions: Mutex<Sessions>,
    /// Signalled when a session is returned or closed.
    returned: Condvar,
    /// Upper bound on open sessions.
    max_sessions: usize,
    /// CA private keys found so far, by CKA_ID: a CA sign is then one
    /// C_Sign, not a search first. Handles are valid for this
    /// initialisation only, so the cache dies with the connection.
    ca_keys: Mutex<HashMap<Vec<u8>, ObjectHandle>>,
    /// The session the login was made in. Never used for work: it stays
    /// open so that the login state (which ends when a token's last
    /// session closes) survives the pool discarding sessions. In a mutex
    /// only because a `Session` is not `Sync`.
    _anchor: Mutex<Session>,
    /// Kept to log in sessions should the login state be lost. Wiped on
    /// drop.
    pin: Zeroizing<String>,
    /// The token's slot.
    slot: Slot,
    /// The module. Every session holds a clone; the last one dropped
    /// finalises the module, after the sessions above are closed.
    ctx: Pkcs11,
}

struct Sessions {
    /// Ready for use.
    idle: Vec<Session>,
    /// Idle plus checked out.
    open: usize,
}

impl Connection {
    /// Connects as `settings` say.
    pub(crate) fn open(settings: &Pkcs11Settings) -> Result<Self, Pkcs11Error> {
        let login = login(settings, false)?;
        let keys = find_keys(&login.session, settings, &login.token)?;
        Ok(Connection {
            keys,
            token: login.token,
            sessions: Mutex::new(Sessions {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            max_sessions: settings.sessions,
            ca_keys: Mutex::new(HashMap::new()),
            _anchor: Mutex::new(login.session),
            pin: login.pin,
            slot: login.slot,
            ctx: login.ctx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A session for one operation: an idle one, a new one while under the
    /// cap, or the next one returned.
    pub(crate) fn checkout(&self) -> Result<Session, CkError> {
        let mut sessions = self.lock();
        loop {
            if let Some(session) = sessions.idle.pop() {
                return Ok(session);
            }
            if sessions.open < self.max_sessions {
                sessions.open += 1;
                drop(sessions);
                return self.new_session().inspect_err(|_| self.forget_one());
            }
            sessions = self
                .returned
                .wait(sessions)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn new_session(&self) -> Result<Session, CkError> {
        let session = open_session(&self.ctx, self.slot, false)?;
        // Login is per token; a new session joins it, unless every session
        // was closed meanwhile, which logged the user out.
        match log_in(&session, &self.pin, &self.token) {
            Ok(()) => Ok(session),
            Err(_) => Err(CkError::Pkcs11(
                cryptoki::error::RvError::UserNotLoggedIn,
                cryptoki::context::Function::Login,
            )),
        }
    }

    /// A read-write session outside the pool, logged in, for creating
    /// token objects (a CA key pair); closed when dropped.
    pub(crate) fn rw_session(&self) -> Result<Session, CkError> {
        let session = open_session(&self.ctx, self.slot, true)?;
        match log_in(&session, &self.pin, &self.token) {
            Ok(()) => Ok(session),
            Err(_) => Err(CkError::Pkcs11(
                cryptoki::error::RvError::UserNotLoggedIn,
                cryptoki::context::Function::Login,
            )),
        }
    }

    /// The cached handle of the CA key `id`, if it was found before on
    /// this connection.
    pub(crate) fn cached_ca_key(&self, id: &[u8]) -> Option<ObjectHandle> {
        self.ca_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    /// Remembers the handle of the CA key `id` for this connection.
    pub(crate) fn cache_ca_key(&self, id: &[u8], handle: ObjectHandle) {
        self.ca_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_vec(), handle);
    }

    /// Returns a healthy session to the pool.
    pub(crate) fn give_back(&self, session: Session) {
        self.lock().idle.push(session);
        self.returned.notify_one();
    }

    /// Closes a session that saw an error: it may hold a half-done
    /// operation or be dead already.
    pub(crate) fn discard(&self, session: Session) {
        drop(session);
        self.forget_one();
    }

    fn forget_one(&self) {
        let mut sessions = self.lock();
        sessions.open = sessions.open.saturating_sub(1);
        drop(sessions);
        self.returned.notify_one();
    }
}
