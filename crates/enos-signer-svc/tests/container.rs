//! deploy/container/Containerfile names only what exists: the files it
//! copies from the repository, the packages and binaries its build makes
//! (as `cargo metadata` knows them, at the path their profile puts them;
//! the agent in its shipped `agent-release` profile), the entry points it
//! copies, the commands and flags those binaries accept, and the user the
//! Kubernetes manifests run as.
//! hadolint runs in `deploy_lint.rs`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// One instruction: keyword and its arguments (continuation lines joined).
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (keyword, args) = l
                .trim()
                .split_once(' ')
                .expect("instruction with arguments");
            Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            }
        })
        .collect()
}

/// A stage: its name, base image and instructions.
#[derive(Debug)]
struct Stage {
    name: String,
    base: String,
    body: Vec<Instruction>,
}

impl Stage {
    /// The arguments of the stage's first `keyword` instruction.
    fn args(&self, keyword: &str) -> &str {
        self.body
            .iter()
            .find(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .unwrap_or_else(|| panic!("stage {} has no {keyword}", self.name))
    }
}

fn stages(instructions: Vec<Instruction>) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            assert_eq!(words.len(), 3, "FROM image AS name: {:?}", i.args);
            assert!(words[1].eq_ignore_ascii_case("as"));
            stages.push(Stage {
                name: words[2].to_owned(),
                base: words[0].to_owned(),
                body: Vec::new(),
            });
        } else {
            stages.last_mut().expect("FROM first").body.push(i);
        }
    }
    stages
}

/// A JSON-array instruction argument (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("exec form {args:?}: {e}"))
}

/// `package -> its bin targets` from `cargo metadata`.
fn workspace_binaries() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(repo())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {output:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let mut binaries = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let bins = package["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        binaries.insert(package["name"].as_str().expect("name").to_owned(), bins);
    }
    binaries
}

/// A debug build of `bin` (its CLI is the release build's CLI): the one
/// `cargo test --workspace` built beside this test, else built now.
fn built_binary(package: &str, bin: &str) -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join(bin))
            .find(|candidate| candidate.is_file())
    });
    if let Some(path) = beside {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--quiet",
            "--package",
            package,
            "--bin",
            bin,
        ])
        .args(["--message-format", "json"])
        .current_dir(repo())
        .output()
        .expect("cargo build runs");
    assert!(
        output.status.success(),
        "cargo build -p {package} --bin {bin}"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == bin && m["executable"].is_string())
        .map(|m| PathBuf::from(m["executable"].as_str().expect("path")))
        .next_back()
        .unwrap_or_else(|| panic!("no executable for {bin}"))
}

#[test]
fn the_containerfile_names_only_what_the_build_makes() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("deploy/container/Containerfile"))
        .expect("Containerfile");
    let stages = stages(instructions(&text));
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build", "enos-agent", "enos-signer"]);
    assert_eq!(
        names.last(),
        Some(&"enos-signer"),
        "the signer is the default target"
    );

    // The build stage: sources copied from the repository, then locked
    // builds of named packages and binaries, each in a named profile.
    let build = &stages[0];
    let workdir = build.args("WORKDIR").to_owned();
    // (package, binary, the directory its profile writes under target/)
    let mut built: Vec<(String, String, String)> = Vec::new();
    for instruction in &build.body {
        match instruction.keyword.as_str() {
            "COPY" => {
                let words: Vec<&str> = instruction.args.split_whitespace().collect();
                let (sources, _dest) = words.split_at(words.len() - 1);
                for source in sources {
                    assert!(
                        root.join(source).exists(),
                        "COPY {source}: not in the repository"
                    );
                }
            }
            "RUN" => {
                for command in instruction.args.split("&&") {
                    let words: Vec<&str> = command.split_whitespace().collect();
                    assert_eq!(&words[..2], ["cargo", "build"], "{:?}", instruction.args);
                    assert!(words.contains(&"--locked"), "{:?}", instruction.args);
                    let profile = if words.contains(&"--release") {
                        "release".to_owned()
                    } else {
                        let at = words
                            .iter()
                            .position(|w| *w == "--profile")
                            .unwrap_or_else(|| panic!("no profile: {:?}", instruction.args));
                        words[at + 1].to_owned()
                    };
                    let mut package = None;
                    for pair in words.windows(2) {
                        match pair[0] {
                            "--package" => package = Some(pair[1].to_owned()),
                            "--bin" => built.push((
                                package.clone().expect("--package before --bin"),
                                pair[1].to_owned(),
                                profile.clone(),
                            )),
                            _ => {}
                        }
                    }
                }
            }
            "WORKDIR" | "ARG" | "ENV" => {}
            other => panic!("unexpected {other} in the build stage"),
        }
    }
    // The workspace copied in full: every member's manifest is there.
    for member in ["crates", "tests", "xtask"] {
        assert!(
            build
                .body
                .iter()
                .any(|i| i.keyword == "COPY" && i.args.starts_with(&format!("{member} "))),
            "COPY {member}"
        );
    }
    let workspace = workspace_binaries();
    for (package, bin, _) in &built {
        let bins = workspace
            .get(package)
            .unwrap_or_else(|| panic!("no package {package}"));
        assert!(bins.contains(bin), "{package} has no binary {bin}");
    }
    assert_eq!(built.len(), 2, "{built:?}");
    // Each as it ships: the agent in the profile its footprint was
    // measured with, which the workspace defines.
    let profile_of = |bin: &str| {
        built
            .iter()
            .find(|(_, b, _)| b == bin)
            .map(|(_, _, p)| p.as_str())
    };
    assert_eq!(profile_of("enos-signer"), Some("release"));
    assert_eq!(profile_of("enos-agent"), Some("agent-release"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("[profile.agent-release]"));

    // The runtime stages: distroless nonroot, the binary at the path its
    // profile writes, run as 65532 (the manifests' runAsUser).
    for stage in &stages[1..] {
        assert!(
            stage
                .base
                .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
            "{}: minimal base without a shell, got {}",
            stage.name,
            stage.base
        );
        let (package, bin, profile) = built
            .iter()
            .find(|(_, bin, _)| *bin == stage.name)
            .unwrap_or_else(|| panic!("stage {} builds no binary of its name", stage.name));
        let words: Vec<&str> = stage.args("COPY").split_whitespace().collect();
        assert_eq!(
            words,
            [
                "--from=build",
                &format!("{workdir}/target/{profile}/{bin}"),
                &format!("/usr/local/bin/{bin}"),
            ],
            "{}",
            stage.name
        );
        assert_eq!(stage.args("USER"), "65532:65532", "{}", stage.name);
        assert!(
            stage.body.iter().all(|i| i.keyword != "RUN"),
            "{}: nothing runs in the runtime image (it has no shell)",
            stage.name
        );
        let entrypoint = exec_form(stage.args("ENTRYPOINT"));
        assert_eq!(entrypoint, [format!("/usr/local/bin/{bin}")]);
        let cmd = exec_form(stage.args("CMD"));
        assert_eq!(cmd[1], "--config", "{}", stage.name);
        // The binary accepts the command and flag.
        let help = Command::new(built_binary(package, bin))
            .args([&cmd[0], "--help"])
            .output()
            .expect("runs");
        assert!(help.status.success(), "{bin} {} --help", cmd[0]);
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--config"),
            "{bin} {} takes --config",
            cmd[0]
        );
        if stage.name == "enos-signer" {
            // Where the manifests mount the config.
            assert_eq!(cmd, ["serve", "--config", "/etc/enos-signer/signer.toml"]);
            let exposed: Vec<&str> = stage
                .body
                .iter()
                .filter(|i| i.keyword == "EXPOSE")
                .flat_map(|i| i.args.split_whitespace())
                .collect();
            assert_eq!(exposed, ["7443", "9464", "8081"]);
        }
    }

    // Sources only in the build context.
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}
