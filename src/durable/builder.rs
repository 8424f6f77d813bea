//! [`WorkerBuilder`]: a worker's settings, handlers and start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::Meter;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use super::complete;
use super::enqueue::DEFAULT_QUEUE;
use super::error::{Error, Result};
use super::fetch::fetch_loop;
use super::job::{Job, JobContext, Registry};
use super::lease;
use super::migrate::Schema;
use super::retry::Backoff;
use super::telemetry::{self, RateLimiter, WorkerTelemetry};
use super::worker::{Config, Counts, Shared, Sql, WorkerHandle};

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
    ///
    /// Give the pool a short `acquire_timeout` (a few seconds): while the
    /// database is down each of the worker's loops waits that long per try
    /// before backing off, and sqlx's default is 30 s. The pool needs a
    /// connection per concurrent handler that uses it, plus about four for
    /// the worker (fetch, completion, leases, depth).
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
    ///
    /// It also caps each fetch (a worker takes at most its free slots), so
    /// for short jobs it is the throughput lever: on 2 cores, no-op jobs
    /// burn down at about 9,000 jobs/s with 8 and 40,000 with 100
    /// (docs/durable.md, "Throughput and tuning").
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
            &reading,
            &refresh,
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
