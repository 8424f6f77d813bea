//! The public snapshot of a pool and how live records become it: wall
//! clock times (RFC 3339), trace ids in hex, percentiles in milliseconds.

use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use serde::Serialize;

use crate::histogram::Percentiles;
use crate::DropReason;

/// Drops of one task (or pool), split by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
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

/// The most characters of error text a snapshot (and so the page and its
/// JSON) shows: error text may be long (a whole upstream response) and may
/// carry personal data, and the page is for a glance.
pub const ERROR_TEXT_MAX_CHARS: usize = 500;

/// `text`, cut to [`ERROR_TEXT_MAX_CHARS`] characters with an ellipsis.
pub(crate) fn bounded_error(text: &str) -> String {
    match text.char_indices().nth(ERROR_TEXT_MAX_CHARS) {
        Some((cut, _)) => format!("{}\u{2026}", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A failed, panicked or timed-out run as recorded by the runner, its
/// error text already bounded (formatted at snapshot time).
#[derive(Debug, Clone)]
pub(crate) struct FailureRecord {
    pub(crate) at: Instant,
    pub(crate) task: &'static str,
    pub(crate) outcome: crate::Outcome,
    pub(crate) error: String,
    pub(crate) trace_id: Option<opentelemetry::trace::TraceId>,
}

impl FailureRecord {
    pub(crate) fn into_public(self, clock: &WallClock) -> FailedTask {
        FailedTask {
            at: rfc3339(clock.wall_of(self.at)),
            task: self.task,
            outcome: self.outcome.as_str(),
            error: self.error,
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
#[non_exhaustive]
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

/// One failed, panicked or timed-out run, for the "recent failures" list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FailedTask {
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// The task name.
    pub task: &'static str,
    /// `failed`, `panicked` or `timed_out`.
    pub outcome: &'static str,
    /// The error's text, the panic message, or the timeout; at most
    /// [`ERROR_TEXT_MAX_CHARS`] characters, then an ellipsis.
    pub error: String,
    /// The trace of its `bg.task` span, when spans are recorded.
    pub trace_id: Option<String>,
}

/// One slow run, for the "slowest tasks" list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// Recent busy time percentiles: the time inside the task's `poll`,
    /// measured when telemetry is on (empty otherwise). Run time much
    /// longer than busy time is time spent waiting on I/O or timers.
    pub busy_ms: Percentiles,
}

/// A consistent, point-in-time view of one pool.
///
/// Taken under the pool's lock in a few microseconds per task name, so it is
/// cheap to read every second. Totals are sums over [`tasks`](Self::tasks).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
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
    /// The last failed, panicked or timed-out runs, newest first (at most
    /// 20), with their error text.
    pub recent_failures: Vec<FailedTask>,
    /// The slowest recent runs, slowest first.
    pub slowest: Vec<SlowTask>,
    /// Queue depth, one value per second for the last five minutes, oldest
    /// first (the highest depth seen in each second).
    pub depth_history: Vec<u32>,
}

/// The pool's invariant, in one place: every accepted task is `completed`,
/// `failed`, `panicked`, `timed_out`, `abandoned`, `queued` or `running`
/// (`spawned` = the sum of `states`, in that order).
pub(crate) fn accounts_for_every_task(spawned: u64, states: [u64; 7]) -> bool {
    spawned == states.iter().sum::<u64>()
}

impl PoolSnapshot {
    /// Whether `spawned = completed + failed + panicked + timed_out +
    /// abandoned + queued + running` holds (it always should).
    pub fn is_consistent(&self) -> bool {
        accounts_for_every_task(
            self.spawned,
            [
                self.completed,
                self.failed,
                self.panicked,
                self.timed_out,
                self.abandoned,
                self.queued,
                self.running,
            ],
        )
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
    fn error_text_is_cut_at_a_character_boundary_with_an_ellipsis() {
        assert_eq!(bounded_error("smtp said 550"), "smtp said 550");
        let exact = "é".repeat(ERROR_TEXT_MAX_CHARS);
        assert_eq!(bounded_error(&exact), exact);
        let long = "é".repeat(ERROR_TEXT_MAX_CHARS + 1);
        let cut = bounded_error(&long);
        assert_eq!(cut.chars().count(), ERROR_TEXT_MAX_CHARS + 1);
        assert!(cut.ends_with('\u{2026}'));
        assert!(cut.starts_with(&exact));
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_123);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.123Z");
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(later), "2026-11-18T11:06:40.000Z");
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
}
