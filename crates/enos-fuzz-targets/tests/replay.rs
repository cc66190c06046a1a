//! Replays every committed input of every fuzz target on stable: the
//! seeds (`fuzz/seeds/<target>/`), the minimised corpus
//! (`fuzz/corpus/<target>/`) and every crash ever found
//! (`fuzz/regressions/<target>/`, kept for good).

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_target_has_seeds_and_survives_every_committed_input() {
    for (target, body) in enos_fuzz_targets::TARGETS {
        let files = inputs(target);
        assert!(
            !files.is_empty(),
            "fuzz target {target} has no seeds in fuzz/seeds/{target}"
        );
        for file in files {
            let data = match std::fs::read(&file) {
                Ok(data) => data,
                // A fuzzer running meanwhile replaces corpus files.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("reading {}: {e}", file.display()),
            };
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} panicked on {}",
                file.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_libfuzzer_wrapper() {
    for (target, _) in enos_fuzz_targets::TARGETS {
        let wrapper = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&wrapper)
            .unwrap_or_else(|e| panic!("{}: {e}", wrapper.display()));
        assert!(
            text.contains(&format!("enos_fuzz_targets::{target}(")),
            "{} does not call enos_fuzz_targets::{target}",
            wrapper.display()
        );
    }
}

#[test]
fn the_fuzz_crate_builds_exactly_these_targets() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    assert_eq!(
        manifest.matches("[[bin]]").count(),
        enos_fuzz_targets::TARGETS.len()
    );
}
