//! [`Pkcs11Config`]: where the module, token, PIN and keys are, as the
//! service's TOML file says it; and [`Pkcs11Settings`], the same resolved and
//! checked.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Pkcs11Error, uri::Pkcs11Uri};

/// The KEK label when none is configured.
pub const DEFAULT_KEK_LABEL: &str = "enos-custody-kek";

/// HSM custody's configuration.
///
/// Either a PKCS#11 URI or the separate keys (or a mix, as long as no
/// setting is given twice):
///
/// ```toml
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token = { label = "enos" }
/// pin = { file = "/etc/enos-signer/hsm.pin" }   # or { credential = "hsm-pin" }
/// kek_label = "enos-custody-kek"
/// sessions = 8
/// retry_interval = "1s"
/// ```
///
/// ```toml
/// uri = "pkcs11:token=enos;object=enos-custody-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/enos-signer/hsm.pin"
/// ```
///
/// The PIN itself is never part of the configuration (nor of argv): it is
/// read from a file, or from systemd's `$CREDENTIALS_DIRECTORY`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// A PKCS#11 URI (RFC 7512) naming the token and, in its query,
    /// `module-path` and `pin-source`; `object` names the KEK. One string
    /// is what most HSM tooling hands out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The PKCS#11 module (shared library) to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// Which token holds the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSelector>,
    /// Where the user PIN is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinSource>,
    /// Label of the AES-256 key-encryption key; defaults to
    /// [`DEFAULT_KEK_LABEL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_label: Option<String>,
    /// Label of the HMAC key that binds each record to its device;
    /// defaults to the KEK label followed by `-mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_key_label: Option<String>,
    /// How many PKCS#11 sessions to keep: the number of signs that can run
    /// in the token at once (a session serves one thread at a time).
    /// Defaults to twice the available cores, at least 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<usize>,
    /// After the token is lost, how long to wait between reconnect
    /// attempts (`"1s"`); calls in between fail fast. Defaults to 1 s.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "enos_toml::duration::option"
    )]
    pub retry_interval: Option<Duration>,
}

/// Which token: by label (usual), slot number, or serial number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSelector {
    /// The token's label (CKA_LABEL of the token, trailing blanks ignored).
    Label(String),
    /// The slot id. Stable on SoftHSM2 (derived from the serial), not on
    /// every HSM: prefer a label.
    Slot(u64),
    /// The token's serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(label) => write!(f, "label {label:?}"),
            TokenSelector::Slot(slot) => write!(f, "slot {slot}"),
            TokenSelector::Serial(serial) => write!(f, "serial {serial:?}"),
        }
    }
}

/// Where the user PIN comes from. Never argv, never the config itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored).
    File(PathBuf),
    /// A systemd credential: the file of that name in
    /// `$CREDENTIALS_DIRECTORY` (`LoadCredential=` / `SetCredential=`).
    Credential(String),
}

/// A resolved, complete configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The module to load.
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The PIN's source.
    pub pin: PinSource,
    /// The KEK's label.
    pub kek_label: String,
    /// The MAC key's label.
    pub mac_key_label: String,
    /// Pool size.
    pub sessions: usize,
    /// Pause between reconnect attempts.
    pub retry_interval: Duration,
}

impl Pkcs11Config {
    /// Merges the URI with the separate keys, fills defaults and checks
    /// that everything needed is there. A setting given both in the URI
    /// and on its own is refused rather than silently preferring one.
    pub fn resolve(&self) -> Result<Pkcs11Settings, Pkcs11Error> {
        let uri = match &self.uri {
            Some(text) => Pkcs11Uri::parse(text)?,
            None => Pkcs11Uri::default(),
        };
        let module = one_of("module", uri.module_path, self.module.clone())?.ok_or_else(|| {
            Pkcs11Error::InvalidConfig(
                "no PKCS#11 module: set `module` or `module-path` in `uri`".into(),
            )
        })?;
        let token = one_of("token", uri.token, self.token.clone())?.ok_or_else(|| {
            Pkcs11Error::InvalidConfig(
                "no token: set `token = { label = \"...\" }` or `token=`/`slot-id=`/`serial=` in `uri`"
                    .into(),
            )
        })?;
        let pin = one_of("pin", uri.pin_source, self.pin.clone())?.ok_or_else(|| {
            Pkcs11Error::InvalidConfig(
                "no PIN source: set `pin = { file = \"...\" }`, `pin = { credential = \"...\" }` or `pin-source=` in `uri`"
                    .into(),
            )
        })?;
        let kek_label = one_of("kek_label", uri.object, self.kek_label.clone())?
            .unwrap_or_else(|| DEFAULT_KEK_LABEL.to_owned());
        let mac_key_label = self
            .mac_key_label
            .clone()
            .unwrap_or_else(|| format!("{kek_label}-mac"));
        for (name, label) in [("kek_label", &kek_label), ("mac_key_label", &mac_key_label)] {
            if label.is_empty() {
                return Err(Pkcs11Error::InvalidConfig(format!("`{name}` is empty")));
            }
        }
        if kek_label == mac_key_label {
            return Err(Pkcs11Error::InvalidConfig(
                "`kek_label` and `mac_key_label` must differ: each key has one purpose".into(),
            ));
        }
        let sessions = match self.sessions {
            Some(0) => {
                return Err(Pkcs11Error::InvalidConfig(
                    "`sessions` must be at least 1".into(),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map_or(4, |n| n.get() * 2)
                .max(4),
        };
        Ok(Pkcs11Settings {
            module,
            token,
            pin,
            kek_label,
            mac_key_label,
            sessions,
            retry_interval: self.retry_interval.unwrap_or(Duration::from_secs(1)),
        })
    }
}

fn one_of<T>(name: &str, from_uri: Option<T>, own: Option<T>) -> Result<Option<T>, Pkcs11Error> {
    match (from_uri, own) {
        (Some(_), Some(_)) => Err(Pkcs11Error::InvalidConfig(format!(
            "`{name}` is given both in `uri` and on its own; give it once"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separate_keys_resolve_with_defaults() {
        let config = Pkcs11Config {
            module: Some("/usr/lib/softhsm/libsofthsm2.so".into()),
            token: Some(TokenSelector::Label("enos".into())),
            pin: Some(PinSource::File("/run/pin".into())),
            ..Pkcs11Config::default()
        };
        let settings = config.resolve().expect("complete");
        assert_eq!(settings.kek_label, DEFAULT_KEK_LABEL);
        assert_eq!(settings.mac_key_label, "enos-custody-kek-mac");
        assert!(settings.sessions >= 4);
        assert_eq!(settings.retry_interval, Duration::from_secs(1));
    }

    #[test]
    fn uri_alone_resolves() {
        let config = Pkcs11Config {
            uri: Some(
                "pkcs11:token=enos;object=kek?module-path=/m.so&pin-source=file:/run/pin".into(),
            ),
            ..Pkcs11Config::default()
        };
        let settings = config.resolve().expect("complete");
        assert_eq!(settings.module, PathBuf::from("/m.so"));
        assert_eq!(settings.token, TokenSelector::Label("enos".into()));
        assert_eq!(settings.pin, PinSource::File("/run/pin".into()));
        assert_eq!(settings.kek_label, "kek");
        assert_eq!(settings.mac_key_label, "kek-mac");
    }

    #[test]
    fn a_setting_given_twice_is_refused() {
        let config = Pkcs11Config {
            uri: Some("pkcs11:token=enos?module-path=/m.so&pin-source=file:/p".into()),
            token: Some(TokenSelector::Label("other".into())),
            ..Pkcs11Config::default()
        };
        let error = config.resolve().expect_err("ambiguous");
        assert!(
            error.to_string().contains("`token` is given both"),
            "{error}"
        );
    }

    #[test]
    fn missing_parts_are_named() {
        let error = Pkcs11Config::default().resolve().expect_err("empty");
        assert!(error.to_string().contains("no PKCS#11 module"), "{error}");
        let config = Pkcs11Config {
            module: Some("/m.so".into()),
            token: Some(TokenSelector::Slot(1)),
            ..Pkcs11Config::default()
        };
        let error = config.resolve().expect_err("no pin");
        assert!(error.to_string().contains("no PIN source"), "{error}");
    }

    #[test]
    fn zero_sessions_and_shared_labels_are_refused() {
        let base = Pkcs11Config {
            module: Some("/m.so".into()),
            token: Some(TokenSelector::Slot(1)),
            pin: Some(PinSource::Credential("pin".into())),
            ..Pkcs11Config::default()
        };
        let zero = Pkcs11Config {
            sessions: Some(0),
            ..base.clone()
        };
        assert!(zero.resolve().is_err());
        let same = Pkcs11Config {
            kek_label: Some("k".into()),
            mac_key_label: Some("k".into()),
            ..base
        };
        assert!(same.resolve().is_err());
    }
}
