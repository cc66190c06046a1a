//! [`check`]: the one rule for files that hold secrets (the signer's
//! keys and redb registry, an HSM PIN file, the agent's device key).
//!
//! Group or others may not access them, as ssh refuses a loose private
//! key; systemd credentials (`$CREDENTIALS_DIRECTORY`) pass. One
//! exception, PostgreSQL's rule for its own key: a file owned by root may
//! also be readable by its group (0640 or stricter), which is how a
//! Kubernetes Secret volume with an `fsGroup` mounts it (root-owned, 0440);
//! no non-root process could have made it so.

use std::{os::unix::fs::MetadataExt, path::Path};

/// Bits a private file must not have: any access by group or others.
const LOOSE: u32 = 0o077;
/// Bits a root-owned private file must not have: group write or execute,
/// any access by others.
const LOOSE_ROOT_OWNED: u32 = 0o037;

/// Why a private file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// It cannot be inspected.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may access it.
    #[error(
        "{} has mode {mode:04o}: it holds a secret, so group and others must have no access (chmod 600)",
        path.display()
    )]
    Loose {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Refuses `path` if group or others may access it (see the module docs).
pub fn check(path: &Path) -> Result<(), PrivateFileError> {
    let metadata = std::fs::metadata(path).map_err(|source| PrivateFileError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.mode() & 0o777;
    let loose = if metadata.uid() == 0 {
        LOOSE_ROOT_OWNED
    } else {
        LOOSE
    };
    if mode & loose != 0 {
        return Err(PrivateFileError::Loose {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn loose_files_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").expect("write");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o644, false), (0o604, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(check(&path).is_ok(), ok, "{mode:o}");
        }
        let err = check(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
