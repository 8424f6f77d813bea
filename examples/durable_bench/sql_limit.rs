//! What Postgres itself does here with no application in the way: pgbench
//! running the worker's own statement shapes (fetch with `FOR UPDATE SKIP
//! LOCKED`, then one batched completion) and the enqueue's inserts on a
//! `bg_jobs` table made by the crate's migration (schema `sqllimit`),
//! filled with 1,000,000 rows. The ceiling the burn-down is compared with.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bg_queue::durable::{self, Schema};
use sqlx::PgPool;

/// The shape of `FETCH_SQL` (src/durable/attempt.rs) then `COMPLETE_SQL`
/// (src/durable/complete.rs), `:n` rows per statement, a little lighter:
/// literals where the worker binds parameters, and only the ids returned
/// where the worker reads each row's arguments and trace context.
const FETCH_COMPLETE: &str = r#"
WITH picked AS (
    SELECT id FROM sqllimit.bg_jobs
    WHERE queue = 'default' AND state IN ('available', 'scheduled', 'retryable')
      AND run_at <= now() AND task_name = ANY('{bench_noop}')
    ORDER BY run_at, id LIMIT :n FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE sqllimit.bg_jobs AS j SET state = 'running', attempt = j.attempt + 1,
        attempted_at = now(), locked_by = 'pgbench', locked_until = now() + interval '30 s'
    FROM picked WHERE j.id = picked.id RETURNING j.id
)
SELECT COALESCE(array_agg(id)::text, '{}') AS ids FROM taken \gset
UPDATE sqllimit.bg_jobs SET state = 'completed', finished_at = now(), locked_by = NULL,
    locked_until = NULL
WHERE id = ANY(CAST(:ids AS int8[])) AND state = 'running' AND locked_by = 'pgbench';
"#;

/// One insert per transaction, as `Client::enqueue` in a caller's
/// transaction does.
const INSERT_SINGLE: &str = r#"
BEGIN;
INSERT INTO sqllimit.bg_jobs (queue, task_name, args, state, max_attempts, run_at)
VALUES ('default', 'bench_noop', '{}', 'available', 25, now());
COMMIT;
"#;

const FILL: &str = r#"
INSERT INTO sqllimit.bg_jobs (queue, task_name, args, state, max_attempts, run_at)
SELECT 'default', 'bench_noop', '{}', 'available', 25, now()
FROM generate_series(1, $1)
"#;

/// The SQL-only figures, or why there are none (no pgbench).
pub struct Limits {
    pub fetch_complete_100: f64,
    pub fetch_complete_10: f64,
    pub insert_single: f64,
    pub insert_select: f64,
}

async fn refill(pool: &PgPool, rows: i64) -> Result<f64, String> {
    sqlx::query("TRUNCATE sqllimit.bg_jobs")
        .execute(pool)
        .await
        .map_err(|e| format!("emptying sqllimit.bg_jobs: {e}"))?;
    let started = Instant::now();
    sqlx::query(FILL)
        .bind(rows)
        .execute(pool)
        .await
        .map_err(|e| format!("filling sqllimit.bg_jobs: {e}"))?;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::query("VACUUM ANALYZE sqllimit.bg_jobs")
        .execute(pool)
        .await
        .map_err(|e| format!("vacuuming sqllimit.bg_jobs: {e}"))?;
    Ok(rate)
}

/// Runs `script` for 10 s from `clients` connections (prepared
/// statements); the elapsed time, or pgbench's output on failure.
fn pgbench(
    url: &str,
    dir: &Path,
    script: &str,
    clients: usize,
    vars: &[&str],
) -> Result<Duration, String> {
    let file = dir.join("script.sql");
    std::fs::write(&file, script).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let mut command = Command::new("pgbench");
    command
        .args(["-n", "-M", "prepared", "-T", "10"])
        .args(["-c", &clients.to_string(), "-j", &clients.to_string()])
        .arg("-f")
        .arg(&file);
    for var in vars {
        command.args(["-D", var]);
    }
    let started = Instant::now();
    let output = command
        .arg(url)
        .output()
        .map_err(|e| format!("pgbench: {e}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(elapsed)
}

/// Rows of `sqllimit.bg_jobs` in `state`.
async fn count(pool: &PgPool, state: &str) -> Result<i64, String> {
    sqlx::query_scalar("SELECT count(*) FROM sqllimit.bg_jobs WHERE state::text = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .map_err(|e| format!("counting {state} rows: {e}"))
}

/// Jobs completed per second by `FETCH_COMPLETE` at `rows` per statement,
/// counted in the table (a transaction that found nothing counts
/// nothing); an error if the table ran dry, which would cap the figure.
async fn fetch_complete(
    pool: &PgPool,
    url: &str,
    dir: &Path,
    clients: usize,
    rows: usize,
) -> Result<f64, String> {
    refill(pool, FILL_ROWS).await?;
    let elapsed = pgbench(url, dir, FETCH_COMPLETE, clients, &[&format!("n={rows}")])?;
    if count(pool, "available").await? == 0 {
        return Err(format!(
            "the {FILL_ROWS} rows ran out within pgbench's 10 s at {rows} per statement"
        ));
    }
    Ok(count(pool, "completed").await? as f64 / elapsed.as_secs_f64())
}

/// Rows each fetch-and-complete run starts with.
const FILL_ROWS: i64 = 1_000_000;

/// Measures the four figures; `Ok(None)` when pgbench is not installed.
pub async fn measure(pool: &PgPool, url: &str, clients: usize) -> Result<Option<Limits>, String> {
    if Command::new("pgbench").arg("--version").output().is_err() {
        return Ok(None);
    }
    let schema = Schema::new("sqllimit").map_err(|e| format!("schema sqllimit: {e}"))?;
    durable::migrate(pool, &schema)
        .await
        .map_err(|e| format!("migrating schema sqllimit: {e}"))?;
    let dir = std::env::temp_dir().join(format!("bg-queue-sql-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let insert_select = refill(pool, FILL_ROWS).await?;
    let fetch_complete_100 = fetch_complete(pool, url, &dir, clients, 100).await?;
    let fetch_complete_10 = fetch_complete(pool, url, &dir, clients, 10).await?;
    sqlx::query("TRUNCATE sqllimit.bg_jobs")
        .execute(pool)
        .await
        .map_err(|e| format!("emptying sqllimit.bg_jobs: {e}"))?;
    let elapsed = pgbench(url, &dir, INSERT_SINGLE, clients, &[])?;
    let insert_single = count(pool, "available").await? as f64 / elapsed.as_secs_f64();
    sqlx::query("DROP SCHEMA sqllimit CASCADE")
        .execute(pool)
        .await
        .map_err(|e| format!("dropping schema sqllimit: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(Limits {
        fetch_complete_100,
        fetch_complete_10,
        insert_single,
        insert_select,
    }))
}
