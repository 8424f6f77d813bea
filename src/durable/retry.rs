//! How long a failed job waits before its next attempt.

use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` (1-based) failed, so
/// the next waits a random time in `[base·2^(n-1) / 2, base·2^(n-1)]`,
/// capped at `max`.
///
/// The jitter spreads the retries of many jobs that failed together (a
/// dependency went down) instead of bringing them back in one burst; the
/// lower half-bound keeps every retry at least half the nominal delay
/// away, so a failing dependency is not hammered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure (before jitter). Defaults to 1 s.
    pub base: Duration,
    /// Longest delay. Defaults to 1 h.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The nominal delay after failed attempt `attempt` (1-based), before
    /// jitter: `base·2^(attempt-1)`, capped at `max`.
    pub fn nominal(&self, attempt: i32) -> Duration {
        // 2^31 times any base of a millisecond or more is past any sane cap.
        let exponent = attempt.saturating_sub(1).clamp(0, 31) as u32;
        self.base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay after failed attempt `attempt`, jittered.
    pub fn delay(&self, attempt: i32) -> Duration {
        let nominal = self.nominal(attempt);
        nominal.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_until_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let nominal: Vec<u128> = (1..=6).map(|n| backoff.nominal(n).as_millis()).collect();
        assert_eq!(nominal, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.nominal(i32::MAX), Duration::from_secs(1));
        assert_eq!(backoff.nominal(0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_between_half_and_the_nominal_delay() {
        let backoff = Backoff::default();
        for attempt in 1..12 {
            let nominal = backoff.nominal(attempt);
            for _ in 0..200 {
                let delay = backoff.delay(attempt);
                assert!(
                    delay >= nominal / 2 && delay <= nominal,
                    "{delay:?} vs {nominal:?}"
                );
            }
        }
    }
}
