//! Every relative link, image and `#anchor` of `README.md`, `docs/**/*.md`
//! and the crates' READMEs resolves (the rules: `enos_testkit::docs`).

use enos_testkit::docs;

#[test]
fn every_relative_link_and_anchor_of_the_docs_resolves() {
    let root = docs::repo_root(env!("CARGO_MANIFEST_DIR"));
    let files = docs::markdown_files(&root);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "no README.md under {}",
        root.display()
    );
    let broken = docs::broken_links(&root);
    assert!(
        broken.is_empty(),
        "{} broken link(s) in {} Markdown file(s):\n{}",
        broken.len(),
        files.len(),
        broken.join("\n")
    );
}
