//! The drop path: a task `spawn` could not admit is counted by name and
//! reason, recorded in the recent drops, logged in a rate-limited summary,
//! and (with a subscriber) given a `bg.task` span that ends at once.
//!
//! A refused call takes the lock once. In a flood with no subscriber, only
//! the first drop of a name in each tick of the coarse clock does; the
//! others add to an atomic counter found through a one-entry per-thread
//! cache ([`Pool::fold_drop`]): counts stay exact, and the recent-drops
//! ring keeps one drop per name and tick.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::admission::Refusal;
use super::state::{Phase, Pool, State};
use crate::snapshot::DropRecord;
use crate::stats::DropCounts;
use crate::telemetry;
use crate::{DropReason, SpawnError};

/// How often, at most, a pool logs its drop summary.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

thread_local! {
    /// The drop counters of the last (pool, task name) this thread saw
    /// refused for a full queue: see [`Pool::fold_drop`].
    static LAST_DROP: RefCell<Option<CachedDrop>> = const { RefCell::new(None) };
}

/// An entry of the drop path's per-thread cache.
struct CachedDrop {
    pool: u64,
    name: &'static str,
    counts: Arc<DropCounts>,
}

impl CachedDrop {
    /// Whether this entry holds the counters of `name` in the pool `pool`.
    fn is_for(&self, pool: u64, name: &'static str) -> bool {
        self.pool == pool && std::ptr::eq(self.name, name)
    }
}

/// A drop summary: how many tasks were dropped since the last one, and how
/// many of each name, as `{name: count, ...}` (names are values, never
/// field keys, so a task named `panics` cannot read as a count).
struct DropSummary {
    dropped: u64,
    by_task: String,
}

impl State {
    /// Drops not yet mentioned in a log line, if a summary is due.
    fn drop_summary_due(&mut self, now: Instant) -> Option<DropSummary> {
        if now < self.next_drop_log {
            return None;
        }
        self.next_drop_log = now + DROP_LOG_INTERVAL;
        let mut dropped = 0;
        let mut parts = Vec::new();
        for (_, stats) in &mut self.tasks {
            let total = stats.dropped_total();
            if total > stats.dropped_logged {
                let count = total - stats.dropped_logged;
                dropped += count;
                parts.push(format!("{}: {count}", stats.name));
                stats.dropped_logged = total;
            }
        }
        (dropped > 0).then(|| DropSummary {
            dropped,
            by_task: format!("{{{}}}", parts.join(", ")),
        })
    }
}

impl Pool {
    /// Counts and reports a task that was not admitted, with `depth` the
    /// accepted tasks not yet running that `spawn` saw.
    pub(super) fn refuse(
        self: &Arc<Self>,
        name: &'static str,
        refusal: Refusal,
        depth: u64,
        parent: opentelemetry::Context,
        traced: bool,
        now: Instant,
    ) -> SpawnError {
        if refusal == Refusal::QueueFull {
            // A full queue while this thread's runner is still pending: the
            // producer may be holding the worker that runner waits on.
            self.nudge_if_stalled(now);
        }
        // No need to absorb the inbox: nothing here reads the queue.
        let mut state = self.lock();
        let error = match (refusal, state.phase) {
            (Refusal::QueueFull, _) => SpawnError::QueueFull,
            (Refusal::Closed, Phase::NoRuntime) => SpawnError::NoRuntime,
            (Refusal::Closed, _) => SpawnError::Closed,
        };
        // Everything a drop records happens under this one lock, with raw
        // values (formatting waits for a snapshot).
        let index = state.task_index(&self.name, name, now);
        let reason = error.reason();
        let counts = &state.tasks[index].1.dropped;
        counts.add(reason);
        // Only the drops `fold_drop` may fold later (a traced one never
        // folds: it has a span and a trace id to record).
        let tick = (reason == DropReason::QueueFull && !traced)
            .then(crate::clock::coarse_tick)
            .flatten();
        if let Some(tick) = tick {
            counts.set_recorded_tick(tick);
            self.cache_drop_counts(name, counts);
        }
        state.recent_drops.push(DropRecord {
            at: now,
            task: name,
            reason,
            trace_id: telemetry::trace_id_of(&parent),
        });
        let summary = state.drop_summary_due(now);
        let attrs = traced.then(|| Arc::clone(&state.tasks[index].0));
        drop(state);
        if let Some(attrs) = attrs {
            self.telemetry.drop_span(&attrs, &parent, reason, depth);
        }
        if let Some(summary) = summary {
            tracing::warn!(
                target: "bg_queue",
                pool = %self.name,
                dropped = summary.dropped,
                by_task = summary.by_task.as_str(),
                reason = reason.as_str(),
                "background tasks dropped since the last summary"
            );
        }
        if reason == DropReason::NoRuntime {
            if let Some(suppressed) = self.no_runtime_log.admit(now) {
                tracing::warn!(
                    target: "bg_queue",
                    pool = %self.name,
                    task = name,
                    suppressed,
                    "spawn outside a tokio runtime: tasks on this pool are dropped (no_runtime); \
                     build the pool inside the runtime or pass Builder::runtime"
                );
            }
        }
        error
    }

    /// Counts a call refused for a full queue without the lock, if the
    /// coarse clock is still on the tick of the last such drop of `name`
    /// recorded in full (by [`refuse`](Self::refuse), from any thread).
    /// Only untraced calls come here: a traced drop has a span and a trace
    /// id to record.
    ///
    /// False (record it in full) on this thread's first drop of `name`, or
    /// when the tick has moved on.
    pub(super) fn fold_drop(&self, name: &'static str) -> bool {
        let Some(tick) = crate::clock::coarse_tick() else {
            return false;
        };
        LAST_DROP
            .try_with(|cache| {
                let Ok(cache) = cache.try_borrow() else {
                    return false;
                };
                match &*cache {
                    Some(cached)
                        if cached.is_for(self.id, name)
                            && cached.counts.recorded_tick() == tick =>
                    {
                        cached.counts.add(DropReason::QueueFull);
                        true
                    }
                    _ => false,
                }
            })
            .unwrap_or(false)
    }

    /// Makes `counts` (of `name` in this pool) the one
    /// [`fold_drop`](Self::fold_drop) finds on this thread.
    fn cache_drop_counts(&self, name: &'static str, counts: &Arc<DropCounts>) {
        let _ = LAST_DROP.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                match &mut *cache {
                    Some(cached) if cached.is_for(self.id, name) => {}
                    slot => {
                        *slot = Some(CachedDrop {
                            pool: self.id,
                            name,
                            counts: Arc::clone(counts),
                        });
                    }
                }
            }
        });
    }
}
