//! [`RenewFigures`]: the `renew` scenario's phase. Every agent runs
//! through one certificate lifetime and renews its certificate by itself
//! (#25); the figures say whether every one renewed, whether any MQTT
//! session dropped for it, how fast the signer renewed at the busiest
//! second, and what was refused.

use std::{fmt, path::Path, time::Duration};

use enos_agent::AgentStatus;
use tokio::{sync::watch, time::Instant};

use crate::error::{E2eError, Result};

/// What the `renew` phase measured.
#[derive(Debug, Clone, Default)]
pub struct RenewFigures {
    /// Agents in the run.
    pub agents: usize,
    /// The certificates' lifetime.
    pub lifetime: Duration,
    /// Agents that renewed at least once.
    pub renewed: usize,
    /// Renewals of all agents together.
    pub renewals: u64,
    /// From the phase's start to the last agent's first renewal; `None`
    /// if some never renewed.
    pub time_to_all: Option<Duration>,
    /// Agents whose MQTT session dropped during the phase (a CONNACK
    /// more than at its start): renewal must not cost a session.
    pub sessions_dropped: usize,
    /// Renewals the signer answered in its busiest second (audit trail).
    pub peak_per_second: usize,
    /// Renewals the signer answered, over the seconds that had any.
    pub mean_per_second: f64,
    /// Renewals the signer refused (audit trail, any outcome but ok).
    pub refused: usize,
    /// Agents whose status holds a renewal error at the end.
    pub agent_errors: usize,
}

impl RenewFigures {
    /// Whether the run is what #25 asks: every agent renewed, no session
    /// dropped, nothing refused.
    pub fn clean(&self) -> bool {
        self.renewed == self.agents
            && self.sessions_dropped == 0
            && self.refused == 0
            && self.agent_errors == 0
    }
}

impl fmt::Display for RenewFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = match self.time_to_all {
            Some(d) => format!("{:.2} s", d.as_secs_f64()),
            None => format!("NOT ALL ({} of {})", self.renewed, self.agents),
        };
        writeln!(f, "[renew]")?;
        writeln!(
            f,
            "  certificate lifetime:        {:.1} s",
            self.lifetime.as_secs_f64()
        )?;
        writeln!(f, "  all {} renewed:             {all}", self.agents)?;
        writeln!(f, "  renewals:                    {}", self.renewals)?;
        writeln!(
            f,
            "  renewals/s (signer):         peak {}, mean {:.1}",
            self.peak_per_second, self.mean_per_second
        )?;
        writeln!(
            f,
            "  MQTT sessions dropped:       {}",
            self.sessions_dropped
        )?;
        writeln!(
            f,
            "  refused: signer {}, agents reporting an error {}",
            self.refused, self.agent_errors
        )
    }
}

/// Waits until every agent has renewed once (at most `timeout`), then
/// until `until` (one lifetime and a margin from the start), and works
/// out the figures from the agents' status and the signer's audit trail.
pub async fn observe(
    statuses: &[watch::Receiver<AgentStatus>],
    lifetime: Duration,
    timeout: Duration,
    until: Instant,
    audit_file: &Path,
) -> Result<RenewFigures> {
    let start = Instant::now();
    let start_ms = enos_agent::now_ms();
    let before: Vec<AgentStatus> = statuses.iter().map(|s| s.borrow().clone()).collect();
    let deadline = start + timeout;
    let waits: Vec<_> = statuses
        .iter()
        .map(|status| {
            let mut status = status.clone();
            tokio::spawn(async move {
                tokio::time::timeout_at(
                    deadline,
                    status.wait_for(|s| s.certificate.as_ref().is_some_and(|c| c.renewals >= 1)),
                )
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|_| Instant::now())
            })
        })
        .collect();
    let mut last = Some(start);
    for wait in waits {
        let done = wait.await.ok().flatten();
        last = match (last, done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    tokio::time::sleep_until(until).await;
    let after: Vec<AgentStatus> = statuses.iter().map(|s| s.borrow().clone()).collect();
    let renewals_of = |s: &AgentStatus| s.certificate.as_ref().map_or(0, |c| c.renewals);
    let answered = read_renewals(audit_file, start_ms)?;
    let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
    for (time_ms, ok) in &answered {
        if *ok {
            *per_second.entry(time_ms / 1000).or_default() += 1;
        }
    }
    let answered_ok: usize = per_second.values().sum();
    Ok(RenewFigures {
        agents: statuses.len(),
        lifetime,
        renewed: after.iter().filter(|s| renewals_of(s) >= 1).count(),
        renewals: after.iter().map(renewals_of).sum(),
        time_to_all: last.map(|l| l.saturating_duration_since(start)),
        sessions_dropped: before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a.connects > b.connects)
            .count(),
        peak_per_second: per_second.values().copied().max().unwrap_or(0),
        mean_per_second: if per_second.is_empty() {
            0.0
        } else {
            answered_ok as f64 / per_second.len() as f64
        },
        refused: answered.iter().filter(|(_, ok)| !ok).count(),
        agent_errors: after
            .iter()
            .filter(|s| {
                s.certificate
                    .as_ref()
                    .is_some_and(|c| c.last_renewal_error.is_some())
            })
            .count(),
    })
}

/// The `renew_certificate` outcomes of the audit trail from `since_ms`:
/// (time, ok).
fn read_renewals(file: &Path, since_ms: u64) -> Result<Vec<(u64, bool)>> {
    let text = std::fs::read_to_string(file)
        .map_err(E2eError::io(format!("reading {}", file.display())))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            E2eError::failed(format!("{}:{}: not JSON: {e}", file.display(), n + 1))
        })?;
        let time_ms = record["time_ms"].as_u64().unwrap_or_default();
        if record["event"] != "renew_certificate" || time_ms < since_ms {
            continue;
        }
        out.push((time_ms, record["outcome"] == "ok"));
    }
    Ok(out)
}
