//! The agent binary as it ships, for the benches that measure it.

/// The cargo profile the agent ships with (the workspace's Cargo.toml).
pub(crate) const SHIPPED_PROFILE: &str = "agent-release";

/// The agent binary to measure: `$ENOS_AGENT_BIN`, else the build that
/// ships (`cargo build --profile agent-release`), built here if needed:
/// the bench's own profile is not the shipped one.
pub(crate) fn agent_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("ENOS_AGENT_BIN") {
        return path.into();
    }
    escargot::CargoBuild::new()
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .package("enos-agent")
        .bin("enos-agent")
        .profile(SHIPPED_PROFILE)
        .run()
        .unwrap_or_else(|e| panic!("cargo build --profile {SHIPPED_PROFILE} -p enos-agent: {e}"))
        .path()
        .to_owned()
}
