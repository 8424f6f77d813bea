//! A log throttle: at most one line per interval for one kind of event,
//! with the number held back in between reported on the next line let
//! through. Used for the webhook's signature rejections and for each
//! telemetry signal's export failures, so a flood (a misconfigured sender,
//! a collector that is down) cannot fill the log.
#![allow(dead_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One event kind's throttle. Cheap to check; share it behind an `Arc` or
/// a `static`.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle letting one event through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were
    /// held back since the last one logged; `None` when it is held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at a given instant (tests).
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}
