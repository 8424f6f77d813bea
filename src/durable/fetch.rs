//! The fetch loop: takes due jobs while handler slots are free.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Semaphore;

use super::attempt::{self, Fetched};
use super::worker::{Held, ReconnectBackoff, Shared};

/// How long to wait for more free slots before fetching into few of them
/// while jobs are backed up (see `fetch_loop`); a timer, so 1-2 ms.
const FILL_WAIT: Duration = Duration::from_millis(1);

/// Fetches due jobs while slots are free, until shutdown.
pub(crate) async fn fetch_loop(shared: Arc<Shared>, permits: Arc<Semaphore>) {
    let mut backoff = ReconnectBackoff::new();
    let mut failing = false;
    // Whether the last fetch filled every slot it asked for: more may be
    // due, so the next one waits briefly for every slot to be free.
    let mut backlog = false;
    let fill = shared.config.parallelism;
    loop {
        // One free slot at least, then every other free one.
        let first = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            _ = shared.fetching_stopped() => return,
        };
        let Ok(first) = first else { return };
        let mut slots = vec![first];
        while let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
            slots.push(permit);
        }
        if backlog && slots.len() < fill {
            // More jobs are due than slots: a fetch for the few slots free
            // this instant would cost a round trip for a handful of rows.
            // Wait for the rest (jobs fetched together often end
            // together), for at most `FILL_WAIT` (1-2 ms: tokio's timer
            // rounds up to its tick), which is small against any job that
            // holds a slot for long and happens only while jobs wait anyway.
            // BENCHMARKS.md, "Durable jobs", has what it changes.
            let deadline = tokio::time::sleep(FILL_WAIT);
            tokio::pin!(deadline);
            while slots.len() < fill {
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => slots.push(permit),
                        Err(_) => return,
                    },
                    _ = &mut deadline => break,
                }
            }
            while let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
                slots.push(permit);
            }
        }
        if *shared.stop_fetching.borrow() {
            return;
        }
        let wanted = slots.len();
        let result = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.fetch)))
            .bind(&*shared.config.queue)
            .bind(&shared.task_names)
            .bind(wanted as i64)
            .bind(&shared.worker_id)
            .bind(shared.config.lease.as_secs_f64())
            .fetch_all(&shared.pool)
            .await;
        let rows = match result {
            Ok(rows) => rows,
            Err(error) => {
                drop(slots);
                failing = true;
                shared.database_error("fetch jobs", &error);
                tokio::select! {
                    _ = backoff.sleep() => continue,
                    _ = shared.fetching_stopped() => return,
                }
            }
        };
        if failing {
            failing = false;
            backoff.reset();
            tracing::info!(
                target: "bg_queue",
                queue = %shared.config.queue,
                worker = %shared.worker_id,
                "durable worker: fetching works again"
            );
        }
        let got = rows.len();
        backlog = got == wanted;
        for row in rows {
            let permit = slots.pop().expect("no more rows than slots");
            let job = match Fetched::from_row(&row) {
                Ok(job) => job,
                Err(error) => {
                    // The statement's own columns: cannot happen unless the
                    // table was altered by hand; the lease brings it back.
                    shared.database_error("decode a fetched row", &error);
                    continue;
                }
            };
            shared.counts.fetched.fetch_add(1, Ordering::Relaxed);
            let id = job.id;
            shared
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Held::Running(None));
            let task = tokio::spawn(attempt::run(Arc::clone(&shared), job, permit));
            if let Some(Held::Running(slot)) = shared
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&id)
            {
                *slot = Some(task.abort_handle());
            }
        }
        drop(slots);
        if got < wanted {
            // Drained: wait for a notification, the next delayed job or
            // retry coming due, or the next poll, whichever is first.
            let idle = match next_due(&shared).await {
                Ok(Some(due)) => due.min(shared.config.poll_interval),
                Ok(None) => shared.config.poll_interval,
                Err(error) => {
                    shared.database_error("fetch jobs", &error);
                    shared.config.poll_interval
                }
            };
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = shared.fetching_stopped() => return,
            }
        }
    }
}

pub(crate) const NEXT_DUE_SQL: &str = r#"
SELECT extract(epoch FROM min(run_at) - now())::float8 AS due_in
FROM {s}.bg_jobs
WHERE queue = $1
  AND state IN ('available', 'scheduled', 'retryable')
  AND run_at > now()
  AND task_name = ANY($2)
"#;

/// How long until this queue's next job not yet due comes due (none when
/// there is none). Only future rows count: a due row this worker could
/// not take (another worker's fetch had it locked) must not make it spin.
async fn next_due(shared: &Shared) -> Result<Option<Duration>, sqlx::Error> {
    let row = sqlx::query(AssertSqlSafe(Arc::clone(&shared.sql.next_due)))
        .bind(&*shared.config.queue)
        .bind(&shared.task_names)
        .fetch_one(&shared.pool)
        .await?;
    let due_in: Option<f64> = row.try_get("due_in")?;
    Ok(due_in.map(|secs| Duration::from_secs_f64(secs.max(0.0))))
}
