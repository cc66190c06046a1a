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
//! - [`SyntaxError`]: line, column and a redacted message.
#![forbid(unsafe_code)]

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

/// Parses `text` as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, SyntaxError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let (line, column, key) = e.span().map_or((None, None, None), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - line_start + 1;
            let line_text = text[line_start..].lines().next().unwrap_or("");
            (Some(line), Some(column), assigned_key(line_text))
        });
        SyntaxError {
            line,
            column,
            key,
            message: redact_strings(e.message().trim_end()),
        }
    })
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

    #[test]
    fn valid_text_parses() {
        let c: Config = from_str("enabled = true\nport = 8080\n").expect("valid");
        assert!(c.enabled && c.port == 8080);
    }
}
