//! [`StatusLine`]: the lines the `enos-sandbox` binary prints on stdout for
//! programs that drive it (the test harness, `enos_testkit::sandbox`). Logs go to stderr.
//!
//! ```text
//! enos-sandbox: listening mqtt=127.0.0.1:11883 tls=127.0.0.1:18883
//! enos-sandbox: listening mqtt=127.0.0.1:41234 tls=off
//! enos-sandbox: enos-api http://127.0.0.1:8443
//! enos-sandbox: reloaded devices=12 dropped_sessions=1
//! enos-sandbox: reload failed: invalid device file devices.csv, line 3: …
//! ```

use std::{fmt, net::SocketAddr};

/// Every status line starts with this.
pub(crate) const PREFIX: &str = "enos-sandbox: ";

/// One status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    /// The listeners are up, at these (actual) addresses.
    Listening {
        /// The plain MQTT listener.
        mqtt: SocketAddr,
        /// The TLS listener, if configured.
        tls: Option<SocketAddr>,
    },
    /// EnOS's certificate API listens at this base URL (printed just
    /// before `Listening`).
    EnosApi {
        /// `http://HOST:PORT` or `https://HOST:PORT`.
        url: String,
    },
    /// The device file was reloaded.
    Reloaded {
        /// How many devices it holds.
        devices: usize,
        /// How many sessions it no longer allowed and were dropped.
        dropped_sessions: usize,
    },
    /// Reloading failed; the previous devices stay in force.
    ReloadFailed {
        /// Why (never a secret).
        reason: String,
    },
}

impl fmt::Display for StatusLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusLine::Listening { mqtt, tls } => {
                write!(f, "{PREFIX}listening mqtt={mqtt} tls=")?;
                match tls {
                    Some(tls) => write!(f, "{tls}"),
                    None => f.write_str("off"),
                }
            }
            StatusLine::EnosApi { url } => write!(f, "{PREFIX}enos-api {url}"),
            StatusLine::Reloaded {
                devices,
                dropped_sessions,
            } => write!(
                f,
                "{PREFIX}reloaded devices={devices} dropped_sessions={dropped_sessions}"
            ),
            StatusLine::ReloadFailed { reason } => {
                // One line, whatever the reason holds.
                write!(f, "{PREFIX}reload failed: {}", reason.replace('\n', " "))
            }
        }
    }
}

impl StatusLine {
    /// Parses a line printed by [`fmt::Display`]; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim_end().strip_prefix(PREFIX)?;
        if let Some(addrs) = rest.strip_prefix("listening ") {
            let (mqtt, tls) = addrs.split_once(' ')?;
            let mqtt = mqtt.strip_prefix("mqtt=")?.parse().ok()?;
            let tls = match tls.strip_prefix("tls=")? {
                "off" => None,
                addr => Some(addr.parse().ok()?),
            };
            return Some(StatusLine::Listening { mqtt, tls });
        }
        if let Some(url) = rest.strip_prefix("enos-api ") {
            return Some(StatusLine::EnosApi {
                url: url.to_owned(),
            });
        }
        if let Some(counts) = rest.strip_prefix("reloaded devices=") {
            let (devices, dropped) = counts.split_once(" dropped_sessions=")?;
            return Some(StatusLine::Reloaded {
                devices: devices.parse().ok()?,
                dropped_sessions: dropped.parse().ok()?,
            });
        }
        let reason = rest.strip_prefix("reload failed: ")?;
        Some(StatusLine::ReloadFailed {
            reason: reason.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let lines = [
            StatusLine::Listening {
                mqtt: "127.0.0.1:11883".parse().expect("addr"),
                tls: Some("[::1]:18883".parse().expect("addr")),
            },
            StatusLine::Listening {
                mqtt: "127.0.0.1:1".parse().expect("addr"),
                tls: None,
            },
            StatusLine::EnosApi {
                url: "https://127.0.0.1:8443".into(),
            },
            StatusLine::Reloaded {
                devices: 7,
                dropped_sessions: 2,
            },
            StatusLine::ReloadFailed {
                reason: "line 3: bad".into(),
            },
        ];
        for line in lines {
            assert_eq!(StatusLine::parse(&line.to_string()), Some(line));
        }
        assert_eq!(StatusLine::parse("2024 INFO enos-sandbox: listening"), None);
    }
}
