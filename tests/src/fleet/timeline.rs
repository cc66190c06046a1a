//! [`Timeline`]: the fleet seen every [`SAMPLE_EVERY`]: agents connected,
//! CONNACKs and credentials so far; and the run's events, for the figures
//! and the picture.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use enos_agent::{AgentStatus, ConnectionState};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

/// How often the fleet is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One look at every agent.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the run's start.
    pub t: f64,
    /// Agents whose session is up.
    pub connected: usize,
    /// CONNACKs received so far, all agents.
    pub connects: u64,
    /// Credentials the signer issued so far, all agents.
    pub issued: u64,
}

/// A moment of the run worth marking ("broker restart").
#[derive(Debug, Clone)]
pub struct Event {
    /// Seconds since the run's start.
    pub t: f64,
    /// What happened.
    pub label: String,
}

/// The samples and events of one run.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// When the run started: every `t` counts from here.
    pub origin: Instant,
    /// The samples, in time order.
    pub samples: Vec<Sample>,
    /// The events, in time order.
    pub events: Vec<Event>,
}

impl Timeline {
    /// Seconds from the origin to `at`.
    pub fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// A rate per second from consecutive samples of `counter`.
    pub fn rate(&self, counter: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
        self.samples
            .windows(2)
            .map(|w| {
                let dt = (w[1].t - w[0].t).max(1e-3);
                let dn = counter(&w[1]).saturating_sub(counter(&w[0]));
                (w[1].t, dn as f64 / dt)
            })
            .collect()
    }
}

/// Samples the fleet in the background until stopped.
#[derive(Debug)]
pub struct Sampler {
    /// The timeline being written.
    timeline: Arc<Mutex<Timeline>>,
    /// Stops the sampling task.
    stop: CancellationToken,
    /// The sampling task.
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `agents` now; `origin` is the run's start.
    pub fn start(origin: Instant, agents: Vec<watch::Receiver<AgentStatus>>) -> Self {
        let timeline = Arc::new(Mutex::new(Timeline {
            origin,
            samples: Vec::new(),
            events: Vec::new(),
        }));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let timeline = Arc::clone(&timeline);
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => break,
                    }
                    let mut sample = Sample {
                        t: origin.elapsed().as_secs_f64(),
                        connected: 0,
                        connects: 0,
                        issued: 0,
                    };
                    for agent in &agents {
                        let s = agent.borrow();
                        sample.connected += usize::from(s.state == ConnectionState::Connected);
                        sample.connects += s.connects;
                        sample.issued += s.credentials_issued;
                    }
                    if let Ok(mut t) = timeline.lock() {
                        t.samples.push(sample);
                    }
                }
            }
        });
        Sampler {
            timeline,
            stop,
            task,
        }
    }

    /// Marks an event now.
    pub fn mark(&self, label: impl Into<String>) {
        if let Ok(mut t) = self.timeline.lock() {
            let at = t.origin.elapsed().as_secs_f64();
            t.events.push(Event {
                t: at,
                label: label.into(),
            });
        }
    }

    /// Stops sampling; returns the timeline.
    pub async fn finish(self) -> Timeline {
        self.stop.cancel();
        let _ = self.task.await;
        let guard = self.timeline.lock();
        match guard {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
