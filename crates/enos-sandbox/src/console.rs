//! [`ConsoleLogin`]: the cloud's side of the sandbox. Tests and the demo
//! play the EnOS console through it: it publishes service calls to
//! devices and subscribes to what they send (see [`crate::front`]).

use std::{fmt, path::Path};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::SandboxError;

/// The console's user name and password. `Debug` omits the password.
#[derive(Clone)]
pub struct ConsoleLogin {
    /// The MQTT user name the console logs in with.
    user: String,
    /// Its password, read from a file so that it is never in argv.
    password: Zeroizing<String>,
}

impl ConsoleLogin {
    /// Reads the password from `password_file` (one trailing newline
    /// ignored; empty refused). A device's user name always holds `&`,
    /// so `user` must not, or a device could pose as the console.
    pub fn load(user: &str, password_file: &Path) -> Result<Self, SandboxError> {
        if user.is_empty() || user.contains('&') {
            return Err(SandboxError::Settings(
                "the console user must be non-empty and must not contain &".into(),
            ));
        }
        // A secret: refused unless only its owner can read it, as every
        // binary of the project reads a secret.
        let bytes = enos_domain::private_file::read(password_file)
            .map_err(|e| SandboxError::Settings(e.to_string()))?;
        let text = Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|_| {
            SandboxError::Settings(format!(
                "the console password file {} is not UTF-8",
                password_file.display()
            ))
        })?);
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        if password.is_empty() {
            return Err(SandboxError::Settings(format!(
                "the console password file {} is empty",
                password_file.display()
            )));
        }
        Ok(ConsoleLogin {
            user: user.to_owned(),
            password: Zeroizing::new(password.to_owned()),
        })
    }

    /// Whether a CONNECT's user name is the console's.
    pub fn is_console_user(&self, username: &str) -> bool {
        username == self.user
    }

    /// Whether `password` is the console's, in constant time.
    pub fn password_matches(&self, password: &str) -> bool {
        bool::from(password.as_bytes().ct_eq(self.password.as_bytes()))
    }
}

impl fmt::Debug for ConsoleLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleLogin")
            .field("user", &self.user)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_checks_without_showing_the_password() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("console.secret");
        enos_testkit::write_private(&file, b"s3cret-console\n").expect("write");
        let console = ConsoleLogin::load("console", &file).expect("loads");
        assert!(console.is_console_user("console"));
        assert!(console.password_matches("s3cret-console"));
        assert!(!console.password_matches("s3cret-console\n"));
        assert!(!format!("{console:?}").contains("s3cret"));
        assert!(ConsoleLogin::load("a&b", &file).is_err());
        std::fs::write(&file, "\n").expect("write");
        assert!(ConsoleLogin::load("console", &file).is_err());
        // Readable by others: refused, whatever it holds.
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&file, "s3cret-console\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let loose = ConsoleLogin::load("console", &file).expect_err("mode 0644");
        assert!(loose.to_string().contains("mode 0644"), "{loose}");
    }
}
