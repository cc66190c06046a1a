//! Load benchmark (work in progress).
fn main() {}
