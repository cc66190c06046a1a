//! The broker side: [`PresentedLogin::parse`] and constant-time verification.

use crate::{
    credential::check_secret_kind,
    error::{Field, SignError},
    ident::{DeviceKey, ProductKey},
    method::{HexCase, Md5Policy, SecureMode, SignMethod},
    presented::{PresentedClientId, PresentedFields, PresentedTimestamp},
    secret::SigningSecret,
    sign::{SignedContent, digest_content},
    timestamp::TimestampMs,
};

/// How far the signed timestamp may be from the verifier's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Any timestamp: what EnOS does (its SDKs reuse one timestamp for
    /// months, and the C SDK always sends the year 2050).
    Any,
    /// `|timestamp - now| <= window_ms`.
    Within {
        /// The verifier's clock; passed in because this crate reads none.
        now: TimestampMs,
        /// The accepted distance either side of `now`.
        window_ms: u64,
    },
}

impl Freshness {
    /// Checks `timestamp` against the window.
    pub fn check(self, timestamp: TimestampMs) -> Result<(), SignError> {
        match self {
            Freshness::Any => Ok(()),
            Freshness::Within { now, window_ms } => {
                let skew_ms = timestamp.skew_from(now);
                if skew_ms.unsigned_abs() <= u128::from(window_ms) {
                    Ok(())
                } else {
                    Err(SignError::Stale { skew_ms, window_ms })
                }
            }
        }
    }
}

/// What a device presented in CONNECT, parsed and validated; the broker
/// side's liberal inverse of [`crate::MqttCredential`]'s client id and
/// username (see [`crate::PresentedFields`] for what each SDK sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedLogin {
    /// The signed fields, as sent: client id and timestamp from the MQTT
    /// client id, device and product key from the username.
    pub fields: PresentedFields,
    /// `securemode`; 2 when absent, as the guide makes it optional.
    pub secure_mode: SecureMode,
    /// `signmethod`; hmacsha1 when absent, as the guide makes it optional
    /// and the Java SDK defaults to it.
    pub sign_method: SignMethod,
}

impl PresentedLogin {
    /// Parses `clientId|securemode=M,signmethod=S,timestamp=T|` and
    /// `deviceKey&productKey`, as liberally as EnOS does.
    ///
    /// - clientId: everything before the first `|`, as sent
    ///   ([`PresentedClientId`]: ASCII graphic characters, at most 256).
    /// - Parameters in any order, each known one at most once; `timestamp`
    ///   is required because it is signed ([`PresentedTimestamp`]: digits,
    ///   optionally a `.` and fraction digits); `signmethod` by name or alias
    ///   in any case (`hmacsha1`, `sha1`, `HMACSHA256`, …).
    /// - Refused: no `|…|` section, text after it, a parameter that is not
    ///   `name=value`, a parameter twice, and unknown parameters, so that
    ///   nothing unsigned rides along unnoticed (no official SDK sends one).
    pub fn parse(mqtt_client_id: &str, username: &str, md5: Md5Policy) -> Result<Self, SignError> {
        let malformed = |reason| SignError::Malformed {
            field: Field::MqttClientId,
            reason,
        };
        let (client_id, rest) = mqtt_client_id
            .split_once('|')
            .ok_or(malformed("no |…| parameter section"))?;
        let params = rest
            .strip_suffix('|')
            .ok_or(malformed("the parameter section must end with |"))?;
        if params.contains('|') {
            return Err(malformed("more than two | separators"));
        }
        let client_id = PresentedClientId::new(client_id)?;

        let mut secure_mode = None;
        let mut sign_method = None;
        let mut timestamp = None;
        for pair in params.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or(malformed("a parameter is not of the form name=value"))?;
            match key {
                "securemode" => {
                    set_once(&mut secure_mode, "securemode", value.parse::<SecureMode>()?)?
                }
                "signmethod" => set_once(
                    &mut sign_method,
                    "signmethod",
                    SignMethod::parse(value, md5)?,
                )?,
                "timestamp" => {
                    set_once(&mut timestamp, "timestamp", PresentedTimestamp::new(value)?)?
                }
                _ => {
                    return Err(malformed(
                        "unknown parameter; expected securemode, signmethod, timestamp",
                    ));
                }
            }
        }
        let timestamp = timestamp.ok_or(malformed("timestamp is missing"))?;

        let (device_key, product_key) = username.split_once('&').ok_or(SignError::Malformed {
            field: Field::MqttUsername,
            reason: "expected deviceKey&productKey",
        })?;
        Ok(PresentedLogin {
            fields: PresentedFields {
                client_id,
                device_key: DeviceKey::new(device_key)?,
                product_key: ProductKey::new(product_key)?,
                timestamp,
            },
            secure_mode: secure_mode.unwrap_or(SecureMode::DeviceSecret),
            sign_method: sign_method.unwrap_or(SignMethod::HmacSha1),
        })
    }

    /// Verifies `password` against `secret`: the secret kind must fit the
    /// secure mode, the timestamp must be fresh, and the password must
    /// match in constant time, ignoring hex case.
    pub fn verify<S: SigningSecret>(
        &self,
        password: &str,
        secret: &S,
        freshness: Freshness,
    ) -> Result<(), SignError> {
        check_secret_kind::<S>(self.secure_mode)?;
        freshness.check(self.fields.timestamp.millis())?;
        verify_sign(&self.fields, self.sign_method, password, secret)
    }
}

fn set_once<T>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), SignError> {
    if slot.replace(value).is_some() {
        return Err(SignError::DuplicateParameter(name));
    }
    Ok(())
}

/// Constant-time check of a presented password or sub-device `sign` over
/// `fields` (strict or as presented), hex case-insensitive.
pub fn verify_sign(
    fields: &impl SignedContent,
    method: SignMethod,
    presented: &str,
    secret: &impl SigningSecret,
) -> Result<(), SignError> {
    let expected = digest_content(fields, method, secret, HexCase::Lower);
    if expected.matches_ignore_case(presented) {
        Ok(())
    } else {
        Err(SignError::WrongPassword)
    }
}
