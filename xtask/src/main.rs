//! Project automation, run as `cargo xtask <command>`.
//!
//! # Layout
//!
//! - `test`: what CI runs: installs missing system packages the tests need,
//!   then `cargo fmt --check`, `cargo clippy --all-targets -D warnings`,
//!   `promtool check rules` and `promtool test rules` on
//!   deploy/observability, and every test in the workspace.
//! - `demo`: the main job, the whole loop on one machine.
//! - `fuzz`: every fuzz target with cargo-fuzz (nightly), N seconds each.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a command-line tool talks on stdout

mod demo;
mod fuzz;
mod system_packages;

use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <test|demo|fuzz>
  test   fmt check, clippy -D warnings, promtool on the alerting rules, every test
         (installs missing system packages)
  demo   run the whole loop on this machine
  fuzz [--secs N] [--minimize] [TARGET...]
         every fuzz target (or those named) N seconds each (default 60), nightly + cargo-fuzz";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("test") => test(),
        Some("demo") => demo::run(),
        Some("fuzz") => fuzz::run(args),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn test() -> Result<()> {
    system_packages::ensure(system_packages::NEEDED_BY_TESTS)?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    promtool()?;
    cargo(&["test", "--workspace", "--locked"])?;
    println!("xtask test: all checks passed");
    Ok(())
}

/// The alerting rules and their unit tests (issue 29 item 12).
const RULES: &str = "deploy/observability/enos-signer.rules.yml";
const RULE_TESTS: &str = "deploy/observability/tests/enos-signer.rules.test.yml";

/// `promtool check rules` on the alerting rules, then `promtool test
/// rules` on their unit tests.
fn promtool() -> Result<()> {
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        println!("$ promtool {}", args.join(" "));
        let status = Command::new("promtool")
            .args(args)
            .current_dir(workspace_root())
            .status()
            .context("cannot start promtool (Debian package `prometheus`)")?;
        if !status.success() {
            bail!("`promtool {}` failed with {status}", args.join(" "));
        }
    }
    Ok(())
}

/// Runs `cargo <args>` in the workspace root, failing with the command line.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    let xtask_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}
