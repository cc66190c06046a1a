//! PKCS#11 URIs (RFC 7512), the part HSM custody needs:
//! `pkcs11:token=enos;object=enos-custody-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/enos/hsm.pin`.
//!
//! `pin-source` and `module-path` are query attributes in the RFC; they
//! are accepted in the path too (`pkcs11:token=enos;pin-source=file:...`),
//! as some tools write them. `pin-value` is refused: a PIN inside a
//! configuration string ends up in process listings and shell history.

use std::path::PathBuf;

use crate::{
    Pkcs11Error,
    config::{PinSource, TokenSelector},
};

/// What a URI contributes to the configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Pkcs11Uri {
    /// `module-path`.
    pub(crate) module_path: Option<PathBuf>,
    /// `token`, `slot-id` or `serial` (one of them).
    pub(crate) token: Option<TokenSelector>,
    /// `object`: the KEK's label.
    pub(crate) object: Option<String>,
    /// `pin-source`.
    pub(crate) pin_source: Option<PinSource>,
}

fn invalid(reason: impl Into<String>) -> Pkcs11Error {
    Pkcs11Error::InvalidConfig(format!("PKCS#11 URI: {}", reason.into()))
}

impl Pkcs11Uri {
    /// Parses `text` naming custody's KEK (`type=secret-key` if given);
    /// every attribute must be known and given once.
    pub(crate) fn parse(text: &str) -> Result<Self, Pkcs11Error> {
        Self::parse_for(text, "secret-key", "the KEK")
    }

    /// Parses `text` naming an object of `object_type` (RFC 7512's
    /// `type`, checked when given); `what` names it in the error.
    pub(crate) fn parse_for(
        text: &str,
        object_type: &'static str,
        what: &'static str,
    ) -> Result<Self, Pkcs11Error> {
        let rest = text
            .strip_prefix("pkcs11:")
            .ok_or_else(|| invalid("must start with `pkcs11:`"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut uri = Pkcs11Uri::default();
        let attributes = path
            .split(';')
            .chain(query.split('&'))
            .filter(|attribute| !attribute.is_empty());
        for attribute in attributes {
            let (name, raw) = attribute
                .split_once('=')
                .ok_or_else(|| invalid(format!("attribute `{attribute}` has no `=`")))?;
            let value = percent_decode(raw)?;
            uri.set(name, value, object_type, what)?;
        }
        Ok(uri)
    }

    fn set(
        &mut self,
        name: &str,
        value: String,
        object_type: &str,
        what: &str,
    ) -> Result<(), Pkcs11Error> {
        fn put<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), Pkcs11Error> {
            if slot.replace(value).is_some() {
                return Err(invalid(format!("`{name}` is given more than once")));
            }
            Ok(())
        }
        match name {
            "module-path" => put(&mut self.module_path, name, PathBuf::from(value)),
            "token" => put(
                &mut self.token,
                "token/slot-id/serial",
                TokenSelector::Label(value),
            ),
            "serial" => put(
                &mut self.token,
                "token/slot-id/serial",
                TokenSelector::Serial(value),
            ),
            "slot-id" => {
                let id = value
                    .parse()
                    .map_err(|_| invalid(format!("`slot-id={value}` is not a number")))?;
                put(
                    &mut self.token,
                    "token/slot-id/serial",
                    TokenSelector::Slot(id),
                )
            }
            "object" => put(&mut self.object, name, value),
            // The object's type is fixed by its role; another is a mistake.
            "type" if value == object_type => Ok(()),
            "type" => Err(invalid(format!(
                "`type={value}`: {what} is a `{object_type}`"
            ))),
            "pin-source" => put(&mut self.pin_source, name, pin_source(&value)?),
            "pin-value" => Err(invalid(
                "`pin-value` is refused: put the PIN in a file and use `pin-source=file:/path`",
            )),
            "module-name" => Err(invalid(
                "`module-name` is not supported: give the library's full `module-path`",
            )),
            other => Err(invalid(format!("unsupported attribute `{other}`"))),
        }
    }
}

/// `file:/abs/path`, `file:///abs/path`, a bare absolute path, or
/// `credential:NAME` (systemd's `$CREDENTIALS_DIRECTORY/NAME`).
fn pin_source(value: &str) -> Result<PinSource, Pkcs11Error> {
    if let Some(name) = value.strip_prefix("credential:") {
        return Ok(PinSource::Credential(name.to_owned()));
    }
    let path = value
        .strip_prefix("file://")
        .or_else(|| value.strip_prefix("file:"))
        .unwrap_or(value);
    if !path.starts_with('/') {
        return Err(invalid(
            "`pin-source` must be `file:/absolute/path` or `credential:NAME`",
        ));
    }
    Ok(PinSource::File(PathBuf::from(path)))
}

/// `%2F` → `/`; the result must be UTF-8.
fn percent_decode(raw: &str) -> Result<String, Pkcs11Error> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| invalid(format!("bad percent-escape in `{raw}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("`{raw}` is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_and_query_attributes() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=enos-kek;type=secret-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/enos/hsm.pin",
        )
        .expect("valid");
        assert_eq!(uri.token, Some(TokenSelector::Label("My Token".into())));
        assert_eq!(uri.object.as_deref(), Some("enos-kek"));
        assert_eq!(
            uri.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(
            uri.pin_source,
            Some(PinSource::File("/etc/enos/hsm.pin".into()))
        );
    }

    #[test]
    fn accepts_pin_source_in_the_path_and_credentials() {
        let uri = Pkcs11Uri::parse("pkcs11:token=enos;pin-source=file:///run/pin").expect("valid");
        assert_eq!(uri.pin_source, Some(PinSource::File("/run/pin".into())));
        let uri =
            Pkcs11Uri::parse("pkcs11:slot-id=7;pin-source=credential:hsm-pin").expect("valid");
        assert_eq!(uri.token, Some(TokenSelector::Slot(7)));
        assert_eq!(
            uri.pin_source,
            Some(PinSource::Credential("hsm-pin".into()))
        );
    }

    #[test]
    fn refuses_pin_values_and_unknown_or_repeated_attributes() {
        for (text, expected) in [
            ("pkcs11:token=a?pin-value=1234", "pin-value"),
            ("pkcs11:token=a;token=b", "more than once"),
            ("pkcs11:token=a;slot-id=1", "more than once"),
            ("pkcs11:tokn=a", "unsupported attribute `tokn`"),
            ("pkcs11:type=private", "secret-key"),
            ("pkcs11:slot-id=x", "not a number"),
            ("pkcs11:token=%zz", "percent-escape"),
            ("pkcs11:token", "no `=`"),
            ("pkcs11:token=a;pin-source=relative/pin", "absolute"),
            ("pkcs12:token=a", "must start with"),
        ] {
            let error = Pkcs11Uri::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("1234"), "a PIN leaked into: {error}");
        }
    }
}
