//! The account a pool gives of itself at shutdown.

use std::fmt;
use std::time::Duration;

use crate::snapshot::{accounts_for_every_task, DroppedByReason, PoolSnapshot};

/// What became of every task a pool ever saw, returned by
/// [`BackgroundTx::shutdown`](crate::BackgroundTx::shutdown).
///
/// `spawned = completed + failed + panicked + timed_out + abandoned + queued +
/// running` holds exactly (`queued` is always 0 after a shutdown; `running`
/// is non-zero only for tasks that ignored their abort because they block
/// their thread), and every `spawn` call is in `spawned` or `dropped`.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a shutdown report accounts for abandoned tasks; log or check it"]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The pool's name.
    pub pool: String,
    /// Whether everything finished within the grace period.
    pub drained: bool,
    /// How long the shutdown took.
    pub elapsed: Duration,
    /// Accepted tasks.
    pub spawned: u64,
    /// Outcome `ok`.
    pub completed: u64,
    /// Outcome `failed`.
    pub failed: u64,
    /// Outcome `panicked`.
    pub panicked: u64,
    /// Outcome `timed_out`.
    pub timed_out: u64,
    /// Cancelled at the deadline, queued or running.
    pub abandoned: u64,
    /// Still queued (always 0 once shut down).
    pub queued: u64,
    /// Still running: tasks that did not yield to their abort in time.
    pub running: u64,
    /// Not accepted, all reasons (including calls after the shutdown began).
    pub dropped: u64,
    /// Not accepted, by reason.
    pub dropped_by_reason: DroppedByReason,
    /// Abandoned tasks by name, most first.
    pub abandoned_by_task: Vec<(String, u64)>,
}

impl ShutdownReport {
    pub(crate) fn from_snapshot(snapshot: PoolSnapshot, drained: bool, elapsed: Duration) -> Self {
        let mut abandoned_by_task: Vec<(String, u64)> = snapshot
            .tasks
            .iter()
            .filter(|task| task.abandoned > 0)
            .map(|task| (task.name.clone(), task.abandoned))
            .collect();
        abandoned_by_task.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ShutdownReport {
            pool: snapshot.name,
            drained,
            elapsed,
            spawned: snapshot.spawned,
            completed: snapshot.completed,
            failed: snapshot.failed,
            panicked: snapshot.panicked,
            timed_out: snapshot.timed_out,
            abandoned: snapshot.abandoned,
            queued: snapshot.queued,
            running: snapshot.running,
            dropped: snapshot.dropped,
            dropped_by_reason: snapshot.dropped_by_reason,
            abandoned_by_task,
        }
    }

    /// Whether every accepted task is accounted for (it always should be).
    pub fn is_consistent(&self) -> bool {
        accounts_for_every_task(
            self.spawned,
            [
                self.completed,
                self.failed,
                self.panicked,
                self.timed_out,
                self.abandoned,
                self.queued,
                self.running,
            ],
        )
    }

    /// Logs the report: INFO when everything drained, WARN otherwise.
    pub(crate) fn log(&self) {
        if self.drained {
            tracing::info!(target: "bg_queue", pool = %self.pool, "{self}");
        } else {
            tracing::warn!(target: "bg_queue", pool = %self.pool, "{self}");
        }
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool `{}` shut down in {:.3}s ({}): spawned={} completed={} failed={} panicked={} \
             timed_out={} abandoned={} running={} dropped={} (queue_full={} closed={} no_runtime={})",
            self.pool,
            self.elapsed.as_secs_f64(),
            if self.drained { "drained" } else { "deadline reached" },
            self.spawned,
            self.completed,
            self.failed,
            self.panicked,
            self.timed_out,
            self.abandoned,
            self.running,
            self.dropped,
            self.dropped_by_reason.queue_full,
            self.dropped_by_reason.closed,
            self.dropped_by_reason.no_runtime,
        )?;
        if !self.abandoned_by_task.is_empty() {
            f.write_str("; abandoned: ")?;
            for (i, (name, count)) in self.abandoned_by_task.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{name}={count}")?;
            }
        }
        Ok(())
    }
}
