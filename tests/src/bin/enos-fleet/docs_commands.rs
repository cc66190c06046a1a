//! The `enos-fleet` command lines the docs show (README.md, docs/, the crates'
//! READMEs) parse with this binary's own clap definition.

use enos_testkit::docs;

use super::Cli;

#[test]
fn the_docs_command_lines_parse() {
    let root = docs::repo_root(env!("CARGO_MANIFEST_DIR"));
    let lines = docs::command_lines(&root, "enos-fleet");
    // An empty scan would pass anything: the docs show enos-fleet somewhere.
    assert!(
        !lines.is_empty(),
        "no `enos-fleet` command line in a shell block of {:?}",
        docs::markdown_files(&root)
    );
    let failures = docs::parse_failures::<Cli>(&lines);
    assert!(
        failures.is_empty(),
        "{} of {} `enos-fleet` command line(s) in the docs do not parse:\n\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n\n")
    );
}
