//! A throwaway SoftHSM2 token per test process (feature `softhsm-fixture`).
//!
//! SoftHSM2 is a process-wide singleton that reads `SOFTHSM2_CONF` once,
//! at `C_Initialize`, and PKCS#11 allows one initialisation per process.
//! Tests in one binary run as threads of one process, and changing the
//! environment of a running multi-threaded process is unsound (it is
//! `unsafe` in Rust 2024). So each HSM test runs its body in a child
//! process of its own test binary: [`isolated`] creates a temporary token
//! directory and configuration, initialises a token with `softhsm2-util`,
//! and re-runs the binary filtered to that one test with `SOFTHSM2_CONF`
//! set in the child's environment only. The child finds the fixture with
//! [`SoftHsm::in_child`]. The parent removes the directory afterwards.
//! Children also get `$CREDENTIALS_DIRECTORY` holding the PIN, as systemd
//! would pass it.
//!
//! Panics instead of returning errors: this is test support, and a
//! missing SoftHSM2 must fail the test loudly, never skip it.
//!
//! [`raw`] is the benchmarks' yardstick: one sign's token work through
//! cryptoki directly.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::{PinSource, Pkcs11Config, TokenSelector};

pub mod raw;

/// The environment variable naming the fixture directory in a child.
const FIXTURE_DIR: &str = "ENOS_SOFTHSM_FIXTURE_DIR";
/// The environment variable naming the token label in a child.
const FIXTURE_LABEL: &str = "ENOS_SOFTHSM_FIXTURE_LABEL";
/// Where to look for the module, unless `ENOS_PKCS11_MODULE` says.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];
/// The user PIN of fixture tokens (throwaway, test only).
pub const USER_PIN: &str = "enos-test-user-pin";
/// The name of the PIN credential in [`SoftHsm::credentials`].
pub const PIN_CREDENTIAL: &str = "hsm-pin";
/// The security officer PIN of fixture tokens (throwaway, test only).
pub const SO_PIN: &str = "enos-test-so-pin";

/// A SoftHSM2 token directory with its configuration and PIN file.
#[derive(Debug)]
pub struct SoftHsm {
    /// The temporary directory holding everything below.
    root: PathBuf,
    /// The token's label.
    label: String,
    /// Whether this value created `root` and removes it on drop (the
    /// parent), or only uses it (the child).
    owner: bool,
}

impl SoftHsm {
    /// Creates a directory with a `softhsm2.conf` (plus `extra_conf`
    /// lines, such as `slots.mechanisms = -CKM_SHA256`), a PIN file and
    /// one initialised token labelled `label`.
    pub fn create(label: &str, extra_conf: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "enos-softhsm-{}-{}-{label}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let fixture = SoftHsm {
            root,
            label: label.to_owned(),
            owner: true,
        };
        std::fs::create_dir_all(fixture.tokens()).expect("create the fixture's token directory");
        std::fs::write(
            fixture.conf(),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n{extra_conf}\n",
                fixture.tokens().display()
            ),
        )
        .expect("write softhsm2.conf");
        write_pin_file(&fixture.pin_file(), &format!("{USER_PIN}\n"));
        std::fs::create_dir_all(fixture.credentials()).expect("create the credentials directory");
        write_pin_file(&fixture.credentials().join(PIN_CREDENTIAL), USER_PIN);
        let output = fixture
            .command("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run softhsm2-util ({e}): install SoftHSM2 (`apt-get install softhsm2`; `cargo xtask test` does it)"
                )
            });
        assert!(
            output.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        fixture
    }

    /// In a child started by [`isolated`] (or [`SoftHsm::child_command`]):
    /// the parent's fixture. `None` in any other process.
    pub fn in_child() -> Option<Self> {
        let root = PathBuf::from(std::env::var_os(FIXTURE_DIR)?);
        let label = std::env::var(FIXTURE_LABEL).ok()?;
        let fixture = SoftHsm {
            root,
            label,
            owner: false,
        };
        let conf = std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from);
        assert_eq!(
            conf.as_deref(),
            Some(fixture.conf().as_path()),
            "SOFTHSM2_CONF must point to the fixture's configuration"
        );
        Some(fixture)
    }

    /// A command for `program` that sees this fixture's SoftHSM2 (and,
    /// when it is this crate's test or bench binary, the fixture itself).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("SOFTHSM2_CONF", self.conf())
            .env(FIXTURE_DIR, &self.root)
            .env(FIXTURE_LABEL, &self.label)
            .env("CREDENTIALS_DIRECTORY", self.credentials());
        command
    }

    /// The running executable again, with this fixture in its environment.
    pub fn child_command(&self) -> Command {
        let exe = std::env::current_exe().expect("the path of the running executable");
        self.command(exe)
    }

    /// The SoftHSM2 module.
    pub fn module(&self) -> PathBuf {
        find_module()
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The file holding [`USER_PIN`].
    pub fn pin_file(&self) -> PathBuf {
        self.root.join("user.pin")
    }

    /// What systemd would pass as `$CREDENTIALS_DIRECTORY`; holds the PIN
    /// as the credential [`PIN_CREDENTIAL`]. Children get the variable.
    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials")
    }

    /// The configuration file `SOFTHSM2_CONF` names.
    pub fn conf(&self) -> PathBuf {
        self.root.join("softhsm2.conf")
    }

    /// The directory holding the token directories.
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens")
    }

    /// A custody configuration for this token: short reconnect interval,
    /// four sessions.
    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config {
            module: Some(self.module()),
            token: Some(TokenSelector::Label(self.label.clone())),
            pin: Some(PinSource::File(self.pin_file())),
            sessions: Some(4),
            retry_interval: Some(std::time::Duration::from_millis(50)),
            ..Pkcs11Config::default()
        }
    }

    /// A device key's `pkcs11:` URI on this token (the agent's
    /// `[signer] key`), for keys labelled `object`.
    pub fn device_key_uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={object};type=private?module-path={}&pin-source=file:{}",
            self.label,
            self.module().display(),
            self.pin_file().display()
        )
    }

    /// Takes the token away, as when an HSM drops off the network: its
    /// directory is moved out of the token directory. SoftHSM2 then fails
    /// every call on it (the key handles become invalid, token info is a
    /// general error) and a re-initialised module no longer lists it.
    pub fn park_token(&self) {
        let token = self.token_dir();
        std::fs::rename(&token, self.root.join("parked")).expect("move the token away");
        std::fs::write(
            self.root.join("parked-name"),
            token.file_name().map_or(&[][..], |n| n.as_encoded_bytes()),
        )
        .expect("remember the token's directory name");
    }

    /// Brings a parked token back.
    pub fn restore_token(&self) {
        let name = std::fs::read(self.root.join("parked-name")).expect("a parked token");
        let name = String::from_utf8(name).expect("a UTF-8 directory name");
        std::fs::rename(self.root.join("parked"), self.tokens().join(name))
            .expect("move the token back");
    }

    fn token_dir(&self) -> PathBuf {
        std::fs::read_dir(self.tokens())
            .expect("list the token directory")
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.is_dir())
            .expect("an initialised token")
    }

    /// Marks, in a child, that the body ran to its end.
    fn mark_done(&self) {
        std::fs::write(self.root.join("done"), b"").expect("write the completion marker");
    }

    fn done(&self) -> bool {
        self.root.join("done").exists()
    }
}

impl Drop for SoftHsm {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The SoftHSM2 module: `$ENOS_PKCS11_MODULE`, or the first that exists
/// of the usual install paths.
pub fn find_module() -> PathBuf {
    if let Some(path) = std::env::var_os("ENOS_PKCS11_MODULE") {
        return PathBuf::from(path);
    }
    MODULE_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|path| path.exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!(
                "libsofthsm2.so not found in {MODULE_CANDIDATES:?}: install SoftHSM2 (`apt-get install softhsm2`; `cargo xtask test` does it) or set ENOS_PKCS11_MODULE"
            )
        })
}

/// Runs `body` in a child process of this test binary, against a fresh
/// token labelled `label` (with `extra_conf` added to its SoftHSM2
/// configuration).
///
/// `test` must be the test's full name as the harness knows it (for a
/// function at the top of an integration test file, its name). The child
/// must reach the end of `body`; a filter that matched nothing fails.
pub fn isolated(test: &str, label: &str, extra_conf: &str, body: impl FnOnce(&SoftHsm)) {
    if let Some(fixture) = SoftHsm::in_child() {
        body(&fixture);
        fixture.mark_done();
        return;
    }
    let fixture = SoftHsm::create(label, extra_conf);
    let output = fixture
        .child_command()
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .output()
        .expect("start the test binary again");
    assert!(
        output.status.success() && fixture.done(),
        "{test} failed in its SoftHSM2 child process ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes a PIN file owner-only (0600), as the custody requires of one.
pub fn write_pin_file(path: &std::path::Path, pin: &str) {
    std::fs::write(path, pin).expect("write the PIN file");
    std::fs::set_permissions(
        path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .expect("chmod the PIN file");
}
