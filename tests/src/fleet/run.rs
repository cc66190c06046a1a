//! [`run`]: one whole run: the world, the raw anchor, N agents through the
//! scenario's events, the figures ([`FleetReport`]) and the picture.

use std::{fmt, time::Duration};

use enos_agent::{Agent, AgentError, AgentStatus, GrpcSigner, SignerClient, SignerClientError};
use enos_testkit::sandbox::SandboxBinary;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{E2eError, Result},
    fleet::{
        limits,
        options::{FleetOptions, Scenario},
        phase::{self, PhaseFigures, PhaseObservation},
        plot,
        raw::{self, RawFigures},
        renew::{self, RenewFigures},
        timeline::{Sampler, Timeline},
        world::FleetWorld,
    },
};

/// File descriptors per agent in this process (MQTT, gRPC) and per raw
/// client.
const FDS_PER_AGENT: u64 = 3;
/// Room for the rest: the signer's listener and files, the sandbox's pipes.
const FDS_SPARE: u64 = 512;

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// Agents in the run.
    pub agents: usize,
    /// The scenario's name.
    pub scenario: &'static str,
    /// The signer's per-identity limit: (per second, burst).
    pub rate_limit: (u32, u32),
    /// The agents' backoff cap.
    pub backoff_max: Duration,
    /// One entry per event: `connect`, then the restarts.
    pub phases: Vec<PhaseFigures>,
    /// The raw-client anchor, when run.
    pub raw: Option<RawFigures>,
    /// This process's RSS before the agents were created, KiB.
    pub rss_before_kib: u64,
    /// This process's RSS with every agent connected, KiB.
    pub rss_connected_kib: u64,
    /// The open-file limit the run had.
    pub fd_limit: u64,
    /// After the run, one device asked `burst + 4` times at once: how many
    /// the signer refused with ResourceExhausted (the limit is live).
    pub limit_probe: (usize, usize),
    /// The samples and events, for the picture.
    pub timeline: Timeline,
    /// The `renew` scenario's figures.
    pub renew: Option<RenewFigures>,
}

impl FleetReport {
    /// This process's RSS growth per connected agent, KiB (the in-process
    /// signer's per-connection state included: an upper bound).
    pub fn rss_per_agent_kib(&self) -> f64 {
        self.rss_connected_kib.saturating_sub(self.rss_before_kib) as f64 / self.agents as f64
    }

    /// The phase named `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseFigures> {
        self.phases.iter().find(|p| p.name == name)
    }
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "enos-fleet: {} agents, scenario {}, signer limit {}/s burst {} per identity, backoff cap {:.1} s, fd limit {}",
            self.agents,
            self.scenario,
            self.rate_limit.0,
            self.rate_limit.1,
            self.backoff_max.as_secs_f64(),
            self.fd_limit
        )?;
        for p in &self.phases {
            writeln!(f, "{p}")?;
        }
        writeln!(
            f,
            "process RSS: {:.1} MiB before the agents, {:.1} MiB with all connected: {:.1} KiB per agent (in-process signer included)",
            self.rss_before_kib as f64 / 1024.0,
            self.rss_connected_kib as f64 / 1024.0,
            self.rss_per_agent_kib()
        )?;
        writeln!(
            f,
            "rate limit live: {} of {} back-to-back requests of one device refused ResourceExhausted after the run",
            self.limit_probe.0, self.limit_probe.1
        )?;
        if let Some(renew) = &self.renew {
            write!(f, "{renew}")?;
        }
        if let Some(raw) = &self.raw {
            writeln!(
                f,
                "[raw rumqttc anchor] all {} connected: {:.2} s; after the broker restart: {:.2} s; refused {}",
                self.agents,
                raw.connect.as_secs_f64(),
                raw.reconnect.as_secs_f64(),
                raw.refused
            )?;
            let ratio = |p: Option<&PhaseFigures>, raw: Duration| {
                p.and_then(|p| p.time_to_all)
                    .map(|d| format!("{:.2}", d.as_secs_f64() / raw.as_secs_f64().max(1e-6)))
                    .unwrap_or_else(|| "-".into())
            };
            writeln!(
                f,
                "ratio time-to-all-connected (ours / raw): connect {}, broker-restart {}",
                ratio(self.phase("connect"), raw.connect),
                ratio(self.phase("broker-restart"), raw.reconnect)
            )?;
        }
        Ok(())
    }
}

/// One agent of the fleet, prepared before the start so that every agent
/// starts at nearly the same moment.
struct FleetAgent {
    /// Its live status.
    status: watch::Receiver<AgentStatus>,
    /// The agent before the start.
    ready: Option<Agent<GrpcSigner>>,
    /// The running agent.
    task: Option<JoinHandle<Result<(), AgentError>>>,
    /// When it was started.
    started: Option<Instant>,
}

/// The state of a phase between its event and its end.
struct PhaseStart {
    /// The name.
    name: &'static str,
    /// Every agent's status before the event.
    before: Vec<AgentStatus>,
    /// The event's moment.
    at: Instant,
    /// The event's moment on the wall clock, ms.
    at_ms: u64,
    /// Broker refusals before the event.
    refused_before: usize,
}

/// A phase's waits done, its audit window still open.
struct PhaseEnd {
    /// The event, and the statuses before it.
    start: PhaseStart,
    /// Every agent's status once all connected (or the timeout).
    after: Vec<AgentStatus>,
    /// Per agent, from the event (or its own start) to its CONNACK.
    latencies: Vec<Option<Duration>>,
    /// Per agent, from the event to its CONNACK: the time to all.
    connected_at: Vec<Option<Duration>>,
    /// Broker refusals so far, at the end.
    refused: usize,
}

/// Runs `options` against a sandbox run from `sandbox_binary`.
pub async fn run(options: &FleetOptions, sandbox_binary: SandboxBinary) -> Result<FleetReport> {
    options.validate().map_err(E2eError::failed)?;
    let agents = options.agents as u64;
    let fd_limit = limits::raise_fd_limit(agents * FDS_PER_AGENT + FDS_SPARE)?;
    let say = |what: String| {
        if options.progress {
            #[allow(clippy::print_stderr)] // progress of a long run, asked for
            {
                eprintln!("enos-fleet: {what}");
            }
        }
    };
    say(format!(
        "{agents} identities: certificates, Admin import, sandbox (fd limit {fd_limit})"
    ));
    let mut world = FleetWorld::start(options, sandbox_binary).await?;

    let raw = if options.raw_anchor && options.scenario != Scenario::Renew {
        say(format!(
            "raw anchor: {agents} rumqttc clients connect, broker restart, reconnect"
        ));
        Some(raw::run(&mut world.sandbox, &world.devices, options.phase_timeout).await?)
    } else {
        None
    };
    // Let the raw clients' sessions go before the agents take the devices.
    tokio::time::sleep(Duration::from_millis(500)).await;

    say(format!("{agents} agents start"));
    let rss_before_kib = rss_kib();
    let mut fleet = Vec::with_capacity(world.configs.len());
    for config in std::mem::take(&mut world.configs) {
        let signer = GrpcSigner::new(&config.signer, &config.device)?;
        let agent = Agent::new(config, signer);
        fleet.push(FleetAgent {
            status: agent.status(),
            ready: Some(agent),
            task: None,
            started: None,
        });
    }
    let shutdown = CancellationToken::new();
    let origin = Instant::now();
    let sampler = Sampler::start(origin, fleet.iter().map(|a| a.status.clone()).collect());
    let mut ended = Vec::new();

    // Every agent starts at once.
    let start = begin("connect", &fleet, &world);
    sampler.mark("all agents start");
    for agent in &mut fleet {
        if let Some(ready) = agent.ready.take() {
            agent.started = Some(Instant::now());
            agent.task = Some(tokio::spawn(ready.run(shutdown.clone())));
        }
    }
    let end = finish(start, &fleet, &world, options.phase_timeout).await;
    let rss_connected_kib = rss_kib();
    let all = end.connected_at.iter().all(Option::is_some);
    ended.push(end);

    let settle = options.reset_after + Duration::from_millis(500);
    if all && options.scenario.restarts_broker() {
        tokio::time::sleep(settle).await;
        say("broker restart".into());
        let start = begin("broker-restart", &fleet, &world);
        sampler.mark("broker restart");
        tokio::task::block_in_place(|| world.sandbox.restart())?;
        ended.push(finish(start, &fleet, &world, options.phase_timeout).await);
    }
    let all = ended
        .iter()
        .all(|e| e.connected_at.iter().all(Option::is_some));
    if all && options.scenario.restarts_signer() {
        tokio::time::sleep(settle).await;
        say("signer restart, then broker restart".into());
        let start = begin("signer-restart", &fleet, &world);
        sampler.mark("signer restart");
        world.signer.stop().await;
        world.signer.restart().await.map_err(E2eError::Component)?;
        sampler.mark("broker restart");
        tokio::task::block_in_place(|| world.sandbox.restart())?;
        ended.push(finish(start, &fleet, &world, options.phase_timeout).await);
    }
    // The renewals' own proof calls are not the connect phase's issuances.
    let mut renew_started_ms = None;
    let renew = if all && options.scenario == Scenario::Renew {
        renew_started_ms = Some(enos_agent::now_ms());
        let lifetime = options.lifetime;
        say(format!(
            "one certificate lifetime ({:.0} s) and a tenth: every agent renews by itself",
            lifetime.as_secs_f64()
        ));
        sampler.mark("renewals");
        let statuses: Vec<_> = fleet.iter().map(|a| a.status.clone()).collect();
        let (audit_file, _) = world.audit_files();
        // The certificates were issued before the agents started: the
        // last renewal is due at (at + jitter) of the lifetime from then.
        let timeout = lifetime.mul_f64(options.renew_at + options.renew_jitter) + lifetime / 5;
        let until = origin + lifetime + lifetime / 10;
        Some(renew::observe(&statuses, lifetime, timeout, until, &audit_file).await?)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let timeline = sampler.finish().await;

    say("agents stop".into());
    shutdown.cancel();
    for agent in &mut fleet {
        if let Some(task) = agent.task.take() {
            match tokio::time::timeout(Duration::from_secs(20), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e.into()),
                Ok(Err(e)) => return Err(E2eError::failed(format!("an agent panicked: {e}"))),
                Err(_) => return Err(E2eError::failed("an agent did not stop within 20 s")),
            }
        }
    }
    let end_ms = enos_agent::now_ms();
    let limit_probe = probe_limit(&world, options).await?;
    let (audit_file, _) = world.audit_files();
    let audit = phase::read_audit(&audit_file)?;
    let mut phases = Vec::new();
    for (i, e) in ended.iter().enumerate() {
        let until = ended
            .get(i + 1)
            .map_or(renew_started_ms.unwrap_or(end_ms), |next| next.start.at_ms);
        let observation = PhaseObservation {
            name: e.start.name,
            before: &e.start.before,
            after: &e.after,
            latencies: &e.latencies,
            connected_at: &e.connected_at,
            window_ms: (e.start.at_ms, until),
            audit: &audit,
            broker_refusals: e.refused - e.start.refused_before,
        };
        phases.push(observation.figures());
    }
    let report = FleetReport {
        agents: options.agents,
        scenario: options.scenario.name(),
        rate_limit: (options.rate_per_second, options.rate_burst),
        backoff_max: options.backoff_max,
        phases,
        raw,
        rss_before_kib,
        rss_connected_kib,
        fd_limit,
        limit_probe,
        timeline,
        renew,
    };
    if let Some(path) = &options.plot {
        plot::draw(&report, path)?;
    }
    Ok(report)
}

fn begin(name: &'static str, fleet: &[FleetAgent], world: &FleetWorld) -> PhaseStart {
    PhaseStart {
        name,
        before: fleet.iter().map(|a| a.status.borrow().clone()).collect(),
        at: Instant::now(),
        at_ms: enos_agent::now_ms(),
        refused_before: broker_refusals(world),
    }
}

/// Waits until every agent has one more CONNACK than before the event.
async fn finish(
    start: PhaseStart,
    fleet: &[FleetAgent],
    world: &FleetWorld,
    timeout: Duration,
) -> PhaseEnd {
    let deadline = start.at + timeout;
    let waits: Vec<JoinHandle<Option<Instant>>> = fleet
        .iter()
        .zip(&start.before)
        .map(|(agent, before)| {
            let mut status = agent.status.clone();
            let target = before.connects + 1;
            tokio::spawn(async move {
                tokio::time::timeout_at(deadline, status.wait_for(|s| s.connects >= target))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map(|_| Instant::now())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(fleet.len());
    let mut connected_at = Vec::with_capacity(fleet.len());
    for (agent, wait) in fleet.iter().zip(waits) {
        let done = wait.await.ok().flatten();
        // An agent started by this event counts from its own start.
        let from = match agent.started {
            Some(s) if s >= start.at => s,
            _ => start.at,
        };
        latencies.push(done.map(|d| d.saturating_duration_since(from)));
        connected_at.push(done.map(|d| d.saturating_duration_since(start.at)));
    }
    PhaseEnd {
        after: fleet.iter().map(|a| a.status.borrow().clone()).collect(),
        refused: broker_refusals(world),
        start,
        latencies,
        connected_at,
    }
}

/// One device's requests back to back, `burst + 4` of them: returns
/// (refused with ResourceExhausted, asked).
async fn probe_limit(world: &FleetWorld, options: &FleetOptions) -> Result<(usize, usize)> {
    let Some(config) = world.probe_config.as_ref() else {
        return Ok((0, 0));
    };
    let signer = GrpcSigner::new(&config.signer, &config.device)?;
    let asked = options.rate_burst as usize + 4;
    let mut refused = 0;
    for _ in 0..asked {
        if let Err(SignerClientError::Unavailable { message, .. }) =
            signer.issue_mqtt_credential().await
        {
            // The agent folds ResourceExhausted into "unavailable"; the
            // signer's message names the limit.
            if message.contains("rate") {
                refused += 1;
            }
        }
    }
    Ok((refused, asked))
}

/// The sandbox's `refused MQTT CONNECT` lines so far.
fn broker_refusals(world: &FleetWorld) -> usize {
    world
        .sandbox
        .logs()
        .lines()
        .filter(|l| l.contains("refused MQTT CONNECT"))
        .count()
}

/// This process's resident set, KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
