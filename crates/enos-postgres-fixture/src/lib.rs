//! Throwaway PostgreSQL clusters for tests: a real server, started by the
//! test, gone when the test ends.
//!
//! [`PgCluster::start`] runs `initdb` into a temporary directory and
//! `pg_ctl start` on a free port of `127.0.0.1` (and a Unix socket in the
//! same directory). Tests run as root and `initdb` refuses root, so the
//! server runs as an unprivileged user (`postgres` from Debian's package,
//! else a system user created for it). Dropping the cluster stops the
//! server (`pg_ctl stop -m immediate`) and removes the directory, also
//! when the test panicked.
//!
//! Authentication is `scram-sha-256` for every connection (TCP and socket):
//! the superuser `enos` has a random password, in [`PgCluster::password_file`]
//! (mode 0600), as a signer would read it.
//!
//! # Layout
//!
//! - [`PgCluster`]: start, connection details, `psql`, stop on drop.
//! - [`bin_dir`]: where the PostgreSQL server binaries are.
//! - [`FixtureError`]: the crate's one error type.
#![forbid(unsafe_code)]

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The superuser every cluster is created with.
pub const SUPERUSER: &str = "enos";

/// What can go wrong starting or using a cluster.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in \
         /usr/lib/postgresql/*/bin; install them: apt-get install -y postgresql \
         (`cargo xtask test` does)"
    )]
    NotInstalled,
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        /// The command.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error (the server log for `pg_ctl start`).
        stderr: String,
    },
}

/// The crate's result type.
pub type Result<T, E = FixtureError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FixtureError {
    let what = what.into();
    move |source| FixtureError::Io { what, source }
}

/// The directory holding `initdb`, `pg_ctl` and `psql`: `PATH` first
/// (following a symlink to the real directory, where `psql` is too), then
/// the newest `/usr/lib/postgresql/*/bin` (Debian keeps them off `PATH`).
pub fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        let initdb = std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())?;
        Some(initdb.canonicalize().ok()?.parent()?.to_owned())
    });
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

/// The unprivileged account the server runs as when the tests run as root.
struct RunAs {
    /// The account name, for `runuser`.
    name: String,
    /// Its uid, owner of the cluster's directory.
    uid: u32,
    /// Its gid.
    gid: u32,
}

/// A running throwaway cluster.
pub struct PgCluster {
    /// Holds the data directory, the socket, the log and the password
    /// file; removed on drop after the server is stopped.
    dir: tempfile::TempDir,
    /// Where `initdb`, `pg_ctl` and `psql` are.
    bin: PathBuf,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// Set when the tests run as root: the server's account.
    run_as: Option<RunAs>,
    /// The superuser's password, for `psql` (through the environment,
    /// never argv).
    password: String,
    /// Whether the server also accepts TLS (`server.crt`, `server.key` in
    /// the directory).
    tls: bool,
}

impl PgCluster {
    /// Initialises and starts a cluster on a free port of 127.0.0.1.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// As [`PgCluster::start`], serving TLS as well with this certificate
    /// chain and key (PEM); plain connections stay allowed.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_inner(Some((cert_pem, key_pem)))
    }

    fn start_inner(tls: Option<(&str, &str)>) -> Result<Self> {
        let bin = bin_dir().ok_or(FixtureError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("enos-pg-")
            .tempdir()
            .map_err(io("creating the cluster directory"))?;
        let run_as = if rustix::process::getuid().is_root() {
            Some(server_account()?)
        } else {
            None
        };
        if let Some(account) = &run_as {
            std::os::unix::fs::chown(dir.path(), Some(account.uid), Some(account.gid))
                .map_err(io("chown of the cluster directory"))?;
        }
        let password = random_password()?;
        let pwfile = dir.path().join("superuser.password");
        std::fs::write(&pwfile, &password).map_err(io("writing the password file"))?;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod of the password file"))?;
        if let Some(account) = &run_as {
            std::os::unix::fs::chown(&pwfile, Some(account.uid), Some(account.gid))
                .map_err(io("chown of the password file"))?;
        }
        if let Some((cert, key)) = tls {
            for (name, contents) in [("server.crt", cert), ("server.key", key)] {
                let path = dir.path().join(name);
                std::fs::write(&path, contents).map_err(io("writing the TLS files"))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io("chmod of the TLS files"))?;
                if let Some(account) = &run_as {
                    std::os::unix::fs::chown(&path, Some(account.uid), Some(account.gid))
                        .map_err(io("chown of the TLS files"))?;
                }
            }
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            run_as,
            password,
            tls: tls.is_some(),
        };
        let data = cluster.data_dir();
        cluster.run_server_tool(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                format!("--pwfile={}", pwfile.display()).as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                // A throwaway cluster needs no fsync of its files.
                "--no-sync".as_ref(),
            ],
        )?;
        // The port is free when asked; another process may take it before
        // the server binds, so try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(FixtureError::NotInstalled))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} \
             -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            let dir = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
        }
        let log = self.dir.path().join("server.log");
        let data = self.data_dir();
        let started = self.run_server_tool(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        );
        started.map(drop).map_err(|e| match e {
            FixtureError::Command { what, status, .. } => FixtureError::Command {
                what,
                status,
                stderr: std::fs::read_to_string(&log).unwrap_or_default(),
            },
            other => other,
        })
    }

    /// Runs a server tool of [`bin_dir`] as the server's account.
    fn run_server_tool(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<Output> {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(account) => {
                let mut c = Command::new(system_tool("runuser"));
                c.args(["-u", &account.name, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.args(args).current_dir(self.dir.path());
        checked(tool, &mut command)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection URL for `database` over TCP, without the password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A connection URL for `database` over the Unix socket, without the
    /// password.
    pub fn socket_url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@/{database}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// The superuser's password in a file (mode 0600).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("superuser.password")
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(drop)
    }

    /// Runs `sql` in `database` with `psql` as the superuser; returns its
    /// unaligned, tuples-only output (one row a line, `|` between fields).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", database])
            // The password through the environment and the SQL (which may
            // set passwords) through stdin: never argv.
            .env("PGPASSWORD", &self.password)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().map_err(io("running psql"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(sql.as_bytes())
                .map_err(io("writing SQL to psql"))?;
        }
        let output = child.wait_with_output().map_err(io("waiting for psql"))?;
        if !output.status.success() {
            return Err(FixtureError::Command {
                what: "psql".into(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned())
    }

    /// Creates a login role with a random password and `options` (e.g.
    /// `IN ROLE enos_signer`); returns a file (mode 0600) holding the
    /// password, beside the cluster's own.
    pub fn create_login(&self, name: &str, options: &str) -> Result<PathBuf> {
        let password = random_password()?;
        self.psql(
            "postgres",
            &format!("CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}' {options}"),
        )?;
        let file = self.dir.path().join(format!("{name}.password"));
        std::fs::write(&file, &password).map_err(io("writing a password file"))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod of a password file"))?;
        Ok(file)
    }

    /// A connection URL for `database` as `user`, over TCP, without the
    /// password.
    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server at once (`immediate`: as a crash or a host going
    /// away); [`PgCluster::start_again`] brings it back on the same port.
    pub fn stop(&self) -> Result<()> {
        let data = self.data_dir();
        self.run_server_tool(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-w".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        )
        .map(drop)
    }

    /// Starts a stopped server again, on the same port and data.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl_start()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.port == 0 {
            return;
        }
        // Already stopped by a test is fine.
        let _ = self.stop();
    }
}

fn checked(what: &str, command: &mut Command) -> Result<Output> {
    let output = command.output().map_err(io(format!("running {what}")))?;
    if !output.status.success() {
        return Err(FixtureError::Command {
            what: what.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output)
}

/// `name` from `PATH`, else from `/usr/sbin` or `/sbin` (administration
/// tools such as `runuser` and `useradd` live there, often off `PATH`).
fn system_tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `postgres` (Debian's package creates it), else a system account made
/// for the fixture.
fn server_account() -> Result<RunAs> {
    const OWN: &str = "enos-postgres";
    for name in ["postgres", OWN] {
        if let Some(account) = lookup_account(name)? {
            return Ok(account);
        }
    }
    checked(
        "useradd",
        Command::new(system_tool("useradd")).args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            OWN,
        ]),
    )?;
    lookup_account(OWN)?.ok_or_else(|| FixtureError::Io {
        what: format!("looking up {OWN} after useradd"),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

fn lookup_account(name: &str) -> Result<Option<RunAs>> {
    let id = |flag: &str| -> Result<Option<u32>> {
        let output = Command::new("id")
            .args([flag, name])
            .output()
            .map_err(io("running id"))?;
        Ok(output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .flatten())
    };
    Ok(match (id("-u")?, id("-g")?) {
        (Some(uid), Some(gid)) => Some(RunAs {
            name: name.to_owned(),
            uid,
            gid,
        }),
        _ => None,
    })
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding 127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(io("reading the bound address"))?
        .port())
}

/// 32 hex digits from the kernel's random source.
fn random_password() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_answers_and_is_removed_on_drop() {
        let cluster = PgCluster::start().expect("cluster starts");
        cluster.create_database("fixture_test").expect("createdb");
        let answer = cluster.psql("fixture_test", "SELECT 40 + 2").expect("psql");
        assert_eq!(answer, "42");
        let dir = cluster.socket_dir().to_owned();
        let port = cluster.port();
        assert!(dir.join(format!(".s.PGSQL.{port}")).exists(), "Unix socket");
        drop(cluster);
        assert!(!dir.exists(), "directory removed");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "server stopped"
        );
    }
}
