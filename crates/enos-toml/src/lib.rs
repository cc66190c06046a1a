//! TOML config parsing with errors safe to log.
//!
//! The `toml` crate's error `Display` quotes the offending source line, and
//! serde's messages quote offending values (`invalid type: string "…"`).
//! A secret pasted into the wrong key of a config would then reach a log
//! or a terminal. [`from_str`] keeps the position and the parser's reason
//! and drops every quoted value (key names stay).
//!
//! # Layout
//!
//! - [`from_str`]: parse, or a [`SyntaxError`].
//! - [`from_str_renamed`]: the same, and a key of an older release is
//!   refused with its new name and form ([`Renamed`]).
//! - [`SyntaxError`]: line, column and a redacted message.
//! - [`duration`]: the one form of a duration in every config, a
//!   humantime string (`"10s"`, `"500ms"`, `"5m"`); a bare number is
//!   refused with that form named.
#![forbid(unsafe_code)]

pub mod duration;

use core::fmt;

use serde::de::DeserializeOwned;

/// Why a config did not parse: where, and the reason with quoted values
/// replaced by `"…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line of the error, when the parser knows it.
    pub line: Option<usize>,
    /// 1-based column (in bytes) of the error, when the parser knows it.
    pub column: Option<usize>,
    /// The key assigned on that line (`key = …`), when there is one: a
    /// value error (`invalid value: integer 0`) does not name its key.
    pub key: Option<String>,
    /// The parser's reason, redacted.
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "line {line}, column {column}")?;
            if let Some(key) = &self.key {
                write!(f, " (`{key}`)")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for SyntaxError {}

/// A config key that an older release spelled differently: a duration
/// key that carried its unit in its name (`drain_timeout_secs = 10`) and
/// now takes a humantime string (`drain_timeout = "10s"`).
///
/// Configs refuse unknown keys, so an old file would otherwise get
/// "unknown field `drain_timeout_secs`" and leave the operator to guess
/// the new name. One table per binary, read by [`from_str_renamed`], turns
/// that into "`drain_timeout_secs` was renamed: write `drain_timeout =
/// "10s"`", with the file's own number carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    /// The key as an older release read it.
    pub old: &'static str,
    /// The key now.
    pub new: &'static str,
    /// The unit the old key's number was in (`s`, `ms`): the new value is
    /// that number with this unit.
    pub unit: &'static str,
}

/// Parses `text` as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, SyntaxError> {
    from_str_renamed(text, &[])
}

/// Parses `text` as `T`; a key of `renamed` is refused with its new name
/// and the value in the new form, and a bare number where a duration is
/// due is refused with the form named.
pub fn from_str_renamed<T: DeserializeOwned>(
    text: &str,
    renamed: &[Renamed],
) -> Result<T, SyntaxError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let raw = e.message().trim_end();
        let mut start = e.span().map(|span| span.start.min(text.len()));
        // Inside an internally tagged table (`[custody] kind = …`) serde
        // reports the table, not the key: find the renamed key's own line.
        if let (Some(from), Some(field)) = (start, unknown_field(raw)) {
            let mut at = from;
            for line in text[from..].split_inclusive('\n') {
                if assigned_key(line).as_deref() == Some(field) {
                    start = Some(at);
                    break;
                }
                at += line.len();
            }
        }
        let (line, column, line_text) = start.map_or((None, None, ""), |start| {
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - line_start + 1;
            let line_text = text[line_start..].lines().next().unwrap_or("");
            (Some(line), Some(column), line_text)
        });
        let key = assigned_key(line_text);
        let message = rename_message(raw, line_text, renamed)
            .or_else(|| duration_message(raw, key.as_deref()))
            .unwrap_or_else(|| redact_strings(raw));
        SyntaxError {
            line,
            column,
            key,
            message,
        }
    })
}

/// The key of serde's "unknown field `x`, expected …".
fn unknown_field(raw: &str) -> Option<&str> {
    raw.strip_prefix("unknown field `")?.split('`').next()
}

/// "`old` was renamed: write `new = "30s"`" for serde's "unknown field
/// `old`" when `old` is in the table.
fn rename_message(raw: &str, line_text: &str, renamed: &[Renamed]) -> Option<String> {
    let field = unknown_field(raw)?;
    let entry = renamed.iter().find(|r| r.old == field)?;
    // The old key's number, carried over; the value is only echoed when it
    // is a plain number (never a string, which could be anything pasted).
    let number = line_text
        .split_once('=')
        .map(|(_, v)| {
            v.split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .replace('_', "")
        })
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let value = match number {
        Some(n) => format!("{n}{}", entry.unit),
        None => format!("10{}", entry.unit),
    };
    Some(format!(
        "`{}` was renamed: write `{} = \"{value}\"` (a duration with its unit: ms, s, m, h, d)",
        entry.old, entry.new
    ))
}

/// "`key` is a duration …" for a bare number (or other non-string) where
/// [`duration`] expects a string.
fn duration_message(raw: &str, key: Option<&str>) -> Option<String> {
    if !raw.contains(duration::EXPECTED) {
        return None;
    }
    let key = key.unwrap_or("the key");
    Some(format!(
        "`{key}` is a duration with its unit, written as a string: for example `{key} = \"10s\"` (units: ms, s, m, h, d)"
    ))
}

/// The bare key of a `key = value` line, if it is one.
fn assigned_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!key.is_empty() && key.len() <= 64 && key.chars().all(bare)).then(|| key.to_owned())
}

/// Replaces the contents of every `"…"` with `…`. Key names, which serde
/// quotes in backticks (`` unknown field `x`, expected `y` ``), are kept:
/// naming the wrong key is the useful part of the message, and it is the
/// values, not the keys, that a pasted secret lands in.
fn redact_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        enabled: bool,
        port: u16,
    }

    const SECRET: &str = "hQ3vZ8rK2mN7pX4t";

    #[test]
    fn errors_name_the_place_but_never_the_value() {
        for text in [
            format!("enabled = \"{SECRET}\"\nport = 1\n"),
            format!("enabled = true\nport = \"{SECRET}\"\n"),
            format!("enabled = true\nport = 1\nx = {SECRET}\n"),
            format!("enabled = true\nport = [\"{SECRET}\"\n"),
        ] {
            let err = from_str::<Config>(&text).expect_err("invalid");
            let printed = format!("{err} {err:?}");
            assert!(!printed.contains(SECRET), "{printed}");
            assert!(err.line.is_some(), "{printed}");
        }
        let err = from_str::<Config>("enabled = true\nport = \"x\"\n").expect_err("invalid");
        assert_eq!(err.line, Some(2));
        assert!(
            err.to_string().starts_with("line 2, column 8 (`port`): "),
            "{err}"
        );
        // A value error names the key of its line; a line that is no
        // assignment names none.
        let err = from_str::<Config>("enabled = true\nport = 70000\n").expect_err("too big");
        assert_eq!(err.key.as_deref(), Some("port"));
        let err = from_str::<Config>("enabled = true\n[port\n").expect_err("unclosed");
        assert_eq!((err.line, err.key.as_deref()), (Some(2), None), "{err}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Timeouts {
        #[serde(with = "duration")]
        drain_timeout: std::time::Duration,
        #[serde(default, with = "duration::option")]
        window: Option<std::time::Duration>,
    }

    const RENAMED: &[Renamed] = &[
        Renamed {
            old: "drain_timeout_secs",
            new: "drain_timeout",
            unit: "s",
        },
        Renamed {
            old: "window_ms",
            new: "window",
            unit: "ms",
        },
    ];

    #[test]
    fn an_old_key_is_refused_with_its_new_name_and_form() {
        let err = from_str_renamed::<Timeouts>("drain_timeout_secs = 30\n", RENAMED)
            .expect_err("old key");
        assert_eq!(err.line, Some(1));
        assert!(
            err.message
                .starts_with("`drain_timeout_secs` was renamed: write `drain_timeout = \"30s\"`"),
            "{err}"
        );
        let err = from_str_renamed::<Timeouts>(
            "drain_timeout = \"1s\"\nwindow_ms = 1_500 # comment\n",
            RENAMED,
        )
        .expect_err("old key");
        assert!(err.message.contains("write `window = \"1500ms\"`"), "{err}");
        // A string where the number was is not echoed.
        let err = from_str_renamed::<Timeouts>(&format!("window_ms = \"{SECRET}\"\n"), RENAMED)
            .expect_err("old key");
        assert!(!err.to_string().contains(SECRET), "{err}");
        // Without the table, serde's own message.
        let err = from_str::<Timeouts>("drain_timeout_secs = 30\n").expect_err("unknown");
        assert!(err.message.starts_with("unknown field"), "{err}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Tagged,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
    #[allow(dead_code)]
    enum Tagged {
        Timeouts(Timeouts),
    }

    #[test]
    fn an_old_key_in_a_tagged_table_is_found_on_its_own_line() {
        // serde reports the table of an internally tagged enum, not the key.
        let text = "[inner]\nkind = \"timeouts\"\ndrain_timeout = \"1s\"\nwindow_ms = 250\n";
        let err = from_str_renamed::<Outer>(text, RENAMED).expect_err("old key");
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("window_ms")),
            "{err}"
        );
        assert!(err.message.contains("write `window = \"250ms\"`"), "{err}");
    }

    #[test]
    fn a_bare_number_for_a_duration_names_the_form() {
        let err = from_str::<Timeouts>("drain_timeout = 10\n").expect_err("bare number");
        assert_eq!(
            err.to_string(),
            "line 1, column 17 (`drain_timeout`): `drain_timeout` is a duration with its unit, \
             written as a string: for example `drain_timeout = \"10s\"` (units: ms, s, m, h, d)"
        );
        let err = from_str::<Timeouts>("drain_timeout = \"1s\"\nwindow = 5\n").expect_err("bare");
        assert!(err.message.contains("`window = \"10s\"`"), "{err}");
        let err = from_str::<Timeouts>(&format!("drain_timeout = \"{SECRET}\"\n"))
            .expect_err("not a duration");
        assert!(!err.to_string().contains(SECRET), "{err}");
        let ok: Timeouts =
            from_str("drain_timeout = \"1m 30s\"\nwindow = \"250ms\"\n").expect("durations");
        assert_eq!(ok.drain_timeout, std::time::Duration::from_secs(90));
        assert_eq!(ok.window, Some(std::time::Duration::from_millis(250)));
    }

    #[test]
    fn valid_text_parses() {
        let c: Config = from_str("enabled = true\nport = 8080\n").expect("valid");
        assert!(c.enabled && c.port == 8080);
    }
}
