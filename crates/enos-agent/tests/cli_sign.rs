//! `enos-agent sign`, run as a process: the secret comes from a file or
//! stdin, the answer is one JSON object, bad input exits non-zero with a
//! clear message and without echoing the secret.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_enos-agent");

fn sign(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("sign")
        .args(args)
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

#[test]
fn signs_from_stdin_and_from_a_file() {
    let args = [
        "--product-key",
        "123",
        "--device-key",
        "test",
        "--client-id",
        "123",
        "--timestamp",
        "1524448722000",
        "--secret-file",
        "-",
    ];
    let out = sign(&args, b"aaabbbcc123\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
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
    let out = sign(
        &[
            "--product-key",
            "123",
            "--device-key",
            "test",
            "--client-id",
            "123",
            "--timestamp",
            "1524448722000",
            "--sign-method",
            "hmacsha256",
            "--secret-file",
            path,
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
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
    let out = sign(
        &[
            "--product-key",
            "pk",
            "--device-key",
            "dk",
            "--secret-file",
            "-",
        ],
        b"s3cret",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
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
    let cases: [(&[&str], &[u8], &str); 5] = [
        (
            &[
                "--product-key",
                "p|k",
                "--device-key",
                "dk",
                "--secret-file",
                "-",
            ],
            secret,
            "productKey",
        ),
        (
            &[
                "--product-key",
                "pk",
                "--device-key",
                "dk",
                "--timestamp",
                "soon",
                "--secret-file",
                "-",
            ],
            secret,
            "timestamp",
        ),
        (
            &[
                "--product-key",
                "pk",
                "--device-key",
                "dk",
                "--sign-method",
                "sha512",
                "--secret-file",
                "-",
            ],
            secret,
            "signmethod",
        ),
        (
            &[
                "--product-key",
                "pk",
                "--device-key",
                "dk",
                "--secret-file",
                "-",
            ],
            b"two words",
            "deviceSecret",
        ),
        (
            &[
                "--product-key",
                "pk",
                "--device-key",
                "dk",
                "--secret-file",
                "/nonexistent/secret",
            ],
            b"",
            "/nonexistent/secret",
        ),
    ];
    for (args, stdin, expect) in cases {
        let out = sign(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("TopSecret42") && !stderr.contains("two words"),
            "{stderr}"
        );
    }
    // There is no way to pass the secret on the command line.
    let out = sign(
        &[
            "--product-key",
            "pk",
            "--device-key",
            "dk",
            "--secret",
            "TopSecret42",
        ],
        b"",
    );
    assert!(!out.status.success());
}
