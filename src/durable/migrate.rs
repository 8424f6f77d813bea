//! The jobs table and its embedded, versioned migrations.
//!
//! [`migrate`] brings a schema to the newest version this library embeds:
//! it creates the schema if needed, then applies, in order and each in the
//! same transaction as its version row, every migration not yet recorded
//! in `bg_schema_versions`. Running it again is a no-op; concurrent callers
//! (many replicas starting at once) queue on a transaction-scoped advisory
//! lock, so each migration runs exactly once.

use sqlx::{AssertSqlSafe, PgPool, Row};

use super::error::{Error, Result};

/// A validated Postgres schema name for the jobs table. Defaults to
/// `public`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Default for Schema {
    fn default() -> Self {
        Schema("public".into())
    }
}

impl Schema {
    /// A schema name: ASCII letters, digits and `_`, starting with a letter
    /// or `_`, at most 48 bytes (so the notification channel's name, which
    /// embeds it, stays under Postgres' 63-byte identifier limit).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= 48
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            Ok(Schema(name))
        } else {
            Err(Error::InvalidSchema(name))
        }
    }

    /// The name as given.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `"schema"."table"`, quoted (the name is validated, so quoting is
    /// only for case).
    pub(crate) fn table(&self, table: &str) -> String {
        format!("\"{}\".\"{table}\"", self.0)
    }

    /// The `LISTEN`/`NOTIFY` channel of this schema's jobs (channels are
    /// per database, so two schemas in one database need two channels).
    pub(crate) fn channel(&self) -> String {
        format!("bg_jobs.{}", self.0)
    }

    /// Rewrites `{s}` in a statement to the quoted schema.
    pub(crate) fn sql(&self, template: &str) -> String {
        template.replace("{s}", &format!("\"{}\"", self.0))
    }
}

/// The embedded migrations: version, then SQL (`{s}` is the schema).
/// Append only: a released migration is never edited.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1_JOBS_TABLE)];

/// The newest version this library knows.
pub const SCHEMA_VERSION: i32 = 1;

const V1_JOBS_TABLE: &str = r#"
CREATE TYPE {s}.bg_job_state AS ENUM (
    'available', 'scheduled', 'running', 'retryable',
    'completed', 'discarded', 'cancelled'
);

CREATE TABLE {s}.bg_jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text NOT NULL,
    task_name    text NOT NULL,
    args         jsonb NOT NULL,
    state        {s}.bg_job_state NOT NULL DEFAULT 'available',
    attempt      integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    run_at       timestamptz NOT NULL DEFAULT now(),
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    attempted_at timestamptz,
    finished_at  timestamptz,
    unique_key   text,
    errors       jsonb NOT NULL DEFAULT '[]'::jsonb,
    traceparent  text,
    tracestate   text,
    -- Which worker holds the lease, and until when (database time).
    locked_by    text,
    locked_until timestamptz
);

-- The fetch: due rows of a queue in run_at order. Partial, so completed
-- rows piling up until retention never slow it down.
CREATE INDEX bg_jobs_fetch ON {s}.bg_jobs (queue, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');

-- Running rows: the lease rescuer looks them up by deadline.
CREATE INDEX bg_jobs_running ON {s}.bg_jobs (locked_until)
    WHERE state = 'running';

-- Retention pruning of finished rows.
CREATE INDEX bg_jobs_finished ON {s}.bg_jobs (finished_at)
    WHERE state IN ('completed', 'discarded', 'cancelled');

-- Unique keys, per job name, over every row still retained except the
-- discarded and cancelled ones: completed rows count, so the dedupe window
-- is the retention.
CREATE UNIQUE INDEX bg_jobs_unique ON {s}.bg_jobs (task_name, unique_key)
    WHERE unique_key IS NOT NULL AND state NOT IN ('discarded', 'cancelled');
"#;

/// Brings `schema` to [`SCHEMA_VERSION`]; returns the versions it applied
/// (empty when the schema was already current).
///
/// Idempotent and safe to call from every replica at start-up: callers
/// serialize on a transaction-scoped advisory lock keyed by the schema.
///
/// # Errors
///
/// [`Error::Database`] when a statement fails (nothing of that migration
/// is kept), [`Error::SchemaTooNew`] when the schema was migrated by a newer
/// version of this library.
pub async fn migrate(pool: &PgPool, schema: &Schema) -> Result<Vec<i32>> {
    let mut tx = pool.begin().await?;
    // `IF NOT EXISTS` on a migrated schema is the normal case, not news:
    // keep its NOTICEs out of the application's log.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("bg_queue.migrate.{}", schema.name()))
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{}\"",
        schema.name()
    )))
    .execute(&mut *tx)
    .await?;
    let versions = schema.table("bg_schema_versions");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {versions} (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )"
    )))
    .execute(&mut *tx)
    .await?;
    let current: i32 = sqlx::query(AssertSqlSafe(format!(
        "SELECT COALESCE(max(version), 0) FROM {versions}"
    )))
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    if current > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            schema: schema.name().into(),
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    let mut applied = Vec::new();
    for (version, template) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        sqlx::raw_sql(AssertSqlSafe(schema.sql(template)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {versions} (version) VALUES ($1)"
        )))
        .bind(version)
        .execute(&mut *tx)
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(Schema::new("public").is_ok());
        assert!(Schema::new("_jobs_2").is_ok());
        for bad in ["", "2jobs", "a-b", "a\"b", "a b", &"x".repeat(49)] {
            assert!(Schema::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn migrations_are_in_order_and_end_at_the_schema_version() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(versions.last(), Some(&SCHEMA_VERSION));
    }
}
