//! `migrate()`: the table, its indexes and versions; idempotent and safe
//! under concurrent callers.
#![cfg(feature = "postgres")]

#[path = "common/postgres.rs"]
mod pg;

use bg_queue::durable::{migrate, Schema, SCHEMA_VERSION};
use sqlx::{AssertSqlSafe, Row};

#[tokio::test]
async fn migrate_creates_the_table_and_a_second_run_is_a_no_op() {
    let Some(db) = pg::test_db("migrate_twice").await else {
        return;
    };
    // test_db ran the first migration; again applies nothing.
    assert_eq!(
        migrate(&db.pool, &db.schema).await.unwrap(),
        Vec::<i32>::new()
    );
    let versions = db
        .scalar("SELECT count(*) FROM {s}.bg_schema_versions")
        .await;
    assert_eq!(versions, 1);
    let version = db
        .scalar("SELECT max(version)::int8 FROM {s}.bg_schema_versions")
        .await;
    assert_eq!(version, i64::from(SCHEMA_VERSION));

    let columns: Vec<String> = sqlx::query(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'bg_jobs' ORDER BY ordinal_position",
    )
    .bind(db.schema.name())
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    for column in [
        "id",
        "queue",
        "task_name",
        "args",
        "state",
        "attempt",
        "max_attempts",
        "run_at",
        "enqueued_at",
        "attempted_at",
        "finished_at",
        "unique_key",
        "errors",
        "traceparent",
        "tracestate",
    ] {
        assert!(
            columns.iter().any(|c| c == column),
            "no column {column}: {columns:?}"
        );
    }
    let states: Vec<String> = sqlx::query(AssertSqlSafe(format!(
        "SELECT unnest(enum_range(NULL::\"{}\".bg_job_state))::text",
        db.schema.name()
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    assert_eq!(
        states,
        [
            "available",
            "scheduled",
            "running",
            "retryable",
            "completed",
            "discarded",
            "cancelled"
        ]
    );
    // The partial indexes the fetch and the rescuer need.
    let indexes: Vec<String> = sqlx::query(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'bg_jobs'",
    )
    .bind(db.schema.name())
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    let has = |needle: &str| indexes.iter().any(|i| i.contains(needle));
    assert!(
        has("(queue, run_at, id) WHERE (state = ANY"),
        "{indexes:#?}"
    );
    assert!(
        has("(locked_until) WHERE (state = 'running'"),
        "{indexes:#?}"
    );
    assert!(has("UNIQUE INDEX bg_jobs_unique"), "{indexes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_version_once() {
    let Some(url) = pg::database_url() else {
        return;
    };
    let pool = pg::pool(&url, 20).await;
    let schema = Schema::new("t_migrate_concurrent").unwrap();
    sqlx::query("DROP SCHEMA IF EXISTS t_migrate_concurrent CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let (pool, schema) = (pool.clone(), schema.clone());
            tokio::spawn(async move { migrate(&pool, &schema).await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(
            run.await
                .unwrap()
                .expect("every concurrent migrate succeeds"),
        );
    }
    assert_eq!(
        applied,
        [SCHEMA_VERSION],
        "each version applied by exactly one caller"
    );
}

#[test]
fn schema_names_that_are_not_identifiers_are_refused() {
    let error = Schema::new("jobs; DROP TABLE x").unwrap_err();
    assert!(error.to_string().contains("invalid schema name"), "{error}");
}
