//! `enos-demo`: the whole loop on this machine, told step by step.
//!
//! `cargo xtask demo` builds the binaries and runs this. It finds
//! `enos-sandbox`, `enos-signer` and `enos-agent` beside itself (or through
//! `ENOS_SANDBOX_BIN`, `ENOS_SIGNER_BIN`, `ENOS_AGENT_BIN`). Exit 0 when
//! every step worked; otherwise the failed step and its reason on stderr,
//! exit 1. Every child process is stopped on every path (Ctrl-C too).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks on stdout

use std::process::ExitCode;

use enos_e2e::{
    Binaries,
    demo::{self, Narrator, StepFailure},
};

fn main() -> ExitCode {
    enos_agent::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("enos-demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("enos demo: the whole loop on this machine (sandbox broker, signer, agent)");
    let mut narrator = Narrator::new(std::io::stdout());
    let outcome = runtime.block_on(async {
        let binaries = Binaries::locate().map_err(|reason| StepFailure {
            step: "binaries",
            reason: reason.into(),
        })?;
        tokio::select! {
            done = demo::run(&binaries, &mut narrator) => done,
            _ = tokio::signal::ctrl_c() => Err(StepFailure {
                step: "interrupted",
                reason: enos_e2e::E2eError::failed("Ctrl-C; everything was stopped"),
            }),
        }
    });
    // Children were stopped when the demo's state was dropped, on every path.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => {
            println!(
                "enos demo: OK, every step worked in {:.1} s",
                narrator.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("enos demo: FAILED: {failure}");
            ExitCode::FAILURE
        }
    }
}
