//! [`Backoff`]: exponential backoff with full jitter between connect
//! attempts, with refusals backing off further than network failures.
//!
//! The ceiling doubles with every failure since the last stable connection:
//! `min × 2^n`, capped at `max`. A refusal (the broker says the credential is
//! bad or not authorised) counts twice and its ceiling is `refusal_factor`
//! times higher, up to `max × refusal_factor`: hammering a broker with
//! credentials it just refused helps nobody. The actual delay is drawn
//! uniformly from `[ceiling × (1 − jitter), ceiling]`; with `jitter = 1`
//! that is full jitter, which spreads a fleet's reconnects after an outage.

use std::time::Duration;

use crate::config::BackoffConfig;

/// Why the previous attempt failed, as far as pacing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The broker or signer could not be reached, or the connection broke.
    Network,
    /// The broker refused the credential (or closed right after CONNECT).
    Refused,
}

impl FailureKind {
    /// Its name in logs (`network`, `refused`).
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Network => "network",
            FailureKind::Refused => "refused",
        }
    }
}

/// One delay decision, kept for the status and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    /// How long to wait.
    pub delay: Duration,
    /// The ceiling the delay was drawn under.
    pub ceiling: Duration,
}

/// Reconnect pacing state.
#[derive(Debug)]
pub struct Backoff {
    /// The configured schedule.
    config: BackoffConfig,
    /// Failures (a refusal counts two) since the last reset; the exponent.
    steps: u32,
    /// Source of jitter; seedable so that tests are reproducible.
    rng: fastrand::Rng,
}

impl Backoff {
    /// A fresh schedule with a random seed.
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, fastrand::Rng::new())
    }

    /// A fresh schedule with the given RNG (tests seed it).
    pub fn with_rng(config: BackoffConfig, rng: fastrand::Rng) -> Self {
        Backoff {
            config,
            steps: 0,
            rng,
        }
    }

    /// Forgets past failures: the next delay starts from `min` again.
    pub fn reset(&mut self) {
        self.steps = 0;
    }

    /// The delay before the next attempt after a failure of `kind`.
    pub fn next_delay(&mut self, kind: FailureKind) -> Delay {
        let ceiling = self.ceiling(kind);
        self.steps = self.steps.saturating_add(match kind {
            FailureKind::Network => 1,
            FailureKind::Refused => 2,
        });
        let spread = ceiling.mul_f64(self.config.jitter * self.rng.f64());
        Delay {
            delay: ceiling.saturating_sub(spread),
            ceiling,
        }
    }

    /// The ceiling the next delay of `kind` is drawn under.
    pub fn ceiling(&self, kind: FailureKind) -> Duration {
        let (min, max) = match kind {
            FailureKind::Network => (self.config.min, self.config.max),
            FailureKind::Refused => (
                self.config.min.saturating_mul(self.config.refusal_factor),
                self.config.max.saturating_mul(self.config.refusal_factor),
            ),
        };
        // 2^steps without overflow: beyond 2^32 every sane ceiling is capped.
        let factor = 1u32.checked_shl(self.steps.min(31)).unwrap_or(u32::MAX);
        min.saturating_mul(factor).min(max)
    }

    /// How long a connection must have lasted to reset the schedule.
    pub fn reset_after(&self) -> Duration {
        self.config.reset_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jitter: f64) -> BackoffConfig {
        BackoffConfig {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter,
            refusal_factor: 4,
            reset_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn network_ceiling_doubles_up_to_max_and_resets() {
        let mut b = Backoff::with_rng(config(0.0), fastrand::Rng::with_seed(1));
        let ceilings: Vec<u64> = (0..7)
            .map(|_| b.next_delay(FailureKind::Network).ceiling.as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(
            b.next_delay(FailureKind::Network).delay,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn refusals_back_off_further_than_network_failures() {
        let mut net = Backoff::with_rng(config(0.0), fastrand::Rng::with_seed(1));
        let mut refused = Backoff::with_rng(config(0.0), fastrand::Rng::with_seed(1));
        let mut last = Duration::ZERO;
        for _ in 0..4 {
            let n = net.next_delay(FailureKind::Network).ceiling;
            let r = refused.next_delay(FailureKind::Refused).ceiling;
            assert!(r > n, "refusal {r:?} not above network {n:?}");
            assert!(
                r > last,
                "refusal ceiling did not grow: {r:?} after {last:?}"
            );
            last = r;
        }
        // Capped at max × refusal_factor.
        for _ in 0..10 {
            refused.next_delay(FailureKind::Refused);
        }
        assert_eq!(
            refused.ceiling(FailureKind::Refused),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut b = Backoff::with_rng(config(1.0), fastrand::Rng::with_seed(7));
        let mut low = 0;
        let mut high = 0;
        for _ in 0..200 {
            b.reset();
            for _ in 0..4 {
                b.next_delay(FailureKind::Network);
            }
            let d = b.next_delay(FailureKind::Network);
            assert_eq!(d.ceiling, Duration::from_millis(1600));
            assert!(d.delay <= d.ceiling);
            if d.delay < Duration::from_millis(400) {
                low += 1;
            }
            if d.delay > Duration::from_millis(1200) {
                high += 1;
            }
        }
        // Uniform: each quarter gets about 50 of 200.
        assert!(low > 20 && high > 20, "low {low}, high {high}");
    }
}
