//! `enos-signer`: the signer's command line (work in progress).
fn main() {}
