//! [`SubDeviceSessions`]: which sub-devices are logged in through which
//! gateway. The responder changes it on `combine.login` / `combine.logout`;
//! the front watches it, so that a gateway's session gets (and may use)
//! the topics of its logged-in sub-devices, and loses them at logout.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::devices::DeviceId;

/// The sub-devices online through one gateway.
pub type OnlineSubDevices = Arc<BTreeSet<DeviceId>>;

/// Sub-device logins by gateway, each watchable.
#[derive(Debug, Default)]
pub struct SubDeviceSessions {
    /// One channel per gateway that ever had a session or a login; the
    /// value is the set online now.
    by_gateway: Mutex<HashMap<DeviceId, watch::Sender<OnlineSubDevices>>>,
}

impl SubDeviceSessions {
    /// Watches `gateway`'s online sub-devices.
    pub fn watch(&self, gateway: &DeviceId) -> watch::Receiver<OnlineSubDevices> {
        self.with_sender(gateway, watch::Sender::subscribe)
    }

    /// Whether `sub` is logged in through `gateway`.
    pub fn is_online(&self, gateway: &DeviceId, sub: &DeviceId) -> bool {
        self.with_sender(gateway, |tx| tx.borrow().contains(sub))
    }

    /// `sub` logged in through `gateway`. Watchers see it before this
    /// returns, so before the login's reply is published.
    pub fn log_in(&self, gateway: &DeviceId, sub: &DeviceId) {
        self.with_sender(gateway, |tx| {
            tx.send_if_modified(|online| {
                if online.contains(sub) {
                    return false;
                }
                Arc::make_mut(online).insert(sub.clone());
                true
            });
        });
    }

    /// `sub` logged out of `gateway`.
    pub fn log_out(&self, gateway: &DeviceId, sub: &DeviceId) {
        self.with_sender(gateway, |tx| {
            tx.send_if_modified(|online| Arc::make_mut(online).remove(sub));
        });
    }

    fn with_sender<T>(
        &self,
        gateway: &DeviceId,
        f: impl FnOnce(&watch::Sender<OnlineSubDevices>) -> T,
    ) -> T {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let mut map = self
            .by_gateway
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = map
            .entry(gateway.clone())
            .or_insert_with(|| watch::Sender::new(OnlineSubDevices::default()));
        f(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(dk: &str) -> DeviceId {
        DeviceId::new("pk".parse().expect("pk"), dk.parse().expect("dk"))
    }

    #[test]
    fn watchers_see_logins_and_logouts() {
        let sessions = SubDeviceSessions::default();
        let mut rx = sessions.watch(&id("gw"));
        assert!(!rx.has_changed().expect("open"));
        sessions.log_in(&id("gw"), &id("s1"));
        assert!(rx.has_changed().expect("open"));
        assert!(rx.borrow_and_update().contains(&id("s1")));
        assert!(sessions.is_online(&id("gw"), &id("s1")));
        assert!(!sessions.is_online(&id("other"), &id("s1")));
        sessions.log_in(&id("gw"), &id("s1"));
        assert!(!rx.has_changed().expect("open"), "no change, no wake-up");
        sessions.log_out(&id("gw"), &id("s1"));
        assert!(rx.borrow_and_update().is_empty());
    }
}
