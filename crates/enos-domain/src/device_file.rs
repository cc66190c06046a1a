//! The device file: a CSV file with a header row, as the EnOS console
//! exports it. The sandbox loads it (`--devices`) and the signer imports
//! it (`enos-signer import`); both read it here, so both accept the same
//! files.
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `productKey` | yes | the device's product key |
//! | `deviceKey` | yes | the device's key within its product |
//! | `deviceSecret` | yes (the cell may be empty) | the secret its passwords are signed with; empty: none yet, a device awaiting dynamic activation |
//! | `productSecret` | no | the secret of the device's product (dynamic activation, securemode 3); an empty cell or no column: none. The sandbox reads it; the signer's import does not (its product secrets are set through its admin API) |
//! | `enabled` | no | `true` or `false`, in any case ([`enabled`]); an empty cell or no column: not stated (the sandbox enables the device; the signer's import enables a new device and leaves an existing one as it is). Anything else is an error of the row |
//! | `gatewayProductKey`, `gatewayDeviceKey` | no, as a pair | the gateway of a sub-device; both empty for a directly connected device |
//!
//! Columns are found by name, in any order and any case; a UTF-8 byte
//! order mark and spaces around a name are ignored, and so are columns
//! not listed here (a console export works as it is). Fields are trimmed,
//! except the secrets: a stray space in a secret is reported by whoever
//! checks it, not silently fixed. Blank rows are skipped; line numbers are
//! those of the file (blank lines and the header counted).
//!
//! Rows are only split here, not judged: the sandbox and the signer check
//! the keys, secrets and gateways with their own rules and errors.

use secrecy::SecretString;

use crate::error::DeviceFileError;

/// The product key column.
pub const PRODUCT_KEY: &str = "productKey";
/// The device key column.
pub const DEVICE_KEY: &str = "deviceKey";
/// The secret column.
pub const DEVICE_SECRET: &str = "deviceSecret";
/// The optional product secret column.
pub const PRODUCT_SECRET: &str = "productSecret";
/// The optional enabled column.
pub const ENABLED: &str = "enabled";
/// The gateway's product key column (with [`GATEWAY_DEVICE_KEY`]).
pub const GATEWAY_PRODUCT_KEY: &str = "gatewayProductKey";
/// The gateway's device key column (with [`GATEWAY_PRODUCT_KEY`]).
pub const GATEWAY_DEVICE_KEY: &str = "gatewayDeviceKey";

/// The one reading of an `enabled` cell, shared by the sandbox and the
/// signer's import: `Ok(None)` when the file does not say (no column, or
/// an empty cell), `true` or `false` in any case, anything else an error
/// naming the column (never the value, which is at most a typo, but the
/// rule for every field of the file is the same).
pub fn enabled(cell: Option<&str>) -> Result<Option<bool>, String> {
    match cell.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(format!("column {ENABLED} must be true or false")),
    }
}

/// One row, split into its known columns. `Debug` redacts the secrets.
#[derive(Debug)]
pub struct DeviceRow {
    /// The row's line in the file (1-based, the header is line 1): errors
    /// name it.
    pub line: u32,
    /// `productKey`, trimmed.
    pub product_key: String,
    /// `deviceKey`, trimmed.
    pub device_key: String,
    /// `deviceSecret`, as written (not trimmed); wiped on drop, redacted
    /// in `Debug`.
    pub device_secret: SecretString,
    /// `productSecret`, as written (not trimmed), when the file has the
    /// column and the cell is not empty: a product that has one allows
    /// dynamic activation. Wiped on drop, redacted in `Debug`.
    pub product_secret: Option<SecretString>,
    /// `enabled`, trimmed, when the file has the column; read it with
    /// [`enabled`].
    pub enabled: Option<String>,
    /// `(gatewayProductKey, gatewayDeviceKey)`, trimmed, unless the file
    /// has no such columns or both are empty (one may be empty: the
    /// reader's caller refuses that).
    pub gateway: Option<(String, String)>,
}

/// A row the CSV reader could not split (say, too few fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRow {
    /// Its line in the file.
    pub line: u32,
    /// Why, in words; never a field's value.
    pub reason: String,
}

/// Every row of a file, in file order.
#[derive(Debug, Default)]
pub struct DeviceFile {
    /// Each row, or why it could not be read.
    pub rows: Vec<Result<DeviceRow, UnreadableRow>>,
}

/// Where each known column is in the file.
struct Columns {
    /// `productKey`.
    product_key: usize,
    /// `deviceKey`.
    device_key: usize,
    /// `deviceSecret`.
    device_secret: usize,
    /// `productSecret`, when present.
    product_secret: Option<usize>,
    /// `enabled`, when present.
    enabled: Option<usize>,
    /// `gatewayProductKey` and `gatewayDeviceKey`, when both present.
    gateway: Option<(usize, usize)>,
}

impl Columns {
    fn find(headers: &csv::StringRecord) -> Result<Self, DeviceFileError> {
        let index = |name: &str| {
            headers.iter().position(|h| {
                h.trim_start_matches('\u{feff}')
                    .trim()
                    .eq_ignore_ascii_case(name)
            })
        };
        let required = |name: &str| {
            index(name).ok_or_else(|| {
                DeviceFileError::Header(format!(
                    "no {name} column; it needs at least {PRODUCT_KEY},{DEVICE_KEY},{DEVICE_SECRET}"
                ))
            })
        };
        let gateway = match (index(GATEWAY_PRODUCT_KEY), index(GATEWAY_DEVICE_KEY)) {
            (Some(pk), Some(dk)) => Some((pk, dk)),
            (None, None) => None,
            _ => {
                return Err(DeviceFileError::Header(format!(
                    "{GATEWAY_PRODUCT_KEY} and {GATEWAY_DEVICE_KEY} go together: one is missing"
                )));
            }
        };
        Ok(Columns {
            product_key: required(PRODUCT_KEY)?,
            device_key: required(DEVICE_KEY)?,
            device_secret: required(DEVICE_SECRET)?,
            product_secret: index(PRODUCT_SECRET),
            enabled: index(ENABLED),
            gateway,
        })
    }

    fn row(&self, line: u32, record: &csv::StringRecord) -> DeviceRow {
        let field = |i: usize| record.get(i).unwrap_or_default().trim().to_owned();
        let gateway = self
            .gateway
            .map(|(pk, dk)| (field(pk), field(dk)))
            .filter(|(pk, dk)| !(pk.is_empty() && dk.is_empty()));
        DeviceRow {
            line,
            product_key: field(self.product_key),
            device_key: field(self.device_key),
            device_secret: SecretString::from(record.get(self.device_secret).unwrap_or_default()),
            product_secret: self
                .product_secret
                .and_then(|i| record.get(i))
                .filter(|cell| !cell.is_empty())
                .map(SecretString::from),
            enabled: self.enabled.map(field),
            gateway,
        }
    }
}

/// Splits a device file into rows. Fails only for the file as a whole (no
/// usable header row, a read error); a bad row is returned in place.
pub fn read(input: &[u8]) -> Result<DeviceFile, DeviceFileError> {
    // The CSV reader skips blank lines without counting them: derive lines
    // from byte offsets instead. A line ends where the reader ends a
    // record: at `\n`, `\r\n`, or a lone `\r` (old Mac files), which is
    // how an editor numbers them too.
    let newlines: Vec<usize> = input
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let lone_cr = *b == b'\r' && input.get(i + 1) != Some(&b'\n');
            (*b == b'\n' || lone_cr).then_some(i)
        })
        .collect();
    let line_at = |byte: u64| {
        // A record's position may be that of the blank lines before it.
        let mut byte = usize::try_from(byte).unwrap_or(usize::MAX);
        while matches!(input.get(byte), Some(b'\n' | b'\r')) {
            byte += 1;
        }
        u32::try_from(newlines.partition_point(|&n| n < byte) + 1).unwrap_or(u32::MAX)
    };
    let mut reader = csv::ReaderBuilder::new().from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| DeviceFileError::Header(csv_reason(&e)))?
        .clone();
    let columns = Columns::find(&headers)?;

    let mut file = DeviceFile::default();
    let mut record = csv::StringRecord::new();
    loop {
        let line = line_at(reader.position().byte());
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                if let csv::ErrorKind::Io(io) = e.kind() {
                    return Err(DeviceFileError::Io(io.to_string()));
                }
                let line = e.position().map_or(line, |p| line_at(p.byte()));
                file.rows.push(Err(UnreadableRow {
                    line,
                    reason: csv_reason(&e),
                }));
                continue;
            }
        }
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let line = record.position().map_or(line, |p| line_at(p.byte()));
        file.rows.push(Ok(columns.row(line, &record)));
    }
    Ok(file)
}

/// A csv error in words. csv's own messages for these kinds hold positions
/// and counts, never field values; deserialization (which could echo a
/// value) is not used.
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not valid UTF-8", err.field() + 1)
        }
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the record has {len} fields but the header has {expected_len}"),
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => "malformed CSV".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn rows(text: &str) -> Vec<Result<DeviceRow, UnreadableRow>> {
        read(text.as_bytes()).expect("a valid header").rows
    }

    #[test]
    fn lines_are_numbered_whatever_ends_them() {
        // Found by the device_file fuzz target: with lone CRs every row
        // was reported on line 1.
        for text in [
            "productKey,deviceKey,deviceSecret\rpk,a,s1\rpk,b,s2\r",
            "productKey,deviceKey,deviceSecret\r\npk,a,s1\r\npk,b,s2\r\n",
            "productKey,deviceKey,deviceSecret\npk,a,s1\npk,b,s2\n",
        ] {
            let lines: Vec<u32> = rows(text)
                .iter()
                .map(|r| r.as_ref().expect("row").line)
                .collect();
            assert_eq!(lines, [2, 3], "{text:?}");
        }
    }

    #[test]
    fn reads_console_exports_with_lines() {
        let text = "deviceName,productKey,deviceKey,deviceSecret,gatewayProductKey,gatewayDeviceKey\n\
                    a,Pk1,dev-1,s3cret1,,\n\
                    \n\
                    b,Pk1,dev-2,s3cret2,Pk1,dev-1\n";
        let rows = rows(text);
        assert_eq!(rows.len(), 2);
        let (first, second) = (
            rows[0].as_ref().expect("row"),
            rows[1].as_ref().expect("row"),
        );
        assert_eq!(first.line, 2);
        assert_eq!(second.line, 4);
        assert_eq!(first.gateway, None);
        assert_eq!(second.gateway, Some(("Pk1".into(), "dev-1".into())));
        assert_eq!(first.enabled, None);
    }

    #[test]
    fn header_names_ignore_case_spaces_and_a_byte_order_mark() {
        let text = "\u{feff}ProductKey , DEVICEKEY,deviceSecret,Enabled\n pk , dk , s3cret ,true\n";
        let rows = rows(text);
        let row = rows[0].as_ref().expect("row");
        assert_eq!(
            (row.product_key.as_str(), row.device_key.as_str()),
            ("pk", "dk")
        );
        // The secret is kept as written: its checker reports the spaces.
        assert_eq!(row.device_secret.expose_secret(), " s3cret ");
        assert_eq!(row.enabled.as_deref(), Some("true"));
    }

    #[test]
    fn a_short_row_is_unreadable_in_place_and_names_no_value() {
        let rows = rows("productKey,deviceKey,deviceSecret\npk,dk\npk,dk2,s3cret\n");
        let err = rows[0].as_ref().expect_err("short row");
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("fields"), "{}", err.reason);
        assert!(rows[1].is_ok());
    }

    #[test]
    fn the_header_must_name_the_required_columns_and_both_gateway_columns() {
        let err = read(b"productKey,deviceKey\nPk1,d\n").expect_err("refused");
        assert!(err.to_string().contains("no deviceSecret column"), "{err}");
        let err =
            read(b"productKey,deviceKey,deviceSecret,gatewayProductKey\n").expect_err("refused");
        assert!(err.to_string().contains("go together"), "{err}");
    }

    #[test]
    fn enabled_is_true_false_or_not_stated() {
        // #23 finding 15: one rule for the sandbox and the signer.
        assert_eq!(enabled(None), Ok(None));
        assert_eq!(enabled(Some("")), Ok(None));
        assert_eq!(enabled(Some("true")), Ok(Some(true)));
        assert_eq!(enabled(Some("FALSE")), Ok(Some(false)));
        for bad in ["yes", "no", "1", "0", "enabled"] {
            let err = enabled(Some(bad)).expect_err(bad);
            assert!(err.contains("enabled must be true or false"), "{err}");
        }
    }

    #[test]
    fn debug_redacts_the_secrets() {
        let rows =
            rows("productKey,deviceKey,deviceSecret,productSecret\npk,dk,TopSecret1,ProdSecret2\n");
        let debug = format!("{:?}", rows[0]);
        assert!(!debug.contains("TopSecret1"), "{debug}");
        assert!(!debug.contains("ProdSecret2"), "{debug}");
    }

    #[test]
    fn the_product_secret_is_optional_and_an_empty_cell_is_none() {
        let read = rows(
            "productKey,deviceKey,deviceSecret,ProductSecret\n\
             pk,a,s1,Prod-1 \n\
             pk,b,,\n",
        );
        let (a, b) = (
            read[0].as_ref().expect("row"),
            read[1].as_ref().expect("row"),
        );
        // As written: its checker reports the space.
        assert_eq!(
            a.product_secret.as_ref().map(|s| s.expose_secret()),
            Some("Prod-1 ")
        );
        assert!(b.product_secret.is_none());
        assert_eq!(
            b.device_secret.expose_secret(),
            "",
            "an empty device secret is kept empty"
        );
        let without = rows("productKey,deviceKey,deviceSecret\npk,a,s1\n");
        assert!(without[0].as_ref().expect("row").product_secret.is_none());
    }
}
