//! Reading the user PIN from a file or a systemd credential.

use std::{ffi::OsStr, path::PathBuf};

use zeroize::Zeroizing;

use crate::{Pkcs11Error, config::PinSource};

/// Reads the PIN `source` names. `credentials_dir` is the value of
/// `$CREDENTIALS_DIRECTORY` (passed in so that tests need not touch the
/// process environment).
pub(crate) fn read_pin(
    source: &PinSource,
    credentials_dir: Option<&OsStr>,
) -> Result<Zeroizing<String>, Pkcs11Error> {
    let path = match source {
        PinSource::File(path) => path.clone(),
        PinSource::Credential(name) => credential_path(name, credentials_dir)?,
    };
    let from = path.display().to_string();
    let fail = |reason: String| Pkcs11Error::Pin {
        from: from.clone(),
        reason,
    };
    // A PIN opens every key of the token: as private as a key file.
    // One open: the file read is the file whose mode was checked.
    let bytes = enos_domain::private_file::read(&path).map_err(|e| fail(e.to_string()))?;
    let mut text: &[u8] = &bytes;
    // One trailing newline is how editors and `echo` leave a file.
    if let Some(stripped) = text.strip_suffix(b"\n") {
        text = stripped.strip_suffix(b"\r").unwrap_or(stripped);
    }
    if text.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    if text.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(fail(
            "the PIN must be a single line (found a line break or NUL inside)".into(),
        ));
    }
    let pin = std::str::from_utf8(text).map_err(|_| fail("the PIN is not UTF-8".into()))?;
    Ok(Zeroizing::new(pin.to_owned()))
}

fn credential_path(name: &str, credentials_dir: Option<&OsStr>) -> Result<PathBuf, Pkcs11Error> {
    let fail = |reason: &str| Pkcs11Error::Pin {
        from: format!("credential {name:?}"),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(fail("a credential name is a plain file name"));
    }
    let dir = credentials_dir
        .filter(|dir| !dir.is_empty())
        .ok_or_else(|| fail("$CREDENTIALS_DIRECTORY is not set (systemd sets it for units with LoadCredential=)"))?;
    Ok(PathBuf::from(dir).join(name))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("enos-pin-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            let mut file = std::fs::File::create(&path).expect("create");
            file.write_all(content).expect("write");
            // A PIN file is owner-only, as `read_pin` requires.
            std::fs::set_permissions(
                &path,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
            )
            .expect("chmod");
            path
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_a_pin_file_without_its_newline() {
        let dir = TempDir::new("file");
        for content in [&b"1234"[..], b"1234\n", b"1234\r\n"] {
            let path = dir.file("pin", content);
            let pin = read_pin(&PinSource::File(path), None).expect("readable");
            assert_eq!(pin.as_str(), "1234");
        }
    }

    #[test]
    fn refuses_a_pin_file_others_may_read() {
        let dir = TempDir::new("loose");
        let path = dir.file("pin", b"1234");
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
        )
        .expect("chmod");
        let err = read_pin(&PinSource::File(path), None).expect_err("loose");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("1234"));
    }

    #[test]
    fn refuses_empty_and_multi_line_files_without_echoing_them() {
        let dir = TempDir::new("bad");
        for (content, expected) in [
            (&b""[..], "empty"),
            (b"\n", "empty"),
            (b"12\n34", "single line"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let path = dir.file("pin", content);
            let error = read_pin(&PinSource::File(path), None)
                .expect_err("refused")
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("34"), "PIN material leaked: {error}");
        }
        let missing = read_pin(&PinSource::File(dir.0.join("absent")), None).expect_err("missing");
        assert!(missing.to_string().contains("absent"), "{missing}");
    }

    #[test]
    fn reads_systemd_credentials() {
        let dir = TempDir::new("creds");
        dir.file("hsm-pin", b"987654\n");
        let source = PinSource::Credential("hsm-pin".into());
        let pin = read_pin(&source, Some(dir.0.as_os_str())).expect("credential");
        assert_eq!(pin.as_str(), "987654");
        let unset = read_pin(&source, None).expect_err("no directory");
        assert!(
            unset.to_string().contains("CREDENTIALS_DIRECTORY"),
            "{unset}"
        );
        let escape = read_pin(
            &PinSource::Credential("../etc/passwd".into()),
            Some(dir.0.as_os_str()),
        )
        .expect_err("path escape");
        assert!(escape.to_string().contains("plain file name"), "{escape}");
    }
}
