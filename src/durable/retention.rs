//! Retention: `completed`, `discarded` and `cancelled` rows stay for the
//! worker's retention (default 24 h, measured from `finished_at` on the
//! database's clock) and are then deleted in batches. While a row is
//! retained its unique key still blocks duplicates (except for discarded and
//! cancelled rows), so the retention is also the dedupe window.

use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::worker::Shared;

/// Rows deleted per statement: short transactions, no long lock on the
/// table.
const PRUNE_BATCH: u64 = 5000;

pub(crate) const PRUNE_SQL: &str = r#"
WITH doomed AS (
    SELECT id FROM {s}.bg_jobs
    WHERE state IN ('completed', 'discarded', 'cancelled')
      AND finished_at < now() - make_interval(secs => $1)
    LIMIT $2
)
DELETE FROM {s}.bg_jobs AS j USING doomed WHERE j.id = doomed.id
"#;

/// Deletes finished rows older than the retention; how many.
pub(crate) async fn prune(shared: &Shared) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    // Bounded: at most 20 batches per round, the rest at the next round.
    for _ in 0..20 {
        let deleted = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.prune)))
            .bind(shared.config.retention.as_secs_f64())
            .bind(PRUNE_BATCH as i64)
            .execute(&shared.pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < PRUNE_BATCH {
            break;
        }
    }
    Ok(total)
}
