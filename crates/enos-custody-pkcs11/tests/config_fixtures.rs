//! The configuration as operators write it: TOML fixtures in `fixtures/`.

use std::{path::PathBuf, time::Duration};

use enos_custody_pkcs11::{PinSource, Pkcs11Config, Pkcs11Settings, TokenSelector};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn resolve(name: &str) -> Result<Pkcs11Settings, String> {
    let config: Pkcs11Config = toml::from_str(&fixture(name)).map_err(|e| e.to_string())?;
    config.resolve().map_err(|e| e.to_string())
}

#[test]
fn separate_keys() {
    let settings = resolve("separate-keys.toml").expect("valid");
    assert_eq!(
        settings.module,
        PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
    );
    assert_eq!(settings.token, TokenSelector::Label("enos".into()));
    assert_eq!(
        settings.pin,
        PinSource::File("/etc/enos-signer/hsm.pin".into())
    );
    assert_eq!(settings.kek_label, "fleet-kek");
    assert_eq!(settings.mac_key_label, "fleet-kek-mac");
    assert_eq!(settings.sessions, 8);
    assert_eq!(settings.retry_interval, Duration::from_secs(2));
}

#[test]
fn one_uri_says_the_same() {
    let by_uri = resolve("uri.toml").expect("valid");
    let by_keys = resolve("separate-keys.toml").expect("valid");
    assert_eq!(by_uri.module, by_keys.module);
    assert_eq!(by_uri.token, by_keys.token);
    assert_eq!(by_uri.pin, by_keys.pin);
    assert_eq!(by_uri.kek_label, by_keys.kek_label);
    assert_eq!(by_uri.mac_key_label, by_keys.mac_key_label);
}

#[test]
fn systemd_credential_and_serial() {
    let settings = resolve("credential.toml").expect("valid");
    assert_eq!(settings.pin, PinSource::Credential("hsm-pin".into()));
    assert_eq!(
        settings.token,
        TokenSelector::Serial("5a1174dbba05631a".into())
    );
}

#[test]
fn mistakes_are_refused_with_the_reason() {
    for (name, reason) in [
        ("unknown-key.toml", "unknown field `kek_lable`"),
        ("pin-in-uri.toml", "`pin-value` is refused"),
        ("token-twice.toml", "`token` is given both"),
    ] {
        let error = resolve(name).expect_err(name);
        assert!(error.contains(reason), "{name}: {error}");
        assert!(
            !error.contains("1234"),
            "{name}: the PIN is echoed: {error}"
        );
    }
}

/// The signer service selects its custody with an internally tagged enum
/// (`[custody] kind = "..."`); HSM custody's config must embed in one.
#[test]
fn embeds_in_an_internally_tagged_custody_choice() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
    enum CustodyConfig {
        Software {
            #[allow(dead_code)]
            master_key_file: PathBuf,
        },
        Pkcs11(Pkcs11Config),
    }
    #[derive(Debug, serde::Deserialize)]
    struct ServiceConfig {
        custody: CustodyConfig,
    }
    let text = format!(
        "[custody]\nkind = \"pkcs11\"\n{}",
        fixture("separate-keys.toml")
    );
    let config: ServiceConfig = toml::from_str(&text).expect("valid");
    let CustodyConfig::Pkcs11(pkcs11) = config.custody else {
        panic!("expected the pkcs11 variant: {config:?}");
    };
    assert_eq!(pkcs11.resolve().expect("complete").kek_label, "fleet-kek");
    let typo = text.replace("kek_label", "kek_lable");
    let error = toml::from_str::<ServiceConfig>(&typo).expect_err("unknown key");
    assert!(error.to_string().contains("kek_lable"), "{error}");
}
