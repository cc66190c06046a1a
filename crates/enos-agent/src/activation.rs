//! Dynamic activation on the device: the secret EnOS pushes goes straight
//! to the signer's custody, never to disk.
//!
//! The official SDKs write the pushed `deviceSecret` to a JSON file on the
//! device. Here the agent, connected with an activation credential
//! (`securemode=3`, signed by the signer with the product's secret):
//!
//! 1. receives `thing.activate.info` on `/ext/session/{pk}/{dk}/thing/activate/info`
//!    (EnOS delivers it without a SUBSCRIBE; the agent subscribes anyway,
//!    as a broker may want it) and parses it into [`ActivationPush`], the
//!    secret in a zeroizing, redacting `SecretString`;
//! 2. hands it to the signer with `CompleteActivation` over mTLS
//!    ([`hand_over`]), retrying with backoff while the signer is
//!    unreachable and keeping the MQTT session alive meanwhile;
//! 3. only after the signer confirmed, answers `info_reply` with 200
//!    ([`reply_payload`]) and reconnects: the signer now issues
//!    `securemode=2` credentials with that secret.
//!
//! The secret lives only in that `SecretString`, until the signer
//! confirmed; never in a log, the status file or on disk. What the agent
//! cannot wipe: rumqttc's receive buffer and the prost request string
//! (freed, not zeroed). If the agent dies before the hand-over, nothing is
//! lost but time: the device still awaits activation in the signer, the
//! next start gets a new activation credential, and EnOS (the sandbox)
//! pushes the pending secret again on that `securemode=3` login.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, FailureKind},
    error::SignerClientError,
    signer::SignerClient,
};

/// A `thing.activate.info` push for this device. `Debug` redacts the
/// secret (`SecretString`).
#[derive(Debug)]
pub struct ActivationPush {
    /// The request id, echoed in the reply.
    pub id: String,
    /// The new device secret; zeroed on drop, never printed.
    pub device_secret: SecretString,
}

/// The push as sent; parsed without an intermediate `Value`, so that the
/// secret is copied only into the `SecretString`.
#[derive(Deserialize)]
struct Push {
    id: PushId,
    params: PushParams,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PushId {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
struct PushParams {
    #[serde(rename = "productKey")]
    product_key: String,
    #[serde(rename = "deviceKey")]
    device_key: String,
    #[serde(rename = "deviceSecret")]
    device_secret: SecretString,
}

/// Why a push was not taken (for the log; never the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Not the JSON shape of `thing.activate.info`.
    #[error("not a thing.activate.info message")]
    Malformed,
    /// Its `productKey` or `deviceKey` is not a valid key. The value is
    /// not shown: it is not known to be a key (it could be anything a
    /// broker put there, a secret or control characters included).
    #[error("its {0} is not a valid key")]
    InvalidKey(&'static str),
    /// It names another device (valid keys, so shown).
    #[error("it names device {0}, not this one")]
    OtherDevice(String),
    /// The secret is empty.
    #[error("its deviceSecret is empty")]
    EmptySecret,
    /// The secret breaks the rules of a device secret (the reason names
    /// the position, never the value).
    #[error("its deviceSecret is not valid: {0}")]
    InvalidSecret(String),
}

impl ActivationPush {
    /// Parses a push for `product_key`/`device_key`.
    pub fn parse(payload: &[u8], product_key: &str, device_key: &str) -> Result<Self, PushError> {
        let push: Push = serde_json::from_slice(payload).map_err(|_| PushError::Malformed)?;
        // The keys are validated before anything about them is said: a
        // value that is no key never reaches an error, hence a log.
        let pushed_pk = enos_sign_core::ProductKey::new(&push.params.product_key)
            .map_err(|_| PushError::InvalidKey("productKey"))?;
        let pushed_dk = enos_sign_core::DeviceKey::new(&push.params.device_key)
            .map_err(|_| PushError::InvalidKey("deviceKey"))?;
        if pushed_pk.as_str() != product_key || pushed_dk.as_str() != device_key {
            return Err(PushError::OtherDevice(format!("{pushed_pk}/{pushed_dk}")));
        }
        let secret = secrecy::ExposeSecret::expose_secret(&push.params.device_secret);
        if secret.is_empty() {
            return Err(PushError::EmptySecret);
        }
        // The signer would refuse it too; refused here, the reason is in
        // the agent's log. DeviceSecret's errors never hold the value.
        enos_sign_core::DeviceSecret::new(secret.to_owned())
            .map_err(|e| PushError::InvalidSecret(e.to_string()))?;
        Ok(ActivationPush {
            id: match push.id {
                PushId::Text(id) => id,
                PushId::Number(n) => n.to_string(),
            },
            device_secret: push.params.device_secret,
        })
    }
}

/// The `info_reply` payload: 200, the signer has the secret.
pub fn reply_payload(id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "code": 200,
        "data": {},
        "message": "device secret is in the signer's custody",
    }))
    .unwrap_or_default()
}

/// Hands `push`'s secret to the signer until it confirms, retrying with
/// `backoff` while it is unreachable. `Err` when the signer refuses (the
/// device is not awaiting activation any more, say) or at shutdown
/// (`None`).
pub async fn hand_over<S: SignerClient>(
    signer: &S,
    push: &ActivationPush,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<Result<(), SignerClientError>> {
    loop {
        let result = tokio::select! {
            r = signer.complete_activation(&push.device_secret) => r,
            () = shutdown.cancelled() => return None,
        };
        match result {
            Ok(()) => return Some(Ok(())),
            Err(e) if e.is_unavailable() => {
                let delay = backoff.next_delay(FailureKind::Network).delay;
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "signer unreachable for the activation hand-over; holding the secret in memory and retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// How long the `info_reply` may take to leave before the agent
/// reconnects anyway.
pub const REPLY_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_is_parsed_for_this_device_only_and_never_printed() {
        let payload = br#"{"id":"7","version":"1.0","method":"thing.activate.info",
            "params":{"productKey":"pk","deviceKey":"dk","deviceSecret":"PushedSecret123"}}"#;
        let push = ActivationPush::parse(payload, "pk", "dk").expect("parsed");
        assert_eq!(push.id, "7");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&push.device_secret),
            "PushedSecret123"
        );
        assert!(!format!("{push:?}").contains("PushedSecret123"));
        assert_eq!(
            ActivationPush::parse(payload, "pk", "other").map(|_| ()),
            Err(PushError::OtherDevice("pk/dk".into()))
        );
        let numeric =
            br#"{"id":9,"params":{"productKey":"pk","deviceKey":"dk","deviceSecret":"s"}}"#;
        assert_eq!(
            ActivationPush::parse(numeric, "pk", "dk").expect("ok").id,
            "9"
        );
        let empty =
            br#"{"id":"1","params":{"productKey":"pk","deviceKey":"dk","deviceSecret":""}}"#;
        assert_eq!(
            ActivationPush::parse(empty, "pk", "dk").map(|_| ()),
            Err(PushError::EmptySecret)
        );
        for bad in [&b"{}"[..], b"not json", br#"{"id":"1","params":{}}"#] {
            assert_eq!(
                ActivationPush::parse(bad, "pk", "dk").map(|_| ()),
                Err(PushError::Malformed)
            );
        }
        let reply: serde_json::Value = serde_json::from_slice(&reply_payload("7")).expect("json");
        assert_eq!(reply["id"], "7");
        assert_eq!(reply["code"], 200);
    }

    /// #23 finding 14: keys taken from an activation push are validated before anything shows them.
    #[test]
    fn pushed_keys_are_validated_before_they_are_shown() {
        // #23 finding 14: the keys of a push went into the error (and so
        // the log) as received, before anything had checked them.
        let push = |pk: &str, dk: &str, secret: &str| {
            serde_json::to_vec(&serde_json::json!({
                "id": "1",
                "params": {"productKey": pk, "deviceKey": dk, "deviceSecret": secret},
            }))
            .expect("json")
        };
        for (pk, dk, field) in [
            ("pk", "Leaked Secret\n\u{1b}[2J", "deviceKey"),
            ("pk|securemode=2", "dk", "productKey"),
            ("LeakedSecret/with/slashes", "dk", "productKey"),
        ] {
            let err = ActivationPush::parse(&push(pk, dk, "s3cret"), "pk", "dk")
                .map(|_| ())
                .expect_err("refused");
            assert_eq!(err, PushError::InvalidKey(field));
            let shown = err.to_string();
            assert!(
                !shown.contains("Leaked") && !shown.contains('\n'),
                "{shown}"
            );
        }
        let err = ActivationPush::parse(&push("pk", "dk", "has space Pushed"), "pk", "dk")
            .map(|_| ())
            .expect_err("an invalid secret is refused");
        assert!(matches!(err, PushError::InvalidSecret(_)), "{err:?}");
        assert!(!err.to_string().contains("Pushed"), "{err}");
        // Valid keys of another device are named: they are keys.
        assert_eq!(
            ActivationPush::parse(&push("pk2", "dk2", "s3cret"), "pk", "dk").map(|_| ()),
            Err(PushError::OtherDevice("pk2/dk2".into()))
        );
    }
}
