//! [`SubDeviceSessions`]: which sub-devices are logged in through which
//! gateway. The responder changes it on `combine.login` (and its batch)
//! / `combine.logout`; the front watches it, so that a gateway's session
//! gets (and may use) the topics of its logged-in sub-devices, and loses
//! them at logout.
//!
//! A gateway holds at most [`DEFAULT_MAX_PER_GATEWAY`] (EnOS's limit; the
//! sandbox's `limits.max_sub_devices_per_gateway`) online sub-devices; a
//! logout frees a slot, and so does the end of the gateway's session,
//! which takes all its sub-devices offline (as on EnOS: they were online
//! through that connection). A session that another login of the gateway
//! took over ends without that: the new one keeps them.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::devices::DeviceId;

/// EnOS's limit of online sub-devices per gateway.
pub const DEFAULT_MAX_PER_GATEWAY: usize = 200;

/// The sub-devices online through one gateway.
pub type OnlineSubDevices = Arc<BTreeSet<DeviceId>>;

/// Why a sub-device could not be logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginLimit {
    /// The gateway holds its limit of online sub-devices already.
    #[error("the gateway has {0} sub-devices online already, its limit: log one out first")]
    Full(usize),
}

/// One gateway's entry.
#[derive(Debug)]
struct Gateway {
    /// The set online now, watched by the gateway's session.
    online: watch::Sender<OnlineSubDevices>,
    /// The number of the gateway's latest session: only its end takes
    /// the sub-devices offline (not that of a session it took over).
    session: u64,
}

/// Sub-device logins by gateway, each watchable.
#[derive(Debug)]
pub struct SubDeviceSessions {
    /// One entry per gateway that ever had a session or a login.
    by_gateway: Mutex<HashMap<DeviceId, Gateway>>,
    /// How many sub-devices one gateway may hold online.
    max_per_gateway: usize,
}

impl Default for SubDeviceSessions {
    fn default() -> Self {
        SubDeviceSessions::new(DEFAULT_MAX_PER_GATEWAY)
    }
}

impl SubDeviceSessions {
    /// No sub-device online yet; at most `max_per_gateway` per gateway.
    pub fn new(max_per_gateway: usize) -> Self {
        SubDeviceSessions {
            by_gateway: Mutex::default(),
            max_per_gateway,
        }
    }

    /// Watches `gateway`'s online sub-devices.
    pub fn watch(&self, gateway: &DeviceId) -> watch::Receiver<OnlineSubDevices> {
        self.with_gateway(gateway, |gw| gw.online.subscribe())
    }

    /// A session of `gateway` opened; returns its number for
    /// [`SubDeviceSessions::session_ended`].
    pub fn session_opened(&self, gateway: &DeviceId) -> u64 {
        self.with_gateway(gateway, |gw| {
            gw.session += 1;
            gw.session
        })
    }

    /// Whether `session` is still `gateway`'s latest: a login that a newer
    /// login of the same device overtook while it waited for rumqttd must
    /// not open its session after all, or it would take the newer one's
    /// over (MQTT's rule for one client id) and drop a live device.
    pub fn is_latest(&self, gateway: &DeviceId, session: u64) -> bool {
        self.with_gateway(gateway, |gw| gw.session == session)
    }

    /// The session `session` of `gateway` ended: unless a later session
    /// took over, its sub-devices go offline. Returns how many did.
    pub fn session_ended(&self, gateway: &DeviceId, session: u64) -> usize {
        self.with_gateway(gateway, |gw| {
            if gw.session != session {
                return 0;
            }
            let count = gw.online.borrow().len();
            gw.online.send_if_modified(|online| {
                if online.is_empty() {
                    return false;
                }
                *online = OnlineSubDevices::default();
                true
            });
            count
        })
    }

    /// Whether `sub` is logged in through `gateway`.
    pub fn is_online(&self, gateway: &DeviceId, sub: &DeviceId) -> bool {
        self.with_gateway(gateway, |gw| gw.online.borrow().contains(sub))
    }

    /// How many sub-devices are online through `gateway`.
    pub fn online_count(&self, gateway: &DeviceId) -> usize {
        self.with_gateway(gateway, |gw| gw.online.borrow().len())
    }

    /// `sub` logged in through `gateway` (again: no change), unless the
    /// gateway is full. Watchers see it before this returns, so before
    /// the login's reply is published.
    pub fn log_in(&self, gateway: &DeviceId, sub: &DeviceId) -> Result<(), LoginLimit> {
        let max = self.max_per_gateway;
        self.with_gateway(gateway, |gw| {
            let mut refused = None;
            gw.online.send_if_modified(|online| {
                if online.contains(sub) {
                    return false;
                }
                if online.len() >= max {
                    refused = Some(LoginLimit::Full(online.len()));
                    return false;
                }
                Arc::make_mut(online).insert(sub.clone());
                true
            });
            refused.map_or(Ok(()), Err)
        })
    }

    /// `sub` logged out of `gateway`; returns whether it was online.
    pub fn log_out(&self, gateway: &DeviceId, sub: &DeviceId) -> bool {
        self.with_gateway(gateway, |gw| {
            gw.online
                .send_if_modified(|online| Arc::make_mut(online).remove(sub))
        })
    }

    fn with_gateway<T>(&self, gateway: &DeviceId, f: impl FnOnce(&mut Gateway) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let mut map = self
            .by_gateway
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gw = map.entry(gateway.clone()).or_insert_with(|| Gateway {
            online: watch::Sender::new(OnlineSubDevices::default()),
            session: 0,
        });
        f(gw)
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
        sessions.log_in(&id("gw"), &id("s1")).expect("room");
        assert!(rx.has_changed().expect("open"));
        assert!(rx.borrow_and_update().contains(&id("s1")));
        assert!(sessions.is_online(&id("gw"), &id("s1")));
        assert!(!sessions.is_online(&id("other"), &id("s1")));
        sessions.log_in(&id("gw"), &id("s1")).expect("room");
        assert!(!rx.has_changed().expect("open"), "no change, no wake-up");
        assert!(sessions.log_out(&id("gw"), &id("s1")));
        assert!(
            !sessions.log_out(&id("gw"), &id("s1")),
            "not online any more"
        );
        assert!(rx.borrow_and_update().is_empty());
    }

    #[test]
    fn a_gateway_holds_its_limit_and_a_logout_or_its_session_end_frees_slots() {
        let sessions = SubDeviceSessions::new(2);
        let gw = id("gw");
        sessions.log_in(&gw, &id("s1")).expect("room");
        sessions.log_in(&gw, &id("s2")).expect("room");
        assert_eq!(sessions.log_in(&gw, &id("s3")), Err(LoginLimit::Full(2)));
        sessions
            .log_in(&gw, &id("s2"))
            .expect("already online: no new slot");
        assert!(sessions.log_out(&gw, &id("s1")));
        sessions.log_in(&gw, &id("s3")).expect("a slot was freed");

        let first = sessions.session_opened(&gw);
        let second = sessions.session_opened(&gw);
        assert_eq!(sessions.session_ended(&gw, first), 0, "taken over: kept");
        assert_eq!(sessions.online_count(&gw), 2);
        assert_eq!(sessions.session_ended(&gw, second), 2);
        assert_eq!(sessions.online_count(&gw), 0);
        sessions.log_in(&gw, &id("s4")).expect("room again");
    }

    #[test]
    fn only_a_devices_latest_login_is_latest() {
        let sessions = SubDeviceSessions::default();
        let (a, b) = (id("a"), id("b"));
        let older = sessions.session_opened(&a);
        assert!(sessions.is_latest(&a, older));
        let newer = sessions.session_opened(&a);
        let other = sessions.session_opened(&b);
        assert!(!sessions.is_latest(&a, older), "overtaken");
        assert!(sessions.is_latest(&a, newer));
        assert!(sessions.is_latest(&b, other), "per device");
        // Its end does not make the older one latest again.
        sessions.session_ended(&a, newer);
        assert!(!sessions.is_latest(&a, older));
    }
}
