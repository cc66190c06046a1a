//! `enos-agent sign`: signs a device login offline, for debugging a device
//! by hand. The secret comes from a file or stdin, never from argv or the
//! environment (both are visible to other users of the machine).

use std::io::Read;

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, Md5Policy, MqttCredential, ProductKey,
    SecureMode, SignMethod, SignedFields, TimestampMs,
};
use zeroize::Zeroizing;

use crate::error::AgentError;

/// The longest secret file accepted, in bytes (a secret is at most 256).
const MAX_SECRET_FILE: u64 = 4096;

/// What to sign, as `enos-agent sign` takes it on its command line. Every
/// field is validated by enos-sign-core.
#[derive(Debug, Clone, clap::Args)]
pub struct SignRequest {
    /// The product key.
    #[arg(long)]
    pub product_key: String,
    /// The device key.
    #[arg(long)]
    pub device_key: String,
    /// The signed clientId; defaults to the device key.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Milliseconds since the epoch; defaults to now.
    #[arg(long)]
    pub timestamp: Option<String>,
    /// hmacsha1, hmacsha256 or hmacmd5.
    #[arg(long, default_value = "hmacsha1")]
    pub sign_method: String,
}

/// Reads a secret from `reader`: one line; a single trailing `\n` or
/// `\r\n` is removed, anything else must be the secret itself.
pub fn read_secret(mut reader: impl Read, origin: &str) -> Result<DeviceSecret, AgentError> {
    let mut bytes = Zeroizing::new(Vec::new());
    reader
        .by_ref()
        .take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| AgentError::ReadFile {
            path: origin.into(),
            cause: source,
        })?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(AgentError::config(
            "--secret-file",
            format!("{origin} is larger than {MAX_SECRET_FILE} bytes; it should hold one secret"),
        ));
    }
    let mut end = bytes.len();
    if bytes[..end].ends_with(b"\n") {
        end -= 1;
        if bytes[..end].ends_with(b"\r") {
            end -= 1;
        }
    }
    let text = std::str::from_utf8(&bytes[..end])
        .map_err(|_| AgentError::config("--secret-file", format!("{origin} is not UTF-8 text")))?;
    Ok(DeviceSecret::new(text.to_owned())?)
}

/// Signs `request` with `secret`; `now_ms` is the default timestamp.
/// Returns `{"client_id", "username", "password", "timestamp"}`, where
/// `client_id` is the full MQTT client id to put into CONNECT.
pub fn sign(
    request: &SignRequest,
    secret: &DeviceSecret,
    now_ms: u64,
) -> Result<serde_json::Value, AgentError> {
    let product_key = ProductKey::new(&request.product_key)?;
    let device_key = DeviceKey::new(&request.device_key)?;
    let client_id = match &request.client_id {
        Some(c) => ClientId::new(c)?,
        None => ClientId::from_device_key(&device_key)?,
    };
    let timestamp = match &request.timestamp {
        Some(t) => t.parse::<TimestampMs>()?,
        None => TimestampMs::from_millis(now_ms),
    };
    // By hand, MD5 is allowed: the point is to reproduce what a device sends.
    let method = SignMethod::parse(&request.sign_method, Md5Policy::Allow)?;
    let fields = SignedFields {
        client_id,
        device_key,
        product_key,
        timestamp,
    };
    let credential = MqttCredential::sign(fields, SecureMode::DeviceSecret, method, secret)?;
    Ok(serde_json::json!({
        "client_id": credential.mqtt_client_id,
        "username": credential.username,
        "password": credential.password.expose_secret(),
        "timestamp": timestamp.as_millis(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SignRequest {
        SignRequest {
            product_key: "123".into(),
            device_key: "test".into(),
            client_id: Some("123".into()),
            timestamp: Some("1524448722000".into()),
            sign_method: "hmacsha1".into(),
        }
    }

    #[test]
    fn signs_the_known_answer() {
        let secret = read_secret(&b"aaabbbcc123\n"[..], "test").expect("secret");
        let out = sign(&request(), &secret, 0).expect("signed");
        assert_eq!(out["password"], "97AA97335D6EC3D7E1F9E3119501E399CC0B4125");
        assert_eq!(
            out["client_id"],
            "123|securemode=2,signmethod=hmacsha1,timestamp=1524448722000|"
        );
        assert_eq!(out["username"], "test&123");
        assert_eq!(out["timestamp"], 1524448722000u64);
        let md5 = SignRequest {
            sign_method: "hmacmd5".into(),
            ..request()
        };
        assert_eq!(
            sign(&md5, &secret, 0).expect("md5")["password"],
            "b68f36460ca32c41a108ed39582dafba"
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let secret = read_secret(&b"aaabbbcc123\r\n"[..], "test").expect("crlf trimmed");
        let defaults = SignRequest {
            client_id: None,
            timestamp: None,
            ..request()
        };
        let out = sign(&defaults, &secret, 42).expect("signed");
        assert_eq!(out["timestamp"], 42);
        assert!(out["client_id"].as_str().expect("str").starts_with("test|"));
        // Two trailing newlines: the second is part of the "secret" and refused.
        assert!(read_secret(&b"abc\n\n"[..], "test").is_err());
        assert!(read_secret(&b""[..], "test").is_err());
        let bad_pk = SignRequest {
            product_key: "a|b".into(),
            ..request()
        };
        let e = sign(&bad_pk, &secret, 0).expect_err("refused").to_string();
        assert!(e.contains("productKey"), "{e}");
        let bad_ts = SignRequest {
            timestamp: Some("-5".into()),
            ..request()
        };
        assert!(sign(&bad_ts, &secret, 0).is_err());
        let bad_method = SignRequest {
            sign_method: "hmacsha512".into(),
            ..request()
        };
        assert!(sign(&bad_method, &secret, 0).is_err());
    }
}
