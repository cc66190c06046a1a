//! [`Authenticator`]: decides whether an MQTT CONNECT may open a session
//! ([`Admitted`]), and says why not ([`Refusal`]).
//!
//! | securemode | signed with | accepted for |
//! |---|---|---|
//! | 2 | the device secret: the file's, else the activated one ([`crate::activation`]) | a device with a secret; a device awaiting activation whose password verifies with its *pending* secret (which completes the activation) |
//! | 3 | the product secret | a device awaiting activation (no secret) of a product with a product secret; the front then pushes the secret |
//! | 4 | — | nobody: message-integration channels are not supported |

use std::sync::Arc;

use enos_sign_core::{
    DeviceSecret, Freshness, Md5Policy, PresentedLogin, SecureMode, SignError, TimestampMs,
};

use crate::{
    activation::{ActivationPush, Activations, PendingCheck},
    config::FreshnessPolicy,
    devices::{DeviceId, DeviceStore},
};

/// A CONNECT that may open a session.
#[derive(Debug)]
pub struct Admitted {
    /// The device it logged in as.
    pub device: DeviceId,
    /// What the login means for the device's activation, if anything.
    pub activation: Option<ActivationStep>,
}

/// The activation step of an admitted login.
#[derive(Debug)]
pub enum ActivationStep {
    /// A `securemode=3` login: push this right after CONNACK.
    Push(ActivationPush),
    /// A `securemode=2` login signed with the pending secret: once the
    /// session is admitted (the TLS certificate checked too), the
    /// activation is complete ([`Activations::complete`]).
    Complete,
}

/// Why a CONNECT (or a sub-device login) was refused. `Display` is the
/// reason the sandbox logs; it never holds the password or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The client id or username does not have the EnOS shape (or names a
    /// disallowed sign method, such as hmacmd5 when MD5 is off).
    #[error("malformed login: {0}")]
    Malformed(SignError),
    /// No such device in the device file.
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    /// The device file marks the device disabled.
    #[error("device {0} is disabled")]
    DeviceDisabled(DeviceId),
    /// securemode 4 (a message-integration channel) is not supported.
    #[error("securemode {0} is not supported by the sandbox; only 2 and 3 are")]
    UnsupportedSecureMode(u8),
    /// securemode 3 for a device whose product has no product secret.
    #[error(
        "dynamic activation is not allowed for device {0}: its product has no product secret \
         (EnOS code 770)"
    )]
    ActivationNotAllowed(DeviceId),
    /// securemode 3 signed with something other than the product secret.
    #[error("password does not match the product secret of device {0} (securemode 3)")]
    WrongProductSign(DeviceId),
    /// securemode 3 from a device that has a secret.
    #[error("device {0} is already activated: log in with securemode 2")]
    AlreadyActivated(DeviceId),
    /// securemode 2 from a device that has no secret yet (and whose
    /// password does not verify with a pending activation's).
    #[error(
        "device {0} has no device secret yet: it awaits dynamic activation (log in with \
         securemode 3, signed with the product secret)"
    )]
    NotActivated(DeviceId),
    /// No randomness to make an activation secret with.
    #[error("cannot activate device {0} now: no randomness for its secret")]
    ActivationUnavailable(DeviceId),
    /// The signed timestamp is outside the freshness window.
    #[error("stale timestamp for device {device}: {error}")]
    StaleTimestamp {
        /// The device that tried.
        device: DeviceId,
        /// The skew and the window.
        error: SignError,
    },
    /// The password does not match the device secret. The sign covers the
    /// signed client id, the username's deviceKey and productKey and the
    /// timestamp, so a client id or username that does not match what was
    /// signed ends here too.
    #[error(
        "password does not match for device {0} (signed over clientId, the username's \
         deviceKey and productKey, and timestamp)"
    )]
    WrongPassword(DeviceId),
    /// A sub-device logs in through its gateway (`combine.login`), never
    /// directly; EnOS refuses it (its code 771).
    #[error("device {0} is a sub-device: it logs in through its gateway, not directly")]
    SubDeviceDirect(DeviceId),
    /// On the TLS listener, the client certificate is not the device's.
    #[error("the client certificate does not belong to device {device}: {reason}")]
    CertificateMismatch {
        /// The device of the (verified) login.
        device: DeviceId,
        /// What the certificate names instead.
        reason: String,
    },
    /// The console's user name, but not from loopback on the plain listener.
    #[error("the console logs in from loopback on the plain listener only")]
    ConsoleNotHere,
    /// The console's user name with a wrong password.
    #[error("wrong console password")]
    ConsolePassword,
}

impl Refusal {
    /// The MQTT 3.1.1 CONNACK return code EnOS answers with: 4 (bad user
    /// name or password) when the login itself is wrong, 5 (not
    /// authorised) when a valid login may not connect (here), 3 (server
    /// unavailable) when the sandbox cannot serve it now.
    pub fn connack_code(&self) -> u8 {
        match self {
            Refusal::Malformed(_)
            | Refusal::UnknownDevice(_)
            | Refusal::StaleTimestamp { .. }
            | Refusal::WrongPassword(_)
            | Refusal::WrongProductSign(_)
            | Refusal::NotActivated(_)
            | Refusal::ConsolePassword => 4,
            Refusal::ActivationUnavailable(_) => 3,
            Refusal::DeviceDisabled(_)
            | Refusal::UnsupportedSecureMode(_)
            | Refusal::ActivationNotAllowed(_)
            | Refusal::AlreadyActivated(_)
            | Refusal::SubDeviceDirect(_)
            | Refusal::CertificateMismatch { .. }
            | Refusal::ConsoleNotHere => 5,
        }
    }
}

/// Checks presented credentials against the device store.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// The devices in force; reloads swap it under us.
    store: Arc<DeviceStore>,
    /// Whether and how tightly timestamps are checked.
    freshness: FreshnessPolicy,
    /// Whether hmacmd5 is accepted.
    md5: Md5Policy,
    /// Dynamic activations: pending and activated secrets, apart from
    /// the store so that they survive reloads.
    activations: Arc<Activations>,
}

impl Authenticator {
    /// An authenticator over `store` with the given policies, and no
    /// activation yet.
    pub fn new(store: Arc<DeviceStore>, freshness: FreshnessPolicy, md5: Md5Policy) -> Self {
        Authenticator {
            store,
            freshness,
            md5,
            activations: Arc::default(),
        }
    }

    /// The activation state the checks read and change.
    pub fn activations(&self) -> &Arc<Activations> {
        &self.activations
    }

    /// The secret of `device` in force: the file's, else an activated one.
    pub fn device_secret(&self, device: &DeviceId) -> Option<DeviceSecret> {
        let registry = self.store.current();
        registry
            .get(device)
            .and_then(|d| d.secret.clone())
            .or_else(|| self.activations.activated_secret(device))
    }

    /// The device store the checks read.
    pub fn store(&self) -> &Arc<DeviceStore> {
        &self.store
    }

    /// Whether hmacmd5 is accepted.
    pub fn md5_policy(&self) -> Md5Policy {
        self.md5
    }

    /// The freshness check as of `now`.
    pub fn freshness_at(&self, now: TimestampMs) -> Freshness {
        match self.freshness {
            FreshnessPolicy::Any => Freshness::Any,
            FreshnessPolicy::Window(window) => Freshness::Within {
                now,
                window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }

    /// Checks a CONNECT's client id, username and password now.
    pub fn check(
        &self,
        mqtt_client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Admitted, Refusal> {
        self.check_at(mqtt_client_id, username, password, now())
    }

    /// Checks a CONNECT as of `now`. The order: shape, device, enabled,
    /// secure mode (for 3: whether the product allows activation),
    /// timestamp, password (in constant time), and last what only the
    /// device's own valid login may learn: that it is activated already,
    /// or a sub-device.
    pub fn check_at(
        &self,
        mqtt_client_id: &str,
        username: &str,
        password: &str,
        now: TimestampMs,
    ) -> Result<Admitted, Refusal> {
        let presented = PresentedLogin::parse(mqtt_client_id, username, self.md5)
            .map_err(Refusal::Malformed)?;
        let id = DeviceId::new(
            presented.fields.product_key.clone(),
            presented.fields.device_key.clone(),
        );
        let registry = self.store.current();
        let device = registry
            .get(&id)
            .ok_or_else(|| Refusal::UnknownDevice(id.clone()))?;
        if !device.enabled {
            return Err(Refusal::DeviceDisabled(id));
        }
        let freshness = self.freshness_at(now);
        let refused = |error: SignError, id: DeviceId, wrong: fn(DeviceId) -> Refusal| match error {
            SignError::Stale { .. } => Refusal::StaleTimestamp { device: id, error },
            _ => wrong(id),
        };
        match presented.secure_mode {
            SecureMode::DeviceSecret => {}
            SecureMode::ProductSecret => {
                let Some(product_secret) = registry.product_secret(&id.product_key) else {
                    return Err(Refusal::ActivationNotAllowed(id));
                };
                presented
                    .verify(password, product_secret, freshness)
                    .map_err(|e| refused(e, id.clone(), Refusal::WrongProductSign))?;
                if device.secret.is_some() || self.activations.activated_secret(&id).is_some() {
                    return Err(Refusal::AlreadyActivated(id));
                }
                if device.gateway.is_some() {
                    return Err(Refusal::SubDeviceDirect(id));
                }
                let push = self
                    .activations
                    .pending_or_new(&id)
                    .ok_or_else(|| Refusal::ActivationUnavailable(id.clone()))?;
                return Ok(Admitted {
                    device: id,
                    activation: Some(ActivationStep::Push(push)),
                });
            }
            SecureMode::ChannelProductSecret => {
                return Err(Refusal::UnsupportedSecureMode(
                    presented.secure_mode.as_u8(),
                ));
            }
        }
        let secret = device
            .secret
            .clone()
            .or_else(|| self.activations.activated_secret(&id));
        let activation = match secret {
            Some(secret) => {
                presented
                    .verify(password, &secret, freshness)
                    .map_err(|e| refused(e, id.clone(), Refusal::WrongPassword))?;
                None
            }
            // Awaiting activation: a password signed with the pending
            // secret proves the device holds it, which completes it.
            None => match self.activations.verify_pending(&id, |pending| {
                presented.verify(password, pending, freshness)
            }) {
                PendingCheck::Verified => Some(ActivationStep::Complete),
                PendingCheck::NotPending => return Err(Refusal::NotActivated(id)),
                PendingCheck::Failed(e) => return Err(refused(e, id, Refusal::NotActivated)),
            },
        };
        if device.gateway.is_some() {
            return Err(Refusal::SubDeviceDirect(id));
        }
        Ok(Admitted {
            device: id,
            activation,
        })
    }
}

/// The wall clock in milliseconds since the epoch.
pub(crate) fn now() -> TimestampMs {
    TimestampMs::from_millis(enos_domain::now_ms())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use enos_sign_core::{
        ClientId, DeviceKey, DeviceSecret, ExposeSecret, MqttCredential, ProductKey, ProductSecret,
        SignMethod, SignedFields,
    };

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn authenticator(
        freshness: FreshnessPolicy,
        md5: Md5Policy,
    ) -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("devices.csv");
        std::fs::write(
            &path,
            "productKey,deviceKey,deviceSecret,enabled,productSecret\n\
             pk1,dev1,secret-one,true,\n\
             pk1,dev2,secret-two,true,\n\
             pk1,off,secret-off,false,\n\
             dynpk,new1,,,product-secret\n\
             dynpk,old1,own-secret,,product-secret\n",
        )
        .expect("write devices");
        let store = Arc::new(DeviceStore::open(&path).expect("valid devices"));
        (dir, Authenticator::new(store, freshness, md5))
    }

    fn credential(dk: &str, secret: &str, method: SignMethod, ts: u64) -> MqttCredential {
        let fields = SignedFields {
            client_id: ClientId::new(dk).expect("client id"),
            device_key: DeviceKey::new(dk).expect("device key"),
            product_key: ProductKey::new("pk1").expect("product key"),
            timestamp: TimestampMs::from_millis(ts),
        };
        let secret = DeviceSecret::new(secret.to_owned()).expect("secret");
        MqttCredential::sign(fields, SecureMode::DeviceSecret, method, &secret).expect("signs")
    }

    fn check(auth: &Authenticator, c: &MqttCredential) -> Result<DeviceId, Refusal> {
        auth.check_at(
            &c.mqtt_client_id,
            &c.username,
            c.password.expose_secret(),
            TimestampMs::from_millis(NOW),
        )
        .map(|admitted| admitted.device)
    }

    fn c_id(dk: &str) -> DeviceId {
        DeviceId::new(
            ProductKey::new("pk1").expect("pk"),
            DeviceKey::new(dk).expect("dk"),
        )
    }

    fn dyn_login(dk: &str, mode: SecureMode, secret: &str) -> MqttCredential {
        let fields = SignedFields {
            client_id: ClientId::new(dk).expect("client id"),
            device_key: DeviceKey::new(dk).expect("device key"),
            product_key: ProductKey::new("dynpk").expect("product key"),
            timestamp: TimestampMs::from_millis(NOW),
        };
        let method = SignMethod::HmacSha256;
        match mode {
            SecureMode::DeviceSecret => {
                let secret = DeviceSecret::new(secret.to_owned()).expect("secret");
                MqttCredential::sign(fields, mode, method, &secret).expect("signs")
            }
            _ => {
                let secret = ProductSecret::new(secret.to_owned()).expect("secret");
                MqttCredential::sign(fields, mode, method, &secret).expect("signs")
            }
        }
    }

    #[test]
    fn dynamic_activation_logins() {
        let (_dir, auth) = authenticator(WINDOW, Md5Policy::Refuse);
        let admit = |c: &MqttCredential| {
            auth.check_at(
                &c.mqtt_client_id,
                &c.username,
                c.password.expose_secret(),
                TimestampMs::from_millis(NOW),
            )
        };
        let new1 = DeviceId::new(
            ProductKey::new("dynpk").expect("pk"),
            DeviceKey::new("new1").expect("dk"),
        );
        let not_yet = admit(&dyn_login("new1", SecureMode::DeviceSecret, "guessed"));
        assert_eq!(
            not_yet.map(|a| a.device),
            Err(Refusal::NotActivated(new1.clone()))
        );
        let wrong = admit(&dyn_login("new1", SecureMode::ProductSecret, "not-it"));
        assert_eq!(
            wrong.map(|a| a.device),
            Err(Refusal::WrongProductSign(new1.clone()))
        );

        let push_of = |admitted: Admitted| match admitted.activation {
            Some(ActivationStep::Push(push)) => push,
            other => panic!("expected a push, got {other:?}"),
        };
        let push = push_of(
            admit(&dyn_login(
                "new1",
                SecureMode::ProductSecret,
                "product-secret",
            ))
            .expect("admitted"),
        );
        let again = push_of(
            admit(&dyn_login(
                "new1",
                SecureMode::ProductSecret,
                "product-secret",
            ))
            .expect("admitted again"),
        );
        assert_eq!(push.secret.expose_secret(), again.secret.expose_secret());

        // securemode 2 with the pending secret completes it.
        let done = admit(&dyn_login(
            "new1",
            SecureMode::DeviceSecret,
            push.secret.expose_secret(),
        ))
        .expect("the pending secret");
        assert!(matches!(done.activation, Some(ActivationStep::Complete)));
        let still = admit(&dyn_login(
            "new1",
            SecureMode::ProductSecret,
            "product-secret",
        ));
        assert!(still.is_ok(), "pending until the caller completes it");
        assert!(auth.activations().complete(&new1));
        let after = admit(&dyn_login(
            "new1",
            SecureMode::ProductSecret,
            "product-secret",
        ));
        assert_eq!(
            after.map(|a| a.device),
            Err(Refusal::AlreadyActivated(new1.clone()))
        );
        assert_eq!(Refusal::AlreadyActivated(new1.clone()).connack_code(), 5);
        assert_eq!(Refusal::NotActivated(new1.clone()).connack_code(), 4);
        assert_eq!(
            Refusal::ActivationNotAllowed(new1.clone()).connack_code(),
            5
        );

        let old1 = admit(&dyn_login(
            "old1",
            SecureMode::ProductSecret,
            "product-secret",
        ));
        assert!(matches!(old1, Err(Refusal::AlreadyActivated(_))));
    }

    const WINDOW: FreshnessPolicy = FreshnessPolicy::Window(Duration::from_secs(600));

    #[test]
    fn accepts_sha1_and_sha256_in_either_case() {
        let (_dir, auth) = authenticator(WINDOW, Md5Policy::Refuse);
        let c = credential("dev1", "secret-one", SignMethod::HmacSha1, NOW);
        assert_eq!(check(&auth, &c).expect("accepted").to_string(), "pk1/dev1");
        let c = credential("dev1", "secret-one", SignMethod::HmacSha256, NOW - 599_000);
        let upper = c.password.expose_secret().to_ascii_uppercase();
        let now = TimestampMs::from_millis(NOW);
        auth.check_at(&c.mqtt_client_id, &c.username, &upper, now)
            .expect("hex case does not matter");
    }

    #[test]
    fn md5_only_when_allowed() {
        let c = credential("dev1", "secret-one", SignMethod::HmacMd5, NOW);
        let (_dir, strict) = authenticator(WINDOW, Md5Policy::Refuse);
        assert!(matches!(
            check(&strict, &c),
            Err(Refusal::Malformed(SignError::Md5NotAllowed))
        ));
        let (_dir2, lax) = authenticator(WINDOW, Md5Policy::Allow);
        check(&lax, &c).expect("md5 allowed");
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let (_dir, auth) = authenticator(WINDOW, Md5Policy::Refuse);
        let now = TimestampMs::from_millis(NOW);

        let wrong = credential("dev1", "not-the-secret", SignMethod::HmacSha1, NOW);
        assert!(matches!(
            check(&auth, &wrong),
            Err(Refusal::WrongPassword(_))
        ));

        let unknown = credential("ghost", "secret-one", SignMethod::HmacSha1, NOW);
        assert!(matches!(
            check(&auth, &unknown),
            Err(Refusal::UnknownDevice(_))
        ));

        let disabled = credential("off", "secret-off", SignMethod::HmacSha1, NOW);
        assert!(matches!(
            check(&auth, &disabled),
            Err(Refusal::DeviceDisabled(_))
        ));

        // dev1's credential presented with dev2's username.
        let c = credential("dev1", "secret-one", SignMethod::HmacSha1, NOW);
        let swapped = auth.check_at(
            &c.mqtt_client_id,
            "dev2&pk1",
            c.password.expose_secret(),
            now,
        );
        assert!(matches!(swapped, Err(Refusal::WrongPassword(_))));

        let stale = credential("dev1", "secret-one", SignMethod::HmacSha1, NOW - 601_000);
        assert!(matches!(
            check(&auth, &stale),
            Err(Refusal::StaleTimestamp { .. })
        ));
        let future = credential("dev1", "secret-one", SignMethod::HmacSha1, NOW + 601_000);
        assert!(matches!(
            check(&auth, &future),
            Err(Refusal::StaleTimestamp { .. })
        ));

        let malformed = auth.check_at("dev1", &c.username, c.password.expose_secret(), now);
        assert!(matches!(malformed, Err(Refusal::Malformed(_))));

        let mode3 = c.mqtt_client_id.replace("securemode=2", "securemode=3");
        let refused = auth.check_at(&mode3, &c.username, c.password.expose_secret(), now);
        assert_eq!(
            refused.map(|a| a.device),
            Err(Refusal::ActivationNotAllowed(c_id("dev1")))
        );
        let mode4 = c.mqtt_client_id.replace("securemode=2", "securemode=4");
        let refused = auth.check_at(&mode4, &c.username, c.password.expose_secret(), now);
        assert_eq!(
            refused.map(|a| a.device),
            Err(Refusal::UnsupportedSecureMode(4))
        );
    }

    #[test]
    fn any_timestamp_accepts_old_credentials() {
        let (_dir, auth) = authenticator(FreshnessPolicy::Any, Md5Policy::Refuse);
        let old = credential(
            "dev1",
            "secret-one",
            SignMethod::HmacSha1,
            1_524_448_722_000,
        );
        check(&auth, &old).expect("any timestamp");
    }

    #[test]
    fn reasons_never_contain_the_password() {
        let (_dir, auth) = authenticator(WINDOW, Md5Policy::Refuse);
        let c = credential("dev1", "wrong-secret", SignMethod::HmacSha1, NOW);
        let reason = check(&auth, &c).expect_err("wrong").to_string();
        assert!(!reason.contains(c.password.expose_secret()), "{reason}");
        assert!(!reason.contains("secret-one"), "{reason}");
    }
}
