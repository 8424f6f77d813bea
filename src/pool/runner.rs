//! The runner: a tokio task that takes queued tasks one at a time, runs
//! each inside its spans, and records how it ended.
//!
//! A runner that finds the queue empty does not leave at once: it
//! *lingers* (counted as such), yields once by waking itself (so another
//! worker can steal it: see [`YieldToRunQueue`]) and looks again; a
//! producer that sees enough lingering runners starts none. If it still
//! finds nothing and the pool has no standby, it *parks* as the standby,
//! still counted, and the next `spawn` on the idle pool wakes it instead of
//! starting a runner task. Otherwise it steps out of the count, reads the
//! admission word once more, and leaves only if nothing was admitted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::trace::TraceId;
use tokio::time::Instant;

use super::failures::{error_text, Failure};
use super::guard::{Current, RunnerGuard, Standing};
use super::state::Pool;
use crate::histogram::Sample;
use crate::snapshot::bounded_error;
use crate::task::{Envelope, Outcome, RunEnd};
use crate::telemetry::{TaskAttributes, Telemetry};

/// The inbox's slots, at most (a pool of smaller capacity gets its
/// capacity rounded up to a power of two). A runner absorbs the inbox
/// before it is half full, so that `spawn` seldom finds it full.
pub(super) const INBOX_SLOTS: usize = 256;

/// A task the runner finished, recorded under the lock with the next pop.
pub(super) struct Finished {
    pub(super) index: usize,
    pub(super) outcome: Outcome,
    pub(super) wait: Duration,
    pub(super) run: Duration,
    pub(super) trace_id: Option<TraceId>,
    /// The error text of a run that did not succeed, bounded for the page.
    pub(super) error: Option<String>,
    /// The wait, run and busy time (when measured) for the snapshot's
    /// histograms, in the order of `RUN_WAIT`, `RUN_TIME`, `RUN_BUSY`:
    /// bucketed here, so that the pool's lock is held only to count them.
    pub(super) samples: [Option<Sample>; 3],
    pub(super) ended: Instant,
}

/// A task a runner took from the queue.
struct Taken {
    envelope: Envelope,
    attrs: Arc<TaskAttributes>,
    /// When it was taken (its wait ends here).
    taken_at: Instant,
    /// Tasks still waiting behind it (admitted, not running).
    waiting: u64,
}

/// What a runner does next.
enum Next {
    Run(Taken),
    /// The queue is empty: yield once and look again.
    Linger,
    /// The queue is still empty: park as the standby, or leave.
    Idle,
}

/// A runner's loop; ends when the runner leaves.
pub(super) async fn run_loop(mut guard: RunnerGuard) {
    let pool = Arc::clone(&guard.pool);
    // Counted pending since it was launched: it looks now.
    pool.runners.polled();
    guard.standing = Standing::Active;
    // Whether this runner already yielded once on an empty queue.
    let mut lingered = false;
    loop {
        match take_next(&pool, &mut guard, lingered) {
            Next::Run(taken) => {
                lingered = false;
                run_task(&pool, &mut guard, taken).await;
            }
            Next::Linger => {
                lingered = true;
                // Counted as lingering while it yields: a `spawn` meanwhile
                // counts on it instead of starting a runner. It steps out
                // before it looks again, and if that look finds nothing,
                // the exit check still sees the task that `spawn` admitted
                // before it read the count.
                pool.runners.begin_linger();
                guard.standing = Standing::Lingering;
                YieldToRunQueue(false).await;
                pool.runners.end_linger();
                guard.standing = Standing::Active;
            }
            Next::Idle => {
                lingered = false;
                if park(&pool, &mut guard).await || stays(&pool, &mut guard) {
                    continue;
                }
                pool.lock().runners.retain(|slot| slot.id != guard.id);
                guard.standing = Standing::Finished;
                pool.idle.notify_waiters();
                return;
            }
        }
    }
}

/// Under the lock: records the previous task's end and takes the next one.
fn take_next(pool: &Arc<Pool>, guard: &mut RunnerGuard, lingered: bool) -> Next {
    // The previous task's end instant doubles as this pick-up's (one clock
    // read per task, not two; the lock wait counts as run time).
    let now = guard
        .unrecorded
        .as_ref()
        .map_or_else(Instant::now, |finished| finished.ended);
    let mut state = pool.lock();
    // The inbox is absorbed only once the queue has run dry (or, below,
    // when it holds half its slots): each look at it reads the cache lines
    // a producer on another core is writing. The order stays FIFO: the
    // queue's tasks came before the inbox's.
    if state.queue.is_empty() {
        state.absorb(&pool.name, now);
    }
    if let Some(finished) = guard.unrecorded.take() {
        state.record_finished(finished, now);
    }
    let Some(envelope) = state.queue.pop_front() else {
        // Stay registered for one yield before leaving: a producer in the
        // middle of a burst refills the queue right away.
        return if lingered { Next::Idle } else { Next::Linger };
    };
    // Under the lock, with the pop: `admitted == queue length` is what
    // `abandon_queued` waits for. It includes tasks still on their way
    // into the inbox, which the queue misses.
    let waiting = pool.admission.take_one();
    let unabsorbed = waiting.saturating_sub(state.queue.len() as u64);
    if unabsorbed >= INBOX_SLOTS as u64 / 2 {
        state.absorb(&pool.name, now);
    }
    state.running += 1;
    // The depth counts the inbox too: it is not absorbed after every task.
    state
        .depth_history
        .record(usize::try_from(waiting).unwrap_or(usize::MAX), now);
    let (attrs, stats) = &mut state.tasks[envelope.task_index as usize];
    stats.queued -= 1;
    stats.running += 1;
    Next::Run(Taken {
        envelope,
        attrs: Arc::clone(attrs),
        taken_at: now,
        waiting,
    })
}

/// Runs one task inside its spans (with the pool's timeout), then leaves
/// its end for the next pop to record.
async fn run_task(pool: &Arc<Pool>, guard: &mut RunnerGuard, taken: Taken) {
    let Taken {
        envelope,
        attrs,
        taken_at,
        waiting,
    } = taken;
    // Before this task runs (it may run long): runners for the rest.
    let launched = waiting > 0 && pool.fan_out(waiting);
    let task_index = envelope.task_index as usize;
    // Owned by the guard before any telemetry runs: telemetry calls the
    // application's subscriber and meter, and if one of them panics the
    // guard still accounts for this task.
    guard.current = Some(Current {
        task_index,
        attrs: Arc::clone(&attrs),
        spans: None,
        started: taken_at,
    });
    let started = if launched {
        // The runner launched last sits in this worker's LIFO slot, where
        // no other worker can take it, and this task may hold the worker
        // for long. Yielding puts this runner at the back of the run queue,
        // so the worker runs the launched one first, which takes the next
        // task: a task queued behind one that never yields starts without
        // waiting for another worker to steal its runner.
        YieldToRunQueue(false).await;
        let resumed = Instant::now();
        if let Some(current) = guard.current.as_mut() {
            current.started = resumed;
        }
        resumed
    } else {
        taken_at
    };
    let wait = started.saturating_duration_since(envelope.enqueued_at);
    pool.telemetry.record_wait(&attrs, wait);
    let spans = pool.telemetry.start_spans(
        &pool.name,
        &attrs,
        envelope.parent,
        wait,
        envelope.depth_at_enqueue,
    );
    let measure_busy = pool.telemetry.measures_busy(spans.recorded());
    let mut future = spans.scope(envelope.future, measure_busy);
    if let Some(current) = guard.current.as_mut() {
        current.spans = Some(spans);
    }

    let end = match pool.timeout {
        Some(limit) => match tokio::time::timeout(limit, &mut future).await {
            Ok(result) => RunEnd::from_result(result),
            Err(_elapsed) => RunEnd::TimedOut,
        },
        None => RunEnd::from_result((&mut future).await),
    };
    let ended = Instant::now();
    let run = ended.saturating_duration_since(started);
    let busy = future.busy(ended, run);
    // A timed-out task is dropped here, inside its span, before the span
    // ends.
    drop(future);
    let current = guard.current.take().expect("set before the run");
    let outcome = end.outcome();
    let trace_id = current.spans.as_ref().and_then(|spans| spans.trace_id());
    let error = error_text(&end, pool.timeout);
    // Counted with the next pop, or by the guard if telemetry panics.
    guard.unrecorded = Some(Finished {
        index: task_index,
        outcome,
        wait,
        run,
        trace_id,
        error: error.as_deref().map(bounded_error),
        samples: [
            Some(Sample::of(wait)),
            Some(Sample::of(run)),
            busy.map(Sample::of),
        ],
        ended,
    });
    pool.telemetry
        .record_end(&current.attrs, outcome, run, busy);
    if let Some(spans) = current.spans {
        Telemetry::finish_spans(spans, outcome, Some(&end), busy);
    }
    if let Some(error) = &error {
        let failure = Failure {
            attrs: &current.attrs,
            outcome,
            error,
            wait,
            run,
            trace_id,
        };
        pool.report_failure(failure, ended);
    }
}

/// Parks the runner as the pool's standby, if the pool has none, is open
/// and still has handles; returns once woken (true), or at once if it may
/// not park (false).
///
/// A parked runner stays counted: it sets the parked bit then reads the
/// admission word and the handle count, and `spawn` admits then reads the
/// runner word. Either `spawn` sees the bit and wakes it, or the runner
/// sees the task (or the close, or the last handle's drop) and stays awake.
async fn park(pool: &Arc<Pool>, guard: &mut RunnerGuard) -> bool {
    let may_park = || {
        !pool.admission.is_closed() && pool.handles.load(std::sync::atomic::Ordering::SeqCst) != 0
    };
    if !pool.runners.try_park(may_park) {
        return false;
    }
    guard.standing = Standing::Standby;
    pool.set_parked(guard.id, true);
    let wake_now = pool.admission.anything_to_do()
        || pool.handles.load(std::sync::atomic::Ordering::SeqCst) == 0;
    if !wake_now {
        pool.standby.notified().await;
    }
    pool.runners.leave_standby();
    guard.standing = Standing::Active;
    pool.set_parked(guard.id, false);
    true
}

/// The exit check of a runner that may not park: it steps out of the
/// count, then looks for a task admitted meanwhile (the other half of
/// `spawn`'s claim). If there is one, it stays, whoever else lingers or is
/// parked. Whether it stays.
fn stays(pool: &Arc<Pool>, guard: &mut RunnerGuard) -> bool {
    pool.runners.step_out();
    guard.standing = Standing::SteppedOut;
    if pool.admission.admitted_latest() > 0 && pool.runners.rejoin(pool.runner_limit()) {
        guard.standing = Standing::Active;
        return true;
    }
    false
}

impl Pool {
    /// Marks a runner's registry slot parked or not, and tells `idle()`
    /// waiters when it parks.
    fn set_parked(&self, id: u64, parked: bool) {
        let mut state = self.lock();
        if let Some(slot) = state.runners.iter_mut().find(|slot| slot.id == id) {
            slot.parked = parked;
        }
        drop(state);
        if parked {
            self.idle.notify_waiters();
        }
    }
}

/// Yields once by waking itself, so that tokio puts the task at the back of
/// its worker's run queue, where an idle worker steals it.
/// `tokio::task::yield_now` instead defers the wake-up until the worker has
/// nothing else to run: if the worker then takes a task that holds it, a
/// runner deferred there waits for that task, while `spawn` and other
/// runners count on it to take the next one.
struct YieldToRunQueue(bool);

impl Future for YieldToRunQueue {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
