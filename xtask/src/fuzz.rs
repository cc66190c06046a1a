//! `cargo xtask fuzz [--secs N] [TARGET…]`: runs every fuzz target (or the
//! ones named) with cargo-fuzz on the nightly toolchain, N seconds each
//! (default 60), then prints executions per target.
//!
//! Each target starts from its seeds (`fuzz/seeds/<t>`, read only) and its
//! committed corpus (`fuzz/corpus/<t>`, which libFuzzer extends). A crash
//! is copied to `fuzz/regressions/<t>/`, which the stable replay test
//! (`cargo test -p enos-fuzz-targets`) runs for ever after, and the command
//! fails. `--minimize` runs `cargo fuzz cmin` on each corpus afterwards,
//! so that what is committed stays small.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The targets, in the order they run; `fuzz/Cargo.toml` has one `[[bin]]`
/// each and `enos-fuzz-targets` one body each (a test checks both).
const TARGETS: &[&str] = &[
    "mqtt_login",
    "certificate_identity",
    "device_file",
    "signer_config",
    "agent_config",
    "sandbox_config",
    "pkcs11_config",
    "pkcs11_uri",
    "sandbox_requests",
    "agent_downstream",
];

/// What one target's run gave.
struct Outcome {
    /// The target.
    target: &'static str,
    /// libFuzzer's own count of executions.
    runs: u64,
    /// How long it ran, in seconds.
    secs: u64,
    /// Crash files found, already copied to the regressions.
    crashes: Vec<PathBuf>,
}

pub(crate) fn run(args: impl Iterator<Item = String>) -> Result<()> {
    let mut secs = 60u64;
    let mut minimize = false;
    let mut chosen = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => {
                let value = args.next().context("--secs needs a number of seconds")?;
                secs = value
                    .parse()
                    .with_context(|| format!("--secs {value:?} is not a number of seconds"))?;
            }
            "--minimize" => minimize = true,
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(target) => chosen.push(*target),
                None => bail!(
                    "unknown fuzz target {name:?}; the targets are: {}",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if chosen.is_empty() {
        chosen = TARGETS.to_vec();
    }
    ensure_cargo_fuzz()?;
    let fuzz_dir = crate::workspace_root().join("fuzz");
    let mut outcomes = Vec::new();
    for target in chosen {
        outcomes.push(run_target(&fuzz_dir, target, secs)?);
        if minimize {
            minimize_corpus(&fuzz_dir, target)?;
        }
    }
    println!(
        "\n{:<22} {:>14} {:>8} {:>10}",
        "target", "executions", "secs", "crashes"
    );
    for o in &outcomes {
        println!(
            "{:<22} {:>14} {:>8} {:>10}",
            o.target,
            o.runs,
            o.secs,
            o.crashes.len()
        );
    }
    let crashes: Vec<&PathBuf> = outcomes.iter().flat_map(|o| &o.crashes).collect();
    if !crashes.is_empty() {
        bail!(
            "{} crash(es), copied to fuzz/regressions/ (replayed by `cargo test -p enos-fuzz-targets`): {}",
            crashes.len(),
            crashes
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("xtask fuzz: no crash");
    Ok(())
}

/// cargo-fuzz on the nightly toolchain; installed from crates.io if missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Ok(());
    }
    println!("xtask fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cannot start cargo install")?;
    if !status.success() {
        bail!(
            "`cargo install cargo-fuzz --locked` failed with {status}; the nightly toolchain is needed too (rustup toolchain install nightly)"
        );
    }
    Ok(())
}

fn run_target(fuzz_dir: &Path, target: &'static str, secs: u64) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let before: Vec<PathBuf> = files_in(&artifacts);
    println!("$ cargo +nightly fuzz run {target} -- -max_total_time={secs}");
    let output = Command::new("cargo")
        .current_dir(fuzz_dir)
        .args(["+nightly", "fuzz", "run", target])
        .arg(&corpus)
        .arg(&seeds)
        .args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
        ])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let runs = final_runs(&log);
    let crashes: Vec<PathBuf> = files_in(&artifacts)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    let mut kept = Vec::new();
    if !crashes.is_empty() || (!output.status.success() && runs.is_none()) {
        // Keep libFuzzer's own words about it.
        eprintln!("{}", tail(&log, 40));
    }
    let regressions = fuzz_dir.join("regressions").join(target);
    for crash in crashes {
        std::fs::create_dir_all(&regressions)?;
        let name = crash.file_name().context("a crash file has a name")?;
        let dest = regressions.join(name);
        std::fs::copy(&crash, &dest)
            .with_context(|| format!("copying {} to {}", crash.display(), dest.display()))?;
        kept.push(dest);
    }
    if !output.status.success() && kept.is_empty() {
        bail!("cargo fuzz run {target} failed with {}", output.status);
    }
    Ok(Outcome {
        target,
        runs: runs.unwrap_or(0),
        secs,
        crashes: kept,
    })
}

fn minimize_corpus(fuzz_dir: &Path, target: &str) -> Result<()> {
    println!("$ cargo +nightly fuzz cmin {target}");
    let status = Command::new("cargo")
        .current_dir(fuzz_dir)
        .args(["+nightly", "fuzz", "cmin", target])
        .arg(fuzz_dir.join("corpus").join(target))
        .status()
        .with_context(|| format!("cannot start cargo fuzz cmin {target}"))?;
    if !status.success() {
        bail!("cargo fuzz cmin {target} failed with {status}");
    }
    Ok(())
}

/// libFuzzer's final `stat::number_of_executed_units: N`, or its
/// `Done N runs in S second(s)`.
fn final_runs(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            return n.trim().parse().ok();
        }
        let rest = line.split("Done ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_execution_count() {
        let log = "#1048576 pulse  cov: 12\nDone 2097152 runs in 11 second(s)\n\
                   stat::number_of_executed_units: 2097153\nstat::average_exec_per_sec: 190650\n";
        assert_eq!(final_runs(log), Some(2_097_153));
        assert_eq!(final_runs("Done 42 runs in 1 second(s)"), Some(42));
        assert_eq!(final_runs("nothing"), None);
    }

    #[test]
    fn the_target_list_matches_the_fuzz_crate() {
        let manifest = std::fs::read_to_string(crate::workspace_root().join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "fuzz/Cargo.toml has no [[bin]] {target}"
            );
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len());
    }
}
