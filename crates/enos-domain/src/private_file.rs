//! [`check`]: the one rule for files that hold secrets (the signer's
//! keys and redb registry, an HSM PIN file, the agent's device key and
//! local-broker password); [`open`] and [`read`] apply it to the file
//! they read.
//!
//! [`open`] opens the file once and checks the mode of the open handle
//! (`fstat`), so that what is checked is what is read: checking the path
//! and then opening it again would let the file be swapped in between.
//!
//! Group or others may not access them, as ssh refuses a loose private
//! key; systemd credentials (`$CREDENTIALS_DIRECTORY`) pass. One
//! exception, PostgreSQL's rule for its own key: a file owned by root may
//! also be readable by its group (0640 or stricter), which is how a
//! Kubernetes Secret volume with an `fsGroup` mounts it (root-owned, 0440);
//! no non-root process could have made it so.

use std::{
    fs::{File, Metadata},
    io::Read,
    os::unix::fs::MetadataExt,
    path::Path,
};

use zeroize::Zeroizing;

/// Bits a private file must not have: any access by group or others.
const LOOSE: u32 = 0o077;
/// Bits a root-owned private file must not have: group write or execute,
/// any access by others.
const LOOSE_ROOT_OWNED: u32 = 0o037;

/// Why a private file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// It cannot be inspected.
    #[error("cannot read {}: {cause}", path.display())]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error, in the message: not also a `source()`, which a
        /// printer of causes (`{:#}`, anyhow) would print a second time.
        cause: std::io::Error,
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

/// Refuses `path` if group or others may access it (see the module docs),
/// for callers that only check (a store that opens the file itself).
/// Callers that read the file use [`open`] or [`read`].
pub fn check(path: &Path) -> Result<(), PrivateFileError> {
    let metadata = std::fs::metadata(path).map_err(|source| unreadable(path, source))?;
    check_metadata(path, &metadata)
}

/// Opens `path` for reading and refuses it if group or others may access
/// it, judged by the open handle's own metadata (`fstat`): the file read
/// from the returned handle is the file that was checked.
pub fn open(path: &Path) -> Result<File, PrivateFileError> {
    let file = File::open(path).map_err(|source| unreadable(path, source))?;
    let metadata = file.metadata().map_err(|source| unreadable(path, source))?;
    check_metadata(path, &metadata)?;
    Ok(file)
}

/// Reads a whole private file ([`open`]: one open, checked by `fstat`)
/// into a buffer that is wiped when dropped.
pub fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, PrivateFileError> {
    let mut file = open(path)?;
    // Sized up front from the handle, so that the buffer is not
    // reallocated (a reallocation would leave an unwiped copy behind).
    let len = file
        .metadata()
        .map_or(0, |m| usize::try_from(m.len()).unwrap_or(0));
    let mut bytes = Zeroizing::new(Vec::with_capacity(len.saturating_add(1)));
    file.read_to_end(&mut bytes)
        .map_err(|source| unreadable(path, source))?;
    Ok(bytes)
}

fn unreadable(path: &Path, source: std::io::Error) -> PrivateFileError {
    PrivateFileError::Unreadable {
        path: path.to_owned(),
        cause: source,
    }
}

/// The rule itself, on metadata already read.
fn check_metadata(path: &Path, metadata: &Metadata) -> Result<(), PrivateFileError> {
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

    /// #23 finding 14: the bytes read are those of the file whose mode was checked.
    #[test]
    fn read_checks_the_file_it_reads() {
        // #23 finding 14: the check opens once and judges the handle.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").expect("write");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o644, false), (0o606, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(read(&path).is_ok(), ok, "{mode:o}");
            assert_eq!(open(&path).is_ok(), ok, "{mode:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(&read(&path).expect("read")[..], b"s3cret\n");
        let err = read(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    /// #23 finding 14: one open, the mode judged on the open handle (fstat), not on the path.
    #[test]
    fn open_judges_the_handle_not_the_path() {
        // #23 finding 14: the file is opened once and its handle checked
        // (fstat). A handle opened on a private file and a path that then
        // names a loose file must not mix: after `open` the path is
        // swapped for a world-readable file, and what is read is still
        // the private file that was checked.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "checked").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut file = open(&path).expect("private");
        let loose = dir.path().join("loose");
        std::fs::write(&loose, "swapped").expect("write");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::rename(&loose, &path).expect("swap");
        let mut read_back = String::new();
        file.read_to_string(&mut read_back).expect("read");
        assert_eq!(read_back, "checked");
        // And the swapped-in file is refused on its own.
        assert!(matches!(
            read(&path),
            Err(PrivateFileError::Loose { mode: 0o644, .. })
        ));
    }
}
