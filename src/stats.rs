//! Live counters: what a pool counts per task name, under its lock.
//!
//! The counters live under the pool's one lock (the same guard that holds
//! the queue; tasks admitted without it are absorbed under it before
//! anything is read), so a snapshot is a consistent cut: the invariant
//! `spawned = completed + failed + panicked + timed_out + abandoned + queued + running`
//! holds exactly in every snapshot, not just eventually. Drop counts are
//! the exception: atomics ([`DropCounts`]), since a flood of refused calls
//! counts itself without the lock. A drop is not in that invariant, and each
//! is counted before its `spawn` returns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use crate::histogram::RecentHistograms;
use crate::snapshot::{DroppedByReason, SlowRecord, SlowTask, TaskSnapshot, WallClock};
use crate::task::Outcome;
use crate::DropReason;

/// How many recent drops and slowest tasks a pool remembers.
pub(crate) const RING_LEN: usize = 20;
/// How many seconds of depth history a pool remembers.
pub(crate) const DEPTH_HISTORY_SECS: usize = 300;

/// The series of [`TaskStats::runs`], in the order of its records.
pub(crate) const RUN_WAIT: usize = 0;
/// See [`RUN_WAIT`].
pub(crate) const RUN_TIME: usize = 1;
/// See [`RUN_WAIT`].
pub(crate) const RUN_BUSY: usize = 2;

/// Counters of one task name in one pool.
pub(crate) struct TaskStats {
    pub(crate) name: &'static str,
    pub(crate) spawned: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) panicked: u64,
    pub(crate) timed_out: u64,
    pub(crate) abandoned: u64,
    /// Shared with the drop path's per-thread cache, which counts repeated
    /// drops here without the lock.
    pub(crate) dropped: Arc<DropCounts>,
    pub(crate) queued: u64,
    pub(crate) running: u64,
    /// Wait, run and busy time (of the runs that measured it), recorded
    /// together: see [`RUN_WAIT`], [`RUN_TIME`], [`RUN_BUSY`].
    pub(crate) runs: RecentHistograms<3>,
    /// Drops already mentioned in a log line (for the rate-limited summary).
    pub(crate) dropped_logged: u64,
}

impl TaskStats {
    pub(crate) fn new(name: &'static str, now: Instant) -> Self {
        TaskStats {
            name,
            spawned: 0,
            completed: 0,
            failed: 0,
            panicked: 0,
            timed_out: 0,
            abandoned: 0,
            dropped: Arc::new(DropCounts::default()),
            queued: 0,
            running: 0,
            runs: RecentHistograms::new(now),
            dropped_logged: 0,
        }
    }

    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped.by_reason().iter().sum()
    }

    pub(crate) fn record_end(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.completed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Panicked => self.panicked += 1,
            Outcome::TimedOut => self.timed_out += 1,
            Outcome::Abandoned => self.abandoned += 1,
            Outcome::Dropped => {}
        }
    }

    pub(crate) fn snapshot(&self, now: Instant) -> TaskSnapshot {
        // One load of the atomics, so that the total is the sum of the
        // reasons even while a flood adds to them.
        let dropped = self.dropped.by_reason();
        TaskSnapshot {
            name: self.name.to_owned(),
            queued: self.queued,
            running: self.running,
            spawned: self.spawned,
            completed: self.completed,
            failed: self.failed,
            dropped: dropped.iter().sum(),
            dropped_by_reason: DroppedByReason::from(dropped),
            panicked: self.panicked,
            timed_out: self.timed_out,
            abandoned: self.abandoned,
            wait_ms: self.runs.percentiles(RUN_WAIT, now),
            run_ms: self.runs.percentiles(RUN_TIME, now),
            busy_ms: self.runs.percentiles(RUN_BUSY, now),
        }
    }
}

/// Drops of one task name in one pool, by [`DropReason::index`].
///
/// Atomic, unlike the other counters: a `spawn` refused for a full queue in
/// the same clock tick as the last drop of its name that was recorded in
/// full counts itself here without taking the pool's lock (see
/// `Pool::fold_drop`), so drops are counted exactly but may land a moment
/// after a concurrent snapshot's cut.
#[derive(Debug, Default)]
pub(crate) struct DropCounts {
    counts: [AtomicU64; 4],
    /// The coarse clock tick (`crate::clock::coarse_tick`) of the last
    /// `queue_full` drop of this name recorded in full: its time in the
    /// recent-drops ring, and a check for a due log summary.
    recorded_tick: AtomicU64,
}

impl DropCounts {
    pub(crate) fn add(&self, reason: DropReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn by_reason(&self) -> [u64; 4] {
        std::array::from_fn(|index| self.counts[index].load(Ordering::Relaxed))
    }

    pub(crate) fn recorded_tick(&self) -> u64 {
        self.recorded_tick.load(Ordering::Relaxed)
    }

    pub(crate) fn set_recorded_tick(&self, tick: u64) {
        self.recorded_tick.store(tick, Ordering::Relaxed);
    }
}

/// A fixed-length ring: pushing past its length forgets the oldest entry.
pub(crate) struct Ring<T> {
    entries: VecDeque<T>,
}

impl<T: Clone> Ring<T> {
    pub(crate) fn new() -> Self {
        Ring {
            entries: VecDeque::with_capacity(RING_LEN),
        }
    }

    pub(crate) fn push(&mut self, entry: T) {
        if self.entries.len() == RING_LEN {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Newest first.
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.entries.iter().rev().cloned().collect()
    }
}

/// The slowest recent runs: the `RING_LEN` largest run times of the current
/// and the previous minute.
pub(crate) struct Slowest {
    current: Vec<SlowRecord>,
    previous: Vec<SlowRecord>,
    window_started: Instant,
}

impl Slowest {
    pub(crate) fn new(now: Instant) -> Self {
        Slowest {
            current: Vec::new(),
            previous: Vec::new(),
            window_started: now,
        }
    }

    /// Whether a run of `run_ms` would enter the list; lets the runner skip
    /// building a record (and formatting a trace id) for ordinary runs.
    pub(crate) fn qualifies(&self, run_ms: f64) -> bool {
        self.current.len() < RING_LEN
            || self.current.last().is_some_and(|last| last.run_ms < run_ms)
    }

    pub(crate) fn record(&mut self, entry: SlowRecord, now: Instant) {
        if now.saturating_duration_since(self.window_started) >= crate::histogram::WINDOW {
            self.previous = std::mem::take(&mut self.current);
            self.window_started = now;
        }
        if !self.qualifies(entry.run_ms) {
            return;
        }
        let at = self.current.partition_point(|e| e.run_ms >= entry.run_ms);
        self.current.insert(at, entry);
        self.current.truncate(RING_LEN);
    }

    /// Slowest first, current and previous window merged.
    pub(crate) fn to_vec(&self, clock: &WallClock) -> Vec<SlowTask> {
        let mut all: Vec<SlowRecord> = self.current.iter().chain(&self.previous).copied().collect();
        all.sort_by(|a, b| b.run_ms.total_cmp(&a.run_ms));
        all.truncate(RING_LEN);
        all.into_iter()
            .map(|record| record.to_public(clock))
            .collect()
    }
}

/// Queue depth per second over the last [`DEPTH_HISTORY_SECS`] seconds.
///
/// Updated on every enqueue and dequeue (one slot write, no allocation);
/// seconds with no change repeat the depth of the last change when read.
pub(crate) struct DepthHistory {
    epoch: Instant,
    slots: Box<[DepthSlot; DEPTH_HISTORY_SECS]>,
    last_depth: u32,
}

/// One second of depth history, kept only for seconds in which the depth
/// changed.
#[derive(Debug, Clone, Copy)]
struct DepthSlot {
    /// Seconds since the epoch (`u64::MAX`: never used).
    second: u64,
    /// Depth when the second began (left by the previous change).
    start: u32,
    /// Highest depth during the second.
    max: u32,
    /// Depth when the second ended (after its last change).
    end: u32,
}

impl DepthHistory {
    pub(crate) fn new(now: Instant) -> Self {
        let unused = DepthSlot {
            second: u64::MAX,
            start: 0,
            max: 0,
            end: 0,
        };
        DepthHistory {
            epoch: now,
            slots: Box::new([unused; DEPTH_HISTORY_SECS]),
            last_depth: 0,
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    pub(crate) fn record(&mut self, depth: usize, now: Instant) {
        let depth = u32::try_from(depth).unwrap_or(u32::MAX);
        let second = self.second(now);
        let slot = &mut self.slots[second as usize % DEPTH_HISTORY_SECS];
        if slot.second == second {
            slot.max = slot.max.max(depth);
        } else {
            // First change in this second: it began at the depth left by
            // the last change.
            *slot = DepthSlot {
                second,
                start: self.last_depth,
                max: depth.max(self.last_depth),
                end: depth,
            };
        }
        slot.end = depth;
        self.last_depth = depth;
    }

    /// One value per second (the highest depth in it), oldest first, ending
    /// with the current second. A second without changes shows the depth
    /// the queue was left at.
    pub(crate) fn samples(&self, now: Instant) -> Vec<u32> {
        let now_second = self.second(now);
        let first = now_second.saturating_sub(DEPTH_HISTORY_SECS as u64 - 1);
        let slot_at = |second: u64| {
            let slot = self.slots[second as usize % DEPTH_HISTORY_SECS];
            (slot.second == second).then_some(slot)
        };
        // Before the window's first change, the depth that change started
        // from; with no change in the window, the last depth recorded.
        let mut carried = (first..=now_second)
            .find_map(slot_at)
            .map_or(self.last_depth, |slot| slot.start);
        let mut out = Vec::with_capacity((now_second - first + 1) as usize);
        for second in first..=now_second {
            match slot_at(second) {
                Some(slot) => {
                    out.push(slot.max);
                    carried = slot.end;
                }
                None => out.push(carried),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn depth_history_carries_depth_through_quiet_seconds() {
        let start = Instant::now();
        let mut history = DepthHistory::new(start);
        history.record(3, start);
        history.record(5, start);
        history.record(2, start + Duration::from_millis(500));
        let samples = history.samples(start + Duration::from_secs(3));
        let tail = &samples[samples.len() - 4..];
        assert_eq!(tail, &[5, 2, 2, 2]);
        history.record(0, start + Duration::from_secs(4));
        let samples = history.samples(start + Duration::from_secs(5));
        assert_eq!(&samples[samples.len() - 2..], &[2, 0]);
        // Five seconds after the pool started: six one-second samples.
        assert_eq!(samples.len(), 6);
    }

    #[test]
    fn depth_history_carries_the_end_depth_not_the_peak() {
        let start = Instant::now();
        let mut history = DepthHistory::new(start);
        // A burst to 1,000 drained within second 3, quiet, then a change.
        history.record(1_000, start + Duration::from_millis(3_100));
        history.record(0, start + Duration::from_millis(3_900));
        history.record(2, start + Duration::from_millis(6_500));
        let samples = history.samples(start + Duration::from_secs(7));
        assert_eq!(&samples[2..], &[0, 1_000, 0, 0, 2, 2]);
    }

    #[test]
    fn depth_history_before_the_first_change_in_the_window_is_the_old_depth() {
        let start = Instant::now();
        let mut history = DepthHistory::new(start);
        // Stuck at 50 since second 0; the next change comes 400 s later,
        // when second 0 has left the 300 s window.
        history.record(50, start);
        history.record(49, start + Duration::from_secs(400));
        let samples = history.samples(start + Duration::from_secs(400));
        assert_eq!(samples.len(), DEPTH_HISTORY_SECS);
        assert!(samples[..DEPTH_HISTORY_SECS - 1].iter().all(|&d| d == 50));
        assert_eq!(
            samples[DEPTH_HISTORY_SECS - 1],
            50,
            "the max of that second"
        );
        // With no change in the window at all, the last depth is shown.
        let later = history.samples(start + Duration::from_secs(1_000));
        assert!(later.iter().all(|&d| d == 49), "{later:?}");
    }

    #[test]
    fn slowest_keeps_the_largest() {
        let start = Instant::now();
        let mut slowest = Slowest::new(start);
        for i in 0..100 {
            slowest.record(
                SlowRecord {
                    at: start,
                    task: "t",
                    outcome: "ok",
                    wait_ms: 0.0,
                    run_ms: f64::from(i),
                    trace_id: None,
                },
                start,
            );
        }
        let kept: Vec<f64> = slowest
            .to_vec(&WallClock::new(start))
            .iter()
            .map(|s| s.run_ms)
            .collect();
        let expected: Vec<f64> = (80..100).rev().map(f64::from).collect();
        assert_eq!(kept, expected);
    }
}
