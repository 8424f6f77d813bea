//! Enqueueing: one job or a batch, in the caller's transaction or outside
//! one, now or at a later time, optionally deduplicated by a unique key.
//!
//! Each call is one SQL statement: it inserts the rows, skips those whose
//! unique key is already taken, and wakes idle workers with `NOTIFY`. Inside
//! a transaction the rows and the notification become visible together at
//! commit, and a rollback leaves neither.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::Meter;
use sqlx::{AssertSqlSafe, Executor, Postgres, Row};

use super::error::{Error, Result};
use super::job::{Job, JobId};
use super::migrate::Schema;
use super::telemetry::{current_trace_context, EnqueueMetrics};

/// The queue jobs go to unless [`EnqueueOptions::queue`] says otherwise.
pub const DEFAULT_QUEUE: &str = "default";

/// Attempts a job gets unless [`EnqueueOptions::max_attempts`] says
/// otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 20;

/// When a job may first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunAt {
    /// At once (the database's `now()` at the insert). Default.
    #[default]
    Now,
    /// After a delay measured on the database's clock, so replicas with
    /// skewed clocks agree.
    After(Duration),
    /// At an instant of the caller's clock.
    At(SystemTime),
}

/// Where and how a job is enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueOptions {
    queue: Arc<str>,
    max_attempts: i32,
    run_at: RunAt,
    unique_key: Option<String>,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        EnqueueOptions {
            queue: Arc::from(DEFAULT_QUEUE),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            run_at: RunAt::Now,
            unique_key: None,
        }
    }
}

impl EnqueueOptions {
    /// The defaults: queue `default`, 20 attempts, run now, no unique key.
    pub fn new() -> Self {
        Self::default()
    }

    /// The queue (a worker serves one queue). Defaults to `default`.
    pub fn queue(mut self, queue: impl Into<Arc<str>>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Attempts before the job is discarded, at least 1. Defaults to 20.
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// When the job may first run. Defaults to [`RunAt::Now`].
    pub fn run_at(mut self, run_at: RunAt) -> Self {
        self.run_at = run_at;
        self
    }

    /// Shorthand for `run_at(RunAt::After(delay))`.
    pub fn delay(self, delay: Duration) -> Self {
        self.run_at(RunAt::After(delay))
    }

    /// A key unique per job name among the retained rows (every state but
    /// `discarded` and `cancelled`): while a row with this job name and key
    /// is waiting, running or completed and not yet pruned, enqueueing
    /// another inserts nothing. The dedupe window is therefore the worker's
    /// retention (default 24 h). Defaults to none.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

/// Jobs to insert in one statement, of one or several types.
#[derive(Debug, Default)]
pub struct EnqueueBatch {
    queue: Vec<String>,
    task_name: Vec<&'static str>,
    args: Vec<String>,
    max_attempts: Vec<i32>,
    at_epoch: Vec<Option<f64>>,
    delay_secs: Vec<Option<f64>>,
    unique_key: Vec<Option<String>>,
    traceparent: Vec<Option<String>>,
    tracestate: Vec<Option<String>>,
}

impl EnqueueBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job, serialized now, with the trace context of the current
    /// span.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the job does not serialize,
    /// [`Error::InvalidOption`] for `max_attempts` below 1 or a negative
    /// delay; the batch is unchanged then.
    pub fn push<J: Job>(&mut self, job: &J, options: EnqueueOptions) -> Result<&mut Self> {
        if options.max_attempts < 1 {
            return Err(Error::InvalidOption("max_attempts must be at least 1"));
        }
        let args = serde_json::to_string(job).map_err(|source| Error::Encode {
            task: J::NAME,
            source,
        })?;
        let (at_epoch, delay_secs) = match options.run_at {
            RunAt::Now => (None, None),
            RunAt::After(delay) => (None, Some(delay.as_secs_f64())),
            RunAt::At(at) => {
                let epoch = match at.duration_since(UNIX_EPOCH) {
                    Ok(since) => since.as_secs_f64(),
                    Err(before) => -before.duration().as_secs_f64(),
                };
                (Some(epoch), None)
            }
        };
        let (traceparent, tracestate) = current_trace_context();
        self.queue.push(options.queue.to_string());
        self.task_name.push(J::NAME);
        self.args.push(args);
        self.max_attempts.push(options.max_attempts);
        self.at_epoch.push(at_epoch);
        self.delay_secs.push(delay_secs);
        self.unique_key.push(options.unique_key);
        self.traceparent.push(traceparent);
        self.tracestate.push(tracestate);
        Ok(self)
    }

    /// Jobs in the batch.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// Whether the batch has no job.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }
}

/// Enqueues jobs into one schema's `bg_jobs`, counting them in
/// `bg.task.spawned`.
///
/// Cheap to clone. Build it once, after the application installed its
/// meter provider (or pass the meter with [`Client::with_meter`]).
///
/// # Examples
///
/// ```no_run
/// # use bg_queue::durable::{Client, EnqueueOptions, Job, Schema};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct SendReceiptEmail { order_id: u64 }
/// # impl Job for SendReceiptEmail { const NAME: &'static str = "send_receipt_email"; }
/// # async fn example(pool: sqlx::PgPool) -> Result<(), bg_queue::durable::Error> {
/// let client = Client::new(Schema::default());
/// let mut tx = pool.begin().await?;
/// // ... the caller's own writes ...
/// client
///     .enqueue(&mut *tx, &SendReceiptEmail { order_id: 42 },
///              EnqueueOptions::new().unique_key("evt_42"))
///     .await?;
/// tx.commit().await?; // the job and its NOTIFY become visible here
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    schema: Schema,
    channel: String,
    insert: Arc<str>,
    metrics: EnqueueMetrics,
}

const INSERT: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[],
                         $5::float8[], $6::float8[], $7::text[], $8::text[], $9::text[])
        AS t(queue, task_name, args, max_attempts, at_epoch, delay_secs,
             unique_key, traceparent, tracestate)
),
timed AS (
    SELECT input.*,
           COALESCE(to_timestamp(at_epoch),
                    now() + make_interval(secs => COALESCE(delay_secs, 0))) AS run_at
    FROM input
),
inserted AS (
    INSERT INTO {s}.bg_jobs (queue, task_name, args, state, max_attempts, run_at,
                             unique_key, traceparent, tracestate)
    SELECT queue, task_name, args::jsonb,
           (CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END)::{s}.bg_job_state,
           max_attempts, run_at, unique_key, traceparent, tracestate
    FROM timed
    ON CONFLICT (task_name, unique_key)
        WHERE unique_key IS NOT NULL AND state NOT IN ('discarded', 'cancelled')
        DO NOTHING
    RETURNING id, queue, task_name, state
),
-- Delayed rows too: an idle worker then re-reads when its next job comes
-- due, instead of sleeping through it until the next poll.
woken AS (
    SELECT pg_notify($10, queue) FROM (SELECT DISTINCT queue FROM inserted) AS queues
)
-- Selecting the count makes the notifications part of the result, so the
-- planner cannot drop them.
SELECT id, queue, task_name, notified.sent FROM inserted
CROSS JOIN (SELECT count(*) AS sent FROM woken) AS notified
ORDER BY id
"#;

impl Client {
    /// A client for `schema`, recording into the global meter provider's
    /// `bg-queue` meter (read now: build it after installing the provider).
    pub fn new(schema: Schema) -> Self {
        Self::with_meter(schema, &super::telemetry::global_meter())
    }

    /// A client recording `bg.task.spawned` into `meter`.
    pub fn with_meter(schema: Schema, meter: &Meter) -> Self {
        Client {
            channel: schema.channel(),
            insert: Arc::from(schema.sql(INSERT)),
            schema,
            metrics: EnqueueMetrics::new(meter),
        }
    }

    /// The schema it writes to.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Enqueues one job; `None` when its unique key is taken (nothing is
    /// inserted then).
    ///
    /// `executor` is where the insert runs: `&mut *tx` for the caller's
    /// transaction (the job exists only if it commits), or a `&PgPool` /
    /// `&mut PgConnection` to commit at once.
    ///
    /// # Errors
    ///
    /// As [`EnqueueBatch::push`], and [`Error::Database`].
    ///
    /// # Cancel safety
    ///
    /// Outside a transaction, a cancelled call may or may not have inserted
    /// the job; use a unique key to make a retry safe.
    pub async fn enqueue<'c, J, E>(
        &self,
        executor: E,
        job: &J,
        options: EnqueueOptions,
    ) -> Result<Option<JobId>>
    where
        J: Job,
        E: Executor<'c, Database = Postgres>,
    {
        let mut batch = EnqueueBatch::new();
        batch.push(job, options)?;
        Ok(self
            .enqueue_batch(executor, batch)
            .await?
            .into_iter()
            .next())
    }

    /// Enqueues a batch in one statement; returns the ids inserted, in
    /// insertion order (jobs whose unique key was taken are left out).
    ///
    /// # Errors
    ///
    /// [`Error::Database`]; nothing of the batch is inserted then.
    pub async fn enqueue_batch<'c, E>(&self, executor: E, batch: EnqueueBatch) -> Result<Vec<JobId>>
    where
        E: Executor<'c, Database = Postgres>,
    {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.insert)))
            .bind(batch.queue)
            .bind(batch.task_name)
            .bind(batch.args)
            .bind(batch.max_attempts)
            .bind(batch.at_epoch)
            .bind(batch.delay_secs)
            .bind(batch.unique_key)
            .bind(batch.traceparent)
            .bind(batch.tracestate)
            .bind(&self.channel)
            .fetch_all(executor)
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            ids.push(JobId(row.try_get("id")?));
            let queue: &str = row.try_get("queue")?;
            let task: &str = row.try_get("task_name")?;
            self.metrics.spawned(queue, task);
        }
        Ok(ids)
    }
}
