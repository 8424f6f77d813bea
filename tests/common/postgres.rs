//! Postgres for the durable-job tests: the server `./scripts/test` starts
//! (`DATABASE_URL`), one schema per test so tests run in parallel.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use bg_queue::durable::{migrate, Schema};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool, Row};

/// The one line a test prints when it cannot run here.
pub const SKIP: &str = "skipped: Postgres is missing, set DATABASE_URL (./scripts/test starts one)";

/// `DATABASE_URL`, or `None` after printing the skip line; under
/// `CI=true` a missing database fails the test instead.
pub fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "DATABASE_URL is not set under CI=true: ./scripts/test starts Postgres"
            );
            eprintln!("{SKIP}");
            None
        }
    }
}

/// A migrated schema of its own for one test.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    pub schema: Schema,
}

/// A fresh schema named after the test (dropped first if a previous run
/// left it), migrated; `None` when there is no database (skip line
/// printed).
pub async fn test_db(test: &str) -> Option<TestDb> {
    Some(test_db_on(database_url()?, test).await)
}

/// As [`test_db`], on the server at `url`.
pub async fn test_db_on(url: String, test: &str) -> TestDb {
    let pool = pool(&url, 20).await;
    let schema = Schema::new(format!("t_{test}")).expect("test names are identifiers");
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        schema.name()
    )))
    .execute(&pool)
    .await
    .unwrap();
    migrate(&pool, &schema).await.unwrap();
    TestDb { url, pool, schema }
}

/// A private throwaway cluster (`scripts/pg`), for a test that restarts
/// it; stopped and removed on drop. `None` (skip line printed) when the
/// Postgres binaries are missing; under `CI=true` that fails instead.
pub struct Cluster {
    pub dir: std::path::PathBuf,
    pub url: String,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg");

impl Cluster {
    pub fn start(name: &str) -> Option<Cluster> {
        let installed = std::fs::read_dir("/usr/lib/postgresql")
            .map(|mut versions| {
                versions.any(|v| {
                    v.map(|v| v.path().join("bin/pg_ctl").exists())
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no Postgres under /usr/lib/postgresql under CI=true: ./scripts/test installs it"
            );
            eprintln!("skipped: Postgres is missing (no /usr/lib/postgresql/*/bin), ./scripts/test installs it");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("bg-queue-pg-{name}-{}", std::process::id()));
        let output = std::process::Command::new(SCRIPT)
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/pg start failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8(output.stdout).unwrap().trim().to_string();
        Some(Cluster { dir, url })
    }

    /// `pg_ctl restart` (fast shutdown, same port and data).
    pub fn restart(&self) {
        self.run("restart");
    }

    /// Stops the server, keeping the data: an outage until [`up`](Self::up).
    pub fn down(&self) {
        self.run("down");
    }

    /// Starts the server again on the same port.
    pub fn up(&self) {
        self.run("up");
    }

    fn run(&self, command: &str) {
        let status = std::process::Command::new(SCRIPT)
            .arg(command)
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/pg {command} failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

pub async fn pool(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

impl TestDb {
    /// `"schema"."table"`.
    pub fn table(&self, table: &str) -> String {
        format!("\"{}\".\"{table}\"", self.schema.name())
    }

    /// Rows of `bg_jobs` by state.
    pub async fn count(&self, state: &str) -> i64 {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE state::text = $1",
            self.table("bg_jobs")
        )))
        .bind(state)
        .fetch_one(&self.pool)
        .await
        .unwrap()
        .get(0)
    }

    /// Runs a query returning one i64.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = sql.replace("{s}", &format!("\"{}\"", self.schema.name()));
        sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until `sql` (one i64) returns `want`, polling every 20 ms;
    /// panics after `limit` with the last value.
    pub async fn wait_for(&self, sql: &str, want: i64, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.scalar(sql).await;
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{sql} = {got}, wanted {want} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
