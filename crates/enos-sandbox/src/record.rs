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

#[cfg(test)]
mod tests {
    use enos_sign_core::{DeviceKey, ProductKey};

    use super::*;

    /// #28 item 5: the sandbox records what it received, with topic, id and time, one JSON line each, appended across restarts.
    #[test]
    fn each_publish_is_one_json_line_appended() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("received.jsonl");
        let gw = DeviceId::new(
            ProductKey::new("pkGw").expect("pk"),
            DeviceKey::new("gw1").expect("dk"),
        );
        Record::open(&path).expect("open").received(
            &gw,
            "/sys/pkSub/meterA/thing/measurepoint/resume",
            1,
            br#"{"id":"42","method":"thing.measurepoint.resume","params":{"time":7}}"#,
        );
        // A restarted sandbox adds to the file.
        Record::open(&path)
            .expect("reopen")
            .received(&gw, "/sys/pkGw/gw1/raw", 0, b"\xffnot json");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["device"], "pkGw/gw1");
        assert_eq!(
            lines[0]["topic"],
            "/sys/pkSub/meterA/thing/measurepoint/resume"
        );
        assert_eq!(lines[0]["id"], "42");
        assert_eq!(lines[0]["qos"], 1);
        assert_eq!(lines[0]["payload"]["params"]["time"], 7);
        assert!(lines[0]["received_ms"].as_u64().expect("time") > 1_600_000_000_000);
        assert_eq!(lines[1]["id"], serde_json::Value::Null);
        assert_eq!(lines[1]["payload"], "\u{fffd}not json");
    }
}
