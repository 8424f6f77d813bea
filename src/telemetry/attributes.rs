//! Per task name: the attribute sets and span names the hot paths use,
//! built once when a name is first seen.

use std::sync::Arc;
#[cfg(feature = "bound-metrics")]
use std::sync::OnceLock;

#[cfg(feature = "bound-metrics")]
use opentelemetry::metrics::BoundHistogram;
#[cfg(feature = "bound-metrics")]
use opentelemetry::metrics::Histogram;
use opentelemetry::KeyValue;

use super::names;
use crate::rate_limit::RateLimit;
use crate::task::Outcome;

/// Failure events logged per task name: at most this many per
/// [`FAILURE_LOG_WINDOW`], the rest counted in the next line.
const FAILURE_LOG_BURST: u32 = 3;
/// See [`FAILURE_LOG_BURST`].
const FAILURE_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Per task name: attribute sets and span names, built once when the name is
/// first used, so the hot paths never allocate them.
pub(crate) struct TaskAttributes {
    pub(crate) name: &'static str,
    pub(super) task_span_name: &'static str,
    pub(super) run_span_name: &'static str,
    pub(crate) pool_task: Vec<KeyValue>,
    /// How `bg.task.wait` records into `pool_task`.
    #[cfg(feature = "bound-metrics")]
    pub(super) wait_recorder: SetRecorder,
    /// How `bg.task.busy` records into `pool_task`.
    #[cfg(feature = "bound-metrics")]
    pub(super) busy_recorder: SetRecorder,
    /// Per outcome (the run outcomes, then `abandoned`; see
    /// [`outcome_index`]): its attribute set, and how `bg.task.duration`
    /// records into it.
    pub(super) by_outcome: Vec<(Vec<KeyValue>, SetRecorder)>,
    /// Rate limit of this name's failure events.
    pub(crate) failure_log: RateLimit,
}

/// A histogram's handle bound to one attribute set, for the bound records
/// (`bound-metrics`, unless the pool was built with `bound_metrics(false)`;
/// otherwise it stays empty and the set goes with every record). Bound at
/// the set's first record: outside the pool's lock (binding calls into the
/// meter), and not before, because the SDK exports a bound set from the
/// moment it is bound, with a count of 0 if nothing was recorded, where an
/// unbound one appears at its first record. Only the pool that made a
/// [`TaskAttributes`] records through it, so the handle is always bound to
/// that pool's instrument.
#[derive(Default)]
pub(super) struct SetRecorder(#[cfg(feature = "bound-metrics")] OnceLock<Arc<BoundHistogram<f64>>>);

impl SetRecorder {
    /// The handle bound to `set`, bound at the first call.
    #[cfg(feature = "bound-metrics")]
    #[inline]
    pub(super) fn bound(
        &self,
        histogram: &Histogram<f64>,
        set: &[KeyValue],
    ) -> &Arc<BoundHistogram<f64>> {
        self.0.get_or_init(|| Arc::new(histogram.bind(set)))
    }
}

impl TaskAttributes {
    pub(crate) fn new(pool: &Arc<str>, name: &'static str) -> Self {
        // `Arc<str>` values: cloning an attribute set never copies strings.
        let pool_task = vec![
            KeyValue::new(names::POOL_NAME, Arc::clone(pool)),
            KeyValue::new(names::TASK_NAME, name),
        ];
        let by_outcome = Outcome::RUN_OUTCOMES
            .iter()
            .chain(&[Outcome::Abandoned])
            .map(|outcome| {
                let mut set = pool_task.clone();
                set.push(KeyValue::new(names::TASK_OUTCOME, outcome.as_str()));
                (set, SetRecorder::default())
            })
            .collect();
        // Leaked once per (pool, task name): names are `&'static str`, so
        // their number is bounded by the program's text.
        TaskAttributes {
            name,
            task_span_name: Box::leak(format!("bg {name}").into_boxed_str()),
            run_span_name: Box::leak(format!("run {name}").into_boxed_str()),
            pool_task,
            #[cfg(feature = "bound-metrics")]
            wait_recorder: SetRecorder::default(),
            #[cfg(feature = "bound-metrics")]
            busy_recorder: SetRecorder::default(),
            by_outcome,
            failure_log: RateLimit::new(FAILURE_LOG_BURST, FAILURE_LOG_WINDOW),
        }
    }
}

/// Where an outcome's attribute set is in `TaskAttributes::by_outcome`.
pub(super) fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Abandoned => Outcome::RUN_OUTCOMES.len(),
        other => other.run_index(),
    }
}
