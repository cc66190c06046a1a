//! [`RefusalLog`]: refusals a caller can repeat for free are logged (and
//! audited) at most once a second per caller, with the number left out.
//!
//! A caller that proved nothing (no certificate, a certificate naming no
//! identity) must cost almost nothing: no audit record, no disk write per
//! call; metrics count every one. An authenticated caller over its rate
//! limit is sampled the same way, per identity.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How often one caller's refusals reach the log.
const INTERVAL: Duration = Duration::from_secs(1);
/// Callers remembered at once; beyond that the table starts afresh (an
/// attacker cycling identities then gets one line per second per
/// identity it holds a certificate for, which the CA bounds).
const MAX_KEYS: usize = 4096;

/// Per-caller sampling of refusal log lines.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Per caller: when its last line was written, and how many refusals
    /// were left out since.
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RefusalLog {
    /// Whether a refusal of `caller` may be written now: `Some(n)` with the
    /// number of its refusals left out since its last line, or `None`
    /// (counted, to be reported with the next line).
    pub fn sample(&self, caller: &str) -> Option<u64> {
        self.sample_at(caller, Instant::now())
    }

    fn sample_at(&self, caller: &str, now: Instant) -> Option<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.len() >= MAX_KEYS && !last.contains_key(caller) {
            last.clear();
        }
        match last.get_mut(caller) {
            Some((at, skipped)) if now.duration_since(*at) < INTERVAL => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                let left_out = *skipped;
                *at = now;
                *skipped = 0;
                Some(left_out)
            }
            None => {
                last.insert(caller.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_per_caller_with_the_count_left_out() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.sample_at("a", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(log.sample_at("a", t0 + Duration::from_millis(10)), None);
        }
        assert_eq!(log.sample_at("b", t0), Some(0), "callers are apart");
        assert_eq!(log.sample_at("a", t0 + INTERVAL), Some(5));
        assert_eq!(log.sample_at("a", t0 + INTERVAL), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            log.sample_at(&format!("caller-{i}"), t0);
        }
        assert!(log.last.lock().expect("lock").len() <= MAX_KEYS);
    }
}
