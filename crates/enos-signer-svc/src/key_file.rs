//! 256-bit key files (master key, audit key): 64 hex digits, mode 0600.
//!
//! A key file readable by group or others is refused, as ssh refuses a
//! loose private key. systemd credentials (`$CREDENTIALS_DIRECTORY`) are
//! owner-only too, so the same check passes for them. One exception, the
//! rule PostgreSQL applies to its own key: a file owned by root may also
//! be readable by its group (0640 or stricter), as a Kubernetes Secret
//! volume with an `fsGroup` mounts it (root-owned, mode 0440, group of
//! the pod), since no non-root process could have made it so.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use chacha20poly1305::aead::{OsRng, rand_core::RngCore};
use zeroize::Zeroizing;

use crate::error::{Result, SignerError};

/// A 256-bit key, wiped on drop.
pub type Key256 = Zeroizing<[u8; 32]>;

/// Reads a key file, refusing loose permissions and malformed contents.
pub fn load(path: &Path) -> Result<Key256> {
    // One open: the file read is the file whose mode was checked.
    let text = enos_domain::private_file::read(path).map_err(private_file_error)?;
    let hex = text.trim_ascii();
    let bad = |reason| SignerError::BadKey {
        path: path.to_owned(),
        reason,
    };
    if hex.len() != 64 {
        return Err(bad("expected 64 hex digits (a 256-bit key)"));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => key[i] = (hi * 16 + lo) as u8,
            _ => return Err(bad("expected 64 hex digits (a 256-bit key)")),
        }
    }
    Ok(key)
}

/// Refuses a private file (key, registry) that group or others may access
/// ([`enos_domain::private_file::check`], the workspace's one rule).
pub fn check_permissions(path: &Path) -> Result<()> {
    enos_domain::private_file::check(path).map_err(private_file_error)
}

/// The workspace rule's refusal in this crate's terms.
fn private_file_error(e: enos_domain::private_file::PrivateFileError) -> SignerError {
    match e {
        enos_domain::private_file::PrivateFileError::Loose { path, mode } => {
            SignerError::LoosePermissions { path, mode }
        }
        enos_domain::private_file::PrivateFileError::Unreadable {
            path,
            cause: source,
        } => SignerError::Io {
            action: "reading key file",
            path,
            cause: source,
        },
    }
}

/// Creates a new random key file (mode 0600). Refuses to overwrite one:
/// losing the master key loses every sealed secret.
pub fn create(path: &Path) -> Result<()> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut key[..]);
    let mut hex = Zeroizing::new(String::with_capacity(65));
    for b in key.iter() {
        hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    hex.push('\n');
    let io = |source| SignerError::Io {
        action: "creating key file",
        path: path.to_owned(),
        cause: source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(hex.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_keys_load_and_loose_permissions_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        create(&path).expect("create");
        let a = load(&path).expect("load");
        assert_ne!(*a, [0u8; 32]);
        assert!(
            create(&path).is_err(),
            "an existing key is never overwritten"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&path).expect_err("0644 refused");
        assert!(matches!(
            err,
            SignerError::LoosePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).expect("chmod");
        assert!(load(&path).is_err(), "group-writable refused");

        // Group-readable: only when root owns the file (a Kubernetes
        // Secret volume with fsGroup), as PostgreSQL allows for its key.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).expect("chmod");
        let root_owned =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path).expect("metadata")) == 0;
        assert_eq!(
            load(&path).is_ok(),
            root_owned,
            "0440, root-owned: {root_owned}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(*load(&path).expect("0400 is fine"), *a);
    }

    #[test]
    fn malformed_keys_are_refused_without_echo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        enos_testkit::write_private(&path, b"zz-not-a-key-SECRETISH").expect("write");
        let err = load(&path).expect_err("refused");
        assert!(!err.to_string().contains("SECRETISH"));
        enos_testkit::write_private(&path, "g".repeat(64).as_bytes()).expect("write");
        assert!(load(&path).is_err());
    }
}
