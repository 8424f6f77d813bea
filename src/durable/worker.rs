//! A running worker: the state its tasks share (settings, statements, the
//! jobs it holds a lease on), its handle, and graceful shutdown.
//!
//! A worker is five tokio tasks: the fetch loop (`fetch.rs`, spawning one
//! task per attempt, `attempt.rs`), the completer (`complete.rs`), the
//! listener (`notify.rs`), lease upkeep and retention (`lease.rs`,
//! `retention.rs`), and the queue-depth reader (`telemetry.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};

use super::attempt::{FAIL_SQL, FETCH_SQL};
use super::complete::COMPLETE_SQL;
use super::job::Registry;
use super::lease::{HEARTBEAT_SQL, RESCUE_SQL};
use super::migrate::Schema;
use super::retention::PRUNE_SQL;
use super::retry::Backoff;
use super::telemetry::{RateLimiter, WorkerTelemetry};

/// Statements, with the schema filled in once.
pub(crate) struct Sql {
    pub(crate) fetch: Arc<str>,
    pub(crate) fail: Arc<str>,
    pub(crate) complete: Arc<str>,
    pub(crate) heartbeat: Arc<str>,
    pub(crate) rescue: Arc<str>,
    pub(crate) prune: Arc<str>,
    pub(crate) give_back: Arc<str>,
    pub(crate) depth: Arc<str>,
    pub(crate) next_due: Arc<str>,
}

const GIVE_BACK_SQL: &str = r#"
WITH back AS (
    UPDATE {s}.bg_jobs SET
        state = 'available',
        attempt = GREATEST(attempt - 1, 0),
        run_at = now(),
        locked_by = NULL,
        locked_until = NULL
    WHERE id = ANY($1) AND state = 'running' AND locked_by = $2
    RETURNING queue
),
woken AS (
    SELECT pg_notify($3, queue) FROM (SELECT DISTINCT queue FROM back) AS queues
)
SELECT (SELECT count(*) FROM back) AS returned, (SELECT count(*) FROM woken) AS woken
"#;

pub(crate) const DEPTH_SQL: &str = r#"
SELECT task_name, count(*)::int8 AS depth,
       GREATEST(extract(epoch FROM now() - min(run_at)), 0)::float8 AS oldest
FROM {s}.bg_jobs
WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable') AND run_at <= now()
GROUP BY task_name
"#;

impl Sql {
    pub(crate) fn new(schema: &Schema) -> Self {
        let sql = |template: &str| Arc::from(schema.sql(template));
        Sql {
            fetch: sql(FETCH_SQL),
            fail: sql(FAIL_SQL),
            complete: sql(COMPLETE_SQL),
            heartbeat: sql(HEARTBEAT_SQL),
            rescue: sql(RESCUE_SQL),
            prune: sql(PRUNE_SQL),
            give_back: sql(GIVE_BACK_SQL),
            depth: sql(DEPTH_SQL),
            next_due: sql(super::fetch::NEXT_DUE_SQL),
        }
    }
}

/// The worker's settings (see [`WorkerBuilder`] for each default).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) queue: Arc<str>,
    pub(crate) parallelism: usize,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) retention: Duration,
    pub(crate) backoff: Backoff,
}

#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) fetched: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) discarded: AtomicU64,
}

/// A job this worker holds a lease on.
pub(crate) enum Held {
    /// Its handler runs (the task's abort handle once spawned).
    Running(Option<AbortHandle>),
    /// It succeeded; its completion waits for the next batch.
    Completing,
}

/// State shared by the worker's tasks.
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) channel: String,
    pub(crate) worker_id: String,
    pub(crate) config: Config,
    pub(crate) sql: Sql,
    pub(crate) registry: Registry,
    pub(crate) task_names: Vec<String>,
    pub(crate) telemetry: WorkerTelemetry,
    /// New jobs may be due (a notification, a reconnect).
    pub(crate) wake: Notify,
    /// Stop fetching (shutdown's first step).
    pub(crate) stop_fetching: watch::Sender<bool>,
    /// Stop everything (the last step).
    pub(crate) stop_all: watch::Sender<bool>,
    pub(crate) held: Mutex<HashMap<i64, Held>>,
    /// A held job was released.
    pub(crate) released: Notify,
    pub(crate) done: Mutex<Option<mpsc::UnboundedSender<i64>>>,
    pub(crate) errors: RateLimiter,
    pub(crate) counts: Counts,
}

impl Shared {
    /// Resolves once the worker stops entirely.
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop_all.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    pub(crate) async fn fetching_stopped(&self) {
        let mut stop = self.stop_fetching.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    /// Ids whose lease this worker renews.
    pub(crate) fn held_ids(&self) -> Vec<i64> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// A handler succeeded: queue its completion, unless shutdown already
    /// took the job back.
    pub(crate) fn completed(&self, id: i64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = held.get_mut(&id) {
            *entry = Held::Completing;
            let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(done) = done.as_ref() {
                let _ = done.send(id);
            }
        }
        drop(held);
        // No longer running: shutdown's drain may be over.
        self.released.notify_one();
    }

    /// The rows of `ids` were updated: this worker no longer holds them.
    pub(crate) fn release(&self, ids: &[i64]) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            held.remove(id);
        }
        drop(held);
        self.released.notify_one();
    }

    fn running_count(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.values()
            .filter(|h| matches!(h, Held::Running(_)))
            .count()
    }

    /// Logs a database error, at most once per operation every 30 s, with
    /// the count of those held back.
    pub(crate) fn database_error(&self, operation: &'static str, error: &sqlx::Error) {
        if let Some(suppressed) = self.errors.allow(operation) {
            tracing::warn!(
                target: "bg_queue",
                queue = %self.config.queue,
                worker = %self.worker_id,
                operation,
                error = %error,
                suppressed,
                "durable worker: could not {operation}; retrying with backoff"
            );
        }
    }
}

/// Exponential backoff for reconnecting: 100 ms doubling to 10 s, with
/// jitter, so a database outage costs neither CPU nor log lines.
pub(crate) struct ReconnectBackoff {
    failures: u32,
}

impl ReconnectBackoff {
    pub(crate) fn new() -> Self {
        ReconnectBackoff { failures: 0 }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_delay(&mut self) -> Duration {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        self.failures = self.failures.saturating_add(1);
        backoff.delay(self.failures.min(31) as i32)
    }

    pub(crate) async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps; false when the worker stopped meanwhile.
    pub(crate) async fn wait(&mut self, shared: &Shared) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shared.stopped() => false,
        }
    }
}

/// What this worker did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Attempts started.
    pub fetched: u64,
    /// Attempts that succeeded.
    pub completed: u64,
    /// Attempts that returned `Err` (or whose arguments did not decode).
    pub failed: u64,
    /// Attempts that panicked.
    pub panicked: u64,
    /// Attempts cut by the attempt timeout.
    pub timed_out: u64,
    /// Failed attempts scheduled again.
    pub retried: u64,
    /// Jobs discarded.
    pub discarded: u64,
}

/// What [`WorkerHandle::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether every running job finished within the grace.
    pub drained: bool,
    /// Jobs still running at the deadline, stopped and returned to
    /// `available` (their attempt not counted).
    pub returned: u64,
    /// Whether every completion reached the database (if not, those jobs
    /// run again after their lease: at-least-once).
    pub completions_flushed: bool,
    /// The worker's counts at the end.
    pub stats: WorkerStats,
}

/// A running worker. Call [`shutdown`](Self::shutdown) to stop it
/// gracefully; dropping it stops every task at once and leaves its running
/// jobs to the lease rescuer (another worker runs them after the lease).
#[must_use = "dropping the handle stops the worker"]
pub struct WorkerHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) fetcher: Option<JoinHandle<()>>,
    pub(crate) completer: Option<JoinHandle<()>>,
    pub(crate) background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("worker_id", &self.shared.worker_id)
            .field("queue", &self.shared.config.queue)
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// This worker's id, as stored in `locked_by` of the rows it holds.
    pub fn id(&self) -> &str {
        &self.shared.worker_id
    }

    /// Counts so far.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.shared.counts;
        WorkerStats {
            fetched: c.fetched.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
        }
    }

    /// Stops fetching, lets running jobs finish within `grace`, stops the
    /// rest and returns them to `available` at once (with a `NOTIFY`, so
    /// another worker picks them up without waiting for a lease), flushes
    /// completions, then stops the worker's tasks.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future midway leaves the unfinished
    /// jobs to the lease rescuer.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        let shared = Arc::clone(&self.shared);
        shared.stop_fetching.send_replace(true);
        if let Some(fetcher) = self.fetcher.take() {
            let _ = fetcher.await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        let drained = loop {
            if shared.running_count() == 0 {
                break true;
            }
            // `notify_one` keeps a permit when nobody waits, so a release
            // between the check above and this wait is not missed.
            tokio::select! {
                _ = shared.released.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break shared.running_count() == 0,
            }
        };
        let unfinished: Vec<i64> = {
            let mut held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<i64> = held
                .iter()
                .filter(|(_, h)| matches!(h, Held::Running(_)))
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                if let Some(Held::Running(Some(task))) = held.remove(id) {
                    task.abort();
                }
            }
            ids
        };
        let returned = give_back(&shared, &unfinished).await;
        // The completer ends once its channel closes and is drained.
        shared.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        let completions_flushed = match self.completer.take() {
            Some(completer) => {
                let abort = completer.abort_handle();
                let flushed = tokio::time::timeout(Duration::from_secs(5), completer)
                    .await
                    .is_ok();
                abort.abort();
                flushed
            }
            None => true,
        };
        shared.stop_all.send_replace(true);
        for task in self.background.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        ShutdownReport {
            drained,
            returned,
            completions_flushed,
            stats: self.stats(),
        }
    }
}

/// Returns `ids` to `available` (attempt not counted) and notifies;
/// retried for up to 5 s while the database is unreachable, after which the
/// lease rescuer brings them back instead.
async fn give_back(shared: &Shared, ids: &[i64]) -> u64 {
    if ids.is_empty() {
        return 0;
    }
    let mut backoff = ReconnectBackoff::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let result = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.give_back)))
            .bind(ids)
            .bind(&shared.worker_id)
            .bind(&shared.channel)
            .fetch_one(&shared.pool)
            .await;
        match result {
            Ok(row) => {
                use sqlx::Row;
                return row.try_get::<i64, _>("returned").unwrap_or(0) as u64;
            }
            Err(error) => {
                shared.database_error("return unfinished jobs", &error);
                if tokio::time::Instant::now() >= give_up {
                    return 0;
                }
                backoff.sleep().await;
            }
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shared.stop_fetching.send_replace(true);
        self.shared.stop_all.send_replace(true);
        for task in self
            .fetcher
            .iter()
            .chain(&self.completer)
            .chain(&self.background)
        {
            task.abort();
        }
        let held = self.shared.held.lock().unwrap_or_else(|e| e.into_inner());
        for entry in held.values() {
            if let Held::Running(Some(task)) = entry {
                task.abort();
            }
        }
    }
}
