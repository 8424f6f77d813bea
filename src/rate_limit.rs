//! A small rate limit for log lines: at most a burst of events per window,
//! and a count of those held back, so that a storm of failures is
//! summarised rather than logged one line each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One window's tally. Behind a mutex: only taken when there is something
/// to log (a failure), never on a task's normal path.
#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

/// Lets at most `burst` events through per `window`; counts the others.
#[derive(Debug)]
pub(crate) struct RateLimit {
    burst: u32,
    window: Duration,
    tally: Mutex<Window>,
}

impl RateLimit {
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            burst,
            window,
            tally: Mutex::new(Window::default()),
        }
    }

    /// Whether an event at `now` may be logged: `Some(n)` with `n` the
    /// events held back since the last one that was, or `None` (held back,
    /// and counted).
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut tally = self
            .tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let expired = tally
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.window);
        if expired {
            tally.started = Some(now);
            tally.passed = 0;
        }
        if tally.passed < self.burst {
            tally.passed += 1;
            Some(std::mem::take(&mut tally.suppressed))
        } else {
            tally.suppressed += 1;
            None
        }
    }
}

/// One [`RateLimit`] of one event per window for each key: for log lines
/// about many things at once (database operations, task names).
#[derive(Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct KeyedRateLimit {
    window: Duration,
    by_key: Mutex<HashMap<String, RateLimit>>,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl KeyedRateLimit {
    pub(crate) fn new(window: Duration) -> Self {
        KeyedRateLimit {
            window,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)`, with `n` the events of `key` held back since the last
    /// one let through, when this one may be logged.
    pub(crate) fn allow(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut by_key = self
            .by_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !by_key.contains_key(key) {
            by_key.insert(key.to_owned(), RateLimit::new(1, self.window));
        }
        by_key.get(key).and_then(|limit| limit.admit(now))
    }
}

#[cfg(all(test, not(bg_queue_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rest_is_counted_until_the_window_ends() {
        let limit = RateLimit::new(3, Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.admit(start), Some(0));
        assert_eq!(limit.admit(start), Some(0));
        assert_eq!(limit.admit(start), Some(0));
        for _ in 0..47 {
            assert_eq!(limit.admit(start + Duration::from_secs(1)), None);
        }
        // A new window: the first line says how many were held back.
        assert_eq!(limit.admit(start + Duration::from_secs(10)), Some(47));
        assert_eq!(limit.admit(start + Duration::from_secs(10)), Some(0));
    }
}
