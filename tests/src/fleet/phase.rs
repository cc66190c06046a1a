//! [`PhaseFigures`]: what one event of a run (every agent starting, the
//! broker restarting, the signer restarting) cost, from the agents' own
//! status, the signer's audit trail and the sandbox's log.

use std::{collections::HashMap, fmt, path::Path, time::Duration};

use enos_agent::AgentStatus;

use crate::error::{E2eError, Result};

/// The figures of one phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseFigures {
    /// `connect`, `broker-restart`, `signer-restart`.
    pub name: String,
    /// Agents in the run.
    pub agents: usize,
    /// Agents that got their CONNACK in this phase (within the timeout).
    pub connected: usize,
    /// From the event to the last CONNACK; `None` if some never came.
    pub time_to_all: Option<Duration>,
    /// CONNACKs per second: the busiest second.
    pub connects_peak: f64,
    /// CONNACKs per second: agents / time to all.
    pub connects_mean: f64,
    /// Per agent, event (or its start) to its CONNACK: median.
    pub latency_p50: Duration,
    /// Per agent, event (or its start) to its CONNACK: 99th percentile.
    pub latency_p99: Duration,
    /// Connect attempts per agent in the phase (1 = first try): most.
    pub attempts_max: u64,
    /// Connect attempts per agent: 99th percentile.
    pub attempts_p99: u64,
    /// Connect attempts of all agents together, to set the issuances
    /// against (one credential per attempt is the design).
    pub attempts_total: u64,
    /// Fresh credentials the agents received (their status): an issuance
    /// the audit has and no agent received was answered after its caller
    /// gave up (request timeout), so it is issued and never used.
    pub credentials_received: u64,
    /// Credentials the signer issued in the phase (audit trail).
    pub issued: usize,
    /// Issuances in the busiest second (audit trail, signer's clock).
    pub issued_peak: usize,
    /// The most credentials one device got within one second.
    pub issued_peak_per_device: usize,
    /// Answers `ResourceExhausted` (over the per-identity limit).
    pub resource_exhausted: usize,
    /// Other signer refusals, by outcome.
    pub other_refusals: usize,
    /// Logins the sandbox refused (`refused MQTT CONNECT` lines).
    pub broker_refusals: usize,
    /// Refusals the agents saw (CONNACK 4/5 or closed before CONNACK).
    pub agent_refusals: u64,
    /// Connects that reused a cached credential.
    pub credentials_reused: u64,
}

impl PhaseFigures {
    /// Whether every agent connected in the phase.
    pub fn all_connected(&self) -> bool {
        self.connected == self.agents && self.time_to_all.is_some()
    }
}

impl fmt::Display for PhaseFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = match self.time_to_all {
            Some(d) => format!("{:.2} s", d.as_secs_f64()),
            None => format!("NOT ALL ({} of {})", self.connected, self.agents),
        };
        writeln!(f, "[{}]", self.name)?;
        writeln!(f, "  all {} connected:           {all}", self.agents)?;
        writeln!(
            f,
            "  connects/s (broker):         peak {:.0}, mean {:.0}",
            self.connects_peak, self.connects_mean
        )?;
        writeln!(
            f,
            "  start -> CONNACK:            p50 {:.0} ms, p99 {:.0} ms",
            ms(self.latency_p50),
            ms(self.latency_p99)
        )?;
        writeln!(
            f,
            "  attempts per agent:          max {}, p99 {}",
            self.attempts_max, self.attempts_p99
        )?;
        writeln!(
            f,
            "  signer issuances:            {} (peak {}/s; one device at most {}/s)",
            self.issued, self.issued_peak, self.issued_peak_per_device
        )?;
        writeln!(
            f,
            "  per connect attempt:         {:.2} issuances over {} attempts; agents received {} ({} issued after their caller gave up)",
            self.issued as f64 / self.attempts_total.max(1) as f64,
            self.attempts_total,
            self.credentials_received,
            (self.issued as u64).saturating_sub(self.credentials_received)
        )?;
        writeln!(
            f,
            "  ResourceExhausted answers:   {} (other refusals {})",
            self.resource_exhausted, self.other_refusals
        )?;
        write!(
            f,
            "  logins refused by the broker: {} (agents saw {}); cached credentials reused: {}",
            self.broker_refusals, self.agent_refusals, self.credentials_reused
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0..=1) of `values`, nearest rank; 0 when empty.
pub fn quantile<T: Copy + Ord + Default>(values: &[T], p: f64) -> T {
    if values.is_empty() {
        return T::default();
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The most events in any window of `width` (sliding over sorted times).
pub fn busiest_window(times: &mut [f64], width: f64) -> usize {
    times.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= width {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// One credential request the signer answered, from its audit trail.
#[derive(Debug, Clone)]
pub struct AuditedRequest {
    /// When the signer recorded it, ms since the epoch.
    pub time_ms: u64,
    /// The device, `pk/dk`.
    pub device: String,
    /// `None` when issued; else the refusal's outcome.
    pub refusal: Option<String>,
}

/// Every `issue_mqtt_credential` record of the audit trail.
pub fn read_audit(file: &Path) -> Result<Vec<AuditedRequest>> {
    let text = std::fs::read_to_string(file)
        .map_err(E2eError::io(format!("reading {}", file.display())))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            E2eError::failed(format!("{}:{}: not JSON: {e}", file.display(), n + 1))
        })?;
        if record["event"] != "issue_mqtt_credential" {
            continue;
        }
        out.push(AuditedRequest {
            time_ms: record["time_ms"].as_u64().unwrap_or_default(),
            device: record["device"].as_str().unwrap_or_default().to_owned(),
            refusal: (!record["password_hmac"].is_string())
                .then(|| record["outcome"].as_str().unwrap_or("unknown").to_owned()),
        });
    }
    Ok(out)
}

/// What a phase observed, before the figures are worked out.
#[derive(Debug)]
pub struct PhaseObservation<'a> {
    /// The phase's name.
    pub name: &'a str,
    /// Every agent's status before the event.
    pub before: &'a [AgentStatus],
    /// Every agent's status at the end.
    pub after: &'a [AgentStatus],
    /// Per agent, seconds from the event (or its own start) to its CONNACK.
    pub latencies: &'a [Option<Duration>],
    /// Per agent, seconds from the event to its CONNACK.
    pub connected_at: &'a [Option<Duration>],
    /// The phase's window on the wall clock, ms since the epoch.
    pub window_ms: (u64, u64),
    /// The signer's audit trail.
    pub audit: &'a [AuditedRequest],
    /// Logins the broker refused in the phase.
    pub broker_refusals: usize,
}

impl PhaseObservation<'_> {
    /// Works the figures out.
    pub fn figures(&self) -> PhaseFigures {
        let agents = self.before.len();
        let done: Vec<Duration> = self.connected_at.iter().flatten().copied().collect();
        let time_to_all =
            (done.len() == agents).then(|| done.iter().max().copied().unwrap_or_default());
        let mut times: Vec<f64> = done.iter().map(Duration::as_secs_f64).collect();
        let connects_peak = busiest_window(&mut times, 1.0) as f64;
        let connects_mean = match time_to_all {
            Some(d) if !d.is_zero() => agents as f64 / d.as_secs_f64(),
            _ => 0.0,
        };
        let latencies: Vec<Duration> = self.latencies.iter().flatten().copied().collect();
        let attempts: Vec<u64> = self
            .before
            .iter()
            .zip(self.after)
            .map(|(b, a)| {
                let failures = (a.refusals + a.network_failures)
                    .saturating_sub(b.refusals + b.network_failures);
                failures + 1
            })
            .collect();
        let (lo, hi) = self.window_ms;
        let in_phase: Vec<&AuditedRequest> = self
            .audit
            .iter()
            .filter(|r| r.time_ms >= lo && r.time_ms <= hi)
            .collect();
        let mut issued_times: Vec<f64> = Vec::new();
        let mut per_device: HashMap<&str, Vec<f64>> = HashMap::new();
        let mut resource_exhausted = 0;
        let mut other_refusals = 0;
        for r in &in_phase {
            match r.refusal.as_deref() {
                None => {
                    let t = r.time_ms as f64 / 1e3;
                    issued_times.push(t);
                    per_device.entry(r.device.as_str()).or_default().push(t);
                }
                Some("resource_exhausted") => resource_exhausted += 1,
                Some(_) => other_refusals += 1,
            }
        }
        let issued = issued_times.len();
        let issued_peak = busiest_window(&mut issued_times, 1.0);
        let issued_peak_per_device = per_device
            .values_mut()
            .map(|t| busiest_window(t, 1.0))
            .max()
            .unwrap_or(0);
        let delta = |f: fn(&AgentStatus) -> u64| -> u64 {
            self.before
                .iter()
                .zip(self.after)
                .map(|(b, a)| f(a).saturating_sub(f(b)))
                .sum()
        };
        PhaseFigures {
            name: self.name.to_owned(),
            agents,
            connected: done.len(),
            time_to_all,
            connects_peak,
            connects_mean,
            latency_p50: quantile(&latencies, 0.5),
            latency_p99: quantile(&latencies, 0.99),
            attempts_max: attempts.iter().max().copied().unwrap_or(0),
            attempts_p99: quantile(&attempts, 0.99),
            attempts_total: attempts.iter().sum(),
            credentials_received: delta(|s| s.credentials_issued),
            issued,
            issued_peak,
            issued_peak_per_device,
            resource_exhausted,
            other_refusals,
            broker_refusals: self.broker_refusals,
            agent_refusals: delta(|s| s.refusals),
            credentials_reused: delta(|s| s.credentials_reused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile::<u64>(&[], 0.5), 0);
    }

    #[test]
    fn the_busiest_window_counts_events_less_than_a_width_apart() {
        let mut t = vec![0.0, 0.1, 0.5, 0.99, 1.0, 1.5, 3.0];
        // [0.0, 1.0) holds 4; [0.5, 1.5) holds 3; [0.99, 1.99) holds 3.
        assert_eq!(busiest_window(&mut t, 1.0), 4);
        assert_eq!(busiest_window(&mut [], 1.0), 0);
    }
}
