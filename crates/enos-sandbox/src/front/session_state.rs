//! What an MQTT session holds beyond one connection: the device's own
//! subscription filters and its unacknowledged QoS 1 deliveries. rumqttd
//! keeps the session's namespace subscription and its queue; the device's
//! own filters never reach rumqttd (see the [module docs](super)), so the
//! front keeps them here, by device, for as long as the session lives:
//! across reconnects with `clean_session = 0`, dropped by a
//! `clean_session = 1` login.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;

use crate::devices::DeviceId;

/// A session's subscription filters, indexed: exact topics in a hash map
/// (a delivery looks them up at once), wildcard filters apart (scanned,
/// at most the cap of them).
#[derive(Debug, Default)]
pub(crate) struct Filters {
    /// Filters without `+` or `#`, by topic.
    exact: HashMap<String, QoS>,
    /// Filters with a wildcard.
    wildcard: Vec<(String, QoS)>,
}

/// Why a filter was not added.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AtCap(pub(crate) usize);

impl Filters {
    /// How many filters the session holds.
    pub(crate) fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Adds `filter` or replaces its QoS; a new filter beyond `cap` is
    /// refused.
    pub(crate) fn insert(&mut self, filter: String, qos: QoS, cap: usize) -> Result<(), AtCap> {
        let wildcard = filter.contains(['+', '#']);
        let held = if wildcard {
            self.wildcard.iter().any(|(f, _)| *f == filter)
        } else {
            self.exact.contains_key(&filter)
        };
        if !held && self.len() >= cap {
            return Err(AtCap(cap));
        }
        if wildcard {
            match self.wildcard.iter_mut().find(|(f, _)| *f == filter) {
                Some(entry) => entry.1 = qos,
                None => self.wildcard.push((filter, qos)),
            }
        } else {
            self.exact.insert(filter, qos);
        }
        Ok(())
    }

    /// Drops `filter`, if held.
    pub(crate) fn remove(&mut self, filter: &str) {
        if self.exact.remove(filter).is_none() {
            self.wildcard.retain(|(f, _)| f != filter);
        }
    }

    /// The highest QoS of the filters that match `topic`, if any does.
    pub(crate) fn best_match(&self, topic: &str) -> Option<QoS> {
        let exact = self.exact.get(topic).copied();
        self.wildcard
            .iter()
            .filter(|(filter, _)| super::topics::matches(topic, filter))
            .map(|(_, qos)| *qos)
            .chain(exact)
            .max_by_key(|qos| *qos as u8)
    }
}

/// One session's state, shared by the connections that hold it (a
/// connection being taken over and the one taking it over).
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// The device's own subscriptions.
    pub(crate) filters: Filters,
    /// QoS 1 deliveries the client has not acknowledged, by the packet id
    /// they went out with: what a reconnect must flag DUP. Only kept for
    /// persistent sessions.
    unacked: HashMap<u16, (String, Bytes)>,
    /// The previous connection's unacknowledged deliveries, which rumqttd
    /// sends again after a reconnect: each is flagged DUP once.
    resent: Vec<(String, Bytes)>,
}

impl SessionState {
    /// Notes a QoS 1 delivery to the client; returns whether it is the
    /// redelivery of one the previous connection left unacknowledged.
    pub(crate) fn delivered(&mut self, pkid: u16, topic: &str, payload: &Bytes) -> bool {
        let resent = self
            .resent
            .iter()
            .position(|(t, p)| t == topic && p == payload)
            .map(|i| self.resent.swap_remove(i))
            .is_some();
        self.unacked
            .insert(pkid, (topic.to_owned(), payload.clone()));
        resent
    }

    /// The client acknowledged `pkid`.
    pub(crate) fn acknowledged(&mut self, pkid: u16) {
        self.unacked.remove(&pkid);
    }
}

/// Every session's state, by device.
#[derive(Debug, Default)]
pub(crate) struct SessionStore {
    /// The sessions that rumqttd may still hold.
    sessions: Mutex<HashMap<DeviceId, Arc<Mutex<SessionState>>>>,
}

impl SessionStore {
    /// The state of the session `device` logs into: the one it left,
    /// when the login keeps it (`clean_session = 0`) and rumqttd still
    /// has it (`session_present`), else a new one.
    pub(crate) fn open(
        &self,
        device: &DeviceId,
        clean_session: bool,
        session_present: bool,
    ) -> Arc<Mutex<SessionState>> {
        let mut sessions = lock(&self.sessions);
        if !clean_session
            && session_present
            && let Some(state) = sessions.get(device)
        {
            let state = Arc::clone(state);
            {
                let mut guard = lock(&state);
                let left: Vec<_> = guard.unacked.drain().map(|(_, v)| v).collect();
                guard.resent.extend(left);
            }
            return state;
        }
        let state = Arc::new(Mutex::new(SessionState::default()));
        sessions.insert(device.clone(), Arc::clone(&state));
        state
    }

    /// The connection that opened `state` ended: a clean session ends
    /// with it (unless a later login holds the device's session now).
    pub(crate) fn close(
        &self,
        device: &DeviceId,
        state: &Arc<Mutex<SessionState>>,
        clean_session: bool,
    ) {
        if !clean_session {
            return;
        }
        let mut sessions = lock(&self.sessions);
        if sessions.get(device).is_some_and(|s| Arc::ptr_eq(s, state)) {
            sessions.remove(device);
        }
    }
}

/// Locks `mutex`; a panic elsewhere while it was held leaves state that
/// is still consistent enough for filters and acknowledgements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_indexed_and_capped() {
        let mut filters = Filters::default();
        filters
            .insert("/sys/pk/dk/a_reply".into(), QoS::AtMostOnce, 2)
            .expect("first");
        filters
            .insert("/sys/pk/dk/+".into(), QoS::AtLeastOnce, 2)
            .expect("second");
        assert_eq!(
            filters.insert("/sys/pk/dk/b_reply".into(), QoS::AtLeastOnce, 2),
            Err(AtCap(2))
        );
        // Held already: its QoS changes, the cap does not count it twice.
        filters
            .insert("/sys/pk/dk/a_reply".into(), QoS::AtLeastOnce, 2)
            .expect("again");
        assert_eq!(
            filters.best_match("/sys/pk/dk/a_reply"),
            Some(QoS::AtLeastOnce)
        );
        assert_eq!(filters.best_match("/sys/pk/dk/x"), Some(QoS::AtLeastOnce));
        assert_eq!(filters.best_match("/sys/pk/other/x"), None);
        filters.remove("/sys/pk/dk/+");
        assert_eq!(filters.len(), 1);
        assert_eq!(filters.best_match("/sys/pk/dk/x"), None);
    }

    #[test]
    fn a_persistent_session_flags_its_resends() {
        let store = SessionStore::default();
        let device = DeviceId::new("pk".parse().expect("pk"), "dk".parse().expect("dk"));
        let payload = Bytes::from_static(b"x");
        let first = store.open(&device, false, false);
        assert!(!lock(&first).delivered(7, "/t", &payload));
        store.close(&device, &first, false);
        let second = store.open(&device, false, true);
        assert!(Arc::ptr_eq(&first, &second));
        assert!(lock(&second).delivered(1, "/t", &payload), "a resend");
        assert!(!lock(&second).delivered(2, "/t", &payload), "once only");
        // A clean login starts over.
        let clean = store.open(&device, true, false);
        assert!(!Arc::ptr_eq(&clean, &second));
        store.close(&device, &clean, true);
        let fresh = store.open(&device, false, true);
        assert!(!Arc::ptr_eq(&fresh, &clean));
    }
}
