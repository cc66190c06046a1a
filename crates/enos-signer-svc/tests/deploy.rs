//! deploy/: the example config starts a real signer, and the systemd unit
//! carries the hardening the issue asks for.

use std::collections::HashMap;

use enos_signer_svc::SignerConfig;

const UNIT: &str = include_str!("../../../deploy/enos-signer.service");
const EXAMPLE: &str = include_str!("../../../deploy/signer.example.toml");

/// `Key=Value` lines of the unit, every value of a repeated key kept.
fn directives() -> HashMap<&'static str, Vec<&'static str>> {
    let mut map: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            map.entry(key).or_default().push(value);
        }
    }
    map
}

#[test]
fn the_systemd_unit_is_hardened() {
    let d = directives();
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("KillSignal", "SIGTERM"),
        // `systemctl reload`: re-read the TLS files now.
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(d.get(key).map(Vec::as_slice), Some(&[value][..]), "{key}");
    }
    let credentials = &d["LoadCredential"];
    for name in ["master.key:", "audit.key:", "server.key:"] {
        assert!(credentials.iter().any(|c| c.starts_with(name)), "{name}");
    }
    // The command line names the config only: no key, no secret.
    let exec = d["ExecStart"][0];
    assert_eq!(
        exec,
        "/usr/local/bin/enos-signer serve --config /etc/enos-signer/signer.toml"
    );
}

#[test]
fn the_example_config_uses_credentials_for_every_key() {
    let config = SignerConfig::from_toml(EXAMPLE).expect("parses");
    // Relative key paths: found in $CREDENTIALS_DIRECTORY under systemd.
    assert!(config.server.key.is_relative());
    assert!(config.audit.key_file.is_relative());
    // Written to keep compiling when more custody kinds exist.
    #[allow(irrefutable_let_patterns)]
    if let enos_signer_svc::config::CustodyConfig::Software { master_key_file } = &config.custody {
        assert!(master_key_file.is_relative());
    } else {
        panic!("the example uses software custody");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for key in ["server.key", "master.key", "audit.key"] {
        std::fs::write(dir.path().join(key), "x").expect("write");
    }
    let mut resolved = config.clone();
    resolved.resolve_paths(std::path::Path::new("/etc/enos-signer"), Some(dir.path()));
    assert_eq!(resolved.server.key, dir.path().join("server.key"));
    assert_eq!(resolved.audit.key_file, dir.path().join("audit.key"));
}

#[test]
fn the_fleet_example_runs_on_postgresql_with_its_password_from_credentials() {
    use enos_signer_svc::config::{AuditSinkConfig, RegistryConfig};
    let text = include_str!("../../../deploy/signer.postgres.example.toml");
    let config = SignerConfig::from_toml(text).expect("parses");
    let RegistryConfig::Postgres(registry) = &config.registry else {
        panic!("the fleet example uses PostgreSQL");
    };
    assert!(registry.cache);
    assert_eq!(registry.pool_size, 16);
    assert_eq!(
        registry.display_target(),
        "postgres://signer@db.example.internal:5432/enos"
    );
    let AuditSinkConfig::Postgres(sink) = &config.audit.sink else {
        panic!("the fleet example audits into PostgreSQL");
    };
    assert_eq!(sink.url, registry.url);
    assert!(config.audit.fail_closed);
    let dir = tempfile::tempdir().expect("tempdir");
    for key in ["server.key", "master.key", "audit.key", "db.password"] {
        std::fs::write(dir.path().join(key), "x").expect("write");
    }
    let mut resolved = config.clone();
    resolved.resolve_paths(std::path::Path::new("/etc/enos-signer"), Some(dir.path()));
    let RegistryConfig::Postgres(registry) = &resolved.registry else {
        unreachable!("checked above");
    };
    // The database password: from $CREDENTIALS_DIRECTORY, like every key.
    assert_eq!(
        registry.password_file.as_deref(),
        Some(dir.path().join("db.password").as_path())
    );
    assert_eq!(
        registry.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/enos-signer/db-ca.pem"))
    );
    let AuditSinkConfig::Postgres(sink) = &resolved.audit.sink else {
        unreachable!("checked above");
    };
    assert_eq!(sink.password_file, registry.password_file);
}
