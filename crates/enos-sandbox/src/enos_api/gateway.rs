//! [`ApiGateway`]: EnOS's API gateway as the certificate API needs it,
//! the documented token method. `token/get` takes `appKey`, `timestamp`
//! (epoch ms, a number or a string) and `encryption` = lowercase hex
//! SHA-256 of `appKey + timestamp + appSecret`; it answers an access token,
//! the same one until it expires. Every business call carries
//! `apim-accesstoken`, `apim-timestamp` and `apim-signature` = lowercase hex
//! SHA-256 of `accessToken + paramsData + timestamp + appSecret`, where
//! `paramsData` is the URL query's parameters (decoded) sorted by name as
//! `name + value`, then the raw body.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Token-service codes (EnOS's).
pub mod code {
    /// A repeated `encryption` (a reused timestamp).
    pub const REPLAY: i64 = 1001;
    /// Unknown `appKey`.
    pub const UNKNOWN_APP: i64 = 1002;
    /// `encryption` (or, for calls, the signature) does not verify.
    pub const BAD_ENCRYPTION: i64 = 1003;
    /// A parameter is invalid (the timestamp outside the window, say).
    pub const INVALID_PARAMETER: i64 = 1004;
    /// A parameter is missing.
    pub const EMPTY_PARAMETER: i64 = 1202;
    /// The access token expired (or is unknown).
    pub const TOKEN_EXPIRED: i64 = 1203;
    /// The refresh failed.
    pub const REFRESH_FAILED: i64 = 1204;
}

/// Why the gateway refused; `code` is EnOS's token-service code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The code.
    pub code: i64,
    /// The text; never a secret, a token or a signature.
    pub msg: String,
}

fn refused(code: i64, msg: impl Into<String>) -> Refused {
    Refused {
        code,
        msg: msg.into(),
    }
}

/// An access token handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub access_token: String,
    /// Its remaining life in seconds (`expire`).
    pub expire_secs: u64,
}

/// The token state: one application (its key and secret).
pub struct ApiGateway {
    /// The AccessKey.
    app_key: String,
    /// The SecretKey: wiped on drop, never printed.
    app_secret: Zeroizing<String>,
    /// How far a timestamp may be from now.
    skew: Duration,
    /// How long a token lives.
    lifetime: Duration,
    /// Tokens and the seen `encryption` values.
    state: Mutex<GatewayState>,
}

impl std::fmt::Debug for ApiGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiGateway")
            .field("app_key", &self.app_key)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct GatewayState {
    /// The current token and when it expires: `token/get` answers it again
    /// until then, as EnOS does.
    current: Option<(String, Instant)>,
    /// Every `encryption` accepted, with when it may be forgotten (its
    /// timestamp then falls outside the window anyway).
    seen: HashMap<String, Instant>,
}

/// Lowercase hex SHA-256 of the concatenation of `parts`.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `paramsData` of the call signature: `query` pairs (decoded) sorted by
/// name, then value, as `name + value`, then the raw `body`.
pub fn params_data(query: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut pairs: Vec<&(String, String)> = query.iter().collect();
    pairs.sort();
    let mut data = Vec::new();
    for (name, value) in pairs {
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(value.as_bytes());
    }
    data.extend_from_slice(body);
    data
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ApiGateway {
    /// The gateway of one application.
    pub fn new(
        app_key: String,
        app_secret: Zeroizing<String>,
        skew: Duration,
        lifetime: Duration,
    ) -> Self {
        ApiGateway {
            app_key,
            app_secret,
            skew,
            lifetime,
            state: Mutex::new(GatewayState::default()),
        }
    }

    fn check_timestamp(&self, timestamp_ms: i64) -> Result<(), Refused> {
        let skew = self.skew.as_millis() as i64;
        if (timestamp_ms - now_ms()).abs() > skew {
            return Err(refused(
                code::INVALID_PARAMETER,
                format!(
                    "invalid parameter: timestamp {timestamp_ms} is more than {} s from the gateway's clock",
                    self.skew.as_secs()
                ),
            ));
        }
        Ok(())
    }

    fn check_encryption(
        &self,
        app_key: &str,
        timestamp: &str,
        encryption: &str,
    ) -> Result<(), Refused> {
        if app_key.is_empty() || timestamp.is_empty() || encryption.is_empty() {
            return Err(refused(
                code::EMPTY_PARAMETER,
                "parameter empty: appKey, encryption and timestamp are required",
            ));
        }
        if app_key != self.app_key {
            return Err(refused(code::UNKNOWN_APP, "appKey does not exist"));
        }
        let timestamp_ms: i64 = timestamp.parse().map_err(|_| {
            refused(
                code::INVALID_PARAMETER,
                "invalid parameter: timestamp is not epoch milliseconds",
            )
        })?;
        self.check_timestamp(timestamp_ms)?;
        let expected = sha256_hex(&[
            app_key.as_bytes(),
            timestamp.as_bytes(),
            self.app_secret.as_bytes(),
        ]);
        if !bool::from(expected.as_bytes().ct_eq(encryption.as_bytes())) {
            return Err(refused(code::BAD_ENCRYPTION, "encryption is invalid"));
        }
        Ok(())
    }

    /// `token/get`: checks the request, refuses a replayed `encryption`,
    /// answers the current token or a new one.
    pub fn get_token(
        &self,
        app_key: &str,
        timestamp: &str,
        encryption: &str,
    ) -> Result<Token, Refused> {
        self.check_encryption(app_key, timestamp, encryption)?;
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.seen.retain(|_, forget| *forget > now);
        if state.seen.contains_key(encryption) {
            return Err(refused(
                code::REPLAY,
                "repeated request: this encryption was used before (use a new timestamp)",
            ));
        }
        state.seen.insert(
            encryption.to_owned(),
            now + 2 * self.skew + Duration::from_secs(1),
        );
        let (token, expires) = match &state.current {
            Some((token, expires)) if *expires > now => (token.clone(), *expires),
            _ => {
                let token = random_hex(16);
                let expires = now + self.lifetime;
                state.current = Some((token.clone(), expires));
                (token, expires)
            }
        };
        Ok(Token {
            access_token: token,
            expire_secs: expires.saturating_duration_since(now).as_secs(),
        })
    }

    /// `token/refresh`: as `token/get`, for a token still known; answers a
    /// new token with a full lifetime (the old one stops working).
    pub fn refresh_token(
        &self,
        app_key: &str,
        timestamp: &str,
        encryption: &str,
        access_token: &str,
    ) -> Result<Token, Refused> {
        self.check_encryption(app_key, timestamp, encryption)?;
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &state.current {
            Some((token, expires))
                if *expires > now
                    && bool::from(token.as_bytes().ct_eq(access_token.as_bytes())) => {}
            _ => {
                return Err(refused(
                    code::REFRESH_FAILED,
                    "refresh failed: the access token is unknown or expired",
                ));
            }
        }
        let token = random_hex(16);
        state.current = Some((token.clone(), now + self.lifetime));
        Ok(Token {
            access_token: token,
            expire_secs: self.lifetime.as_secs(),
        })
    }

    /// Checks a business call's headers and signature over `query` and
    /// the raw `body`.
    pub fn check_call(
        &self,
        access_token: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        query: &[(String, String)],
        body: &[u8],
    ) -> Result<(), Refused> {
        let (Some(token), Some(timestamp), Some(signature)) = (access_token, timestamp, signature)
        else {
            return Err(refused(
                code::EMPTY_PARAMETER,
                "parameter empty: the headers apim-accesstoken, apim-timestamp and apim-signature are required",
            ));
        };
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match &state.current {
                Some((current, expires))
                    if bool::from(current.as_bytes().ct_eq(token.as_bytes())) =>
                {
                    if *expires <= Instant::now() {
                        return Err(refused(code::TOKEN_EXPIRED, "access token expired"));
                    }
                }
                _ => {
                    return Err(refused(
                        code::TOKEN_EXPIRED,
                        "access token expired or unknown",
                    ));
                }
            }
        }
        let timestamp_ms: i64 = timestamp.parse().map_err(|_| {
            refused(
                code::INVALID_PARAMETER,
                "invalid parameter: apim-timestamp is not epoch milliseconds",
            )
        })?;
        self.check_timestamp(timestamp_ms)?;
        let data = params_data(query, body);
        let expected = sha256_hex(&[
            token.as_bytes(),
            &data,
            timestamp.as_bytes(),
            self.app_secret.as_bytes(),
        ]);
        if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
            return Err(refused(
                code::BAD_ENCRYPTION,
                "apim-signature does not verify",
            ));
        }
        Ok(())
    }
}

/// `bytes` random bytes in lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EnOS's documented example (token `xxxxaaaxxxx`, query
    /// `k3=v3&k1=v1&k2=v2`, a 2-space-indented body) gives the documented
    /// signature.
    #[test]
    fn the_documented_signature_example() {
        let query = [
            ("k3".to_owned(), "v3".to_owned()),
            ("k1".to_owned(), "v1".to_owned()),
            ("k2".to_owned(), "v2".to_owned()),
        ];
        let body = "{\n  \"count\": 20,\n  \"page\": 1,\n  \"desc\": \"描述\"\n}";
        let data = params_data(&query, body.as_bytes());
        let signature = sha256_hex(&[b"xxxxaaaxxxx", &data, b"1572574909697", b"xxxappSecretxxx"]);
        assert_eq!(
            signature,
            "59828328f6c1f9771015dc74e4929ae30f518a35a3d2353972c2ea46556fc981"
        );
    }

    #[test]
    fn tokens_replays_and_signatures() {
        let gateway = ApiGateway::new(
            "ak".into(),
            Zeroizing::new("sk".into()),
            Duration::from_secs(300),
            Duration::from_secs(7200),
        );
        let ts = now_ms().to_string();
        let enc = sha256_hex(&[b"ak", ts.as_bytes(), b"sk"]);
        let token = gateway.get_token("ak", &ts, &enc).expect("token");
        assert_eq!(
            gateway.get_token("ak", &ts, &enc).expect_err("replay").code,
            code::REPLAY
        );
        let ts2 = (now_ms() + 1).to_string();
        let enc2 = sha256_hex(&[b"ak", ts2.as_bytes(), b"sk"]);
        assert_eq!(
            gateway
                .get_token("ak", &ts2, &enc2)
                .expect("again")
                .access_token,
            token.access_token,
            "the same token until it expires"
        );
        let bad = sha256_hex(&[b"ak", ts2.as_bytes(), b"other"]);
        assert_eq!(
            gateway.get_token("ak", &ts2, &bad).expect_err("bad").code,
            code::BAD_ENCRYPTION
        );
        assert_eq!(
            gateway
                .get_token("nope", &ts2, &enc2)
                .expect_err("app")
                .code,
            code::UNKNOWN_APP
        );
        let old = (now_ms() - 3_600_000).to_string();
        let enc_old = sha256_hex(&[b"ak", old.as_bytes(), b"sk"]);
        assert_eq!(
            gateway
                .get_token("ak", &old, &enc_old)
                .expect_err("old")
                .code,
            code::INVALID_PARAMETER
        );
        let query = [("action".to_owned(), "list".to_owned())];
        let sig = sha256_hex(&[
            token.access_token.as_bytes(),
            b"actionlist",
            ts.as_bytes(),
            b"sk",
        ]);
        gateway
            .check_call(
                Some(&token.access_token),
                Some(&ts),
                Some(&sig),
                &query,
                b"",
            )
            .expect("signed call");
        assert_eq!(
            gateway
                .check_call(
                    Some(&token.access_token),
                    Some(&ts),
                    Some(&sig),
                    &query,
                    b"x"
                )
                .expect_err("body changed")
                .code,
            code::BAD_ENCRYPTION
        );
        assert_eq!(
            gateway
                .check_call(Some("forged"), Some(&ts), Some(&sig), &query, b"")
                .expect_err("token")
                .code,
            code::TOKEN_EXPIRED
        );
    }
}
