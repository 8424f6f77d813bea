//! The handle: what the application holds and calls `spawn` on.

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use super::builder::{Builder, DEFAULT_POOL_NAME};
use super::state::Pool;
use crate::report::ShutdownReport;
use crate::snapshot::PoolSnapshot;
use crate::task::TaskError;
use crate::SpawnError;

/// The handle to a pool: cheap to clone, `Send + Sync`, never blocks.
///
/// Tasks are fire-and-forget: `spawn` returns at once, whatever the pool's
/// state. At most `parallelism` tasks run at once and at most `capacity`
/// wait; past that a task is dropped and counted (never silently: see
/// [`snapshot`](Self::snapshot), the `bg.task.dropped` metric and the drop
/// span). Dropping every handle does not stop the pool: call
/// [`shutdown`](Self::shutdown) to drain it. An idle pool keeps one runner
/// task parked for the next `spawn`; it leaves at `shutdown` or with the
/// last handle.
///
/// Compared with `tokio::spawn`, the pool bounds memory and concurrency and
/// makes every task visible. Compared with a bounded channel drained under
/// a semaphore (the usual hand-written fix, which bg-queue replaces), it
/// keeps the same promises (the caller never blocks and never panics) and
/// adds panic isolation, timeouts, exact capacity, a drain at shutdown and
/// telemetry.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bg = bg_queue::spawn_pool();
/// bg.spawn("send_receipt_email", async { /* talk to SMTP */ });
/// bg.spawn_fallible("subscribe_mailing_list", async {
///     Err::<(), _>("list API answered 503")
/// });
/// bg.idle().await;
/// assert_eq!(bg.snapshot().failed, 1);
/// # }
/// ```
#[must_use = "a pool handle does nothing unless tasks are spawned on it"]
pub struct BackgroundTx {
    pub(super) pool: Arc<Pool>,
}

/// Creates a pool with the defaults (capacity 1024, parallelism 8), named
/// `default`, on the current runtime.
///
/// It never panics: called outside a tokio runtime it logs an error and
/// returns a pool that drops every task with reason `no_runtime` (use
/// [`Builder::build`] to get an error instead).
pub fn spawn_pool() -> BackgroundTx {
    let builder = Builder::new(DEFAULT_POOL_NAME);
    match Handle::try_current() {
        Ok(handle) => builder.build_with(Some(handle)),
        Err(_) => {
            tracing::error!(
                target: "bg_queue",
                "bg-queue spawn_pool() called outside a tokio runtime: every task will be dropped (no_runtime)"
            );
            builder.build_with(None)
        }
    }
}

impl Clone for BackgroundTx {
    fn clone(&self) -> Self {
        self.pool.handles.fetch_add(1, Ordering::Relaxed);
        BackgroundTx {
            pool: Arc::clone(&self.pool),
        }
    }
}

impl Drop for BackgroundTx {
    fn drop(&mut self) {
        // The last handle: nothing can spawn on this pool any more, so its
        // standby runner leaves (and with the runners, the pool itself).
        if self.pool.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.pool.release_standby();
        }
    }
}

impl fmt::Debug for BackgroundTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundTx")
            .field("name", &self.pool.name)
            .field("capacity", &self.pool.capacity)
            .field("parallelism", &self.pool.parallelism)
            .field("timeout", &self.pool.timeout)
            .field("telemetry", &self.pool.telemetry)
            .finish_non_exhaustive()
    }
}

impl BackgroundTx {
    /// The handle of a pool just built (its one handle).
    pub(super) fn from_pool(pool: Arc<Pool>) -> Self {
        BackgroundTx { pool }
    }

    /// Submits a fire-and-forget task. Never blocks; never panics, from a
    /// runtime task or from a plain thread.
    ///
    /// If the task cannot be accepted it is dropped and counted (reason
    /// `queue_full`, `closed` or `no_runtime`); drops are logged as a
    /// rate-limited summary per pool, not one line per task. Use
    /// [`try_spawn`](Self::try_spawn) to learn the outcome, and
    /// [`spawn_fallible`](Self::spawn_fallible) for a future that returns
    /// a `Result`.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let _ = self.try_spawn(name, fut);
    }

    /// Like [`spawn`](Self::spawn), but says whether the task was accepted.
    ///
    /// # Errors
    ///
    /// [`SpawnError::QueueFull`], [`SpawnError::Closed`] or
    /// [`SpawnError::NoRuntime`]; the task is dropped and counted either way.
    pub fn try_spawn<F>(&self, name: &'static str, fut: F) -> Result<(), SpawnError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.pool.submit(name, move || {
            Box::pin(async move {
                fut.await;
                Ok(())
            })
        })
    }

    /// Submits a task whose future returns `Result<(), E>`: an `Err` is
    /// outcome `failed`, with the error's text as the span's status message
    /// and its type name as `error.type`. Otherwise as
    /// [`spawn`](Self::spawn).
    pub fn spawn_fallible<F, E>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let _ = self.try_spawn_fallible(name, fut);
    }

    /// Like [`spawn_fallible`](Self::spawn_fallible), but says whether the
    /// task was accepted.
    ///
    /// # Errors
    ///
    /// As [`try_spawn`](Self::try_spawn).
    pub fn try_spawn_fallible<F, E>(&self, name: &'static str, fut: F) -> Result<(), SpawnError>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.pool.submit(name, move || {
            Box::pin(async move { fut.await.map_err(TaskError::from_display) })
        })
    }

    /// A consistent view of the pool: depth, counters, percentiles, recent
    /// drops and slowest runs.
    pub fn snapshot(&self) -> PoolSnapshot {
        self.pool.snapshot()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.pool.name
    }

    /// Stops accepting tasks, lets queued and running tasks finish within
    /// `grace`, then abandons the rest: queued tasks are discarded and
    /// running ones aborted (each counted `abandoned` and named in the
    /// report and a log line).
    ///
    /// Tasks spawned after this call are dropped with reason `closed`.
    /// Calling it again waits again and returns a fresh report. On return,
    /// the histogram values of every run that ended have gone to the meter
    /// (a task still running, counted in the report's `running`, records
    /// when it ends): shut the pool down before the meter provider.
    ///
    /// # Cancel safety
    ///
    /// Cancelling the returned future leaves the pool closed to new tasks,
    /// with its queue still draining; nothing is abandoned.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.pool.shutdown(grace).await
    }

    /// Waits until the queue is empty and nothing runs. Handy in tests and
    /// before a planned pause; it does not stop new tasks from arriving.
    /// The pool's standby runner, parked until the next `spawn`, does not
    /// count as running.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the pool.
    pub async fn idle(&self) {
        self.pool.wait_idle(None).await;
    }
}
