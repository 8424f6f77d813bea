//! Shutdown: stop accepting, drain within a deadline, then abandon what is
//! left and account for every task in the report.

use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::state::{Phase, Pool};
use crate::report::ShutdownReport;

/// After the shutdown deadline, how long to wait for aborted runners to
/// unwind before reporting them as still running.
const ABORT_SETTLE: Duration = Duration::from_secs(1);

/// `name=count, ...`, for log lines that list tasks by name.
pub(crate) fn format_counts(counts: &[(&'static str, u64)]) -> String {
    counts
        .iter()
        .map(|(name, count)| format!("{name}={count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Pool {
    /// Abandons every queued task, including any admitted by a `spawn` that
    /// is still between its claim and its send (admission must be closed
    /// first, so that number only shrinks). Such a call is a few
    /// instructions from done, so this yields rather than waits.
    pub(super) fn abandon_queued(&self) -> Vec<(&'static str, u64)> {
        loop {
            let now = self.now();
            let mut state = self.lock_absorbed(now);
            // Under the lock, nothing starts or is abandoned meanwhile: the
            // difference is tasks still on their way into the inbox.
            if self.admission.admitted() == state.queue.len() as u64 {
                let (abandoned, tasks) = state.abandon_queued(&self.admission, now);
                drop(state);
                drop(tasks);
                return abandoned;
            }
            drop(state);
            std::thread::yield_now();
        }
    }

    /// See [`BackgroundTx::shutdown`](super::BackgroundTx::shutdown).
    pub(super) async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        let deadline = Instant::now() + grace;
        {
            let mut state = self.lock();
            if state.phase == Phase::Open {
                state.phase = Phase::Draining;
            }
            self.close_admission();
        }
        self.release_standby();
        let drained = self.wait_idle(Some(deadline)).await;
        if !drained {
            self.abandon_at_deadline().await;
        }
        let snapshot = {
            let mut state = self.lock();
            if state.phase != Phase::NoRuntime {
                state.phase = Phase::Closed;
            }
            drop(state);
            self.snapshot()
        };
        // Every run that ended has recorded its end by now (a runner wakes
        // the idle waiters only after recording): hand the held histogram
        // values to the meter, so the application's final collection (at
        // its meter provider's shutdown) has them. A runner reported still
        // running records when it ends; its values go with the next
        // collection or the pool's drop.
        self.telemetry.flush_records();
        let report = ShutdownReport::from_snapshot(snapshot, drained, started.elapsed());
        report.log();
        report
    }

    /// The deadline passed: abandons the queue, aborts the runners (each
    /// guard counts its task abandoned) and gives them [`ABORT_SETTLE`] to
    /// unwind.
    async fn abandon_at_deadline(&self) {
        {
            let mut state = self.lock();
            if matches!(state.phase, Phase::Draining | Phase::Open) {
                state.phase = Phase::Aborting;
            }
        }
        let abandoned = self.abandon_queued();
        let aborts: Vec<AbortHandle> = self
            .lock()
            .runners
            .iter_mut()
            .filter_map(|slot| slot.abort.take())
            .collect();
        if !abandoned.is_empty() {
            tracing::warn!(
                target: "bg_queue",
                pool = %self.name,
                "shutdown deadline reached; abandoned queued tasks: {}",
                format_counts(&abandoned)
            );
        }
        for abort in &aborts {
            abort.abort();
        }
        self.wait_idle(Some(Instant::now() + ABORT_SETTLE)).await;
    }

    /// Waits until nothing is queued or running (or the deadline passes);
    /// returns whether the pool is idle.
    pub(super) async fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so an exit between the check and
            // the await still wakes us.
            notified.as_mut().enable();
            if self.is_idle() {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.is_idle();
                    }
                }
                None => notified.await,
            }
        }
    }
}
