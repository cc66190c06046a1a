//! [`Record`]: what devices published, one JSON line per PUBLISH, for
//! tests (`--record FILE`): the cloud's side of "did it arrive, once, in
//! order, on which topic, with which time".
//!
//! A line is written (unbuffered, appended) before the PUBLISH goes on to
//! the broker, so a device never holds a PUBACK for a message the record
//! lacks. A line: `{"received_ms", "device", "topic", "qos", "id",
//! "payload"}`: `device` is the connection's device (`pk/dk`; a gateway
//! publishes for its sub-devices on their topics), `id` the envelope's id
//! (`null` when the payload has none), `payload` the JSON payload (a
//! string when it is not JSON).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::{devices::DeviceId, error::SandboxError};

/// The open record file.
#[derive(Debug)]
pub struct Record {
    /// The file, opened for appending; one writer at a time so lines stay whole.
    file: Mutex<File>,
    /// Its path, for the error line when a write fails.
    path: PathBuf,
}

impl Record {
    /// Opens (creating, appending to) `path`: a restarted sandbox adds to
    /// what it recorded before.
    pub fn open(path: &Path) -> Result<Record, SandboxError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|cause| SandboxError::Read {
                path: path.to_owned(),
                cause,
            })?;
        Ok(Record {
            file: Mutex::new(file),
            path: path.to_owned(),
        })
    }

    /// Records a PUBLISH by `device`'s connection.
    pub fn received(&self, device: &DeviceId, topic: &str, qos: u8, payload: &[u8]) {
        let payload: serde_json::Value = serde_json::from_slice(payload)
            .unwrap_or_else(|_| String::from_utf8_lossy(payload).into_owned().into());
        let id = payload.get("id").cloned().unwrap_or_default();
        let received_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let line = serde_json::json!({
            "received_ms": received_ms,
            "device": device.to_string(),
            "topic": topic,
            "qos": qos,
            "id": id,
            "payload": payload,
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(&bytes) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the record file");
        }
    }
}
