//! Batched completion: successful attempts are marked `completed` together,
//! one `UPDATE ... WHERE id = ANY($1)` for everything that finished since
//! the last one, instead of a statement (and a dead row version's worth of
//! write-ahead log and vacuum work) per job on the hot path.
//!
//! A completion is never dropped: while the database is unreachable the
//! batch is kept and retried with backoff, and its jobs stay in the
//! worker's held set, so their leases keep being renewed once it is back.

use std::sync::Arc;

use sqlx::AssertSqlSafe;
use tokio::sync::mpsc;

use super::worker::{ReconnectBackoff, Shared};

/// Most ids per statement.
const MAX_BATCH: usize = 1000;

pub(crate) const COMPLETE_SQL: &str = r#"
UPDATE {s}.bg_jobs
SET state = 'completed', finished_at = now(), locked_by = NULL, locked_until = NULL
WHERE id = ANY($1) AND state = 'running' AND locked_by = $2
"#;

/// Flushes completions until the channel closes and is drained.
pub(crate) async fn complete(shared: Arc<Shared>, mut done: mpsc::UnboundedReceiver<i64>) {
    let mut batch: Vec<i64> = Vec::new();
    let mut backoff = ReconnectBackoff::new();
    while let Some(first) = done.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match done.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        loop {
            let result = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.complete)))
                .bind(&batch)
                .bind(&shared.worker_id)
                .execute(&shared.pool)
                .await;
            match result {
                Ok(_) => {
                    backoff.reset();
                    break;
                }
                Err(error) => {
                    shared.database_error("mark jobs completed", &error);
                    // Keeps retrying through a shutdown too: the caller
                    // bounds how long it waits for this task.
                    backoff.sleep().await;
                }
            }
        }
        shared.release(&batch);
        batch.clear();
    }
}
