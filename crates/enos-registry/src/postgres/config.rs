//! [`PostgresConfig`]: `[registry] kind = "postgres"`, and how it becomes a
//! driver config and a TLS connector.
//!
//! The password never sits in the config or argv: `password_file` (key
//! file rules: mode 0600, or from `$CREDENTIALS_DIRECTORY`). A URL that
//! carries a password is refused, and the URL is only ever logged as
//! [`PostgresConfig::display_target`] (user, hosts, database).

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio_postgres::config::{Host, SslMode};
use zeroize::Zeroizing;

use crate::error::{RegistryError, Result};

/// A PostgreSQL database shared by any number of signer replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgresql://USER@HOST:PORT/DATABASE`, without a password; a Unix
    /// socket is `postgresql://USER@/DATABASE?host=/run/postgresql`.
    pub url: String,
    /// The role's password (first line of the file); absent when the
    /// server needs none (peer authentication over a socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Connections each replica keeps open at most (the LISTEN connection
    /// comes on top).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// The CA (PEM) of the server's certificate. When set, TLS is required
    /// and the certificate is checked against it and the host name
    /// (`sslmode=verify-full`), with rustls on ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Whether each replica caches records (invalidated through
    /// LISTEN/NOTIFY); off reads every record from the database.
    #[serde(default = "yes")]
    pub cache: bool,
    /// Without `ca_file`, a password is sent only to a Unix socket or a
    /// loopback host (127.0.0.0/8, ::1, `localhost`): anywhere else it
    /// would cross the network in clear text. `true` is the operator's
    /// explicit opt-out (a network they trust end to end); default false.
    #[serde(default)]
    pub allow_plaintext_password: bool,
}

fn default_pool_size() -> usize {
    16
}

fn yes() -> bool {
    true
}

/// The driver config and the TLS to use with it.
pub struct Connect {
    /// Parsed URL, password and application name set.
    pub config: tokio_postgres::Config,
    /// rustls on ring when a CA is configured.
    pub tls: Tls,
}

/// How connections are secured.
#[derive(Clone)]
pub enum Tls {
    /// Plain TCP or a Unix socket.
    None,
    /// rustls, verifying against the configured CA and the host name.
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The `application_name` of pooled connections (what `pg_stat_activity`
/// shows).
pub(super) const APPLICATION_NAME: &str = "enos-signer";

impl PostgresConfig {
    /// `postgres://user@host:port/db` from the parsed URL: what logs and
    /// errors may show (no password can be in it: such URLs are refused).
    pub fn display_target(&self) -> String {
        match self.url.parse::<tokio_postgres::Config>() {
            Ok(c) => target(&c),
            Err(_) => "(unparsable registry.url)".into(),
        }
    }

    /// The driver config: URL parsed, password read, TLS decided.
    pub fn connect(&self) -> Result<Connect> {
        // The parser's message may quote the URL: keep it out.
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|_| {
            RegistryError::Config(
                "registry.url is not a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE)"
                    .into(),
            )
        })?;
        if config.get_password().is_some() {
            return Err(RegistryError::Config(
                "registry.url must not carry a password; put it in registry.password_file".into(),
            ));
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A dead peer is noticed by the kernel, not only on the next write.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if let Some(file) = &self.password_file {
            config.password(read_password(file)?.as_bytes());
        }
        let tls = match &self.ca_file {
            Some(ca) => {
                if config
                    .get_hosts()
                    .iter()
                    .any(|h| matches!(h, Host::Unix(_)))
                {
                    return Err(RegistryError::Config(
                        "registry.ca_file is for TCP hosts; a Unix socket needs no TLS".into(),
                    ));
                }
                config.ssl_mode(SslMode::Require);
                Tls::Rustls(rustls_connector(ca)?)
            }
            None => {
                if config.get_ssl_mode() == SslMode::Require {
                    return Err(RegistryError::Config(
                        "registry.url asks for TLS: set registry.ca_file (the server's CA), \
                         which also verifies the host name"
                            .into(),
                    ));
                }
                if config.get_password().is_some() && !self.allow_plaintext_password {
                    if let Some(remote) = remote_tcp_target(&config) {
                        return Err(RegistryError::Config(format!(
                            "registry.url names {remote}, which is not a loopback address, \
                             and without TLS the password would cross the network in clear \
                             text: set ca_file (the server's CA; TLS with verify-full), or, \
                             on a network you trust, allow_plaintext_password = true"
                        )));
                    }
                }
                config.ssl_mode(SslMode::Disable);
                Tls::None
            }
        };
        if self.pool_size == 0 {
            return Err(RegistryError::Config(
                "registry.pool_size must be at least 1".into(),
            ));
        }
        Ok(Connect { config, tls })
    }
}

/// The first TCP target of `c` that is not on this machine, if any: where
/// a password would leave it. A Unix socket, `localhost`, 127.0.0.0/8 and
/// ::1 stay; a host name other than `localhost` may resolve anywhere. As
/// the driver does, the i-th `hostaddr` (when given) is where the i-th
/// host is reached.
fn remote_tcp_target(c: &tokio_postgres::Config) -> Option<String> {
    let (hosts, addrs) = (c.get_hosts(), c.get_hostaddrs());
    (0..hosts.len().max(addrs.len())).find_map(|i| match (addrs.get(i), hosts.get(i)) {
        (Some(addr), _) => (!is_loopback(*addr)).then(|| addr.to_string()),
        (None, Some(Host::Tcp(name))) => {
            let local = name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(is_loopback);
            (!local).then(|| name.clone())
        }
        (None, _) => None,
    })
}

/// 127.0.0.0/8, ::1, and IPv4 loopback mapped into IPv6.
fn is_loopback(addr: std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `postgres://user@host:port/db` of a parsed config.
pub(super) fn target(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            Host::Tcp(name) => format!("{name}:{p}"),
            Host::Unix(dir) => format!("{}:{p}", dir.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        c.get_user().unwrap_or(""),
        hosts.join(","),
        c.get_dbname().unwrap_or("")
    )
}

/// The first line of a password file that passes the key file rules.
fn read_password(file: &std::path::Path) -> Result<Zeroizing<String>> {
    // One open: the file read is the file whose mode was checked.
    let bytes = enos_domain::private_file::read(file)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| RegistryError::BadPassword {
        path: file.to_owned(),
        reason: "the password file is not UTF-8",
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(RegistryError::BadPassword {
            path: file.to_owned(),
            reason: "empty password file",
        });
    }
    Ok(Zeroizing::new(line.to_owned()))
}

fn rustls_connector(ca: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let pem = std::fs::read(ca).map_err(|source| RegistryError::Unreadable {
        what: "the registry CA",
        path: ca.to_owned(),
        cause: source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| RegistryError::Tls(format!("{}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| RegistryError::Tls(format!("{}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(RegistryError::Tls(format!(
            "{}: no certificate in the file",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            password_file: None,
            pool_size: 4,
            ca_file: None,
            cache: true,
            allow_plaintext_password: false,
        }
    }

    #[test]
    fn passwords_stay_out_of_the_url_and_the_logs() {
        for url in [
            "postgresql://signer:hunter2@db.example:5432/enos",
            "postgresql://signer@db.example/enos?password=hunter2",
        ] {
            let refused = config(url).connect().err().expect("refused");
            let message = refused.to_string();
            assert!(message.contains("password_file"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        let bad = config("postgresql://signer:hunter2@[bad").connect();
        let message = bad.err().expect("refused").to_string();
        assert!(!message.contains("hunter2"), "{message}");

        let ok = config("postgresql://signer@db.example:6432/enos");
        assert_eq!(
            ok.display_target(),
            "postgres://signer@db.example:6432/enos"
        );
        let socket = config("postgresql://signer@/enos?host=/run/postgresql");
        assert_eq!(
            socket.display_target(),
            "postgres://signer@/run/postgresql:5432/enos"
        );
        assert!(matches!(socket.connect().expect("socket").tls, Tls::None));
    }

    #[test]
    fn tls_needs_a_ca_and_a_password_file_needs_tight_permissions() {
        let require = config("postgresql://signer@db.example/enos?sslmode=require");
        let message = require.connect().err().expect("refused").to_string();
        assert!(message.contains("ca_file"), "{message}");

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut with_file = config("postgresql://signer@127.0.0.1/enos");
        with_file.password_file = Some(file.clone());
        let loose = with_file.connect().err().expect("refused");
        assert!(
            matches!(
                loose,
                RegistryError::PrivateFile(
                    enos_domain::private_file::PrivateFileError::Loose { .. }
                )
            ),
            "{loose}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let connect = with_file.connect().expect("accepted");
        assert_eq!(connect.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(
            connect.config.get_application_name(),
            Some(APPLICATION_NAME)
        );
    }

    /// Issue 23, finding 10: no password over non-loopback TCP without
    /// TLS, unless the operator opts out explicitly; the error names both
    /// fixes and never the password.
    #[test]
    fn a_password_crosses_the_network_only_over_tls_or_by_explicit_opt_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let with_password = |url: &str| {
            let mut c = config(url);
            c.password_file = Some(file.clone());
            c
        };
        for url in [
            "postgresql://signer@db.example/enos",
            "postgresql://signer@10.0.0.5:5432/enos",
            "postgresql://signer@[2001:db8::1]:5432/enos",
            "postgresql://signer@localhost,db.example/enos",
            // The host name is loopback, but the driver connects to hostaddr.
            "postgresql://signer@localhost/enos?hostaddr=192.0.2.7",
            "postgresql://signer@/enos?hostaddr=192.0.2.7",
        ] {
            let refused = with_password(url).connect().err().expect(url);
            let message = refused.to_string();
            assert!(
                matches!(refused, RegistryError::Config(_)),
                "{url}: {message}"
            );
            assert!(message.contains("ca_file"), "{url}: {message}");
            assert!(
                message.contains("allow_plaintext_password = true"),
                "{url}: {message}"
            );
            assert!(!message.contains("s3cret"), "{url}: {message}");

            let mut opted_out = with_password(url);
            opted_out.allow_plaintext_password = true;
            let connect = opted_out.connect().expect("explicit opt-out");
            assert!(matches!(connect.tls, Tls::None), "{url}");
            // Without a password nothing secret is sent: no refusal.
            config(url).connect().expect("no password");
        }
        for url in [
            "postgresql://signer@127.0.0.1:5432/enos",
            "postgresql://signer@127.8.9.10/enos",
            "postgresql://signer@[::1]:5432/enos",
            "postgresql://signer@LocalHost/enos",
            "postgresql://signer@/enos?host=/run/postgresql",
            "postgresql://signer@db.example/enos?hostaddr=127.0.0.1",
        ] {
            let connect = with_password(url).connect().expect(url);
            assert_eq!(connect.config.get_password(), Some(&b"s3cret"[..]), "{url}");
        }
    }
}
