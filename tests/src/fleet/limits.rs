//! The file-descriptor limit: the harness holds two sockets per agent
//! (MQTT and gRPC) plus one per raw client, and its children (the sandbox)
//! inherit the limit. It raises its own soft limit to the hard limit.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::error::{E2eError, Result};

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the soft
/// limit now in force. Fails if it stays below `needed`.
pub fn raise_fd_limit(needed: u64) -> Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised)
        .map_err(|e| E2eError::failed(format!("cannot raise the open-file limit: {e}")))?;
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < needed {
        return Err(E2eError::failed(format!(
            "the open-file limit is {now} (hard limit), the run needs about {needed}: \
             raise it (`ulimit -Hn`, or LimitNOFILE= in a unit) or run fewer agents"
        )));
    }
    Ok(now)
}
