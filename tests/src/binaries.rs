//! [`Binaries`]: where the project's three programs are.

use std::path::{Path, PathBuf};

use crate::error::{E2eError, Result};

/// The executables the loop runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `enos-sandbox`: the EnOS-compatible broker.
    pub sandbox: PathBuf,
    /// `enos-signer`: the signer service and its admin commands.
    pub signer: PathBuf,
    /// `enos-agent`: the device-side agent.
    pub agent: PathBuf,
}

/// One program: its name, its package and the variable that may name it.
struct Program {
    bin: &'static str,
    package: &'static str,
    env: &'static str,
}

const SANDBOX: Program = Program {
    bin: "enos-sandbox",
    package: "enos-sandbox",
    env: "ENOS_SANDBOX_BIN",
};
const SIGNER: Program = Program {
    bin: "enos-signer",
    package: "enos-signer-svc",
    env: "ENOS_SIGNER_BIN",
};
const AGENT: Program = Program {
    bin: "enos-agent",
    package: "enos-agent",
    env: "ENOS_AGENT_BIN",
};

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

    /// Finds each binary: `$ENOS_SANDBOX_BIN` / `$ENOS_SIGNER_BIN` /
    /// `$ENOS_AGENT_BIN` when set; else beside the running executable
    /// (`target/debug/` for `target/debug/enos-demo` and for
    /// `target/debug/deps/e2e-…`: `cargo test --workspace` and `cargo
    /// xtask demo` build them there); else `cargo build` (escargot), once.
    ///
    /// Caveat: after changing a component, `cargo test -p enos-e2e` alone
    /// does not rebuild its binary; `cargo test --workspace` does.
    pub fn locate() -> Result<Self> {
        Ok(Binaries {
            sandbox: locate(&SANDBOX)?,
            signer: locate(&SIGNER)?,
            agent: locate(&AGENT)?,
        })
    }
}

fn locate(program: &Program) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(program.env) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(E2eError::failed(format!(
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
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .package(program.package)
        .bin(program.bin)
        .current_release()
        .run()
        .map_err(|e| {
            E2eError::failed(format!(
                "cargo build -p {} --bin {}: {e}",
                program.package, program.bin
            ))
        })?;
    Ok(built.path().to_owned())
}
