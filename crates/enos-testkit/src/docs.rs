//! The docs cannot drift silently: their links resolve, and the command
//! lines they show parse with the programs' own command-line definitions.
//!
//! The files: `README.md`, `docs/**/*.md` and `crates/*/README.md`
//! ([`markdown_files`]).
//!
//! - [`broken_links`]: every relative link, image and `#anchor` outside
//!   code (inline `[text](path#anchor)`, `![alt](path)`, reference
//!   definitions `[ref]: path`, `[text][ref]` without a definition, HTML
//!   `src=`/`href=`) must name an existing file or directory in the
//!   repository, and an anchor a heading of the target Markdown file as
//!   GitHub slugs it (lower-case, punctuation but `-` and `_` removed,
//!   spaces to `-`, `-1`, `-2`... on repeats) or an HTML `id`/`name`.
//!   URLs with a scheme (`https:`, `mailto:`) are not checked.
//! - [`command_lines`]: every command for a program shown in a `sh`,
//!   `bash`, `shell`, `zsh` or `console` block, as a shell reads it:
//!   `\`-continued lines joined, a `$ ` prompt, `VAR=value`, `sudo [-u
//!   user]`, `exec`, `env` dropped (the variables are kept, with those
//!   `export`ed earlier in the file); found after `|`, `&&`, `;`, `(`, or
//!   inside `$(...)`; redirections (`> f`, `< f`, `2>&1`) and comments
//!   removed; `cargo run -p P [--bin B] -- ARGS` and paths
//!   (`target/release/enos-agent`, `./enos-agent`) recognised. Usage
//!   synopses (`[--flag VALUE]`, `a|b`) keep their flags and first
//!   alternatives; `<NAME>` placeholders are words.
//! - [`parse_failures`]: each of them through the program's clap parser.
//!
//! Each program checks its own command lines in a unit test beside its
//! `Cli` (`mod docs_commands`), so the real parser is the one used.

mod markdown;
mod shell;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Component, Path, PathBuf},
};

use clap::CommandFactory;

use crate::binaries::{AGENT, SANDBOX, SIGNER};

/// The repository's root: the first directory at or above `manifest_dir`
/// (a crate's `env!("CARGO_MANIFEST_DIR")`) that holds `Cargo.lock`.
/// Panics if there is none: a test run outside the workspace.
pub fn repo_root(manifest_dir: impl AsRef<Path>) -> PathBuf {
    let start = manifest_dir.as_ref();
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock at or above {}", start.display()))
        .to_path_buf()
}

/// The Markdown files the checks read, sorted: `README.md`,
/// `crates/*/README.md` and every `.md` under `docs/`.
pub fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    let readme = root.join("README.md");
    if readme.is_file() {
        files.push(readme);
    }
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        for entry in crates.flatten() {
            let readme = entry.path().join("README.md");
            if readme.is_file() {
                files.push(readme);
            }
        }
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn relative<'a>(root: &Path, path: &'a Path) -> &'a Path {
    path.strip_prefix(root).unwrap_or(path)
}

/// `%XX` escapes decoded (a link to `my%20file.md` names `my file.md`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL with a scheme (`https:`, `mailto:`) or a host (`//host`).
fn is_absolute_url(dest: &str) -> bool {
    if dest.starts_with("//") {
        return true;
    }
    dest.split_once(':').is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
    })
}

/// `base/rel` with `.` and `..` resolved without the file system; `None`
/// if it climbs out of `root`.
fn resolve(root: &Path, base: &Path, rel: &str) -> Option<PathBuf> {
    let start = if rel.starts_with('/') { root } else { base };
    let mut path = start.strip_prefix(root).ok()?.to_path_buf();
    for component in Path::new(rel.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::ParentDir => {
                if !path.pop() {
                    return None;
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(root.join(path))
}

fn is_markdown(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("md") || e.eq_ignore_ascii_case("markdown"))
}

/// Every broken link of every file of [`markdown_files`], one line each:
/// `file:line: destination: why`.
pub fn broken_links(root: &Path) -> Vec<String> {
    let mut anchors: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    let mut all = vec![];
    for file in markdown_files(root) {
        let mut broken: Vec<(usize, String)> = vec![];
        let doc = markdown::parse(&read(&file));
        let shown = relative(root, &file).display().to_string();
        let found = markdown::links(&doc);
        for (line, label) in found.undefined_refs {
            broken.push((
                line,
                format!("{shown}:{line}: [{label}]: no reference definition `[{label}]: ...`"),
            ));
        }
        for link in found.links {
            let dest = link.dest.trim();
            if is_absolute_url(dest) {
                continue;
            }
            let report = |why: String| (link.line, format!("{shown}:{}: {dest}: {why}", link.line));
            if dest.is_empty() {
                broken.push(report("empty destination".into()));
                continue;
            }
            let (path, fragment) = match dest.split_once('#') {
                Some((path, fragment)) => (path, Some(percent_decode(fragment))),
                None => (dest, None),
            };
            let path = percent_decode(path.split('?').next().unwrap_or_default());
            let target = if path.is_empty() {
                file.clone()
            } else {
                let base = file.parent().unwrap_or(root);
                match resolve(root, base, &path) {
                    Some(target) => target,
                    None => {
                        broken.push(report("points outside the repository".into()));
                        continue;
                    }
                }
            };
            if !target.exists() {
                broken.push(report(format!(
                    "no such file or directory {}",
                    relative(root, &target).display()
                )));
                continue;
            }
            let Some(fragment) = fragment.filter(|f| !f.is_empty()) else {
                continue;
            };
            // Anchors of other files (`main.rs#L10`) are GitHub's line
            // links, not headings: not checked.
            if !(target.is_file() && is_markdown(&target)) {
                continue;
            }
            let known = anchors
                .entry(target.clone())
                .or_insert_with(|| markdown::anchors(&markdown::parse(&read(&target))));
            if !known.contains(&fragment) {
                broken.push(report(format!(
                    "no heading with anchor #{fragment} in {}",
                    relative(root, &target).display()
                )));
            }
        }
        broken.sort_by_key(|(line, _)| *line);
        all.extend(broken.into_iter().map(|(_, message)| message));
    }
    all
}

/// A command line a doc shows for a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The Markdown file, relative to the repository's root.
    pub file: PathBuf,
    /// The 1-based line where the command starts.
    pub line: usize,
    /// The logical line as the doc shows it (continuations joined).
    pub text: String,
    /// Environment variables set for it: exported earlier in the file or
    /// assigned before it (`VAR=value enos-agent ...`).
    pub env: Vec<(String, String)>,
    /// The program's name, then its arguments: what `try_parse_from`
    /// takes.
    pub args: Vec<String>,
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: `{}`", self.file.display(), self.line, self.text)
    }
}

/// The binary `cargo run -p package [--bin bin]` runs: `bin`, else the
/// package's own binary (`enos-signer-svc` builds `enos-signer`).
fn cargo_binary(package: Option<&str>, bin: Option<&str>) -> Option<String> {
    if let Some(bin) = bin {
        return Some(bin.to_owned());
    }
    let package = package?;
    Some(
        [SANDBOX, SIGNER, AGENT]
            .iter()
            .find(|p| p.package == package)
            .map_or(package, |p| p.bin)
            .to_owned(),
    )
}

/// The command lines for `binary` in one Markdown text, `file` naming it
/// in the results.
pub fn command_lines_in(file: &Path, markdown: &str, binary: &str) -> Vec<CommandLine> {
    let doc = markdown::parse(markdown);
    let mut exported: Vec<(String, String)> = vec![];
    let mut out = vec![];
    for fence in &doc.fences {
        let Some(console) = shell::shell_kind(&fence.lang) else {
            continue;
        };
        for logical in shell::logical_lines(fence, console) {
            for simple in shell::simple_commands(&logical.text) {
                let (program, args, env) = match shell::invocation(&simple.words) {
                    shell::Invocation::Export(vars) => {
                        for (name, value) in vars {
                            exported.retain(|(n, _)| *n != name);
                            exported.push((name, value));
                        }
                        continue;
                    }
                    shell::Invocation::Unset(names) => {
                        exported.retain(|(n, _)| !names.contains(n));
                        continue;
                    }
                    shell::Invocation::Other => continue,
                    shell::Invocation::Run { program, args, env } => {
                        let name = program.rsplit('/').next().unwrap_or_default().to_owned();
                        (name, args, env)
                    }
                    shell::Invocation::Cargo {
                        package,
                        bin,
                        args,
                        env,
                    } => match cargo_binary(package.as_deref(), bin.as_deref()) {
                        Some(name) => (name, args, env),
                        None => continue,
                    },
                };
                if program != binary {
                    continue;
                }
                let mut all_env = exported.clone();
                for (name, value) in env {
                    all_env.retain(|(n, _)| *n != name);
                    all_env.push((name, value));
                }
                out.push(CommandLine {
                    file: file.to_path_buf(),
                    line: logical.line,
                    text: logical.text.clone(),
                    env: all_env,
                    args: std::iter::once(program).chain(args).collect(),
                });
            }
        }
    }
    out
}

/// Every command line for `binary` in [`markdown_files`].
pub fn command_lines(root: &Path, binary: &str) -> Vec<CommandLine> {
    markdown_files(root)
        .iter()
        .flat_map(|file| command_lines_in(relative(root, file), &read(file), binary))
        .collect()
}

/// `command` as it parses with the environment `env` and nothing else:
/// arguments read from a variable (`#[arg(env = "...")]`) take the doc's
/// value when it sets one, and never the test process's.
fn with_doc_env(mut command: clap::Command, env: &[(String, String)]) -> clap::Command {
    let from_env: Vec<(clap::Id, Option<String>)> = command
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_env()?;
            let value = env
                .iter()
                .rev()
                .find(|(n, _)| std::ffi::OsStr::new(n) == name)
                .map(|(_, v)| v.clone());
            Some((arg.get_id().clone(), value))
        })
        .collect();
    for (id, value) in from_env {
        command = command.mut_arg(id, |arg| {
            let arg = arg.env(None::<&'static str>);
            match value {
                // clap keeps defaults as `&'static str`: a few bytes per
                // doc line, for the test's lifetime.
                Some(value) => arg
                    .required(false)
                    .default_value(&*Box::leak(value.into_boxed_str())),
                None => arg,
            }
        });
    }
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |sub| with_doc_env(sub, env));
    }
    command
}

/// Why `line` does not parse with `command`, if it does not: the line and
/// clap's error. `--help` and `--version` parse.
pub fn parse_failure(command: clap::Command, line: &CommandLine) -> Option<String> {
    use clap::error::ErrorKind;
    match with_doc_env(command, &line.env).try_get_matches_from(&line.args) {
        Ok(_) => None,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => None,
        Err(e) => Some(format!(
            "{line}\n  args: {:?}\n  {}",
            line.args,
            e.to_string().trim()
        )),
    }
}

/// [`parse_failure`] of every line with the program's `Cli`.
pub fn parse_failures<C: CommandFactory>(lines: &[CommandLine]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| parse_failure(C::command(), line))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program of the test's own, to show what a doc line that drifted
    /// from it looks like.
    #[derive(clap::Parser)]
    #[command(name = "demo")]
    struct Demo {
        #[command(subcommand)]
        command: DemoCommand,
    }

    #[derive(clap::Subcommand)]
    enum DemoCommand {
        Run {
            #[arg(long)]
            config: PathBuf,
        },
        Put {
            device: String,
            #[arg(long, env = "DEMO_CA")]
            ca: PathBuf,
        },
    }

    fn lines(markdown: &str) -> Vec<CommandLine> {
        command_lines_in(Path::new("doc.md"), markdown, "demo")
    }

    fn args(lines: &[CommandLine]) -> Vec<Vec<&str>> {
        lines
            .iter()
            .map(|l| l.args.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn commands_are_found_as_a_shell_reads_them() {
        let doc = "\
Text `demo run --nope` is not a command.

```sh
$ demo run \\
    --config a.toml   # a comment --nope
RUST_LOG=debug sudo -u enos demo run --config b.toml 2>&1 | tee log
cd /srv && exec ./target/release/demo run --config c.toml > out.log
X=$(demo put dev-1) ; cat /run/demo/status.json
cargo run --release -p demo -- run --config d.toml
install -m 0755 target/release/demo /usr/local/bin/
```

```toml
demo = \"not shell\"
```

```console
$ demo put dev-2 < secret
put dev-2
```
";
        let found = lines(doc);
        assert_eq!(
            args(&found),
            vec![
                vec!["demo", "run", "--config", "a.toml"],
                vec!["demo", "run", "--config", "b.toml"],
                vec!["demo", "run", "--config", "c.toml"],
                vec!["demo", "put", "dev-1"],
                vec!["demo", "run", "--config", "d.toml"],
                vec!["demo", "put", "dev-2"],
            ]
        );
        let numbers: Vec<usize> = found.iter().map(|l| l.line).collect();
        assert_eq!(numbers, vec![4, 6, 7, 8, 9, 18]);
        assert_eq!(
            found[1].env,
            vec![("RUST_LOG".to_owned(), "debug".to_owned())]
        );
    }

    #[test]
    fn a_renamed_flag_is_reported_with_file_line_and_clap_error() {
        let doc = "```sh\ndemo run --config a.toml\ndemo run --conf a.toml\n```\n";
        let found = lines(doc);
        assert_eq!(found.len(), 2);
        let failures = parse_failures::<Demo>(&found);
        assert_eq!(failures.len(), 1, "{failures:#?}");
        assert!(
            failures[0].starts_with("doc.md:3: `demo run --conf a.toml`"),
            "{}",
            failures[0]
        );
        assert!(
            failures[0].contains("unexpected argument '--conf'"),
            "{}",
            failures[0]
        );
    }

    #[test]
    fn variables_the_doc_sets_count_and_the_test_process_s_do_not() {
        let doc = "\
```sh
demo put dev-1
export DEMO_CA=ca.pem
demo put dev-2
```

```sh
demo put dev-3          # still exported
unset DEMO_CA
demo put dev-4
DEMO_CA=x.pem demo put dev-5
demo --help
```
";
        let failures = parse_failures::<Demo>(&lines(doc));
        assert_eq!(failures.len(), 2, "{failures:#?}");
        assert!(failures[0].starts_with("doc.md:2:"), "{}", failures[0]);
        assert!(failures[1].starts_with("doc.md:10:"), "{}", failures[1]);
        assert!(failures[1].contains("--ca"), "{}", failures[1]);
    }

    #[test]
    fn links_resolve_against_files_and_headings() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let root = root.path();
        std::fs::write(root.join("Cargo.lock"), "").expect("Cargo.lock");
        std::fs::create_dir_all(root.join("docs/img")).expect("docs/img");
        std::fs::create_dir_all(root.join("crates/x")).expect("crates/x");
        std::fs::write(root.join("docs/img/a.svg"), "<svg/>").expect("a.svg");
        std::fs::write(
            root.join("README.md"),
            "# Top\n\
             ## Set up: the *signer* (v2)\n\
             ## Set up: the *signer* (v2)\n\
             See [set up](#set-up-the-signer-v2), [again](#set-up-the-signer-v2-1),\n\
             [guide](docs/guide.md#running-enos-agent), [img](docs/img/a.svg),\n\
             [dir](crates/x/), [crate](crates/x/README.md#nope), [up](../out.md)\n\
             `[code](missing.md)` [web](https://example.com/missing.md)\n\
             [bad](#set-up-the-signer-v2-2) ![gone](docs/img/b.svg)\n\
             <img src=\"docs/img/c.svg\"> [ref][r] [dangling][none]\n\
             \n\
             [r]: docs/guide.md#nothing\n",
        )
        .expect("README.md");
        std::fs::write(
            root.join("docs/guide.md"),
            "# Running `enos-agent`\n[back](../README.md#top) [line](../Cargo.lock#L1)\n\
             ```sh\n[not](a-link.md)\n```\n",
        )
        .expect("guide.md");
        std::fs::write(root.join("crates/x/README.md"), "# X\n").expect("crate README");
        assert_eq!(
            markdown_files(root),
            vec![
                root.join("README.md"),
                root.join("crates/x/README.md"),
                root.join("docs/guide.md"),
            ]
        );
        assert_eq!(
            broken_links(root),
            vec![
                "README.md:6: crates/x/README.md#nope: no heading with anchor #nope in crates/x/README.md",
                "README.md:6: ../out.md: points outside the repository",
                "README.md:8: #set-up-the-signer-v2-2: no heading with anchor #set-up-the-signer-v2-2 in README.md",
                "README.md:8: docs/img/b.svg: no such file or directory docs/img/b.svg",
                "README.md:9: [none]: no reference definition `[none]: ...`",
                "README.md:9: docs/img/c.svg: no such file or directory docs/img/c.svg",
                "README.md:11: docs/guide.md#nothing: no heading with anchor #nothing in docs/guide.md",
            ]
        );
    }

    #[test]
    fn the_root_is_where_cargo_lock_is() {
        let root = repo_root(env!("CARGO_MANIFEST_DIR"));
        assert!(root.join("Cargo.lock").is_file());
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).starts_with(&root));
    }
}
