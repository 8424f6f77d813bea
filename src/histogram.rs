//! A small log-linear histogram of durations, for the live percentiles of the
//! snapshot (not for export: exported histograms go through OpenTelemetry).
//!
//! Values are microseconds. Below 16 µs every value has its own bucket; above
//! that each power of two is split into 16 buckets, so a reported percentile is
//! within 1/16 (6.25 %) of the true value. Values above 2^36 µs (about 19
//! hours) land in the last bucket. Recording is a handful of integer
//! operations and never allocates.

use std::time::Duration;
use tokio::time::Instant;

const SUB_BUCKET_BITS: u32 = 4;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
const MAX_EXPONENT: u32 = 36;
const BUCKETS: usize = (MAX_EXPONENT as usize - SUB_BUCKET_BITS as usize + 2) * SUB_BUCKETS;

/// How long one window lasts; percentiles cover the current and the previous
/// window, so "recent" means the last one to two minutes.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// One window's counts of `N` series, bucket-major: the counts of one
/// bucket for all series are adjacent, so series recorded together with
/// close values (a short task's run and busy time) touch one cache line.
#[derive(Clone)]
struct Buckets<const N: usize> {
    counts: Box<[[u32; N]; BUCKETS]>,
    total: [u64; N],
    max_micros: [u64; N],
}

impl<const N: usize> Buckets<N> {
    fn new() -> Self {
        Buckets {
            counts: Box::new([[0; N]; BUCKETS]),
            total: [0; N],
            max_micros: [0; N],
        }
    }

    fn clear(&mut self) {
        self.counts.fill([0; N]);
        self.total = [0; N];
        self.max_micros = [0; N];
    }
}

fn bucket_index(micros: u64) -> usize {
    if micros < SUB_BUCKETS as u64 {
        return micros as usize;
    }
    let exponent = (63 - micros.leading_zeros()).min(MAX_EXPONENT);
    let micros = micros.min((1u64 << (MAX_EXPONENT + 1)) - 1);
    let shift = exponent - SUB_BUCKET_BITS;
    let sub = ((micros >> shift) as usize) & (SUB_BUCKETS - 1);
    (exponent - SUB_BUCKET_BITS + 1) as usize * SUB_BUCKETS + sub
}

/// The middle of a bucket's range, in microseconds.
fn bucket_midpoint(index: usize) -> f64 {
    if index < SUB_BUCKETS {
        return index as f64;
    }
    let exponent = (index / SUB_BUCKETS) as u32 + SUB_BUCKET_BITS - 1;
    let sub = (index % SUB_BUCKETS) as u64;
    let shift = exponent - SUB_BUCKET_BITS;
    let low = ((SUB_BUCKETS as u64) | sub) << shift;
    let width = 1u64 << shift;
    low as f64 + width as f64 / 2.0
}

/// Percentiles of the recent window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Percentiles {
    /// Median, in milliseconds (`None` when nothing was recorded recently).
    pub p50: Option<f64>,
    /// 99th percentile, in milliseconds.
    pub p99: Option<f64>,
    /// Largest value, in milliseconds (exact, not bucketed).
    pub max: Option<f64>,
}

/// A duration in microseconds with its bucket, computed where no lock is
/// held.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    bucket: usize,
    micros: u64,
}

impl Sample {
    #[inline]
    pub(crate) fn of(value: Duration) -> Self {
        // Without `as_micros`' 128-bit arithmetic; saturates after about
        // 584,000 years.
        let micros = value
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(value.subsec_micros()));
        Sample {
            bucket: bucket_index(micros),
            micros,
        }
    }
}

/// `N` series of durations over the same two rotating windows, recorded
/// together: one record rotates once for all of them (the pool records a
/// run's wait, run and busy time at once, under its lock).
#[derive(Clone)]
pub(crate) struct RecentHistograms<const N: usize> {
    current: Buckets<N>,
    previous: Buckets<N>,
    window_started: Instant,
    /// `window_started + WINDOW`, kept so a record compares instead of
    /// adding or subtracting.
    window_ends: Instant,
}

impl<const N: usize> RecentHistograms<N> {
    pub(crate) fn new(now: Instant) -> Self {
        RecentHistograms {
            current: Buckets::new(),
            previous: Buckets::new(),
            window_started: now,
            window_ends: now + WINDOW,
        }
    }

    fn rotate(&mut self, now: Instant) {
        // The common case compares two instants; only a window's end pays
        // for a subtraction (a few dozen instructions on every record
        // otherwise).
        if now < self.window_ends {
            return;
        }
        let age = now.saturating_duration_since(self.window_started);
        if age >= 2 * WINDOW {
            self.previous.clear();
        } else {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
        self.current.clear();
        self.window_started = now;
        self.window_ends = now + WINDOW;
    }

    /// Records one value per series; `None` leaves that series alone.
    #[cfg(test)]
    pub(crate) fn record(&mut self, values: [Option<Duration>; N], now: Instant) {
        self.record_samples(values.map(|value| value.map(Sample::of)), now);
    }

    /// Records one sample per series; `None` leaves that series alone.
    /// Only counters change here: the pool calls it under its lock, with
    /// samples whose buckets were found before.
    #[inline]
    pub(crate) fn record_samples(&mut self, samples: [Option<Sample>; N], now: Instant) {
        self.rotate(now);
        for (series, sample) in samples.into_iter().enumerate() {
            let Some(Sample { bucket, micros }) = sample else {
                continue;
            };
            let count = &mut self.current.counts[bucket][series];
            *count = count.saturating_add(1);
            self.current.total[series] += 1;
            self.current.max_micros[series] = self.current.max_micros[series].max(micros);
        }
    }

    /// Percentiles of one series (`series < N`).
    pub(crate) fn percentiles(&self, series: usize, now: Instant) -> Percentiles {
        let age = now.saturating_duration_since(self.window_started);
        let windows: &[&Buckets<N>] = if age >= 2 * WINDOW {
            &[]
        } else if age >= WINDOW {
            &[&self.current]
        } else {
            &[&self.current, &self.previous]
        };
        let total: u64 = windows.iter().map(|w| w.total[series]).sum();
        if total == 0 {
            return Percentiles::default();
        }
        let at_rank = |quantile: f64| {
            // The smallest bucket whose cumulative count reaches the rank.
            let rank = ((quantile * total as f64).ceil() as u64).max(1);
            let mut seen = 0u64;
            for index in 0..BUCKETS {
                seen += windows
                    .iter()
                    .map(|w| u64::from(w.counts[index][series]))
                    .sum::<u64>();
                if seen >= rank {
                    return bucket_midpoint(index);
                }
            }
            bucket_midpoint(BUCKETS - 1)
        };
        let max_micros = windows
            .iter()
            .map(|w| w.max_micros[series])
            .max()
            .unwrap_or(0) as f64;
        let to_ms = |micros: f64| micros.min(max_micros) / 1000.0;
        Percentiles {
            p50: Some(to_ms(at_rank(0.50))),
            p99: Some(to_ms(at_rank(0.99))),
            max: Some(max_micros / 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_within_precision() {
        let mut last = 0;
        for micros in (0..200_000u64).chain([1 << 30, (1 << 36) + 5, u64::MAX]) {
            let index = bucket_index(micros);
            assert!(index >= last, "index went down at {micros}");
            assert!(index < BUCKETS);
            last = index;
            if (16..(1 << 36)).contains(&micros) {
                let mid = bucket_midpoint(index);
                let error = (mid - micros as f64).abs() / micros as f64;
                assert!(error <= 1.0 / 16.0, "{micros} -> {mid}");
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let start = Instant::now();
        let mut histogram = RecentHistograms::<1>::new(start);
        for ms in 1..=100u64 {
            histogram.record([Some(Duration::from_millis(ms))], start);
        }
        let p = histogram.percentiles(0, start);
        let p50 = p.p50.unwrap();
        let p99 = p.p99.unwrap();
        assert!((p50 - 50.0).abs() <= 50.0 / 16.0, "p50 {p50}");
        assert!((p99 - 99.0).abs() <= 99.0 / 16.0, "p99 {p99}");
        assert_eq!(p.max, Some(100.0));
    }

    #[test]
    fn old_windows_age_out() {
        let start = Instant::now();
        let mut histogram = RecentHistograms::<1>::new(start);
        histogram.record([Some(Duration::from_millis(7))], start);
        assert_eq!(histogram.percentiles(0, start + WINDOW).max, Some(7.0));
        assert_eq!(
            histogram.percentiles(0, start + 2 * WINDOW),
            Percentiles::default()
        );
        histogram.record([Some(Duration::from_millis(3))], start + WINDOW);
        assert_eq!(histogram.percentiles(0, start + WINDOW).max, Some(7.0));
        histogram.record([Some(Duration::from_millis(1))], start + 3 * WINDOW);
        assert_eq!(histogram.percentiles(0, start + 3 * WINDOW).max, Some(1.0));
    }

    #[test]
    fn series_recorded_together_stay_apart() {
        let start = Instant::now();
        let mut histogram = RecentHistograms::<3>::new(start);
        for ms in 1..=10u64 {
            let busy = (ms % 2 == 0).then(|| Duration::from_micros(ms));
            histogram.record(
                [
                    Some(Duration::from_millis(ms)),
                    Some(Duration::from_secs(ms)),
                    busy,
                ],
                start,
            );
        }
        assert_eq!(histogram.percentiles(0, start).max, Some(10.0));
        assert_eq!(histogram.percentiles(1, start).max, Some(10_000.0));
        let busy = histogram.percentiles(2, start);
        assert_eq!(busy.max, Some(0.01));
        // Five values (2, 4, ..., 10 µs, each its own bucket): the median
        // is the third.
        assert_eq!(busy.p50, Some(0.006));
        // Windows rotate for all series at once.
        histogram.record(
            [None, None, Some(Duration::from_micros(3))],
            start + 3 * WINDOW,
        );
        assert_eq!(
            histogram.percentiles(0, start + 3 * WINDOW),
            Percentiles::default()
        );
        assert_eq!(
            histogram.percentiles(2, start + 3 * WINDOW).max,
            Some(0.003)
        );
    }
}
