//! The task envelope: what a queued task carries, what it can return, and how
//! its end is classified.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// A task future, already mapped to the crate's own error type.
pub(crate) type TaskFuture = dyn Future<Output = Result<(), TaskError>> + Send + 'static;

/// A boxed task future.
pub(crate) type BoxTask = Pin<Box<TaskFuture>>;

/// The error a fallible task returned, as recorded on its spans.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskError {
    /// The error's `Display` text (the span's status message).
    pub message: String,
    /// The error's type name (the span's `error.type`).
    pub type_name: &'static str,
}

impl TaskError {
    /// The error of a fallible task: its text and its type's name.
    pub(crate) fn from_display<E: fmt::Display>(error: E) -> Self {
        TaskError {
            message: error.to_string(),
            type_name: std::any::type_name::<E>(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a task ended. The string forms are the values of the
/// `bg.task.outcome` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The future completed (returned `()` or `Ok(())`).
    Ok,
    /// The future returned `Err`.
    Failed,
    /// The future panicked; the panic was caught and the runner went on.
    Panicked,
    /// The future ran longer than the pool's per-task timeout and was dropped.
    TimedOut,
    /// The task was never accepted (see [`DropReason`](crate::DropReason)).
    Dropped,
    /// The task was accepted but cancelled, queued or running, at the
    /// shutdown deadline (or when its runtime shut down).
    Abandoned,
}

impl Outcome {
    /// The attribute value, e.g. `"timed_out"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Panicked => "panicked",
            Outcome::TimedOut => "timed_out",
            Outcome::Dropped => "dropped",
            Outcome::Abandoned => "abandoned",
        }
    }

    /// Outcomes a finished runner can record (everything but dropped and
    /// abandoned), in a fixed order used to index per-outcome tables.
    pub(crate) const RUN_OUTCOMES: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Panicked,
        Outcome::TimedOut,
    ];

    /// Index into [`Outcome::RUN_OUTCOMES`]-ordered tables.
    pub(crate) fn run_index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::Failed => 1,
            Outcome::Panicked => 2,
            Outcome::TimedOut => 3,
            Outcome::Dropped | Outcome::Abandoned => 0,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A queued task: the future plus what its telemetry needs later, so the
/// caller of `spawn` pays only for capturing, never for building spans.
pub(crate) struct Envelope {
    /// Wrapped from the moment it is boxed, so that a panic in its `Drop`
    /// is caught wherever it is dropped (run, refused, abandoned).
    pub(crate) future: CatchPanic<TaskFuture>,
    /// The task name given to `spawn`.
    pub(crate) name: &'static str,
    /// Index of the task name in the pool's per-name table, set when the
    /// task moves from the inbox into the queue.
    pub(crate) task_index: u32,
    /// Queue depth seen at enqueue (after this task was added).
    pub(crate) depth_at_enqueue: u32,
    pub(crate) enqueued_at: Instant,
    /// The caller's OpenTelemetry context, captured in `spawn` (empty when
    /// propagation is off or no span was active).
    pub(crate) parent: opentelemetry::Context,
}

/// What ended a run, before it becomes an [`Outcome`] with details.
pub(crate) enum RunEnd {
    Ok,
    Failed(TaskError),
    Panicked(String),
    TimedOut,
}

impl RunEnd {
    /// From what [`CatchPanic`] yields for a task future.
    pub(crate) fn from_result(result: Result<Result<(), TaskError>, String>) -> Self {
        match result {
            Ok(Ok(())) => RunEnd::Ok,
            Ok(Err(error)) => RunEnd::Failed(error),
            Err(panic) => RunEnd::Panicked(panic),
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            RunEnd::Ok => Outcome::Ok,
            RunEnd::Failed(_) => Outcome::Failed,
            RunEnd::Panicked(_) => Outcome::Panicked,
            RunEnd::TimedOut => Outcome::TimedOut,
        }
    }
}

/// Polls the inner future, turning a panic in `poll` into `Err(message)`,
/// and contains panics in the future's `Drop` too: user code must never
/// unwind into a runner (which would take the pool down with it) or into the
/// caller of `spawn`.
///
/// The future is dropped as soon as it completes, inside `poll`, so a panic
/// in its `Drop` then makes the run `panicked` like a panic in `poll`. A
/// future dropped before it completes (refused, timed out, abandoned) has its
/// `Drop` panic caught and discarded: its outcome is already decided. After
/// a panic the future is never polled again, the only sound thing to do with
/// a future whose state may be half-updated.
pub(crate) struct CatchPanic<F: ?Sized> {
    /// `None` once the future has completed or panicked.
    inner: Option<Pin<Box<F>>>,
}

impl<F: ?Sized> CatchPanic<F> {
    pub(crate) fn new(inner: Pin<Box<F>>) -> Self {
        CatchPanic { inner: Some(inner) }
    }

    /// Whether the future is still held: not completed, not panicked.
    pub(crate) fn is_unfinished(&self) -> bool {
        self.inner.is_some()
    }

    /// Drops the future, catching a panic in its `Drop`.
    pub(crate) fn release(&mut self) -> Result<(), String> {
        drop_catching_panic(self.inner.take())
    }
}

/// Drops `value` (user code may run in its `Drop`), turning a panic there
/// into `Err(message)`.
pub(crate) fn drop_catching_panic<T>(value: T) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(move || drop(value)))
        .map_err(|payload| panic_message(payload.as_ref()))
}

impl<F: Future + ?Sized> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            // The runner awaits a task once; nothing polls it again.
            return Poll::Pending;
        };
        let inner = inner.as_mut();
        // AssertUnwindSafe: after a panic the future is never polled again,
        // so no broken invariant can be observed.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(self.release().map(|()| output)),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                // A second panic while dropping it says nothing new.
                let _ = self.release();
                Poll::Ready(Err(message))
            }
        }
    }
}

impl<F: ?Sized> Drop for CatchPanic<F> {
    fn drop(&mut self) {
        if self.is_unfinished() {
            let _ = self.release();
        }
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
