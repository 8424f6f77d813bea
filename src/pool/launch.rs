//! The launch policy: when `spawn` and the runners start a runner, wake the
//! standby, or leave a task to a runner already on its way.
//!
//! Every rule here by which `spawn` starts no runner relies on runners that
//! are counted in the [`RunnerWord`](super::runner_word::RunnerWord), and
//! each counted runner reads the admission word before it leaves or parks:
//! so the rules decide how *soon* a task starts, never *whether* it does.
//!
//! # One runner per caller's burst
//!
//! A runner that `spawn` starts or wakes is *pending* until its first poll,
//! and the pool notes which thread launched it. Tokio puts it in that
//! thread's LIFO slot, so it runs as soon as the caller yields; until then
//! the same thread's later calls launch none. When it takes its first task,
//! the runner starts runners for every task still waiting, up to
//! `parallelism` ([`Pool::fan_out`]): a handler that spawns five tasks pays
//! for one wake-up, and the five still run at once. Calls from other
//! threads do not rely on that runner (its thread may hold its worker for
//! long) and launch their own.
//!
//! # A producer that never yields
//!
//! A task in a worker's LIFO slot cannot be stolen by another worker, and a
//! producer that calls `spawn` in a loop without yielding would keep its
//! pending runner there. So once that runner has been pending for
//! [`STALL_AFTER`], or three quarters of the queue is full, `spawn` starts
//! another runner (or an empty task, with every runner started). That takes
//! the LIFO slot and pushes the pending runner into the worker's run queue,
//! where another worker steals it; tokio wakes a parked worker for it. The
//! same check runs on the refusals of a full queue (at most once per coarse
//! clock tick, see `drops.rs`): a wake-up that tokio loses while the queue
//! fills is sent again, rather than the producer's refusals waiting for a
//! runner that nothing will move.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::guard::{ContainPanic, RunnerGuard};
use super::runner::run_loop;
use super::runner_word::{pending, Launch};
use super::state::{Pool, RunnerSlot};

/// How long a producer's `spawn` calls rely on the runner it launched last
/// while that runner is still pending: after this, `spawn` launches
/// another. A producer that has not yielded for this long is far past
/// tokio's budget between awaits (10-100 us).
const STALL_AFTER: Duration = Duration::from_millis(1);
/// `spawn` reads the time for [`STALL_AFTER`] only when a multiple of this
/// many tasks wait, which keeps clock arithmetic off most calls of a burst.
const STALL_CHECK_EVERY: u64 = 16;

thread_local! {
    /// Its address identifies the thread (see [`thread_token`]).
    static THREAD_TOKEN: u8 = const { 0 };
}

/// A number that differs between live threads: the address of a
/// thread-local. A thread that exits may pass its number on to a new one,
/// which only costs that thread one runner start.
#[inline]
fn thread_token() -> usize {
    THREAD_TOKEN.with(|token| std::ptr::from_ref(token) as usize)
}

/// Which thread launched the runner still pending, and since when its
/// calls rely on it. Hints only (relaxed): a stale value costs one runner
/// start or one check, never a task.
#[derive(Debug)]
pub(super) struct PendingRunner {
    /// The thread (see [`thread_token`]) whose `spawn` launched a runner
    /// last.
    owner: AtomicUsize,
    /// Since when the owner's calls have relied on that runner:
    /// nanoseconds since `epoch`, never 0; 0 until noted.
    since: AtomicU64,
    /// The pool's build instant, the origin of `since`.
    epoch: Instant,
}

impl PendingRunner {
    pub(super) fn new(epoch: Instant) -> Self {
        PendingRunner {
            owner: AtomicUsize::new(0),
            since: AtomicU64::new(0),
            epoch,
        }
    }

    /// Records that `thread` launched a runner. When its calls start to
    /// rely on it is noted later, by [`stalled`](Self::stalled): a call
    /// that launches a runner (every call on a quiet pool) does no clock
    /// arithmetic.
    #[inline]
    fn launched_by(&self, thread: usize) {
        self.owner.store(thread, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }

    #[inline]
    fn is_mine(&self, thread: usize) -> bool {
        self.owner.load(Ordering::Relaxed) == thread
    }

    /// Whether the pending runner has been relied on for [`STALL_AFTER`]
    /// at `now`. The first call notes the time and answers no.
    #[inline]
    fn stalled(&self, now: Instant) -> bool {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        // Never 0, which means "not noted yet".
        let now_ns = u64::try_from(nanos).unwrap_or(u64::MAX) | 1;
        let since = self.since.load(Ordering::Relaxed);
        if since == 0 {
            self.since.store(now_ns, Ordering::Relaxed);
            return false;
        }
        u128::from(now_ns.saturating_sub(since)) >= STALL_AFTER.as_nanos()
    }
}

impl Pool {
    /// Makes sure a runner will take the `admitted` tasks waiting (accepted,
    /// not yet running, as `spawn` saw them after its own admission, at
    /// `now`). Called after a task was sent; pairs with a runner's exit and
    /// park checks (see the runner word's guarantee).
    pub(super) fn ensure_runner(self: &Arc<Self>, admitted: u64, now: Instant) {
        let thread = thread_token();
        let mine = self.pending.is_mine(thread);
        match self
            .runners
            .claim_for_spawn(admitted, mine, self.runner_limit())
        {
            Ok(launch) => {
                self.pending.launched_by(thread);
                self.launch(launch);
            }
            // Left to this thread's pending runner (not to lingering ones,
            // and not because every runner is busy).
            Err(word)
                if mine && pending(word) > 0 && super::runner_word::lingering(word) < admitted =>
            {
                self.check_stall(admitted, now, thread);
            }
            Err(_) => {}
        }
    }

    /// Wakes the standby runner or starts one, as a claim took.
    fn launch(self: &Arc<Self>, launch: Launch) {
        match launch {
            Launch::WakeStandby => self.standby.notify_one(),
            Launch::StartRunner => self.start_runner(),
        }
    }

    /// Called by a runner that took a task while `waiting` more wait: starts
    /// (or wakes) runners for them, up to `parallelism`, before that task
    /// runs (it may run long). Runners that linger or are pending count.
    /// Whether it launched any.
    ///
    /// The tasks still waiting are read again before each launch, never
    /// more than `waiting`: while the runtime shuts down it drops each new
    /// runner inside `spawn`, and that runner's guard gives its place back
    /// and abandons the queue. Counted against the figure the caller read,
    /// that place would be claimed again at once, for ever.
    pub(super) fn fan_out(self: &Arc<Self>, waiting: u64) -> bool {
        let limit = self.runner_limit();
        let mut launched = false;
        loop {
            let waiting = waiting.min(self.admission.admitted());
            let Some(launch) = self.runners.claim_for_waiting(waiting, limit) else {
                return launched;
            };
            self.launch(launch);
            launched = true;
        }
    }

    /// Called by `spawn` when it started no runner because its thread's
    /// last runner is still pending: once that has lasted [`STALL_AFTER`],
    /// or the queue reaches `stall_depth`, pushes the pending runner out of
    /// this worker's LIFO slot (module docs).
    fn check_stall(self: &Arc<Self>, admitted: u64, now: Instant, thread: usize) {
        if admitted != self.stall_depth
            && (admitted % STALL_CHECK_EVERY != 0 || !self.pending.stalled(now))
        {
            return;
        }
        self.push_out_pending(thread);
    }

    /// Called on a refusal for a full queue (at most once per coarse clock
    /// tick and thread in a flood): if a runner launched by this thread is
    /// still pending after [`STALL_AFTER`], pushes it out again. Its first
    /// push may have gone unnoticed by a worker about to park.
    pub(super) fn nudge_if_stalled(self: &Arc<Self>, now: Instant) {
        let thread = thread_token();
        if self.pending.is_mine(thread)
            && pending(self.runners.load()) > 0
            && self.pending.stalled(now)
        {
            self.push_out_pending(thread);
        }
    }

    /// Launches another runner, or with every runner started an empty task:
    /// either takes this worker's LIFO slot and pushes what was there into
    /// the run queue, where another worker takes it.
    fn push_out_pending(self: &Arc<Self>, thread: usize) {
        self.pending.launched_by(thread);
        match self.runners.claim(self.runner_limit()) {
            Some(launch) => self.launch(launch),
            None => self.spawn_empty(),
        }
    }

    /// Spawns an empty task on the pool's runtime (see
    /// [`push_out_pending`](Self::push_out_pending)).
    pub(super) fn spawn_empty(&self) {
        if let Some(runtime) = &self.runtime {
            drop(runtime.spawn(async {}));
        }
    }

    /// Wakes the standby runner, if one is parked, so that it leaves: the
    /// pool closed, or its last handle went.
    pub(super) fn release_standby(&self) {
        if self.runners.unpark() {
            self.standby.notify_one();
        }
    }

    /// Registers and spawns one runner (already counted in the runner
    /// word, pending).
    fn start_runner(self: &Arc<Self>) {
        let Some(runtime) = &self.runtime else {
            // Unreachable: a pool without a runtime admits nothing.
            self.runners.polled();
            self.runners.step_out();
            return;
        };
        // Registered before it is spawned, so its exit always finds its slot.
        let id = {
            let mut state = self.lock();
            let id = state.next_runner_id;
            state.next_runner_id += 1;
            state.runners.push(RunnerSlot {
                id,
                abort: None,
                parked: false,
            });
            id
        };
        // The guard is made outside the async block so that it runs even
        // if the runtime drops the future without polling it (shut down).
        let guard = RunnerGuard::new(Arc::clone(self), id);
        let handle = runtime.spawn(ContainPanic::new(
            Arc::clone(&self.name),
            Box::pin(run_loop(guard)),
        ));
        let mut state = self.lock();
        if let Some(slot) = state.runners.iter_mut().find(|slot| slot.id == id) {
            slot.abort = Some(handle.abort_handle());
        }
    }
}
