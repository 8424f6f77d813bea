//! The pool's snapshot: one consistent cut of its counters, taken under the
//! lock with the inbox absorbed.

use super::state::{Phase, Pool};
use crate::snapshot::{DroppedByReason, PoolSnapshot, TaskSnapshot, WallClock};

impl Pool {
    /// See [`BackgroundTx::snapshot`](super::BackgroundTx::snapshot).
    pub(super) fn snapshot(&self) -> PoolSnapshot {
        let now = self.now();
        let clock = WallClock::new(now);
        let state = self.lock_absorbed(now);
        let tasks: Vec<_> = state
            .tasks
            .iter()
            .map(|(_, stats)| stats.snapshot(now))
            .collect();
        let sum = |field: fn(&TaskSnapshot) -> u64| tasks.iter().map(field).sum();
        // From the task rows, not the counters again: drop counts are
        // atomics that a flood adds to without the lock, and the pool's
        // totals must be the sums of the rows shown beside them.
        let dropped_by_reason = DroppedByReason {
            queue_full: sum(|t| t.dropped_by_reason.queue_full),
            closed: sum(|t| t.dropped_by_reason.closed),
            shutdown: sum(|t| t.dropped_by_reason.shutdown),
            no_runtime: sum(|t| t.dropped_by_reason.no_runtime),
        };
        PoolSnapshot {
            name: self.name.to_string(),
            capacity: self.capacity,
            parallelism: self.parallelism,
            queued: sum(|t| t.queued),
            running: sum(|t| t.running),
            oldest_queued_seconds: state.oldest_queued_age(now).as_secs_f64(),
            spawned: sum(|t| t.spawned),
            completed: sum(|t| t.completed),
            failed: sum(|t| t.failed),
            dropped: sum(|t| t.dropped),
            dropped_by_reason,
            panicked: sum(|t| t.panicked),
            timed_out: sum(|t| t.timed_out),
            abandoned: sum(|t| t.abandoned),
            accepting: state.phase == Phase::Open,
            recent_drops: state
                .recent_drops
                .to_vec()
                .into_iter()
                .map(|record| record.to_public(&clock))
                .collect(),
            recent_failures: state
                .recent_failures
                .to_vec()
                .into_iter()
                .map(|record| record.into_public(&clock))
                .collect(),
            slowest: state.slowest.to_vec(&clock),
            depth_history: state.depth_history.samples(now),
            tasks,
        }
    }
}
