//! [`DeviceFileError`], the one error type of this crate.

/// Why a device file as a whole cannot be used. (A bad row is not an
/// error of the file: [`crate::device_file::read`] returns it in place.)
/// Messages never contain a field's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceFileError {
    /// The header row is missing, unreadable or lacks a required column.
    #[error("header row: {0}")]
    Header(String),
    /// Reading the input failed.
    #[error("reading the file failed: {0}")]
    Io(String),
}
