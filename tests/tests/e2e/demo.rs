//! `enos-demo`, the program behind `cargo xtask demo`, run as a user runs it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use enos_e2e::Binaries;

use crate::support::TestResult;

/// The demo's step lines a user must see, in order.
const STEPS: &[&str] = &[
    "PKI ",
    "signer ",
    "`enos-signer ca init` made the devices' CA",
    "`enos-signer enos-api set-credential` sealed the EnOS application's API secret",
    "EnOS sandbox ",
    "registry ",
    "enrollment ",
    "`enos-agent enroll` made a P-256 key on the gateway",
    "local broker ",
    "agent MQTT ",
    "valid until",
    "MQTT connected to tcp://",
    "exit 0",
    "agent MQTTS ",
    "the gateway had no EnOS certificate",
    "the signer applied to EnOS's certificate API",
    "MQTTS connected to ssl://",
    "its serial's binding to the gateway",
    "renewal ",
    "renewed its signer certificate by itself",
    "the MQTTS session, on its EnOS certificate, stayed up (1 connect)",
    "sub-device ",
    "answered 200",
    "measurepoint ",
    "code 200",
    "command ",
    "delivered it to the local topic",
    "answered: the console received",
    "activation ",
    "had no device secret anywhere",
    "answered 200 and reconnected with securemode=2",
    "stop ",
    "audit ",
    "none of the 2 secrets, the product secret, the EnOS API secret, the pushed device secret, the console password",
    "enos demo: OK",
];

/// Copies of the binaries under unique paths, so that a process left
/// behind by this run is recognised by its executable, whatever other
/// tests run meanwhile.
struct PrivateBinaries {
    _dir: tempfile::TempDir,
    binaries: Binaries,
}

fn private_binaries() -> PrivateBinaries {
    let found = Binaries::locate().expect("the binaries");
    let dir = tempfile::Builder::new()
        .prefix("demo-bins-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let place = |from: &Path| -> PathBuf {
        let to = dir.path().join(from.file_name().expect("a file name"));
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to).expect("copy the binary");
        }
        to
    };
    let binaries = Binaries {
        sandbox: place(&found.sandbox),
        signer: place(&found.signer),
        agent: place(&found.agent),
    };
    PrivateBinaries {
        _dir: dir,
        binaries,
    }
}

/// Processes running one of `binaries`.
fn running(binaries: &Binaries) -> Vec<String> {
    let ours = [&binaries.sandbox, &binaries.signer, &binaries.agent];
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe")) {
            if ours.iter().any(|b| **b == exe) {
                found.push(format!(
                    "pid {} ({})",
                    entry.file_name().to_string_lossy(),
                    exe.display()
                ));
            }
        }
    }
    found
}

fn run_demo(binaries: &Binaries) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_enos-demo"));
    for (key, path) in binaries.env() {
        command.env(key, path);
    }
    command.output().expect("enos-demo runs")
}

#[test]
fn the_demo_runs_the_whole_loop_and_leaves_no_process_behind() -> TestResult {
    let private = private_binaries();
    let output = run_demo(&private.binaries);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let mut rest = &stdout[..];
    for step in STEPS {
        let at = rest
            .find(step)
            .unwrap_or_else(|| panic!("the demo did not tell {step:?} (in order):\n{stdout}"));
        rest = &rest[at + step.len()..];
    }
    let left = running(&private.binaries);
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn a_failing_demo_names_the_step_and_the_reason_and_leaves_no_process_behind() -> TestResult {
    let mut private = private_binaries();
    // An agent that exits at once, as a broken build would: its first
    // use, the gateway's enrollment, fails.
    private.binaries.agent = PathBuf::from("/bin/false");
    let output = run_demo(&private.binaries);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("step \"enrollment\" failed")
            && stderr.contains("`enos-agent enroll` failed (exit status: 1)"),
        "the failure names the step and the reason:\n{stderr}"
    );
    assert!(
        stdout.contains("signer "),
        "the steps before it were told:\n{stdout}"
    );
    let left = running(&private.binaries);
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
