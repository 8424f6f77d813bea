//! The runner guard: whatever ends a runner (a normal exit, an abort at the
//! shutdown deadline, its runtime shutting down, a panic in the
//! application's subscriber), the guard accounts for its task and gives
//! its place in the runner word back.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;

use super::runner::Finished;
use super::shutdown::format_counts;
use super::state::{Phase, Pool};
use crate::task::{panic_message, Outcome};
use crate::telemetry::{self, TaskAttributes, Telemetry};

/// Where a runner stands in the runner word: what its guard must undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Counted, and pending: launched and not polled yet.
    Pending,
    /// Counted: looking for or running a task.
    Active,
    /// Counted, and lingering: found the queue empty, yielding once.
    Lingering,
    /// Counted, and holding the standby place (parked or being woken).
    Standby,
    /// Stepped out of the count, deciding whether to leave.
    SteppedOut,
    /// Left: nothing to undo.
    Finished,
}

/// The task a runner is running, with what its end needs.
pub(super) struct Current {
    pub(super) task_index: usize,
    pub(super) attrs: Arc<TaskAttributes>,
    pub(super) spans: Option<telemetry::TaskSpans>,
    pub(super) started: Instant,
}

/// Owned by each runner. On a normal exit it is `Finished`; if the runner
/// is dropped instead (aborted at the shutdown deadline, its runtime shut
/// down, or it panicked outside the task's own code, in which case this
/// drop runs while the panic unwinds), its drop accounts for the task it
/// was running.
pub(super) struct RunnerGuard {
    pub(super) pool: Arc<Pool>,
    pub(super) id: u64,
    pub(super) standing: Standing,
    pub(super) current: Option<Current>,
    /// A run that ended and is not counted yet (it is counted with the next
    /// pop; the guard counts it if telemetry panicked in between).
    pub(super) unrecorded: Option<Finished>,
}

impl RunnerGuard {
    /// The guard of a runner just counted, pending, in the runner word.
    pub(super) fn new(pool: Arc<Pool>, id: u64) -> Self {
        RunnerGuard {
            pool,
            id,
            standing: Standing::Pending,
            current: None,
            unrecorded: None,
        }
    }

    /// Gives the runner's place in the runner word back, as it stands.
    fn leave_runner_word(&self) {
        let runners = &self.pool.runners;
        match self.standing {
            Standing::Pending => {
                runners.polled();
                runners.step_out();
            }
            Standing::Active => runners.step_out(),
            Standing::Lingering => {
                runners.end_linger();
                runners.step_out();
            }
            Standing::Standby => {
                // Nobody may wake a runner that is gone (a wake already sent
                // leaves a permit that the next standby takes as spurious).
                runners.leave_standby();
                runners.step_out();
            }
            Standing::SteppedOut | Standing::Finished => {}
        }
    }
}

thread_local! {
    /// Whether this thread is inside a runner's `poll` (see
    /// [`ContainPanic`]): tells a guard dropped while a panic unwinds that
    /// its runner panicked, rather than that its runtime was dropped during
    /// some other panic.
    static POLLING_RUNNER: Cell<bool> = const { Cell::new(false) };
}

/// Runs a runner and logs a panic that escapes it. Tasks' own panics never
/// do (see `CatchPanic`), but the runner also calls the application's
/// `tracing` subscriber and meter provider. The runner's guard accounts for
/// the task while the panic unwinds; this logs it after the unwinding,
/// where calling the subscriber again is safe.
pub(super) struct ContainPanic<F> {
    pool: Arc<str>,
    runner: Pin<Box<F>>,
}

impl<F> ContainPanic<F> {
    pub(super) fn new(pool: Arc<str>, runner: Pin<Box<F>>) -> Self {
        ContainPanic { pool, runner }
    }
}

impl<F: Future<Output = ()>> Future for ContainPanic<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let runner = self.runner.as_mut();
        let outer = POLLING_RUNNER.with(|polling| polling.replace(true));
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.poll(cx)));
        POLLING_RUNNER.with(|polling| polling.set(outer));
        match polled {
            Ok(poll) => poll,
            Err(payload) => {
                tracing::error!(
                    target: "bg_queue",
                    pool = %self.pool,
                    "a runner panicked outside its task's code (in a tracing subscriber or meter?): {}; \
                     its task is counted as panicked and another runner takes over",
                    panic_message(payload.as_ref())
                );
                Poll::Ready(())
            }
        }
    }
}

/// Wakes the pool's idle waiters when dropped.
struct WakeIdle<'a>(&'a tokio::sync::Notify);

impl Drop for WakeIdle<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

impl Drop for RunnerGuard {
    fn drop(&mut self) {
        if self.standing == Standing::Finished {
            return;
        }
        // The runner panicked (outside the task's code: see `ContainPanic`)
        // and this runs while the panic unwinds. No application code may run
        // here (a second panic would abort the process), so no telemetry.
        let panicking = std::thread::panicking() && POLLING_RUNNER.with(Cell::get);
        let pool = Arc::clone(&self.pool);
        let current = self.current.take();
        self.leave_runner_word();
        let mut state = pool.lock();
        if let Some(finished) = self.unrecorded.take() {
            let ended = finished.ended;
            state.record_finished(finished, ended);
        }
        state.runners.retain(|slot| slot.id != self.id);
        let mut abandoned_names = Vec::new();
        let outcome = if panicking {
            Outcome::Panicked
        } else {
            Outcome::Abandoned
        };
        if let Some(current) = &current {
            state.running -= 1;
            let stats = &mut state.tasks[current.task_index].1;
            stats.running -= 1;
            stats.record_end(outcome);
            if outcome == Outcome::Abandoned {
                abandoned_names.push((stats.name, 1));
            }
        }
        // Dropped without a shutdown deadline, and not by a panic: the
        // runtime is going away, and nothing will run what is queued. Say so
        // rather than lose it.
        let runtime_gone = !panicking && matches!(state.phase, Phase::Open | Phase::Draining);
        if runtime_gone {
            state.phase = Phase::NoRuntime;
            pool.close_admission();
        }
        drop(state);
        if runtime_gone {
            abandoned_names.extend(pool.abandon_queued());
        }
        if panicking {
            let admitted = pool.admission.admitted();
            if admitted > 0 {
                // Another runner takes over whatever is waiting.
                pool.fan_out(admitted);
            }
        }
        // Waiters (`idle`, `shutdown`) are woken when this returns, even by
        // a panic in the telemetry below: by then the abandoned run's
        // duration is in the meter's hands, so a shutdown that returns has
        // it to flush.
        let _wake = WakeIdle(&pool.idle);
        if let Some(current) = current {
            if panicking {
                // Dropping its spans would call the subscriber that may have
                // just panicked: they are left unfinished (never exported).
                std::mem::forget(current.spans);
                return;
            }
            let run_time = current.started.elapsed();
            pool.telemetry
                .record_end(&current.attrs, outcome, run_time, None);
            if let Some(spans) = current.spans {
                Telemetry::finish_spans(spans, outcome, None, None);
            }
        }
        if runtime_gone && !abandoned_names.is_empty() {
            tracing::error!(
                target: "bg_queue",
                pool = %pool.name,
                "runtime shut down under the background pool; abandoned tasks: {}",
                format_counts(&abandoned_names)
            );
        }
    }
}
