//! The config schema against TOML fixtures: the shipped example, a minimal
//! file with its defaults, and files that must be refused with a clear,
//! field-naming error.

use std::{path::Path, time::Duration};

use enos_agent::{Config, config::UpstreamTarget};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn refused(name: &str) -> String {
    Config::load(&fixture(name))
        .expect_err("the fixture must be refused")
        .to_string()
}

#[test]
fn the_deploy_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agent.example.toml");
    let config = Config::load(&path).expect("deploy/agent.example.toml parses");
    assert_eq!(config.device.product_key.as_str(), "pk8fTlYz");
    assert_eq!(config.signer.endpoints.len(), 2);
    assert!(config.enos.broker.tls);
    assert_eq!(config.enos.broker.port, 18883);
    assert!(config.enos.tls.is_some());
    assert_eq!(config.backoff.max, Duration::from_secs(120));
    let bridge = config.bridge.expect("bridge");
    assert_eq!(bridge.upstream.len(), 3);
    assert_eq!(bridge.upstream[1].target, UpstreamTarget::EventPost);
    assert_eq!(bridge.upstream[1].event_id.as_deref(), Some("overheat"));
    assert_eq!(config.sub_devices.len(), 2);
    assert!(!config.sub_devices[1].clean_session);
    assert_eq!(
        config.status.file.as_deref(),
        Some(Path::new("/run/enos-agent/status.json"))
    );
}

#[test]
fn a_minimal_config_gets_the_sdk_like_defaults() {
    let config = Config::load(&fixture("minimal.toml")).expect("minimal parses");
    assert!(!config.enos.broker.tls);
    assert_eq!(config.enos.broker.host, "127.0.0.1");
    assert_eq!(config.enos.broker.port, 11883);
    assert_eq!(config.enos.keepalive, Duration::from_secs(60));
    assert_eq!(config.enos.connect_timeout, Duration::from_secs(30));
    assert_eq!(config.backoff.min, Duration::from_secs(1));
    assert!((config.backoff.jitter - 1.0).abs() < f64::EPSILON);
    assert_eq!(config.queue.upstream_capacity, 1000);
    assert!(config.bridge.is_none());
    assert!(config.sub_devices.is_empty());
    assert!(config.status.file.is_none());
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let e = refused("bad_broker_scheme.toml");
    assert!(e.contains("tcp://") && e.contains("line"), "{e}");
    let e = refused("ssl_without_tls.toml");
    assert!(e.contains("enos.tls"), "{e}");
    let e = refused("unknown_field.toml");
    assert!(e.contains("device_secret"), "{e}");
    // The value of an unknown field is not echoed.
    assert!(!e.contains("never here"), "{e}");
    let e = refused("forged_key.toml");
    assert!(e.contains("productKey") && e.contains("'&'"), "{e}");
    let e = refused("bad_bridge.toml");
    assert!(e.contains("bridge.upstream[0].event_id"), "{e}");
}

/// #29 item 8: every duration of the three binaries is a humantime
/// string; a bare number (`1`, which a signer or sandbox file of an older
/// release would have) is refused with the key and the form to write.
#[test]
fn a_duration_without_its_unit_names_the_form() {
    let e = refused("bare_duration.toml");
    assert!(
        e.contains(
            "line 11, column 19 (`connect_timeout`): `connect_timeout` is a duration with its unit, \
             written as a string: for example `connect_timeout = \"10s\"`"
        ),
        "{e}"
    );
}

#[test]
fn value_checks_name_the_field() {
    let base = std::fs::read_to_string(fixture("minimal.toml")).expect("fixture");
    let cases = [
        ("[backoff]\nmin = \"2s\"\nmax = \"1s\"\n", "backoff.max"),
        ("[backoff]\njitter = 1.5\n", "backoff.jitter"),
        (
            "[queue]\nupstream_capacity = 0\n",
            "queue.upstream_capacity",
        ),
        ("[status]\n", ""),
        (
            "[[sub_devices]]\nproduct_key = \"pk1\"\ndevice_key = \"dk1\"\n",
            "sub_devices[0]",
        ),
    ];
    for (extra, field) in cases {
        let text = format!("{base}\n{extra}");
        let result = Config::parse(&text, Path::new("inline.toml"));
        if field.is_empty() {
            result.expect("valid");
        } else {
            let e = result.expect_err(extra).to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }
    let keepalive = base.replace("[enos]\n", "[enos]\nkeepalive = \"1500ms\"\n");
    let e = Config::parse(&keepalive, Path::new("inline.toml"))
        .expect_err("sub-second keepalive")
        .to_string();
    assert!(e.contains("enos.keepalive"), "{e}");
    let http = base.replace("https://127.0.0.1:7443", "http://127.0.0.1:7443");
    let e = Config::parse(&http, Path::new("inline.toml"))
        .expect_err("plain http signer")
        .to_string();
    assert!(e.contains("signer.endpoints[0]"), "{e}");
}

#[test]
fn renewal_defaults_to_two_thirds_with_a_tenth_of_jitter_and_is_configurable() {
    let config = Config::load(&fixture("minimal.toml")).expect("minimal parses");
    assert!(config.renewal.enabled);
    assert!((config.renewal.at - 2.0 / 3.0).abs() < 1e-12);
    assert!((config.renewal.jitter - 0.1).abs() < 1e-12);

    let config = Config::load(&fixture("renewal.toml")).expect("renewal parses");
    assert!(config.renewal.enabled);
    assert!((config.renewal.at - 0.75).abs() < 1e-12);
    assert!((config.renewal.jitter - 0.05).abs() < 1e-12);

    let e = refused("renewal_unknown_field.toml");
    assert!(e.contains("before"), "{e}");

    let base = std::fs::read_to_string(fixture("minimal.toml")).expect("fixture");
    for (extra, field) in [
        ("[renewal]\nat = 1.0\n", "renewal.at"),
        ("[renewal]\nat = 0.0\n", "renewal.at"),
        ("[renewal]\nat = nan\n", "renewal.at"),
        ("[renewal]\njitter = -0.1\n", "renewal.jitter"),
        ("[renewal]\nat = 0.95\njitter = 0.1\n", "renewal.jitter"),
        ("[renewal]\nat = 0.05\njitter = 0.1\n", "renewal.jitter"),
        ("[renewal]\nenabled = false\n", ""),
        ("[renewal]\nat = 0.5\njitter = 0.0\n", ""),
    ] {
        let result = Config::parse(&format!("{base}\n{extra}"), Path::new("inline.toml"));
        if field.is_empty() {
            result.expect(extra);
        } else {
            let e = result.expect_err(extra).to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }
}

/// Issue 26: `[enos.tls] source = "signer"` (the EnOS certificate
/// brokered by the signer) parses; `file` is the default; any other value
/// is refused naming the key.
#[test]
fn enos_tls_source_says_who_provides_the_certificate() {
    use enos_agent::config::EnosCertSource;
    let config = Config::load(&fixture("enos_cert_signer.toml")).expect("parses");
    let tls = config.enos.tls.as_ref().expect("[enos.tls]");
    assert_eq!(tls.source, EnosCertSource::Signer);
    assert!(tls.cert.ends_with("enos-device.pem"), "{:?}", tls.cert);
    let text = std::fs::read_to_string(fixture("enos_cert_signer.toml")).expect("fixture");
    let default = Config::parse(
        &text.replace("source = \"signer\"\n", ""),
        Path::new("t.toml"),
    )
    .expect("parses");
    assert_eq!(
        default.enos.tls.expect("[enos.tls]").source,
        EnosCertSource::File
    );
    let e = Config::parse(
        &text.replace("source = \"signer\"", "source = \"enos\""),
        Path::new("t.toml"),
    )
    .expect_err("an unknown source")
    .to_string();
    assert!(e.contains("source") || e.contains("unknown variant"), "{e}");
}
