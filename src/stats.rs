//! Live counters and the snapshot they produce.
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
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use serde::Serialize;

use crate::histogram::{Percentiles, RecentHistogram};
use crate::task::Outcome;
use crate::DropReason;

/// How many recent drops and slowest tasks a pool remembers.
pub(crate) const RING_LEN: usize = 20;
/// How many seconds of depth history a pool remembers.
pub(crate) const DEPTH_HISTORY_SECS: usize = 300;

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
    pub(crate) wait: RecentHistogram,
    pub(crate) run: RecentHistogram,
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
            wait: RecentHistogram::new(now),
            run: RecentHistogram::new(now),
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
            wait_ms: self.wait.percentiles(now),
            run_ms: self.run.percentiles(now),
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

/// Drops of one task (or pool), split by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DroppedByReason {
    /// The queue was full.
    pub queue_full: u64,
    /// The pool was closed.
    pub closed: u64,
    /// Discarded by a shutdown (reserved; abandoned tasks count as abandoned).
    pub shutdown: u64,
    /// No live runtime.
    pub no_runtime: u64,
}

impl From<[u64; 4]> for DroppedByReason {
    fn from(counts: [u64; 4]) -> Self {
        DroppedByReason {
            queue_full: counts[DropReason::QueueFull.index()],
            closed: counts[DropReason::Closed.index()],
            shutdown: counts[DropReason::Shutdown.index()],
            no_runtime: counts[DropReason::NoRuntime.index()],
        }
    }
}

/// Converts the monotonic instants the hot paths record into wall-clock
/// times, once per snapshot: reading the clock costs about 30 ns on a
/// virtual machine, so the drop path and the runners read it once, not
/// twice (monotonic for the maths, wall for the page).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    wall: SystemTime,
    mono: Instant,
}

impl WallClock {
    /// Pairs the wall clock with `mono`, the monotonic "now".
    pub(crate) fn new(mono: Instant) -> Self {
        WallClock {
            wall: SystemTime::now(),
            mono,
        }
    }

    /// The wall-clock time of `at` (an instant in the past).
    pub(crate) fn wall_of(&self, at: Instant) -> SystemTime {
        let ago = self.mono.saturating_duration_since(at);
        self.wall.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// A trace id as the page and Jaeger write it: 32 lowercase hex digits.
fn trace_hex(id: opentelemetry::trace::TraceId) -> String {
    format!("{id:032x}")
}

/// A drop as recorded on the hot path: raw values, formatted only when a
/// snapshot is taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropRecord {
    pub(crate) at: Instant,
    pub(crate) task: &'static str,
    pub(crate) reason: crate::DropReason,
    pub(crate) trace_id: Option<opentelemetry::trace::TraceId>,
}

impl DropRecord {
    pub(crate) fn to_public(self, clock: &WallClock) -> DroppedTask {
        DroppedTask {
            at: rfc3339(clock.wall_of(self.at)),
            task: self.task,
            reason: self.reason.as_str(),
            trace_id: self.trace_id.map(trace_hex),
        }
    }
}

/// A slow run as recorded by the runner (formatted at snapshot time).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlowRecord {
    pub(crate) at: Instant,
    pub(crate) task: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) wait_ms: f64,
    pub(crate) run_ms: f64,
    pub(crate) trace_id: Option<opentelemetry::trace::TraceId>,
}

impl SlowRecord {
    pub(crate) fn to_public(self, clock: &WallClock) -> SlowTask {
        SlowTask {
            at: rfc3339(clock.wall_of(self.at)),
            task: self.task,
            outcome: self.outcome,
            wait_ms: self.wait_ms,
            run_ms: self.run_ms,
            trace_id: self.trace_id.map(trace_hex),
        }
    }
}

/// One dropped task, for the "recent drops" list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DroppedTask {
    /// When it was dropped (RFC 3339, UTC).
    pub at: String,
    /// The task name.
    pub task: &'static str,
    /// Why (`queue_full`, `closed`, ...).
    pub reason: &'static str,
    /// The trace the drop belongs to (the caller's), when a span was active.
    pub trace_id: Option<String>,
}

/// One slow run, for the "slowest tasks" list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlowTask {
    /// When it finished (RFC 3339, UTC).
    pub at: String,
    /// The task name.
    pub task: &'static str,
    /// How it ended.
    pub outcome: &'static str,
    /// Time spent queued, in milliseconds.
    pub wait_ms: f64,
    /// Time spent running, in milliseconds.
    pub run_ms: f64,
    /// The trace of its `bg.task` span, when spans are recorded.
    pub trace_id: Option<String>,
}

/// Per-task-name figures in a [`PoolSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSnapshot {
    /// The name given to `spawn`.
    pub name: String,
    /// Accepted, waiting for a runner.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Accepted (every accepted task, whatever became of it).
    pub spawned: u64,
    /// Ended with outcome `ok`.
    pub completed: u64,
    /// Ended with outcome `failed` (returned `Err`).
    pub failed: u64,
    /// Not accepted, all reasons.
    pub dropped: u64,
    /// Not accepted, by reason.
    pub dropped_by_reason: DroppedByReason,
    /// Ended with outcome `panicked`.
    pub panicked: u64,
    /// Ended with outcome `timed_out`.
    pub timed_out: u64,
    /// Cancelled at the shutdown deadline (or when the runtime went away).
    pub abandoned: u64,
    /// Recent queue wait percentiles.
    pub wait_ms: Percentiles,
    /// Recent run time percentiles.
    pub run_ms: Percentiles,
}

/// A consistent, point-in-time view of one pool.
///
/// Taken under the pool's lock in a few microseconds per task name, so it is
/// cheap to read every second. Totals are sums over [`tasks`](Self::tasks).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolSnapshot {
    /// The pool's name.
    pub name: String,
    /// Most tasks that may wait in the queue.
    pub capacity: usize,
    /// Most tasks that run at once.
    pub parallelism: usize,
    /// Accepted, waiting for a runner.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Age of the oldest queued task, in seconds (0 when the queue is empty).
    pub oldest_queued_seconds: f64,
    /// Accepted tasks.
    pub spawned: u64,
    /// Outcome `ok`.
    pub completed: u64,
    /// Outcome `failed`.
    pub failed: u64,
    /// Not accepted, all reasons.
    pub dropped: u64,
    /// Not accepted, by reason.
    pub dropped_by_reason: DroppedByReason,
    /// Outcome `panicked`.
    pub panicked: u64,
    /// Outcome `timed_out`.
    pub timed_out: u64,
    /// Outcome `abandoned`.
    pub abandoned: u64,
    /// Whether the pool still accepts tasks.
    pub accepting: bool,
    /// Per task name, in order of first use.
    pub tasks: Vec<TaskSnapshot>,
    /// The last drops, newest first (at most 20). With no tracing
    /// subscriber, where a drop has no span or trace id, a flood records
    /// one drop per task name and tick of the kernel's coarse clock (1-10
    /// ms, usually 4 ms) that refused it for a full queue, and only counts
    /// the rest ([`dropped`](Self::dropped) stays exact).
    pub recent_drops: Vec<DroppedTask>,
    /// The slowest recent runs, slowest first.
    pub slowest: Vec<SlowTask>,
    /// Queue depth, one value per second for the last five minutes, oldest
    /// first (the highest depth seen in each second).
    pub depth_history: Vec<u32>,
}

impl PoolSnapshot {
    /// Whether `spawned = completed + failed + panicked + timed_out +
    /// abandoned + queued + running` holds (it always should).
    pub fn is_consistent(&self) -> bool {
        self.spawned
            == self.completed
                + self.failed
                + self.panicked
                + self.timed_out
                + self.abandoned
                + self.queued
                + self.running
    }

    /// The per-task figures of `name`, if that name was ever used.
    pub fn task(&self, name: &str) -> Option<&TaskSnapshot> {
        self.tasks.iter().find(|task| task.name == name)
    }
}

/// `SystemTime` as RFC 3339 UTC with milliseconds, without a date crate.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_123);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.123Z");
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(later), "2026-11-18T11:06:40.000Z");
    }

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
    fn wall_clock_maps_past_instants_back_in_time() {
        let now = Instant::now();
        let clock = WallClock::new(now);
        let five_ago = now - Duration::from_secs(5);
        assert_eq!(
            clock.wall.duration_since(clock.wall_of(five_ago)).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(clock.wall_of(now), clock.wall);
        // An instant after the pairing (a record made while the snapshot
        // was being taken) is not placed in the future.
        assert_eq!(clock.wall_of(now + Duration::from_secs(1)), clock.wall);
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
