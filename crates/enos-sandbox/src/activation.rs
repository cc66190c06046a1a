//! [`Activations`]: EnOS's dynamic activation, the secrets the sandbox
//! hands to devices that log in with their product's secret.
//!
//! A device *awaits activation* when its `deviceSecret` cell is empty
//! and its product has a `productSecret` ([`crate::devices`]). Then:
//!
//! 1. It logs in with `securemode=3`, signed with the product secret
//!    ([`crate::auth`]). The first such login makes a **pending** secret
//!    for it: [`SECRET_LEN`] random ASCII letters and digits, with a
//!    message id.
//! 2. Right after CONNACK the front pushes, without a SUBSCRIBE, on
//!    `/ext/session/{pk}/{dk}/thing/activate/info` (QoS 0):
//!    `{"id":"<n>","version":"1.0","method":"thing.activate.info","params":{"productKey":"…","deviceKey":"…","deviceSecret":"…"}}`
//!    (the id a JSON string).
//!    Every `securemode=3` login before completion pushes the **same**
//!    secret and id again: a device (or its custody) that died before
//!    storing the secret just logs in again. Ids are decimal numbers,
//!    never reused within a process or by the next one.
//! 3. Completion, either way:
//!    - the device publishes `{"id":"<n>","code":200,…}` on
//!      `…/thing/activate/info_reply` (the id as a string or a number);
//!      another id or code is logged and changes nothing;
//!    - or it logs in with `securemode=2` and a password that verifies
//!      with the pending secret: it evidently holds it (say its reply was
//!      lost). That completes it once the whole CONNECT is admitted (on
//!      the TLS listener, with the device's certificate).
//!
//!    From then on the device logs in with `securemode=2` and that secret
//!    only; `securemode=3` is refused (CONNACK 5, already activated).
//!
//! The state lives in this process only, apart from the device file: it
//! survives a reload of the file, and a restart forgets it (the devices
//! await activation again, and get a new secret). A secret written in
//! the device file wins over an activated one.
//!
//! The secrets never appear in a log line, an error or a `Debug` print;
//! they are wiped when dropped. Log lines: `activation pending` (first
//! login), `activation completed`, `activation reply ignored`, each with
//! `device=pk/dk` (and a reason for the last).

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use enos_sign_core::{DeviceSecret, ExposeSecret};
use serde_json::Value;
use tracing::info;
use zeroize::Zeroizing;

use crate::devices::DeviceId;

/// The length of a secret made by an activation.
pub const SECRET_LEN: usize = 32;

/// The alphabet of those secrets.
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Where a device stands, once it logged in with `securemode=3`.
enum State {
    /// Pushed, not yet confirmed.
    Pending(ActivationPush),
    /// Confirmed: the device's secret from now on.
    Activated(DeviceSecret),
}

/// One pending activation: what the front pushes. `Debug` redacts the
/// secret.
#[derive(Clone)]
pub struct ActivationPush {
    /// The push's `id`; the reply must carry it.
    pub message_id: String,
    /// The device it is for.
    pub device: DeviceId,
    /// The secret handed out.
    pub secret: DeviceSecret,
}

impl fmt::Debug for ActivationPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivationPush")
            .field("message_id", &self.message_id)
            .field("device", &self.device)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl ActivationPush {
    /// The topic of the push.
    pub fn topic(&self) -> String {
        format!(
            "/ext/session/{}/{}/thing/activate/info",
            self.device.product_key, self.device.device_key
        )
    }

    /// The push's JSON, in a buffer wiped on drop. Keys and the secret
    /// need no JSON escaping (their characters are restricted), so the
    /// secret is written once, here, and nowhere else.
    pub fn payload(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(
            format!(
                r#"{{"id":"{}","version":"1.0","method":"thing.activate.info","params":{{"productKey":"{}","deviceKey":"{}","deviceSecret":"{}"}}}}"#,
                self.message_id,
                self.device.product_key,
                self.device.device_key,
                self.secret.expose_secret()
            )
            .into_bytes(),
        )
    }
}

/// What a `securemode=2` login of a device awaiting activation found.
#[derive(Debug, PartialEq, Eq)]
pub enum PendingCheck<E> {
    /// No pending activation.
    NotPending,
    /// The password verified with the pending secret: once the login is
    /// admitted, [`Activations::complete`] it.
    Verified,
    /// It did not verify; the error of the check.
    Failed(E),
}

/// Activation state by device, for the life of the process.
pub struct Activations {
    /// Devices that logged in with `securemode=3` at least once.
    by_device: Mutex<HashMap<DeviceId, State>>,
    /// The last message id handed out. Ids count up from the process's
    /// start time in milliseconds, so that a reply a device resends to a
    /// restarted sandbox (which forgot its activations) names no push of
    /// the new process.
    last_id: AtomicU64,
}

impl Default for Activations {
    fn default() -> Self {
        Activations {
            by_device: Mutex::default(),
            last_id: AtomicU64::new(enos_domain::now_ms()),
        }
    }
}

impl fmt::Debug for Activations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activations").finish_non_exhaustive()
    }
}

impl Activations {
    /// The secret `device` was activated with, if it was.
    pub fn activated_secret(&self, device: &DeviceId) -> Option<DeviceSecret> {
        match self.lock().get(device) {
            Some(State::Activated(secret)) => Some(secret.clone()),
            _ => None,
        }
    }

    /// The pending activation of `device`, made now (a new secret) if it
    /// has none. `None` when it is activated already, or when the system
    /// has no randomness to make a secret with.
    pub fn pending_or_new(&self, device: &DeviceId) -> Option<ActivationPush> {
        let mut map = self.lock();
        match map.get(device) {
            Some(State::Pending(push)) => return Some(push.clone()),
            Some(State::Activated(_)) => return None,
            None => {}
        }
        let secret = random_secret()?;
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let push = ActivationPush {
            message_id: id.to_string(),
            device: device.clone(),
            secret,
        };
        map.insert(device.clone(), State::Pending(push.clone()));
        info!(device = %device, "activation pending");
        Some(push)
    }

    /// For a `securemode=2` login of a device without a secret: checks
    /// the password with the pending secret (`verify`). Changes nothing:
    /// the caller completes the activation once it admits the login (a
    /// TLS login may still fail its certificate check).
    pub fn verify_pending<E>(
        &self,
        device: &DeviceId,
        verify: impl FnOnce(&DeviceSecret) -> Result<(), E>,
    ) -> PendingCheck<E> {
        let map = self.lock();
        let Some(State::Pending(push)) = map.get(device) else {
            return PendingCheck::NotPending;
        };
        match verify(&push.secret) {
            Ok(()) => PendingCheck::Verified,
            Err(e) => PendingCheck::Failed(e),
        }
    }

    /// Completes `device`'s pending activation: its pending secret is its
    /// secret from now on. Returns whether one was pending. (The pending
    /// secret never changes, so a login verified with it may complete it
    /// a moment later.)
    pub fn complete(&self, device: &DeviceId) -> bool {
        let mut map = self.lock();
        let Some(State::Pending(push)) = map.get(device) else {
            return false;
        };
        let secret = push.secret.clone();
        map.insert(device.clone(), State::Activated(secret));
        info!(device = %device, "activation completed");
        true
    }

    /// The device published `payload` on its `thing/activate/info_reply`:
    /// completes the pending activation if the reply carries its id and
    /// code 200. Returns whether it completed.
    pub fn on_reply(&self, device: &DeviceId, payload: &[u8]) -> bool {
        let map = self.lock();
        let push = match map.get(device) {
            Some(State::Pending(push)) => push,
            Some(State::Activated(_)) => {
                info!(device = %device, reason = "already activated", "activation reply ignored");
                return false;
            }
            None => {
                info!(device = %device, reason = "no activation pending", "activation reply ignored");
                return false;
            }
        };
        let reply: Option<Value> = serde_json::from_slice(payload).ok();
        let id_matches = match reply.as_ref().and_then(|r| r.get("id")) {
            Some(Value::String(id)) => *id == push.message_id,
            Some(Value::Number(id)) => id.to_string() == push.message_id,
            _ => false,
        };
        let code = reply.as_ref().and_then(|r| r.get("code")).and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        });
        let reason = match (reply.is_some(), id_matches, code) {
            (false, ..) => "the reply is not JSON",
            (true, false, _) => "the reply's id is not the push's",
            (true, true, Some(200)) => {
                drop(map);
                return self.complete(device);
            }
            (true, true, _) => "the reply's code is not 200",
        };
        info!(device = %device, reason, "activation reply ignored; still pending");
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, State>> {
        // A poisoned lock only means a panic elsewhere; each entry is whole.
        self.by_device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`SECRET_LEN`] random letters and digits, without modulo bias (bytes
/// of 248 and above are drawn again); `None` without randomness.
fn random_secret() -> Option<DeviceSecret> {
    let mut secret = Zeroizing::new(String::with_capacity(SECRET_LEN));
    let mut bytes = Zeroizing::new([0u8; 64]);
    while secret.len() < SECRET_LEN {
        getrandom::fill(bytes.as_mut_slice()).ok()?;
        for &b in bytes.iter() {
            if secret.len() == SECRET_LEN {
                break;
            }
            if usize::from(b) < ALPHABET.len() * 4 {
                secret.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    DeviceSecret::new(std::mem::take(&mut *secret)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(dk: &str) -> DeviceId {
        DeviceId::new("pk".parse().expect("pk"), dk.parse().expect("dk"))
    }

    #[test]
    fn a_pending_secret_is_made_once_and_pushed_again() {
        let activations = Activations::default();
        let first = activations.pending_or_new(&id("a")).expect("pending");
        let again = activations.pending_or_new(&id("a")).expect("pending");
        assert_eq!(first.message_id, again.message_id);
        assert_eq!(first.secret.expose_secret(), again.secret.expose_secret());
        let secret = first.secret.expose_secret();
        assert_eq!(secret.len(), SECRET_LEN);
        assert!(
            secret.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{secret}"
        );
        let other = activations.pending_or_new(&id("b")).expect("pending");
        assert_ne!(other.secret.expose_secret(), secret);
        assert_ne!(other.message_id, first.message_id);
        assert!(activations.activated_secret(&id("a")).is_none());
    }

    #[test]
    fn the_reply_completes_only_with_its_id_and_code_200() {
        let activations = Activations::default();
        let device = id("a");
        assert!(!activations.on_reply(&device, br#"{"id":"1","code":200}"#));
        let push = activations.pending_or_new(&device).expect("pending");
        let reply = |id: &str, code: &str| format!(r#"{{"id":{id},"code":{code}}}"#);
        for (rid, code) in [
            ("\"999\"", "200"),
            (&format!("\"{}\"", push.message_id), "500"),
        ] {
            assert!(!activations.on_reply(&device, reply(rid, code).as_bytes()));
        }
        assert!(!activations.on_reply(&device, b"not json"));
        assert!(
            activations.activated_secret(&device).is_none(),
            "still pending"
        );
        // The id as a number works too.
        assert!(activations.on_reply(&device, reply(&push.message_id, "200").as_bytes()));
        assert_eq!(
            activations
                .activated_secret(&device)
                .map(|s| s.expose_secret().to_owned()),
            Some(push.secret.expose_secret().to_owned())
        );
        assert!(activations.pending_or_new(&device).is_none(), "activated");
    }

    #[test]
    fn a_login_with_the_pending_secret_completes() {
        let activations = Activations::default();
        let device = id("a");
        assert_eq!(
            activations.verify_pending(&device, |_| Ok::<(), ()>(())),
            PendingCheck::NotPending
        );
        assert!(!activations.complete(&device), "nothing pending");
        let push = activations.pending_or_new(&device).expect("pending");
        assert_eq!(
            activations.verify_pending(&device, |_| Err("wrong")),
            PendingCheck::Failed("wrong")
        );
        assert_eq!(
            activations.verify_pending(&device, |s| {
                (s.expose_secret() == push.secret.expose_secret())
                    .then_some(())
                    .ok_or(())
            }),
            PendingCheck::Verified
        );
        assert!(activations.activated_secret(&device).is_none(), "not yet");
        assert!(activations.complete(&device));
        assert!(activations.activated_secret(&device).is_some());
    }

    #[test]
    fn debug_and_logs_omit_the_secret() {
        let activations = Activations::default();
        let push = activations.pending_or_new(&id("a")).expect("pending");
        let debug = format!("{push:?} {activations:?}");
        assert!(!debug.contains(push.secret.expose_secret()), "{debug}");
        let payload = String::from_utf8(push.payload().to_vec()).expect("utf-8");
        let json: Value = serde_json::from_str(&payload).expect("JSON");
        assert_eq!(json["method"], "thing.activate.info");
        assert_eq!(json["params"]["deviceSecret"], push.secret.expose_secret());
        assert_eq!(json["params"]["deviceKey"], "a");
        assert_eq!(json["id"], push.message_id);
    }
}
