//! A read of the jobs table for people: what an on-call engineer needs from
//! the durable queues (the data of `/debug/bg`'s durable section).
//!
//! Each call runs five read-only statements. The counts by state scan the
//! table (retained finished rows included), so call it when a person asks,
//! not in a loop.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Row};

use super::error::Result;
use super::migrate::Schema;
use crate::snapshot::bounded_error;

/// Every state, in the order of a job's life.
pub const STATES: [&str; 7] = [
    "available",
    "scheduled",
    "running",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
];

/// Every queue with rows in the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DurableSnapshot {
    /// Queues by name.
    pub queues: Vec<QueueSnapshot>,
}

/// One queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueueSnapshot {
    /// The queue (`bg.pool.name`).
    pub name: String,
    /// Rows per state, every state present (0 when none).
    pub states: BTreeMap<String, i64>,
    /// Age of the oldest due row not yet running, 0 when none (database
    /// clock).
    pub oldest_available_seconds: f64,
    /// Running jobs, longest-running first.
    pub running: Vec<RunningJob>,
    /// Failed attempts, newest first (also of jobs retried since).
    pub recent_failures: Vec<FailedAttempt>,
    /// Discarded jobs, newest first, with every attempt's error.
    pub discarded: Vec<DiscardedJob>,
}

/// A job some worker holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RunningJob {
    /// Row id.
    pub id: i64,
    /// Job name.
    pub task: String,
    /// Attempt running.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The worker holding the lease.
    pub worker: Option<String>,
    /// Since the attempt started.
    pub running_seconds: f64,
    /// Until the lease lapses unless renewed (negative: lapsed, the
    /// rescuer will return it).
    pub lease_left_seconds: f64,
}

/// One failed attempt, from a row's `errors`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FailedAttempt {
    /// Row id.
    pub id: i64,
    /// Job name.
    pub task: String,
    /// The attempt that failed.
    pub attempt: i64,
    /// When (RFC 3339, database clock).
    pub at: String,
    /// `failed`, `panicked`, `timed_out` or `lease_expired`.
    pub outcome: String,
    /// The error text.
    pub error: String,
    /// The trace the job was enqueued in, if any.
    pub trace_id: Option<String>,
}

/// A discarded job and its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DiscardedJob {
    /// Row id.
    pub id: i64,
    /// Job name.
    pub task: String,
    /// Attempts made.
    pub attempts: i32,
    /// When it was discarded (RFC 3339, database clock).
    pub finished_at: String,
    /// Every attempt's `{attempt, at, outcome, type, error}`.
    pub errors: serde_json::Value,
    /// The trace the job was enqueued in, if any.
    pub trace_id: Option<String>,
}

const RFC3339: &str = r#"to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

fn rfc3339(column: &str) -> String {
    RFC3339.replace("%s", column)
}

/// A row's `errors` with each entry's `error` text cut as the page cuts
/// error text ([`ERROR_TEXT_MAX_CHARS`](crate::ERROR_TEXT_MAX_CHARS)).
fn bound_errors(mut errors: serde_json::Value) -> serde_json::Value {
    if let Some(entries) = errors.as_array_mut() {
        for entry in entries {
            if let Some(text) = entry.get("error").and_then(serde_json::Value::as_str) {
                let bounded = bounded_error(text);
                entry["error"] = serde_json::Value::String(bounded);
            }
        }
    }
    errors
}

fn trace_id(traceparent: Option<String>) -> Option<String> {
    traceparent.and_then(|t| t.split('-').nth(1).map(str::to_string))
}

/// The entry of `name`, made with every state at 0.
fn queue<'a>(queues: &'a mut BTreeMap<String, QueueSnapshot>, name: &str) -> &'a mut QueueSnapshot {
    queues
        .entry(name.to_string())
        .or_insert_with(|| QueueSnapshot {
            name: name.to_string(),
            states: STATES.iter().map(|s| (s.to_string(), 0)).collect(),
            oldest_available_seconds: 0.0,
            running: Vec::new(),
            recent_failures: Vec::new(),
            discarded: Vec::new(),
        })
}

/// Reads every queue of `schema`, listing at most `limit` running jobs,
/// failures and discarded jobs per queue.
///
/// # Errors
///
/// [`Error::Database`](super::Error::Database).
pub async fn snapshot(pool: &PgPool, schema: &Schema, limit: usize) -> Result<DurableSnapshot> {
    let table = schema.table("bg_jobs");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut queues: BTreeMap<String, QueueSnapshot> = BTreeMap::new();

    let sql = format!("SELECT queue, state::text, count(*) FROM {table} GROUP BY 1, 2");
    for row in sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await? {
        let state: String = row.try_get(1)?;
        queue(&mut queues, row.try_get(0)?)
            .states
            .insert(state, row.try_get(2)?);
    }

    let sql = format!(
        "SELECT queue, GREATEST(extract(epoch FROM now() - min(run_at)), 0)::float8 FROM {table}
         WHERE state IN ('available', 'scheduled', 'retryable') AND run_at <= now() GROUP BY queue"
    );
    for row in sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await? {
        queue(&mut queues, row.try_get(0)?).oldest_available_seconds = row.try_get(1)?;
    }

    let sql = format!(
        "SELECT queue, id, task_name, attempt, max_attempts, locked_by,
                extract(epoch FROM now() - attempted_at)::float8,
                extract(epoch FROM locked_until - now())::float8
         FROM (SELECT *, row_number() OVER (PARTITION BY queue ORDER BY attempted_at) AS n
               FROM {table} WHERE state = 'running') AS r
         WHERE n <= $1 ORDER BY queue, attempted_at"
    );
    for row in sqlx::query(AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(pool)
        .await?
    {
        let job = RunningJob {
            id: row.try_get(1)?,
            task: row.try_get(2)?,
            attempt: row.try_get(3)?,
            max_attempts: row.try_get(4)?,
            worker: row.try_get(5)?,
            running_seconds: row.try_get::<Option<f64>, _>(6)?.unwrap_or(0.0),
            lease_left_seconds: row.try_get::<Option<f64>, _>(7)?.unwrap_or(0.0),
        };
        queue(&mut queues, row.try_get(0)?).running.push(job);
    }

    let sql = format!(
        "SELECT queue, id, task_name, attempt, at, outcome, error, traceparent FROM (
             SELECT j.queue, j.id, j.task_name, (e->>'attempt')::int8 AS attempt,
                    {at} AS at, e->>'outcome' AS outcome, e->>'error' AS error, j.traceparent,
                    row_number() OVER (PARTITION BY j.queue
                                       ORDER BY (e->>'at')::timestamptz DESC) AS n
             FROM {table} AS j, jsonb_array_elements(j.errors) AS e
             WHERE j.errors <> '[]'::jsonb
         ) AS f WHERE n <= $1 ORDER BY queue, n",
        at = rfc3339("(e->>'at')::timestamptz")
    );
    for row in sqlx::query(AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(pool)
        .await?
    {
        let failure = FailedAttempt {
            id: row.try_get(1)?,
            task: row.try_get(2)?,
            attempt: row.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
            at: row.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
            outcome: row.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
            error: bounded_error(&row.try_get::<Option<String>, _>(6)?.unwrap_or_default()),
            trace_id: trace_id(row.try_get(7)?),
        };
        queue(&mut queues, row.try_get(0)?)
            .recent_failures
            .push(failure);
    }

    let sql = format!(
        "SELECT queue, id, task_name, attempt, finished_at, errors, traceparent FROM (
             SELECT queue, id, task_name, attempt, {finished} AS finished_at, errors::text AS errors,
                    traceparent,
                    row_number() OVER (PARTITION BY queue ORDER BY finished_at DESC, id DESC) AS n
             FROM {table} WHERE state = 'discarded'
         ) AS d WHERE n <= $1 ORDER BY queue, n",
        finished = rfc3339("finished_at")
    );
    for row in sqlx::query(AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(pool)
        .await?
    {
        let errors: String = row.try_get(5)?;
        let job = DiscardedJob {
            id: row.try_get(1)?,
            task: row.try_get(2)?,
            attempts: row.try_get(3)?,
            finished_at: row.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
            errors: bound_errors(serde_json::from_str(&errors).unwrap_or(serde_json::Value::Null)),
            trace_id: trace_id(row.try_get(6)?),
        };
        queue(&mut queues, row.try_get(0)?).discarded.push(job);
    }

    Ok(DurableSnapshot {
        queues: queues.into_values().collect(),
    })
}
