//! [`SessionTracker`]: which MQTT client ids logged in as which device, so
//! that a reload can drop the sessions the new device file no longer
//! allows, although rumqttd has no API to disconnect a client.
//!
//! The trick is MQTT's own rule, which rumqttd follows: a new CONNECT with
//! a client id already in use takes the session over and the old
//! connection is closed. After a reload the sandbox connects to its own
//! plain listener with the client id of each session to drop, as an
//! internal user whose password is a random token made at start (never
//! logged, never leaves the process), and disconnects at once.
//!
//! Sessions are dropped for devices that were removed, disabled, or whose
//! secret changed: a session whose credential would now be refused. Other
//! sessions are untouched. rumqttd does not report disconnects, so the
//! tracker may name a client id that has already gone; taking it over
//! then costs one short local connection and nothing else.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::Mutex,
    time::Duration,
};

use bytes::BytesMut;
use enos_sign_core::ExposeSecret;
use rumqttd::protocol::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Login, Packet, Protocol,
    v4::V4,
};
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    devices::{DeviceId, DeviceRegistry},
    error::SandboxError,
};

/// The username of the sandbox's own take-over connections. A device's
/// username always holds `&`, so no device can pose as it.
pub(crate) const TAKEOVER_USERNAME: &str = "enos-sandbox-takeover";

/// The username of the front's connections to rumqttd.
pub(crate) const FRONT_USERNAME: &str = "enos-sandbox-front";

/// How long one take-over may take on the loopback interface.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Client ids by device, and the take-over token. `Debug` omits the token.
pub struct SessionTracker {
    /// MQTT client ids accepted for each device since it was last dropped.
    by_device: Mutex<HashMap<DeviceId, HashSet<String>>>,
    /// The password of take-over connections: 32 random bytes in hex.
    token: Zeroizing<String>,
}

impl SessionTracker {
    /// A tracker with a fresh random token.
    pub fn new() -> Result<Self, SandboxError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice())
            .map_err(|e| SandboxError::Broker(format!("no randomness for the token: {e}")))?;
        let mut token = Zeroizing::new(String::with_capacity(64));
        for byte in bytes.iter() {
            token.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            token.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
        }
        Ok(SessionTracker {
            by_device: Mutex::new(HashMap::new()),
            token,
        })
    }

    /// Notes that `client_id` logged in as `device`.
    pub fn record(&self, device: &DeviceId, client_id: &str) {
        if let Ok(mut map) = self.by_device.lock() {
            map.entry(device.clone())
                .or_default()
                .insert(client_id.to_owned());
        }
    }

    /// Whether a CONNECT to rumqttd's internal listener is the sandbox's
    /// own: the front's forwarded sessions, or a take-over.
    pub(crate) fn is_internal(&self, username: &str, password: &str) -> bool {
        (username == TAKEOVER_USERNAME || username == FRONT_USERNAME)
            && bool::from(password.as_bytes().ct_eq(self.token.as_bytes()))
    }

    /// The user name and password the front logs in to rumqttd with.
    pub(crate) fn internal_login(&self) -> (&'static str, &str) {
        (FRONT_USERNAME, self.token.as_str())
    }

    /// Removes and returns the sessions `new` no longer allows: devices
    /// that are gone, disabled, or have another secret than in `old`.
    pub fn take_revoked(
        &self,
        old: &DeviceRegistry,
        new: &DeviceRegistry,
    ) -> Vec<(DeviceId, String)> {
        let Ok(mut map) = self.by_device.lock() else {
            return Vec::new();
        };
        let revoked: Vec<DeviceId> = map
            .keys()
            .filter(|id| match (old.get(id), new.get(id)) {
                (_, None) => true,
                (_, Some(now)) if !now.enabled => true,
                (Some(before), Some(now)) => {
                    before.secret.as_ref().map(ExposeSecret::expose_secret)
                        != now.secret.as_ref().map(ExposeSecret::expose_secret)
                }
                (None, Some(_)) => false,
            })
            .cloned()
            .collect();
        revoked
            .into_iter()
            .filter_map(|id| map.remove(&id).map(|ids| (id, ids)))
            .flat_map(|(id, ids)| ids.into_iter().map(move |c| (id.clone(), c)))
            .collect()
    }

    /// Takes over the session of `client_id` through rumqttd's internal
    /// listener at `listener`, which closes the device's connection (and
    /// so the front's), then disconnects.
    pub fn take_over(&self, listener: SocketAddr, client_id: &str) -> Result<(), SandboxError> {
        let target = loopback_if_unspecified(listener);
        let fail = |what: &str, detail: String| {
            SandboxError::Broker(format!(
                "taking over session {client_id:?}: {what}: {detail}"
            ))
        };
        let mut stream = TcpStream::connect_timeout(&target, TAKEOVER_TIMEOUT)
            .map_err(|e| fail("connect", e.to_string()))?;
        stream
            .set_read_timeout(Some(TAKEOVER_TIMEOUT))
            .map_err(|e| fail("socket", e.to_string()))?;
        let connect = Packet::Connect(
            Connect {
                keep_alive: 10,
                client_id: client_id.to_owned(),
                clean_session: true,
            },
            None,
            None,
            None,
            Some(Login {
                username: TAKEOVER_USERNAME.to_owned(),
                password: self.token.as_str().to_owned(),
            }),
        );
        let mut buf = BytesMut::new();
        V4.write(connect, &mut buf)
            .map_err(|e| fail("encode", format!("{e:?}")))?;
        let sent = stream.write_all(&buf);
        // The encoded CONNECT holds the token.
        buf.as_mut().zeroize();
        sent.map_err(|e| fail("send", e.to_string()))?;

        let mut incoming = BytesMut::new();
        let mut chunk = [0u8; 64];
        let ack = loop {
            match V4.read_mut(&mut incoming, 1024) {
                Ok(packet) => break packet,
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(fail("decode", format!("{e:?}"))),
            }
            let n = stream
                .read(&mut chunk)
                .map_err(|e| fail("read", e.to_string()))?;
            if n == 0 {
                return Err(fail("read", "closed before CONNACK".into()));
            }
            incoming.extend_from_slice(&chunk[..n]);
        };
        match ack {
            Packet::ConnAck(
                ConnAck {
                    code: ConnectReturnCode::Success,
                    ..
                },
                _,
            ) => {}
            other => return Err(fail("unexpected answer", format!("{other:?}"))),
        }
        let mut disconnect = BytesMut::new();
        V4.write(
            Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ),
            &mut disconnect,
        )
        .map_err(|e| fail("encode", format!("{e:?}")))?;
        stream
            .write_all(&disconnect)
            .map_err(|e| fail("send", e.to_string()))?;
        Ok(())
    }

    /// Drops every session `new` no longer allows; logs each.
    pub fn drop_revoked(
        &self,
        listener: SocketAddr,
        old: &DeviceRegistry,
        new: &DeviceRegistry,
    ) -> usize {
        let mut dropped = 0;
        for (device, client_id) in self.take_revoked(old, new) {
            match self.take_over(listener, &client_id) {
                Ok(()) => {
                    dropped += 1;
                    info!(device = %device, client_id = ?client_id, "dropped the session: the reloaded device file no longer allows it");
                }
                Err(e) => warn!(device = %device, error = %e, "could not drop a session"),
            }
        }
        dropped
    }
}

impl fmt::Debug for SessionTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTracker")
            .field("by_device", &self.by_device)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn registry(text: &str) -> DeviceRegistry {
        DeviceRegistry::parse(Path::new("d.csv"), text.as_bytes()).expect("valid")
    }

    fn id(dk: &str) -> DeviceId {
        DeviceId::new("pk".parse().expect("pk"), dk.parse().expect("dk"))
    }

    #[test]
    fn revokes_removed_disabled_and_rekeyed_devices_only() {
        let old = registry(
            "productKey,deviceKey,deviceSecret,enabled\n\
             pk,same,s1,true\npk,gone,s2,true\npk,off,s3,true\npk,rekeyed,s4,true\n",
        );
        let new = registry(
            "productKey,deviceKey,deviceSecret,enabled\n\
             pk,same,s1,true\npk,off,s3,false\npk,rekeyed,s4-new,true\n",
        );
        let tracker = SessionTracker::new().expect("tracker");
        for dk in ["same", "gone", "off", "rekeyed"] {
            tracker.record(&id(dk), &format!("{dk}|securemode=2,timestamp=1|"));
        }
        let mut revoked: Vec<String> = tracker
            .take_revoked(&old, &new)
            .into_iter()
            .map(|(d, _)| d.device_key.to_string())
            .collect();
        revoked.sort();
        assert_eq!(revoked, ["gone", "off", "rekeyed"]);
        assert!(tracker.take_revoked(&old, &new).is_empty(), "taken once");
    }

    #[test]
    fn the_token_is_random_and_only_it_passes() {
        let a = SessionTracker::new().expect("tracker");
        let b = SessionTracker::new().expect("tracker");
        assert_eq!(a.token.len(), 64);
        assert_ne!(a.token.as_str(), b.token.as_str());
        assert!(a.is_internal(TAKEOVER_USERNAME, &a.token));
        assert!(a.is_internal(FRONT_USERNAME, &a.token));
        assert!(!a.is_internal(TAKEOVER_USERNAME, &b.token));
        assert!(!a.is_internal("dev&pk", &a.token));
        assert!(!format!("{a:?}").contains(a.token.as_str()));
    }
}
