//! What Postgres itself does here with no application in the way: pgbench
//! running the worker's own statement shapes (fetch with `FOR UPDATE SKIP
//! LOCKED`, then one batched completion) and the enqueue's inserts on a
//! `bg_jobs` table made by the crate's migration (schema `sqllimit`),
//! filled with 1,000,000 rows. The ceiling the burn-down is compared with.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bg_queue::durable::{self, Schema};
use sqlx::PgPool;

/// Mirrors `FETCH_SQL` (src/durable/attempt.rs) then `COMPLETE_SQL`
/// (src/durable/complete.rs): `:n` rows per statement.
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
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    sqlx::query(FILL)
        .bind(rows)
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::query("VACUUM ANALYZE sqllimit.bg_jobs")
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rate)
}

/// Runs `script` for `seconds` from `clients` connections (prepared
/// statements); transactions per second.
fn pgbench(
    url: &str,
    dir: &Path,
    script: &str,
    clients: usize,
    vars: &[&str],
) -> Result<f64, String> {
    let file = dir.join("script.sql");
    std::fs::write(&file, script).map_err(|e| e.to_string())?;
    let mut command = Command::new("pgbench");
    command
        .args(["-n", "-M", "prepared", "-T", "10"])
        .args(["-c", &clients.to_string(), "-j", &clients.to_string()])
        .arg("-f")
        .arg(&file);
    for var in vars {
        command.args(["-D", var]);
    }
    let output = command
        .arg(url)
        .output()
        .map_err(|e| format!("pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output: {text}"))
}

/// Measures the four figures; `Ok(None)` when pgbench is not installed.
pub async fn measure(pool: &PgPool, url: &str, clients: usize) -> Result<Option<Limits>, String> {
    if Command::new("pgbench").arg("--version").output().is_err() {
        return Ok(None);
    }
    let schema = Schema::new("sqllimit").map_err(|e| e.to_string())?;
    durable::migrate(pool, &schema)
        .await
        .map_err(|e| format!("migrating schema sqllimit: {e}"))?;
    let dir = std::env::temp_dir().join(format!("bg-queue-sql-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let insert_select = refill(pool, 1_000_000).await?;
    let fetch_complete_100 = 100.0 * pgbench(url, &dir, FETCH_COMPLETE, clients, &["n=100"])?;
    refill(pool, 1_000_000).await?;
    let fetch_complete_10 = 10.0 * pgbench(url, &dir, FETCH_COMPLETE, clients, &["n=10"])?;
    let insert_single = pgbench(url, &dir, INSERT_SINGLE, clients, &[])?;
    sqlx::query("DROP SCHEMA sqllimit CASCADE")
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(Limits {
        fetch_complete_100,
        fetch_complete_10,
        insert_single,
        insert_select,
    }))
}
