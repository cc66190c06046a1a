//! Where the project's programs are: [`locate`] one, [`Binaries`] for all
//! three.
//!
//! One rule for every test and the demo: `$ENOS_…_BIN` when set; else
//! beside the running executable (`target/debug/` for
//! `target/debug/enos-demo` and for `target/debug/deps/foo-…`: `cargo test
//! --workspace` and `cargo xtask demo` build them there); else `cargo
//! build` (escargot, with the `$CARGO` that runs the tests).
//!
//! Caveat: after changing a component, `cargo test -p other` alone does
//! not rebuild its binary; `cargo test --workspace` always does.

use std::path::{Path, PathBuf};

use crate::error::HarnessError;

/// One program: its name, its package and the variable that may name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// The binary's name, as cargo builds it.
    pub bin: &'static str,
    /// The package that builds it (for `cargo build -p`).
    pub package: &'static str,
    /// The environment variable that, when set, names the executable.
    pub env: &'static str,
}

/// The EnOS-compatible broker.
pub const SANDBOX: Program = Program {
    bin: "enos-sandbox",
    package: "enos-sandbox",
    env: "ENOS_SANDBOX_BIN",
};
/// The signer service and its admin commands.
pub const SIGNER: Program = Program {
    bin: "enos-signer",
    package: "enos-signer-svc",
    env: "ENOS_SIGNER_BIN",
};
/// The device-side agent.
pub const AGENT: Program = Program {
    bin: "enos-agent",
    package: "enos-agent",
    env: "ENOS_AGENT_BIN",
};

/// The executables the whole loop runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `enos-sandbox`: the EnOS-compatible broker.
    pub sandbox: PathBuf,
    /// `enos-signer`: the signer service and its admin commands.
    pub signer: PathBuf,
    /// `enos-agent`: the device-side agent.
    pub agent: PathBuf,
}

impl Binaries {
    /// The environment variables that name the binaries, for a child that
    /// locates them the same way.
    pub fn env(&self) -> [(&'static str, &Path); 3] {
        [
            (SANDBOX.env, self.sandbox.as_path()),
            (SIGNER.env, self.signer.as_path()),
            (AGENT.env, self.agent.as_path()),
        ]
    }

    /// Finds (or builds) each binary, see [`locate`].
    pub fn locate() -> Result<Self, HarnessError> {
        Ok(Binaries {
            sandbox: locate(&SANDBOX)?,
            signer: locate(&SIGNER)?,
            agent: locate(&AGENT)?,
        })
    }
}

/// Finds `program`: its variable, else beside the running executable,
/// else `cargo build` (see the module's documentation).
pub fn locate(program: &Program) -> Result<PathBuf, HarnessError> {
    let fail = |reason: String| HarnessError::Locate {
        program: program.bin,
        reason,
    };
    if let Some(path) = std::env::var_os(program.env) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(fail(format!(
                "{} names {}, which is not a file",
                program.env,
                path.display()
            )))
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe
            .ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join(program.bin))
            .find(|candidate| candidate.is_file());
        if let Some(path) = sibling {
            return Ok(path);
        }
    }
    let built = escargot::CargoBuild::new()
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .package(program.package)
        .bin(program.bin)
        .current_release()
        .run()
        .map_err(|e| {
            fail(format!(
                "cargo build -p {} --bin {}: {e}",
                program.package, program.bin
            ))
        })?;
    Ok(built.path().to_owned())
}
