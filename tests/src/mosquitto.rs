//! [`Mosquitto`]: Debian's Mosquitto, started with its own config on a
//! free port of 127.0.0.1, its log captured.
//!
//! Mosquitto cannot listen on port 0 and report the port, so the port is
//! held by a [`PortReservation`] (a bound, non-listening `SO_REUSEADDR`
//! socket) for Mosquitto's whole life: Mosquitto sets `SO_REUSEADDR` on its
//! listener too, so it can bind the port, and nobody else gets it.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use enos_sandbox::PortReservation;
use enos_testkit::{ChildProcess, OutputLog};

use crate::error::{E2eError, Result};

/// TLS settings of the listener.
#[derive(Debug, Clone)]
pub struct MosquittoTls {
    /// Clients must present a certificate chaining to this CA.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// Who may log in.
#[derive(Debug, Clone)]
pub enum MosquittoAuth {
    /// Anyone, any username and password.
    Anonymous,
    /// Only the users of a password file; the suite's devices are not in
    /// it, so they get CONNACK "not authorised".
    PasswordFileWithout,
}

/// A running Mosquitto.
#[derive(Debug)]
pub struct Mosquitto {
    /// The broker process.
    child: ChildProcess,
    /// Its listener.
    reservation: PortReservation,
}

/// The Mosquitto binary: `/usr/sbin/mosquitto` on Debian (often off PATH).
pub fn binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

impl Mosquitto {
    /// Starts Mosquitto with config in `dir` and waits until it listens.
    pub fn start(dir: &Path, tls: Option<&MosquittoTls>, auth: MosquittoAuth) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(E2eError::io(format!("creating {}", dir.display())))?;
        let reservation = PortReservation::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = reservation.addr().port();
        let mut conf = format!(
            "# Written by the enos-e2e suite.\n\
             persistence false\n\
             log_dest stderr\n\
             log_type all\n\
             connection_messages true\n\
             # Stay root when started as root: the key files are the test's.\n\
             user root\n\
             listener {port} 127.0.0.1\n"
        );
        if let Some(tls) = tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
                 # The client certificate's CN (the device key) becomes the username:\n\
                 # the log then proves which certificate was presented.\n\
                 use_identity_as_username true\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ));
        }
        match auth {
            MosquittoAuth::Anonymous => conf.push_str("allow_anonymous true\n"),
            MosquittoAuth::PasswordFileWithout => {
                let passwords = dir.join("passwords");
                // One user who is not any of the suite's devices, with a
                // random SHA-512 hash: nobody knows a password for it.
                let mut salt = [0u8; 12];
                let mut hash = [0u8; 64];
                getrandom::fill(&mut salt)
                    .and_then(|()| getrandom::fill(&mut hash))
                    .map_err(|e| E2eError::failed(format!("no randomness: {e}")))?;
                let line = format!(
                    "someone-else:$6${}${}\n",
                    B64.encode(salt),
                    B64.encode(hash)
                );
                enos_testkit::write_private(&passwords, line.as_bytes())
                    .map_err(|e| E2eError::failed(format!("writing the password file: {e}")))?;
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    passwords.display()
                ));
            }
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf)
            .map_err(E2eError::io(format!("writing {}", conf_path.display())))?;
        let mut child = ChildProcess::spawn(
            "mosquitto",
            &binary(),
            [OsStr::new("-c"), conf_path.as_os_str()],
            &[],
        )
        .map_err(|e| {
            E2eError::failed(format!(
                "{e} (Mosquitto is Debian's `mosquitto` package; `cargo xtask test` installs it)"
            ))
        })?;
        child.wait_for_line(
            0,
            &format!("listen socket on port {port}"),
            Duration::from_secs(10),
        )?;
        Ok(Mosquitto { child, reservation })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.reservation.addr()
    }

    /// Its log.
    pub fn log(&self) -> &OutputLog {
        self.child.log()
    }
}
