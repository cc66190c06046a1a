//! `enos-agent sign`, run as a process: the secret comes from a file or
//! stdin, the answer is one JSON object, bad input exits non-zero with a
//! clear message and without echoing the secret.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");

/// A flag with its value.
type Flag<'a> = (&'a str, &'a str);

/// The fields of the published reference vector (its secret is `aaabbbcc123`).
const REFERENCE: [Flag<'static>; 4] = [
    ("--product-key", "123"),
    ("--device-key", "test"),
    ("--client-id", "123"),
    ("--timestamp", "1524448722000"),
];

/// Runs `enos-agent sign` with `options` (each flag with its value) and
/// `stdin`.
fn sign(options: &[Flag<'_>], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("sign")
        .args(options.iter().flat_map(|(flag, value)| [flag, value]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn enos-agent");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// As [`sign`], which must succeed; its one JSON object.
fn signed(options: &[Flag<'_>], stdin: &[u8]) -> serde_json::Value {
    let out = sign(options, stdin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn signs_from_stdin_and_from_a_file() {
    let json = signed(
        &[&REFERENCE[..], &[("--secret-file", "-")]].concat(),
        b"aaabbbcc123\n",
    );
    assert_eq!(json["password"], "97AA97335D6EC3D7E1F9E3119501E399CC0B4125");
    assert_eq!(json["username"], "test&123");
    assert_eq!(
        json["client_id"],
        "123|securemode=2,signmethod=hmacsha1,timestamp=1524448722000|"
    );
    assert_eq!(json["timestamp"], 1524448722000u64);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("secret");
    std::fs::write(&file, "aaabbbcc123").expect("write");
    let path = file.to_str().expect("utf-8 path");
    let json = signed(
        &[
            &REFERENCE[..],
            &[("--sign-method", "hmacsha256"), ("--secret-file", path)],
        ]
        .concat(),
        b"",
    );
    assert_eq!(
        json["password"],
        "a82348b9c04b7de8b26e83e51f3ea88d8665734a1135f79096c528785d15cab5"
    );
}

#[test]
fn defaults_client_id_to_the_device_key_and_timestamp_to_now() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let json = signed(
        &[
            ("--product-key", "pk"),
            ("--device-key", "dk"),
            ("--secret-file", "-"),
        ],
        b"s3cret",
    );
    let ts = json["timestamp"].as_u64().expect("number");
    assert!(ts >= before && ts < before + 60_000, "{ts} vs {before}");
    assert!(
        json["client_id"]
            .as_str()
            .expect("str")
            .starts_with(&format!(
                "dk|securemode=2,signmethod=hmacsha1,timestamp={ts}|"
            ))
    );
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let secret = b"TopSecret42";
    let device = [("--product-key", "pk"), ("--device-key", "dk")];
    let from_stdin = ("--secret-file", "-");
    let cases: [(Vec<Flag<'_>>, &[u8], &str); 5] = [
        (
            vec![("--product-key", "p|k"), ("--device-key", "dk"), from_stdin],
            secret,
            "productKey",
        ),
        (
            [&device[..], &[("--timestamp", "soon"), from_stdin]].concat(),
            secret,
            "timestamp",
        ),
        (
            [&device[..], &[("--sign-method", "sha512"), from_stdin]].concat(),
            secret,
            "signmethod",
        ),
        (
            [&device[..], &[from_stdin]].concat(),
            b"two words",
            "deviceSecret",
        ),
        (
            [&device[..], &[("--secret-file", "/nonexistent/secret")]].concat(),
            b"",
            "/nonexistent/secret",
        ),
    ];
    for (options, stdin, expect) in cases {
        let out = sign(&options, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{options:?} succeeded");
        assert!(out.stdout.is_empty(), "{options:?} printed on stdout");
        assert!(stderr.contains(expect), "{options:?}: {stderr}");
        assert!(
            !stderr.contains("TopSecret42") && !stderr.contains("two words"),
            "{stderr}"
        );
    }
    // There is no way to pass the secret on the command line.
    let out = sign(&[&device[..], &[("--secret", "TopSecret42")]].concat(), b"");
    assert!(!out.status.success());
}
