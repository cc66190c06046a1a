//! Debian packages the tests need, installed when missing.

use std::process::Command;

use anyhow::{Result, bail};

/// A program the tests run and the Debian package that provides it.
pub(crate) struct SystemPackage {
    /// Looked up on `PATH` (or as an absolute path) to decide whether the
    /// package is there.
    pub(crate) program: &'static str,
    /// What `apt-get install` is given.
    pub(crate) package: &'static str,
}

/// Everything the test suite needs beyond the Rust toolchain.
pub(crate) const NEEDED_BY_TESTS: &[SystemPackage] = &[
    // enos-agent: the gateway's local broker in the bridge tests.
    // enos-e2e (tests/): the broker of the Mosquitto scenarios (TLS with a
    // required client certificate; a password file that refuses the agent).
    SystemPackage {
        program: "mosquitto",
        package: "mosquitto",
    },
    // HSM custody's tests initialise throwaway tokens and load libsofthsm2.so.
    SystemPackage {
        program: "softhsm2-util",
        package: "softhsm2",
    },
    // enos-signer-svc: the CLI test stops `enos-signer serve` with `kill -TERM`.
    SystemPackage {
        program: "kill",
        package: "procps",
    },
    // enos-postgres-fixture: the PostgreSQL registry's tests start throwaway
    // clusters (initdb, pg_ctl, psql). Debian keeps the server binaries in
    // /usr/lib/postgresql/VERSION/bin, off PATH: looked up there too.
    SystemPackage {
        program: "initdb",
        package: "postgresql",
    },
    // deploy/observability: `promtool check rules` and `promtool test rules`
    // on the alerting rules (Debian ships promtool in `prometheus`).
    SystemPackage {
        program: "promtool",
        package: "prometheus",
    },
];

/// Where Debian installs versioned server binaries (`VERSION/bin/PROGRAM`).
const VERSIONED_BIN_ROOT: &str = "/usr/lib/postgresql";

/// Installs whatever is missing when running as root; otherwise stops
/// with the exact command to run.
pub(crate) fn ensure(needed: &[SystemPackage]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|p| !is_installed(p.program))
        .map(|p| p.package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "the tests need Debian packages that are missing: {list}\n\
             run: sudo sh -c 'apt-get update && apt-get install -y {list}'"
        );
    }
    println!("xtask: installing missing system packages: {list}");
    // Wait for a dpkg lock held by another installer instead of failing.
    run("apt-get", &["-o", "DPkg::Lock::Timeout=300", "update"])?;
    let mut args = vec![
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "--no-install-recommends",
    ];
    args.extend(missing.iter().copied());
    run("apt-get", &args)
}

fn is_installed(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
            // Daemons such as mosquitto live in sbin, often off a user's PATH.
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(program).is_file())
    }) || in_versioned_bin(std::path::Path::new(VERSIONED_BIN_ROOT), program)
}

/// Whether `root/*/bin/program` exists (PostgreSQL's layout on Debian).
fn in_versioned_bin(root: &std::path::Path, program: &str) -> bool {
    std::fs::read_dir(root).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|version| version.path().join("bin").join(program).is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_binaries_off_path_are_found_in_their_versioned_directory() {
        let root = std::env::temp_dir().join(format!("xtask-pg-{}", std::process::id()));
        let bin = root.join("15").join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        assert!(!in_versioned_bin(&root, "initdb"), "not there yet");
        std::fs::write(bin.join("initdb"), "").expect("write");
        assert!(in_versioned_bin(&root, "initdb"));
        assert!(!in_versioned_bin(&root, "pg_ctl"));
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert!(!in_versioned_bin(&root, "initdb"), "missing root");
    }
}
