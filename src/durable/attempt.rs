//! One attempt of one job: decode, run inside its spans with the timeout,
//! catch a panic, then record the outcome (completion batched, failure at
//! once).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Row};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::telemetry::failure_event;

use super::job::{AttemptError, JobContext, JobId};
use super::telemetry::{AttemptInfo, AttemptOutcome};
use super::worker::{ReconnectBackoff, Shared};

/// Longest error text kept per attempt in `errors` (bytes).
const MAX_ERROR_BYTES: usize = 4096;

pub(crate) const FETCH_SQL: &str = r#"
WITH picked AS (
    SELECT id FROM {s}.bg_jobs
    WHERE queue = $1
      AND state IN ('available', 'scheduled', 'retryable')
      AND run_at <= now()
      AND task_name = ANY($2)
    ORDER BY run_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.bg_jobs AS j SET
    state = 'running',
    attempt = j.attempt + 1,
    attempted_at = now(),
    locked_by = $4,
    locked_until = now() + make_interval(secs => $5)
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.task_name, j.args::text AS args, j.attempt, j.max_attempts,
          extract(epoch FROM j.run_at)::float8 AS run_at_epoch,
          GREATEST(extract(epoch FROM now() - j.run_at), 0)::float8 AS wait_seconds,
          j.traceparent, j.tracestate
"#;

pub(crate) const FAIL_SQL: &str = r#"
UPDATE {s}.bg_jobs SET
    errors = errors || jsonb_build_array(jsonb_build_object(
        'attempt', attempt, 'at', now(), 'outcome', $2::text,
        'type', $3::text, 'error', $4::text)),
    state = (CASE WHEN $5::bool OR attempt >= max_attempts THEN 'discarded'
                  ELSE 'retryable' END)::{s}.bg_job_state,
    run_at = CASE WHEN $5::bool OR attempt >= max_attempts THEN run_at
                  ELSE now() + make_interval(secs => $6) END,
    finished_at = CASE WHEN $5::bool OR attempt >= max_attempts THEN now() END,
    locked_by = NULL,
    locked_until = NULL
WHERE id = $1 AND state = 'running' AND locked_by = $7
RETURNING state::text AS state
"#;

/// A row the fetch moved to `running` for this worker.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) id: i64,
    pub(crate) task_name: String,
    pub(crate) args: String,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) run_at_epoch: f64,
    pub(crate) wait: Duration,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
}

impl Fetched {
    pub(crate) fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let wait: f64 = row.try_get("wait_seconds")?;
        Ok(Fetched {
            id: row.try_get("id")?,
            task_name: row.try_get("task_name")?,
            args: row.try_get("args")?,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            run_at_epoch: row.try_get("run_at_epoch")?,
            wait: Duration::try_from_secs_f64(wait).unwrap_or_default(),
            traceparent: row.try_get("traceparent")?,
            tracestate: row.try_get("tracestate")?,
        })
    }
}

/// Polls a future, turning a panic into `Err(message)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        // The future is not polled again after a panic (this returns Ready),
        // so no broken invariant inside it can be observed.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// How the handler's part ended, before the row is updated.
enum Ran {
    Ok,
    Failed(AttemptOutcome, String, &'static str),
    /// Arguments that do not decode into the job type: retrying cannot help.
    Undecodable(String),
}

/// Runs one fetched job and records its outcome. Holds `permit` (one of
/// the worker's `parallelism` slots) until the outcome is recorded.
pub(crate) async fn run(shared: Arc<Shared>, job: Fetched, permit: OwnedSemaphorePermit) {
    let queue = Arc::clone(&shared.config.queue);
    let info = AttemptInfo {
        queue: &queue,
        task: &job.task_name,
        attempt: job.attempt,
        run_at_epoch: job.run_at_epoch,
        wait: job.wait,
        traceparent: job.traceparent.as_deref(),
        tracestate: job.tracestate.as_deref(),
    };
    let spans = shared.telemetry.start(&info);
    let context = JobContext {
        id: JobId(job.id),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        queue: Arc::clone(&queue),
    };
    let started = Instant::now();
    let ran = match shared.registry.get(&job.task_name) {
        // The fetch asks only for registered names.
        None => Ran::Undecodable(format!("no handler for job {:?}", job.task_name)),
        Some(handler) => match handler(&job.args, context) {
            Err(error) => Ran::Undecodable(format!(
                "arguments do not decode into job {}: {error}",
                job.task_name
            )),
            Ok(future) => {
                let guarded = CatchUnwind(Box::pin(future)).instrument(spans.run.clone());
                let result = match shared.config.attempt_timeout {
                    Some(limit) => tokio::time::timeout(limit, guarded).await.ok(),
                    None => Some(guarded.await),
                };
                match result {
                    None => Ran::Failed(
                        AttemptOutcome::TimedOut,
                        format!(
                            "timed out after {:?}",
                            shared.config.attempt_timeout.unwrap_or_default()
                        ),
                        "timeout",
                    ),
                    Some(Err(panic)) => Ran::Failed(
                        AttemptOutcome::Panicked,
                        format!("panicked: {panic}"),
                        "panic",
                    ),
                    Some(Ok(Err(AttemptError {
                        message,
                        error_type,
                    }))) => Ran::Failed(AttemptOutcome::Failed, message, error_type),
                    Some(Ok(Ok(()))) => Ran::Ok,
                }
            }
        },
    };
    let run_time = started.elapsed();
    match ran {
        Ran::Ok => {
            shared
                .telemetry
                .finish(spans, &info, AttemptOutcome::Ok, run_time, None);
            shared.counts.completed.fetch_add(1, Ordering::Relaxed);
            shared.completed(job.id);
        }
        Ran::Failed(outcome, message, error_type) => {
            shared.telemetry.finish(
                spans,
                &info,
                outcome,
                run_time,
                Some((&message, error_type)),
            );
            match outcome {
                AttemptOutcome::Panicked => &shared.counts.panicked,
                AttemptOutcome::TimedOut => &shared.counts.timed_out,
                _ => &shared.counts.failed,
            }
            .fetch_add(1, Ordering::Relaxed);
            log_failure(&shared, &job, outcome, &message, run_time);
            record_failure(&shared, &job, outcome.as_str(), error_type, &message, false).await;
        }
        Ran::Undecodable(message) => {
            shared.telemetry.finish(
                spans,
                &info,
                AttemptOutcome::Failed,
                run_time,
                Some((&message, "decode")),
            );
            shared.counts.failed.fetch_add(1, Ordering::Relaxed);
            log_failure(&shared, &job, AttemptOutcome::Failed, &message, run_time);
            record_failure(&shared, &job, "failed", "decode", &message, true).await;
        }
    }
    drop(permit);
}

/// The failure event of an attempt, as the in-memory pool logs one: WARN
/// (ERROR for a panic) with the queue as `bg.pool.name`, the task, the
/// outcome, the error text, wait and run time and the enqueuer's trace id;
/// at most one per task name per interval of the worker's log limiter,
/// the next one saying how many were held back.
fn log_failure(
    shared: &Shared,
    job: &Fetched,
    outcome: AttemptOutcome,
    message: &str,
    run_time: Duration,
) {
    let Some(suppressed) = shared
        .errors
        .allow(&format!("failed attempt of {}", job.task_name))
    else {
        return;
    };
    let error = truncate(message, MAX_ERROR_BYTES);
    let trace_id = job
        .traceparent
        .as_deref()
        .and_then(|parent| parent.split('-').nth(1))
        .unwrap_or("");
    let wait_ms = job.wait.as_secs_f64() * 1000.0;
    let run_ms = run_time.as_secs_f64() * 1000.0;
    let task = job.task_name.as_str();
    let attempt = job.attempt;
    failure_event!(
        outcome == AttemptOutcome::Panicked,
        error,
        bg.pool.name = %shared.config.queue,
        bg.task.name = task,
        bg.task.outcome = outcome.as_str(),
        bg.task.attempt = attempt,
        wait_ms,
        run_ms,
        trace_id,
        suppressed,
        "durable job {task} {} on attempt {attempt}: {error}",
        outcome.as_str()
    );
}

/// Appends the attempt's error and moves the row to `retryable` (at
/// `now() + backoff`) or `discarded`; retried until the database takes it.
async fn record_failure(
    shared: &Shared,
    job: &Fetched,
    outcome: &str,
    error_type: &str,
    message: &str,
    discard_now: bool,
) {
    let message = truncate(message, MAX_ERROR_BYTES);
    let delay = shared.config.backoff.delay(job.attempt);
    let mut backoff = ReconnectBackoff::new();
    let state: Option<String> = loop {
        let result = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.fail)))
            .bind(job.id)
            .bind(outcome)
            .bind(error_type)
            .bind(message)
            .bind(discard_now)
            .bind(delay.as_secs_f64())
            .bind(&shared.worker_id)
            .fetch_optional(&shared.pool)
            .await;
        match result {
            Ok(row) => break row.and_then(|row| row.try_get("state").ok()),
            Err(error) => {
                shared.database_error("record a failed attempt", &error);
                backoff.sleep().await;
            }
        }
    };
    match state.as_deref() {
        Some("retryable") => {
            shared.counts.retried.fetch_add(1, Ordering::Relaxed);
            shared
                .telemetry
                .retried(&shared.config.queue, &job.task_name);
        }
        Some("discarded") => {
            shared.counts.discarded.fetch_add(1, Ordering::Relaxed);
            shared
                .telemetry
                .discarded(&shared.config.queue, &job.task_name);
            tracing::error!(
                target: "bg_queue",
                queue = %shared.config.queue,
                task = %job.task_name,
                job_id = job.id,
                attempt = job.attempt,
                error = message,
                "durable job discarded"
            );
        }
        // The lease was lost meanwhile (rescued, or returned at shutdown):
        // the row is no longer this worker's to update.
        _ => {}
    }
    shared.release(&[job.id]);
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
