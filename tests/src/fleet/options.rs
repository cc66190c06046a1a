//! [`FleetOptions`]: what one run does, bounded in count and time.

use std::{path::PathBuf, time::Duration};

/// The most agents one run may start: at two sockets per agent (MQTT,
/// gRPC) and three per session in the sandbox, 10,000 stays within a
/// 65,536-descriptor limit on both sides.
pub const MAX_AGENTS: usize = 10_000;

/// The largest `[enos_api] concurrency` a run may ask for.
pub const MAX_ENOS_API_CONCURRENCY: usize = 1024;

/// What happens once every agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every agent starts at once; nothing else.
    Connect,
    /// Then the sandbox restarts: every session drops, every agent
    /// reconnects with a fresh credential.
    BrokerRestart,
    /// Then the signer restarts (a deploy: stopped, started on the same
    /// port), and the sandbox restarts, so that every agent fetches from
    /// the new signer process over a new channel at once.
    SignerRestart,
    /// `connect`, `broker-restart` and `signer-restart` in one run.
    All,
    /// The signer is the devices' CA (#25): every device enrolls with a
    /// one-time token, the agents connect, and the run lasts one
    /// certificate lifetime and a margin, while every agent renews its
    /// certificate by itself (at `renew_at` ± `renew_jitter`).
    Renew,
}

impl Scenario {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::BrokerRestart => "broker-restart",
            Scenario::SignerRestart => "signer-restart",
            Scenario::All => "all",
            Scenario::Renew => "renew",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Scenario::Connect,
            Scenario::BrokerRestart,
            Scenario::SignerRestart,
            Scenario::All,
            Scenario::Renew,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Whether the run restarts the broker (alone).
    pub fn restarts_broker(self) -> bool {
        matches!(self, Scenario::BrokerRestart | Scenario::All)
    }

    /// Whether the run restarts the signer (then the broker).
    pub fn restarts_signer(self) -> bool {
        matches!(self, Scenario::SignerRestart | Scenario::All)
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// How many agents (and raw clients): at most [`MAX_AGENTS`].
    pub agents: usize,
    /// What happens after the first connect.
    pub scenario: Scenario,
    /// How long each phase may take before the run fails.
    pub phase_timeout: Duration,
    /// The agents' backoff: first ceiling after a failure.
    pub backoff_min: Duration,
    /// The agents' backoff cap.
    pub backoff_max: Duration,
    /// The agents' `reset_after`; the run waits this long after each phase
    /// so that every connection counts as stable, as in service.
    pub reset_after: Duration,
    /// The signer's per-identity rate limit: sustained requests a second.
    pub rate_per_second: u32,
    /// The signer's per-identity rate limit: burst.
    pub rate_burst: u32,
    /// Whether to run the raw rumqttc anchor too.
    pub raw_anchor: bool,
    /// Where to draw the picture, if anywhere.
    pub plot: Option<PathBuf>,
    /// Whether to tell each step on stderr as it happens (a 5,000-agent
    /// run takes minutes).
    pub progress: bool,
    /// `renew`: the lifetime of the devices' certificates.
    pub lifetime: Duration,
    /// `renew`: when agents renew, as a fraction of the lifetime.
    pub renew_at: f64,
    /// `renew`: ± this fraction of the lifetime, per certificate.
    pub renew_jitter: f64,
    /// `renew`: EnOS device certificates instead of the signer's own
    /// (issue 26): every gateway applies, then all renew at once through
    /// the signer to the sandbox's certificate API ([`crate::fleet::enos_wave`]).
    pub enos_certificates: bool,
    /// With `enos_certificates`: the signer's `[enos_api] concurrency`,
    /// the calls to EnOS's API in flight at once.
    pub enos_api_concurrency: usize,
}

impl FleetOptions {
    /// The defaults for `agents` agents: the agent's own backoff floor
    /// (1 s), a 10 s cap, the e2e suite's rate limit (2/s, burst 6).
    pub fn new(agents: usize) -> Self {
        FleetOptions {
            agents,
            scenario: Scenario::All,
            phase_timeout: Duration::from_secs(120),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            reset_after: Duration::from_secs(2),
            rate_per_second: 2,
            rate_burst: 6,
            raw_anchor: true,
            plot: None,
            progress: false,
            lifetime: Duration::from_secs(600),
            renew_at: 2.0 / 3.0,
            renew_jitter: 0.1,
            enos_certificates: false,
            enos_api_concurrency: 8,
        }
    }

    /// Refuses settings the harness cannot run.
    pub fn validate(&self) -> Result<(), String> {
        if self.agents == 0 || self.agents > MAX_AGENTS {
            return Err(format!(
                "--agents must be 1..={MAX_AGENTS}, not {}",
                self.agents
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err("--backoff-min must be > 0 and <= --backoff-max".into());
        }
        if self.rate_per_second == 0 || self.rate_burst == 0 {
            return Err("--rate-per-second and --rate-burst must be > 0".into());
        }
        if self.phase_timeout.is_zero() || self.phase_timeout > Duration::from_secs(900) {
            return Err("--phase-timeout must be 1s..=15m".into());
        }
        if self.enos_certificates {
            if self.scenario != Scenario::Renew {
                return Err("--enos-certificates goes with the renew scenario".into());
            }
            if !(1..=MAX_ENOS_API_CONCURRENCY).contains(&self.enos_api_concurrency) {
                return Err(format!(
                    "--enos-api-concurrency must be 1..={MAX_ENOS_API_CONCURRENCY}, not {}",
                    self.enos_api_concurrency
                ));
            }
            return Ok(());
        }
        if self.scenario == Scenario::Renew {
            if self.lifetime < Duration::from_secs(2) || self.lifetime > Duration::from_secs(86_400)
            {
                return Err("--lifetime must be 2 s..=24 h".into());
            }
            if self.renew_jitter < 0.0
                || self.renew_at - self.renew_jitter <= 0.0
                || self.renew_at + self.renew_jitter >= 1.0
            {
                return Err("--renew-at ± --renew-jitter must stay within (0, 1)".into());
            }
        }
        Ok(())
    }
}
