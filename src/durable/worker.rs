//! The worker: fetches due jobs of one queue, runs at most `parallelism`
//! at once, and records their outcomes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::Meter;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

use super::attempt::{self, Fetched, FAIL_SQL, FETCH_SQL};
use super::complete::{self, COMPLETE_SQL};
use super::enqueue::DEFAULT_QUEUE;
use super::error::{Error, Result};
use super::job::{Job, JobContext, Registry};
use super::lease::{self, HEARTBEAT_SQL, RESCUE_SQL};
use super::migrate::Schema;
use super::retention::PRUNE_SQL;
use super::retry::Backoff;
use super::telemetry::{self, RateLimiter, WorkerTelemetry};

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
    fn new(schema: &Schema) -> Self {
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
enum Held {
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
    task_names: Vec<String>,
    pub(crate) telemetry: WorkerTelemetry,
    /// New jobs may be due (a notification, a reconnect).
    pub(crate) wake: Notify,
    /// Stop fetching (shutdown's first step).
    stop_fetching: watch::Sender<bool>,
    /// Stop everything (the last step).
    stop_all: watch::Sender<bool>,
    held: Mutex<HashMap<i64, Held>>,
    /// A held job was released.
    released: Notify,
    done: Mutex<Option<mpsc::UnboundedSender<i64>>>,
    errors: RateLimiter,
    pub(crate) counts: Counts,
}

impl Shared {
    /// Resolves once the worker stops entirely.
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop_all.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    async fn fetching_stopped(&self) {
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

/// Builds a [`Worker`](WorkerHandle) for one queue.
///
/// # Examples
///
/// ```no_run
/// # use bg_queue::durable::{Job, JobContext, Schema, WorkerBuilder};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct SendReceiptEmail { order_id: u64 }
/// # impl Job for SendReceiptEmail { const NAME: &'static str = "send_receipt_email"; }
/// # async fn example(pool: sqlx::PgPool) -> Result<(), bg_queue::durable::Error> {
/// bg_queue::durable::migrate(&pool, &Schema::default()).await?;
/// let worker = WorkerBuilder::new(pool)
///     .parallelism(16)
///     .register(|job: SendReceiptEmail, _cx: JobContext| async move {
///         // talk to the SMTP server...
///         Ok::<(), std::io::Error>(())
///     })?
///     .start()?;
/// // ... at exit:
/// let report = worker.shutdown(std::time::Duration::from_secs(10)).await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until started"]
pub struct WorkerBuilder {
    pool: PgPool,
    schema: Schema,
    config: Config,
    registry: Registry,
    meter: Option<Meter>,
    tracer: Option<BoxedTracerDebug>,
}

struct BoxedTracerDebug(BoxedTracer);

impl std::fmt::Debug for BoxedTracerDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxedTracer")
    }
}

impl WorkerBuilder {
    /// A worker using `pool` for every statement but `LISTEN`, which gets
    /// its own connection made with the pool's connect options.
    pub fn new(pool: PgPool) -> Self {
        WorkerBuilder {
            pool,
            schema: Schema::default(),
            config: Config {
                queue: Arc::from(DEFAULT_QUEUE),
                parallelism: 8,
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_secs(1),
                attempt_timeout: None,
                retention: Duration::from_secs(24 * 3600),
                backoff: Backoff::default(),
            },
            registry: Registry::default(),
            meter: None,
            tracer: None,
        }
    }

    /// The schema of the jobs table. Defaults to `public`.
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = schema;
        self
    }

    /// The queue served (`bg.pool.name`). Defaults to `default`.
    pub fn queue(mut self, queue: impl Into<Arc<str>>) -> Self {
        self.config.queue = queue.into();
        self
    }

    /// Most jobs running at once in this process. Defaults to 8.
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.config.parallelism = parallelism;
        self
    }

    /// How long a fetched job stays this worker's without a renewal; the
    /// worker renews every third of it. A worker that dies leaves its jobs
    /// `running` for at most this long (plus a third, the rescuer's pace)
    /// before they run again. Defaults to 30 s; at least 100 ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How often an idle worker looks for due jobs without a notification
    /// (lost notifications, delayed jobs and retries coming due). Defaults
    /// to 1 s.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// Longest run of one attempt; past it the handler's future is dropped
    /// and the attempt counts as `timed_out` (retried like a failure).
    /// Defaults to none.
    pub fn attempt_timeout(mut self, limit: Duration) -> Self {
        self.config.attempt_timeout = Some(limit);
        self
    }

    /// How long completed, discarded and cancelled rows are kept (and so the
    /// unique-key dedupe window). Defaults to 24 h.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// Backoff between attempts. Defaults to [`Backoff::default`] (1 s
    /// doubling to 1 h, jittered).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The meter for the worker's instruments. Defaults to the global
    /// provider's `bg-queue` meter, read at [`start`](Self::start).
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The tracer for `bg.task` spans. Defaults to the global provider's
    /// `bg-queue` tracer, read at [`start`](Self::start).
    pub fn tracer<T>(mut self, tracer: T) -> Self
    where
        T: opentelemetry::trace::Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.tracer = Some(BoxedTracerDebug(BoxedTracer::new(Box::new(tracer))));
        self
    }

    /// Registers the handler of job type `J`: it gets the decoded job and
    /// the attempt's [`JobContext`]; `Ok` completes the job, `Err` (its
    /// `Display` text is kept in `errors`) retries it.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateHandler`] when `J::NAME` already has one.
    pub fn register<J, F, Fut, E>(mut self, handler: F) -> Result<Self>
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.registry.register(handler)?;
        Ok(self)
    }

    /// Starts the worker's tasks on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for no handler, a parallelism of 0, or a
    /// lease or poll interval under 100 ms.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Result<WorkerHandle> {
        let config = self.config;
        if self.registry.is_empty() {
            return Err(Error::InvalidOption("register at least one job handler"));
        }
        if config.parallelism == 0 {
            return Err(Error::InvalidOption("parallelism must be at least 1"));
        }
        if config.lease < Duration::from_millis(100) {
            return Err(Error::InvalidOption("the lease must be at least 100 ms"));
        }
        if config.poll_interval < Duration::from_millis(100) {
            return Err(Error::InvalidOption(
                "the poll interval must be at least 100 ms",
            ));
        }
        let meter = self.meter.unwrap_or_else(telemetry::global_meter);
        let tracer = self
            .tracer
            .map(|t| t.0)
            .unwrap_or_else(|| opentelemetry::global::tracer("bg-queue"));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let worker_id = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
            std::process::id(),
            fastrand::u32(..)
        );
        let shared = Arc::new(Shared {
            pool: self.pool,
            channel: self.schema.channel(),
            worker_id,
            sql: Sql::new(&self.schema),
            task_names: self.registry.names(),
            registry: self.registry,
            telemetry: WorkerTelemetry::new(tracer, &meter),
            wake: Notify::new(),
            stop_fetching: watch::channel(false).0,
            stop_all: watch::channel(false).0,
            held: Mutex::new(HashMap::new()),
            released: Notify::new(),
            done: Mutex::new(Some(done_tx)),
            errors: RateLimiter::new(Duration::from_secs(30)),
            counts: Counts::default(),
            config,
        });
        let reading = Arc::new(Mutex::new(telemetry::QueueReading::default()));
        let refresh = Arc::new(Notify::new());
        telemetry::register_queue_observers(
            &meter,
            Arc::clone(&shared.config.queue),
            Arc::clone(&reading),
            Arc::clone(&refresh),
        );
        let permits = Arc::new(Semaphore::new(shared.config.parallelism));
        Ok(WorkerHandle {
            fetcher: Some(tokio::spawn(fetch_loop(Arc::clone(&shared), permits))),
            completer: Some(tokio::spawn(complete::complete(
                Arc::clone(&shared),
                done_rx,
            ))),
            background: vec![
                tokio::spawn(super::notify::listen(Arc::clone(&shared))),
                tokio::spawn(lease::maintain(Arc::clone(&shared))),
                tokio::spawn(telemetry::refresh_queue_reading(
                    Arc::clone(&shared),
                    reading,
                    refresh,
                )),
            ],
            shared,
        })
    }
}

/// Fetches due jobs while slots are free, until shutdown.
async fn fetch_loop(shared: Arc<Shared>, permits: Arc<Semaphore>) {
    let mut backoff = ReconnectBackoff::new();
    let mut failing = false;
    loop {
        // One free slot at least, then every other free one.
        let first = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            _ = shared.fetching_stopped() => return,
        };
        let Ok(first) = first else { return };
        let mut slots = vec![first];
        while let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
            slots.push(permit);
        }
        if *shared.stop_fetching.borrow() {
            return;
        }
        let wanted = slots.len();
        let result = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.fetch)))
            .bind(&*shared.config.queue)
            .bind(&shared.task_names)
            .bind(wanted as i64)
            .bind(&shared.worker_id)
            .bind(shared.config.lease.as_secs_f64())
            .fetch_all(&shared.pool)
            .await;
        let rows = match result {
            Ok(rows) => rows,
            Err(error) => {
                drop(slots);
                failing = true;
                shared.database_error("fetch jobs", &error);
                tokio::select! {
                    _ = backoff.sleep() => continue,
                    _ = shared.fetching_stopped() => return,
                }
            }
        };
        if failing {
            failing = false;
            backoff.reset();
            tracing::info!(
                target: "bg_queue",
                queue = %shared.config.queue,
                worker = %shared.worker_id,
                "durable worker: fetching works again"
            );
        }
        let got = rows.len();
        for row in rows {
            let permit = slots.pop().expect("no more rows than slots");
            let job = match Fetched::from_row(&row) {
                Ok(job) => job,
                Err(error) => {
                    // The statement's own columns: cannot happen unless the
                    // table was altered by hand; the lease brings it back.
                    shared.database_error("decode a fetched row", &error);
                    continue;
                }
            };
            shared.counts.fetched.fetch_add(1, Ordering::Relaxed);
            let id = job.id;
            shared
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Held::Running(None));
            let task = tokio::spawn(attempt::run(Arc::clone(&shared), job, permit));
            if let Some(Held::Running(slot)) = shared
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&id)
            {
                *slot = Some(task.abort_handle());
            }
        }
        drop(slots);
        if got < wanted {
            // Drained: wait for a notification or the next poll.
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(shared.config.poll_interval) => {}
                _ = shared.fetching_stopped() => return,
            }
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
    shared: Arc<Shared>,
    fetcher: Option<JoinHandle<()>>,
    completer: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
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
            tokio::select! {
                _ = shared.released.notified() => {}
                // Completions also release; re-check at least this often.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
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
