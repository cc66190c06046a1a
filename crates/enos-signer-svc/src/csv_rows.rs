//! Reads an EnOS console device export (CSV) into import rows.
//!
//! The header row must name at least `productKey`, `deviceKey` and
//! `deviceSecret` (any order, any case, other columns ignored);
//! `gatewayProductKey` and `gatewayDeviceKey` optionally bind each row to a
//! gateway. Rows are only parsed here; the signer checks their contents
//! (keys, secrets, duplicates, gateways) and reports every bad row.

use enos_signer_proto::v1;

use crate::error::{Result, SignerError};

/// The rows of a file, and the rows that could not even be read.
#[derive(Debug, Default)]
pub struct CsvRows {
    /// Rows to send, each with its source line.
    pub rows: Vec<v1::ImportRow>,
    /// `(line, problem)` for rows the CSV reader could not split.
    pub errors: Vec<(u32, String)>,
}

fn column(headers: &csv::StringRecord, name: &str) -> Option<usize> {
    headers.iter().position(|h| {
        h.trim()
            .trim_start_matches('\u{feff}')
            .eq_ignore_ascii_case(name)
    })
}

/// Reads every row; a missing required column is an error for the file.
/// Line numbers are those of the file (blank lines counted).
pub fn read(input: &[u8]) -> Result<CsvRows> {
    // The reader skips blank lines without counting them: derive lines
    // from byte offsets instead.
    let newlines: Vec<usize> = input
        .iter()
        .enumerate()
        .filter_map(|(i, b)| (*b == b'\n').then_some(i))
        .collect();
    let line_at = |byte: u64| {
        // A record's position may be that of the blank lines before it.
        let mut byte = byte as usize;
        while matches!(input.get(byte), Some(b'\n' | b'\r')) {
            byte += 1;
        }
        (newlines.partition_point(|&n| n < byte) + 1) as u32
    };
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| SignerError::invalid("header", e))?
        .clone();
    let required = |name: &'static str| {
        column(&headers, name).ok_or_else(|| {
            SignerError::invalid(
                "header",
                format!("no {name} column (need productKey,deviceKey,deviceSecret)"),
            )
        })
    };
    let (pk, dk, secret) = (
        required("productKey")?,
        required("deviceKey")?,
        required("deviceSecret")?,
    );
    let (gw_pk, gw_dk) = (
        column(&headers, "gatewayProductKey"),
        column(&headers, "gatewayDeviceKey"),
    );
    let mut out = CsvRows::default();
    let mut record = csv::StringRecord::new();
    loop {
        let line = line_at(reader.position().byte());
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| line_at(p.byte()));
                // The reader's message may quote the row: keep only its kind.
                out.errors.push((line, "unreadable CSV row".into()));
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(SignerError::invalid("file", "read failed"));
                }
                continue;
            }
        }
        let line = record.position().map_or(line, |p| line_at(p.byte()));
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let field = |i: usize| record.get(i).unwrap_or("").trim().to_owned();
        let gateway = match (gw_pk.map(field), gw_dk.map(field)) {
            (Some(p), Some(d)) if !(p.is_empty() && d.is_empty()) => Some(v1::DeviceRef {
                product_key: p,
                device_key: d,
            }),
            _ => None,
        };
        out.rows.push(v1::ImportRow {
            line,
            product_key: field(pk),
            device_key: field(dk),
            // Not trimmed: a stray space is reported, not silently fixed.
            device_secret: record.get(secret).unwrap_or("").to_owned(),
            gateway,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_console_exports_with_lines() {
        let text = "deviceName,productKey,deviceKey,deviceSecret,gatewayProductKey,gatewayDeviceKey\n\
                    a,Pk1,dev-1,s3cret1,,\n\
                    \n\
                    b,Pk1,dev-2,s3cret2,Pk1,dev-1\n";
        let rows = read(text.as_bytes()).expect("reads");
        assert!(rows.errors.is_empty());
        assert_eq!(rows.rows.len(), 2);
        assert_eq!(rows.rows[0].line, 2);
        assert_eq!(rows.rows[1].line, 4);
        assert_eq!(rows.rows[0].gateway, None);
        assert_eq!(
            rows.rows[1].gateway.as_ref().map(|g| g.device_key.as_str()),
            Some("dev-1")
        );
    }

    #[test]
    fn a_missing_column_is_refused() {
        let err = read("productKey,deviceKey\nPk1,d\n".as_bytes()).expect_err("refused");
        assert!(err.to_string().contains("deviceSecret"), "{err}");
    }
}
