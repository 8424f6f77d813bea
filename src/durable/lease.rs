//! Leases: a running job belongs to its worker only while its lease lasts.
//!
//! The worker renews the leases of the jobs it holds every third of the
//! lease (one `UPDATE ... WHERE id = ANY($1)`), so a job may run longer than
//! the lease as long as its worker is alive and reaches the database. The
//! rescuer, run by every worker at the same pace, takes `running` rows whose
//! lease passed (on the database's clock) back to `available` at once, with
//! an entry in `errors` saying so, or to `discarded` when that was the last
//! attempt allowed: a job that kills its worker every time must not loop
//! forever. A rescued job runs again: delivery is at-least-once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Row};

use super::worker::Shared;

pub(crate) const HEARTBEAT_SQL: &str = r#"
UPDATE {s}.bg_jobs
SET locked_until = now() + make_interval(secs => $3)
WHERE id = ANY($1) AND state = 'running' AND locked_by = $2
"#;

pub(crate) const RESCUE_SQL: &str = r#"
WITH expired AS (
    SELECT id, locked_by FROM {s}.bg_jobs
    WHERE state = 'running' AND locked_until < now()
    ORDER BY locked_until
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE {s}.bg_jobs AS j SET
        state = (CASE WHEN j.attempt >= j.max_attempts THEN 'discarded'
                      ELSE 'available' END)::{s}.bg_job_state,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt,
            'at', now(),
            'outcome', 'lease_expired',
            'type', 'lease_expired',
            'error', 'lease expired: worker ' || COALESCE(j.locked_by, '?')
                     || ' stopped renewing it (killed, crashed or cut off from the database)')),
        finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
        run_at = now(),
        locked_by = NULL,
        locked_until = NULL
    FROM expired
    WHERE j.id = expired.id
    RETURNING j.id, j.queue, j.task_name, j.state, j.attempt, expired.locked_by AS lost_by
),
woken AS (
    SELECT pg_notify($1, queue)
    FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'available') AS queues
)
-- Selecting the count makes the notifications part of the result.
SELECT r.id, r.queue, r.task_name, r.state::text AS state, r.attempt, r.lost_by, w.sent
FROM rescued AS r CROSS JOIN (SELECT count(*) AS sent FROM woken) AS w
"#;

/// Renews the leases of the jobs this worker holds.
async fn heartbeat(shared: &Shared) -> Result<(), sqlx::Error> {
    let ids = shared.held_ids();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.heartbeat)))
        .bind(ids)
        .bind(&shared.worker_id)
        .bind(shared.config.lease.as_secs_f64())
        .execute(&shared.pool)
        .await?;
    Ok(())
}

/// Returns expired leases to `available` (or `discarded` after the last
/// attempt), with a WARN event per job (rate-limited per job name) and
/// `bg.task.discarded` for the discarded ones.
async fn rescue(shared: &Shared) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.rescue)))
        .bind(&shared.channel)
        .fetch_all(&shared.pool)
        .await?;
    for row in rows {
        let queue: &str = row.try_get("queue")?;
        let task: &str = row.try_get("task_name")?;
        let state: &str = row.try_get("state")?;
        let discarded = state == "discarded";
        if discarded {
            shared.telemetry.discarded(queue, task);
        }
        shared.telemetry.lease_expired(
            queue,
            task,
            row.try_get("id")?,
            row.try_get("attempt")?,
            row.try_get::<Option<&str>, _>("lost_by")?.unwrap_or("?"),
            discarded,
        );
    }
    Ok(())
}

/// Heartbeat, rescue and retention pruning, until the worker stops.
pub(crate) async fn maintain(shared: Arc<Shared>) {
    let tick = (shared.config.lease / 3).max(Duration::from_millis(100));
    let prune_every = Duration::from_secs(60).min(shared.config.retention.max(tick));
    let mut last_prune: Option<Instant> = None;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shared.stopped() => return,
        }
        if let Err(error) = heartbeat(&shared).await {
            shared.database_error("renew leases", &error);
            continue;
        }
        if let Err(error) = rescue(&shared).await {
            shared.database_error("rescue expired leases", &error);
        }
        if last_prune.is_none_or(|at| at.elapsed() >= prune_every) {
            last_prune = Some(Instant::now());
            if let Err(error) = super::retention::prune(&shared).await {
                shared.database_error("prune finished jobs", &error);
            }
        }
    }
}
