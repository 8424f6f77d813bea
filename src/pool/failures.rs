//! Failure events: every `failed`, `panicked` and `timed_out` run is a
//! `tracing` event, WARN (ERROR for a panic), so the error text reaches
//! the application's logs whatever else it has installed.
//!
//! Each event carries the pool, the task, the outcome, the error text (or
//! panic message), the wait and run times and the trace id where there is
//! one. Per task name, at most a few events pass per window; the others
//! are counted, and the next event that passes says how many
//! (`suppressed`): a storm of failures is summarised, not logged one line
//! per task.

use std::time::Duration;

use opentelemetry::trace::TraceId;
use tokio::time::Instant;

use super::state::Pool;
use crate::task::{Outcome, RunEnd};
use crate::telemetry::{failure_event, TaskAttributes};

/// The text of a run's error: the error's `Display`, the panic message, or
/// the timeout; `None` for a run that succeeded.
#[inline]
pub(super) fn error_text(end: &RunEnd, timeout: Option<Duration>) -> Option<String> {
    match end {
        RunEnd::Ok => None,
        RunEnd::Failed(error) => Some(error.message.clone()),
        RunEnd::Panicked(message) => Some(format!("panicked: {message}")),
        RunEnd::TimedOut => Some(match timeout {
            Some(limit) => format!("timed out after {limit:?}"),
            None => "timed out".to_owned(),
        }),
    }
}

/// A run that did not succeed, as its failure event reports it.
pub(super) struct Failure<'a> {
    pub(super) attrs: &'a TaskAttributes,
    pub(super) outcome: Outcome,
    pub(super) error: &'a str,
    pub(super) wait: Duration,
    pub(super) run: Duration,
    pub(super) trace_id: Option<TraceId>,
}

impl Pool {
    /// Logs a failure event, unless its task name's rate limit holds it
    /// back (then it is counted in the next one).
    pub(super) fn report_failure(&self, failure: Failure<'_>, now: Instant) {
        let Some(suppressed) = failure.attrs.failure_log.admit(now) else {
            return;
        };
        let trace_id = failure
            .trace_id
            .map(|id| format!("{id:032x}"))
            .unwrap_or_default();
        let wait_ms = failure.wait.as_secs_f64() * 1000.0;
        let run_ms = failure.run.as_secs_f64() * 1000.0;
        let task = failure.attrs.name;
        let outcome = failure.outcome.as_str();
        let error = failure.error;
        failure_event!(
            failure.outcome == Outcome::Panicked,
            error,
            bg.pool.name = %self.name,
            bg.task.name = task,
            bg.task.outcome = outcome,
            wait_ms,
            run_ms,
            trace_id,
            suppressed,
            "background task {task} {outcome}: {error}"
        );
    }
}
