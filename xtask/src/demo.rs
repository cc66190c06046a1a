//! `cargo xtask demo`: the main job, the whole loop on this machine.
//!
//! Builds the three programs and the demo driver with the same cargo and
//! target directory as this xtask (`cargo build --bins -p enos-sandbox -p
//! enos-signer-svc -p enos-agent -p enos-e2e`), then runs `enos-demo`,
//! which starts the sandbox broker, the signer and the agent, tells each
//! step as it happens and stops them all (see `tests/src/demo.rs`). The
//! driver lives in the `enos-e2e` crate, next to the end-to-end suite that
//! runs it too, so that this xtask stays std + anyhow.
//!
//! The demo's children are in this process group: Ctrl-C reaches them
//! all, and the driver stops them on every other path.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// The binaries the demo runs: `(package, binary)`.
const PROGRAMS: &[(&str, &str)] = &[
    ("enos-sandbox", "enos-sandbox"),
    ("enos-signer-svc", "enos-signer"),
    ("enos-agent", "enos-agent"),
    ("enos-e2e", "enos-demo"),
];

pub(crate) fn run() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("xtask demo: building the sandbox, the signer, the agent and the demo driver");
    let mut build = Command::new(&cargo);
    build.args(["build", "--bins"]);
    for (package, _) in PROGRAMS {
        build.args(["-p", package]);
    }
    let status = build
        .current_dir(crate::workspace_root())
        .status()
        .with_context(|| format!("cannot start {cargo}"))?;
    if !status.success() {
        bail!("building the demo's programs failed ({status})");
    }

    // `cargo xtask` is `cargo run -p xtask` in the dev profile: this
    // executable sits in the profile directory where the build above put
    // the other binaries (same CARGO_TARGET_DIR, same profile).
    let bin_dir = bin_dir()?;
    let path = |name: &str| -> Result<PathBuf> {
        let path = bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            bail!("{} was not built", path.display())
        }
    };
    let status = Command::new(path("enos-demo")?)
        .env("ENOS_SANDBOX_BIN", path("enos-sandbox")?)
        .env("ENOS_SIGNER_BIN", path("enos-signer")?)
        .env("ENOS_AGENT_BIN", path("enos-agent")?)
        .status()
        .context("cannot run enos-demo")?;
    if !status.success() {
        bail!("the demo failed ({status}); the failed step and its reason are above");
    }
    Ok(())
}

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    exe.parent()
        .map(PathBuf::from)
        .context("the xtask executable has no directory")
}
