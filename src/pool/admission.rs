//! Admission: how `spawn` claims a place in the queue without the pool's
//! lock, and hands its task to the inbox.
//!
//! The *admission word* counts the accepted tasks not yet running (in the
//! inbox, in the queue, or between their claim and their send), plus a
//! [`CLOSED`] bit. `spawn` increments it with a compare-and-swap that never
//! takes it past `capacity`, so capacity is exact; a runner decrements it
//! under the lock when it takes a task. Then `spawn` sends the task into
//! the lock-free inbox and makes sure a runner will take it
//! ([`Pool::ensure_runner`](super::launch)).

use std::sync::Arc;

use tokio::time::Instant;

use super::state::Pool;
use crate::inbox;
use crate::sync::{AtomicU64, Ordering};
use crate::task::{drop_catching_panic, BoxTask, CatchPanic, Envelope};
use crate::SpawnError;

/// The admission word's "closed" bit: set once, when the pool stops
/// accepting (shutdown, or no runtime).
const CLOSED: u64 = 1 << 63;

/// The admission word. Updates that pair with the runner word (a claim, a
/// task taken, the reads that decide whether a runner leaves or parks) are
/// `SeqCst`: see [`RunnerWord`](super::runner_word::RunnerWord).
#[derive(Debug)]
pub(super) struct Admission(AtomicU64);

/// Why `spawn` could not claim a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The pool stopped accepting; the phase says why (closed or no
    /// runtime).
    Closed,
    /// `capacity` tasks wait.
    QueueFull,
}

impl Admission {
    pub(super) fn new(open: bool) -> Self {
        Admission(AtomicU64::new(if open { 0 } else { CLOSED }))
    }

    /// The word as last seen, for a first claim attempt (a stale value only
    /// costs the compare-and-swap one retry).
    #[inline]
    pub(super) fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether a word read by [`peek`](Self::peek) or a failed claim admits
    /// one more task; the refusal otherwise.
    #[inline]
    pub(super) fn check(word: u64, capacity: u64) -> Result<(), Refusal> {
        if word & CLOSED != 0 {
            Err(Refusal::Closed)
        } else if word >= capacity {
            Err(Refusal::QueueFull)
        } else {
            Ok(())
        }
    }

    /// Tasks admitted and not yet running in a word.
    #[inline]
    pub(super) fn waiting_in(word: u64) -> u64 {
        word & !CLOSED
    }

    /// One attempt to claim a place, from the word `seen`.
    ///
    /// # Errors
    ///
    /// The word as it is now, when it was no longer `seen`.
    #[inline]
    pub(super) fn try_claim(&self, seen: u64) -> Result<(), u64> {
        self.0
            .compare_exchange_weak(seen, seen + 1, Ordering::SeqCst, Ordering::Relaxed)
            .map(drop)
    }

    /// Accepted tasks not yet running.
    #[inline]
    pub(super) fn admitted(&self) -> u64 {
        Self::waiting_in(self.0.load(Ordering::SeqCst))
    }

    /// Whether the pool stopped accepting.
    #[inline]
    pub(super) fn is_closed(&self) -> bool {
        self.0.load(Ordering::SeqCst) & CLOSED != 0
    }

    /// The word as the last update left it, read with a read-modify-write
    /// (adding nothing). A runner that stepped out of the runner word, or
    /// parked, reads the admission word this way: a `spawn` whose claim
    /// comes later in the word's order then reads from this update, which
    /// makes the runner's step happen-before `spawn`'s look at the runner
    /// word. So "one of the two sees the other" rests on release and
    /// acquire alone (which `loom` checks), not only on the `SeqCst` total
    /// order of a plain load (which `loom` models as acquire).
    fn latest(&self) -> u64 {
        self.0.fetch_add(0, Ordering::SeqCst)
    }

    /// Accepted tasks not yet running, read as [`latest`](Self::latest):
    /// what a runner about to leave must not miss.
    pub(super) fn admitted_latest(&self) -> u64 {
        Self::waiting_in(self.latest())
    }

    /// Whether anything is admitted, or the pool closed, read as
    /// [`latest`](Self::latest): what a runner about to park must not
    /// sleep through.
    pub(super) fn anything_to_do(&self) -> bool {
        self.latest() != 0
    }

    /// Stops admitting tasks (for good).
    pub(super) fn close(&self) {
        self.0.fetch_or(CLOSED, Ordering::SeqCst);
    }

    /// A runner took a task (under the lock); the tasks still waiting.
    #[inline]
    pub(super) fn take_one(&self) -> u64 {
        Self::waiting_in(self.0.fetch_sub(1, Ordering::SeqCst)) - 1
    }

    /// A queued task was abandoned (under the lock).
    pub(super) fn abandon_one(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    /// `spawn`'s path: claim a place, box the task, send it to the inbox,
    /// make sure a runner takes it. A refused task is dropped (a panic in
    /// its `Drop` caught) and counted before this returns.
    pub(super) fn submit(
        self: &Arc<Self>,
        name: &'static str,
        make_future: impl FnOnce() -> BoxTask,
    ) -> Result<(), SpawnError> {
        let (parent, traced) = self.telemetry.capture_parent();
        // The call's one read of the precise clock, made once it is known
        // to be needed: wall-clock times are derived from it at snapshot
        // time.
        let mut now = None;
        let capacity = self.capacity as u64;
        let mut word = self.admission.peek();
        let mut make_future = Some(make_future);
        let mut boxed = None;
        let refused = loop {
            if let Err(refusal) = Admission::check(word, capacity) {
                break Some(refusal);
            }
            // Box before claiming a place, so that the claim and the send
            // are a few instructions apart (`abandon_queued` waits out that
            // gap); a refused call allocates nothing.
            if boxed.is_none() {
                now = Some(Instant::now());
                boxed = make_future.take().map(|make| CatchPanic::new(make()));
            }
            match self.admission.try_claim(word) {
                Ok(()) => break None,
                Err(actual) => word = actual,
            }
        };
        if let Some(refusal) = refused {
            // The task (user code may run in its `Drop`) goes before the
            // lock is taken.
            drop(boxed.take());
            // Not boxed yet, so not wrapped: catch a panic in its `Drop`
            // here (`spawn` never panics, whatever the future does).
            let _ = drop_catching_panic(make_future.take());
            if refusal == Refusal::QueueFull && !traced && self.fold_drop(name) {
                return Err(SpawnError::QueueFull);
            }
            let depth = Admission::waiting_in(word);
            let now = now.unwrap_or_else(Instant::now);
            return Err(self.refuse(name, refusal, depth, parent, traced, now));
        }
        let now = now.expect("read before the place was claimed");
        let future = boxed.take().expect("boxed before the place was claimed");
        // Accepted tasks not yet running, this one included.
        let admitted = Admission::waiting_in(word) + 1;
        let envelope = Envelope {
            future,
            name,
            task_index: 0,
            depth_at_enqueue: u32::try_from(admitted).unwrap_or(u32::MAX),
            enqueued_at: now,
            parent,
        };
        self.send_to_inbox(envelope, now);
        self.ensure_runner(admitted, now);
        Ok(())
    }

    /// Sends an admitted task into the inbox. A pool whose capacity is
    /// above the inbox's slots can find it full (its runners have not taken
    /// the lock for that many sends: typically its caller holds their
    /// worker); the call then absorbs the inbox into the queue itself, once
    /// per inbox's worth of calls. At or below that capacity, the admission
    /// word keeps fewer tasks than the inbox's slots out of the queue, so
    /// it is never full.
    fn send_to_inbox(&self, mut envelope: Envelope, now: Instant) {
        while let Err(inbox::Full(back)) = self.inbox.send(envelope) {
            envelope = back;
            drop(self.lock_absorbed(now));
        }
    }
}
