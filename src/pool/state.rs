//! State and accounting: the shared part of a pool, and what lives under
//! its one mutex.
//!
//! The lock-free words ([`Admission`], [`RunnerWord`]) decide who runs what;
//! everything that is *counted* lives in [`State`], under the mutex: the
//! FIFO queue, the per-task counters, the runner registry. Every reader of
//! the counters (a snapshot, `idle`, shutdown, a metric collection) first
//! moves what arrived in the inbox into the queue and counts it `spawned`
//! and `queued` ("absorbs" it), so every snapshot is a consistent cut: the
//! invariant holds exactly in each one, and a `spawn` that returned before
//! the snapshot is in it.
//!
//! The lock is held for a few hundred nanoseconds at most: no await, no
//! allocation except queue growth, no logging, no span work and no user
//! code under it (a task's `Drop` runs after the lock is released).

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::KeyValue;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::admission::Admission;
use super::runner::Finished;
use super::runner_word::RunnerWord;
use crate::inbox;
use crate::snapshot::{DropRecord, FailureRecord, SlowRecord};
use crate::stats::{DepthHistory, Ring, Slowest, TaskStats};
use crate::task::Envelope;
use crate::telemetry::{PoolView, TaskAttributes, Telemetry};

/// Lifecycle of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepting tasks.
    Open,
    /// `shutdown` called: not accepting, runners drain the queue.
    Draining,
    /// The deadline passed: queued tasks were abandoned, runners aborted.
    Aborting,
    /// Shut down.
    Closed,
    /// No runtime (never had one, or it shut down under us).
    NoRuntime,
}

/// A runner in the registry.
pub(super) struct RunnerSlot {
    pub(super) id: u64,
    /// Set once the runner task is spawned: shutdown aborts it at the
    /// deadline.
    pub(super) abort: Option<AbortHandle>,
    /// Parked as the pool's standby: registered, but neither running nor
    /// looking for work, so the pool counts as idle.
    pub(super) parked: bool,
}

/// What lives under the pool's mutex.
pub(super) struct State {
    /// Accepted tasks not yet absorbed into `queue`.
    pub(super) inbox: inbox::Receiver<Envelope>,
    pub(super) queue: VecDeque<Envelope>,
    /// Per task name: its attribute sets (shared with the runners) and its
    /// counters.
    pub(super) tasks: Vec<(Arc<TaskAttributes>, TaskStats)>,
    pub(super) runners: Vec<RunnerSlot>,
    pub(super) next_runner_id: u64,
    pub(super) running: usize,
    pub(super) phase: Phase,
    pub(super) recent_drops: Ring<DropRecord>,
    pub(super) recent_failures: Ring<FailureRecord>,
    pub(super) slowest: Slowest,
    pub(super) depth_history: DepthHistory,
    pub(super) next_drop_log: Instant,
}

impl State {
    /// Index of `name` in the per-task table, adding it on first use.
    pub(super) fn task_index(
        &mut self,
        pool: &Arc<str>,
        name: &'static str,
        now: Instant,
    ) -> usize {
        // Pointer comparison first, over every name: the same literal is
        // almost always the same address, and it saves comparing bytes on
        // the hot path. Bytes only for a literal seen at a new address.
        if let Some(index) = self
            .tasks
            .iter()
            .position(|(attrs, _)| std::ptr::eq(attrs.name, name))
            .or_else(|| self.tasks.iter().position(|(attrs, _)| attrs.name == name))
        {
            return index;
        }
        self.tasks.push((
            Arc::new(TaskAttributes::new(pool, name)),
            TaskStats::new(name, now),
        ));
        self.tasks.len() - 1
    }

    /// Counts a run's end: its outcome, wait and run time, and the slowest
    /// list.
    #[inline]
    pub(super) fn record_finished(&mut self, finished: Finished, now: Instant) {
        let Finished {
            index,
            outcome,
            wait,
            run,
            trace_id,
            error,
            samples,
            ..
        } = finished;
        self.running -= 1;
        let stats = &mut self.tasks[index].1;
        stats.running -= 1;
        stats.record_end(outcome);
        stats.runs.record_samples(samples, now);
        if let Some(error) = error {
            self.recent_failures.push(FailureRecord {
                at: now,
                task: self.tasks[index].1.name,
                outcome,
                error,
                trace_id,
            });
        }
        let run_ms = run.as_secs_f64() * 1000.0;
        if self.slowest.qualifies(run_ms) {
            let entry = SlowRecord {
                at: now,
                task: self.tasks[index].1.name,
                outcome: outcome.as_str(),
                wait_ms: wait.as_secs_f64() * 1000.0,
                run_ms,
                trace_id,
            };
            self.slowest.record(entry, now);
        }
    }

    /// Age of the oldest queued task (the queue is FIFO), zero when empty.
    pub(super) fn oldest_queued_age(&self, now: Instant) -> Duration {
        self.queue.front().map_or(Duration::ZERO, |oldest| {
            now.saturating_duration_since(oldest.enqueued_at)
        })
    }

    /// Moves what arrived in the inbox into the queue, counting each task
    /// `spawned` and `queued` under its name. Every reader of the counters
    /// calls this first.
    #[inline]
    pub(super) fn absorb(&mut self, pool: &Arc<str>, now: Instant) {
        let mut absorbed = false;
        while let Some(mut envelope) = self.inbox.recv() {
            let index = self.task_index(pool, envelope.name, now);
            envelope.task_index = index as u32;
            let stats = &mut self.tasks[index].1;
            stats.spawned += 1;
            stats.queued += 1;
            self.queue.push_back(envelope);
            absorbed = true;
        }
        if absorbed {
            self.depth_history.record(self.queue.len(), now);
        }
    }

    /// Nothing admitted, queued or running, and every runner parked.
    pub(super) fn is_idle(&self, admitted: u64) -> bool {
        admitted == 0
            && self.queue.is_empty()
            && self.running == 0
            && self.runners.iter().all(|slot| slot.parked)
    }

    /// Takes every queued task out, counting it abandoned. The caller has
    /// absorbed the inbox and made sure nothing admitted is still on its
    /// way (see [`Pool::abandon_queued`]).
    ///
    /// Returns the counts by name and the tasks themselves: the caller drops
    /// them after releasing the lock, since a task's `Drop` is user code and
    /// may call `spawn` on this pool.
    pub(super) fn abandon_queued(
        &mut self,
        admission: &Admission,
        now: Instant,
    ) -> (Vec<(&'static str, u64)>, VecDeque<Envelope>) {
        let mut abandoned: Vec<(&'static str, u64)> = Vec::new();
        let queue = std::mem::take(&mut self.queue);
        for envelope in &queue {
            admission.abandon_one();
            let (_, stats) = &mut self.tasks[envelope.task_index as usize];
            stats.queued -= 1;
            stats.abandoned += 1;
            match abandoned.iter_mut().find(|(name, _)| *name == stats.name) {
                Some((_, count)) => *count += 1,
                None => abandoned.push((stats.name, 1)),
            }
        }
        self.depth_history.record(0, now);
        (abandoned, queue)
    }
}

/// The shared part of a pool: what every handle and runner holds.
pub(crate) struct Pool {
    pub(super) name: Arc<str>,
    pub(super) name_attribute: KeyValue,
    pub(super) capacity: usize,
    pub(super) parallelism: usize,
    pub(super) timeout: Option<Duration>,
    pub(super) telemetry: Telemetry,
    pub(super) state: Mutex<State>,
    pub(super) runtime: Option<Handle>,
    /// Notified when a runner exits or parks (the pool may have become
    /// idle).
    pub(super) idle: Notify,
    /// Where `spawn` sends accepted tasks, without the lock.
    pub(super) inbox: inbox::Sender<Envelope>,
    /// Accepted tasks not yet running, and whether the pool is closed.
    pub(super) admission: Admission,
    /// How many runners there are and what they do.
    pub(super) runners: RunnerWord,
    /// Who relies on which pending runner (see `launch.rs`).
    pub(super) pending: super::launch::PendingRunner,
    /// The depth at which `spawn` stops waiting for its pending runner and
    /// treats it as stuck: three quarters of `capacity`, so that a producer
    /// that never yields does not fill the queue first.
    pub(super) stall_depth: u64,
    /// Unique in the process (unlike an address, never reused): the key of
    /// the drop path's per-thread cache.
    pub(super) id: u64,
    /// Wakes the standby runner (one wake per clearing of its parked bit).
    pub(super) standby: Notify,
    /// Live [`BackgroundTx`](super::BackgroundTx) handles: when the last
    /// one goes, nothing can spawn any more, and the standby runner leaves.
    pub(super) handles: AtomicUsize,
    /// Rate limit of the "no runtime" warning (one line a minute).
    pub(super) no_runtime_log: crate::rate_limit::RateLimit,
}

impl Drop for Pool {
    fn drop(&mut self) {
        super::builder::forget_live_name(&self.name);
    }
}

impl Pool {
    #[inline]
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under the lock, so a panic never happens while
        // it is held; if one did, the counters are still whole integers:
        // keep going rather than poison every later caller.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock, with the inbox absorbed: what every reader of the counters
    /// takes.
    pub(super) fn lock_absorbed(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        state.absorb(&self.name, now);
        state
    }

    /// Stops admitting tasks. Call under the lock, after setting the phase,
    /// so a refused caller that takes the lock sees why.
    pub(super) fn close_admission(&self) {
        self.admission.close();
    }

    /// "Now" on the pool runtime's clock, from any thread: inside the
    /// runtime, `Instant::now()` reads the runtime's clock, which differs
    /// from the OS clock only when a test pauses time (a metric reader's
    /// thread is outside it).
    pub(super) fn now(&self) -> Instant {
        let _clock = self.runtime.as_ref().map(Handle::enter);
        Instant::now()
    }

    /// Nothing admitted, queued or running, and no runner but the parked
    /// standby.
    pub(super) fn is_idle(&self) -> bool {
        let state = self.lock_absorbed(self.now());
        state.is_idle(self.admission.admitted())
    }

    /// The most runners the runner word may count.
    #[inline]
    pub(super) fn runner_limit(&self) -> u64 {
        self.parallelism as u64
    }
}

/// What the metric callbacks read: a view of the pool, so that telemetry
/// depends on no pool internals.
impl PoolView for Pool {
    fn name_attribute(&self) -> KeyValue {
        self.name_attribute.clone()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn parallelism(&self) -> usize {
        self.parallelism
    }

    fn oldest_queued_age(&self) -> Duration {
        let now = self.now();
        self.lock_absorbed(now).oldest_queued_age(now)
    }

    fn for_each_task(&self, f: &mut dyn FnMut(&TaskAttributes, &TaskStats)) {
        let state = self.lock_absorbed(self.now());
        for (attrs, stats) in &state.tasks {
            f(attrs, stats);
        }
    }

    fn flush_records(&self) {
        self.telemetry.flush_records();
    }
}
