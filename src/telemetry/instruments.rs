//! The pool's tracer and its synchronous instruments (the three
//! histograms); the observable ones are in `observers.rs`.

use std::time::Duration;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{Histogram, Meter};

use super::attributes::outcome_index;
#[cfg(feature = "bound-metrics")]
use super::batches::RecordBatches;
use super::table::{definition, DURATION_BUCKETS_SECONDS};
use super::{Propagation, RunSpan, TaskAttributes};
use crate::task::Outcome;

/// The pool's tracer and sync instruments.
pub(crate) struct Telemetry {
    pub(crate) propagation: Propagation,
    pub(super) run_span: RunSpan,
    pub(super) tracer: BoxedTracer,
    wait: Histogram<f64>,
    duration: Histogram<f64>,
    busy: Histogram<f64>,
    /// Whether the pool was given a meter: busy time is then measured even
    /// for runs whose spans no subscriber records.
    explicit_meter: bool,
    /// `Builder::busy_time`.
    busy_time: bool,
    /// `Builder::bound_metrics`.
    #[cfg(feature = "bound-metrics")]
    bind: bool,
    /// Where bound records wait to go to the SDK in batches.
    #[cfg(feature = "bound-metrics")]
    batches: RecordBatches,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("propagation", &self.propagation)
            .field("run_span", &self.run_span)
            .finish_non_exhaustive()
    }
}

fn histogram(meter: &Meter, name: &str) -> Histogram<f64> {
    let def = definition(name);
    meter
        .f64_histogram(def.name)
        .with_unit(def.unit)
        .with_description(def.description)
        .with_boundaries(DURATION_BUCKETS_SECONDS.to_vec())
        .build()
}

impl Telemetry {
    pub(crate) fn new(
        propagation: Propagation,
        run_span: RunSpan,
        tracer: BoxedTracer,
        meter: &Meter,
        explicit_meter: bool,
        busy_time: bool,
        bind: bool,
    ) -> Self {
        // Without the feature every record is unbound (`bind` is false).
        #[cfg(not(feature = "bound-metrics"))]
        let _ = bind;
        Telemetry {
            propagation,
            run_span,
            tracer,
            wait: histogram(meter, "bg.task.wait"),
            duration: histogram(meter, "bg.task.duration"),
            busy: histogram(meter, "bg.task.busy"),
            explicit_meter,
            busy_time,
            #[cfg(feature = "bound-metrics")]
            bind,
            // One shard per thread that may run tasks: the runtime's workers,
            // by default one per core, and some to spare for other threads.
            #[cfg(feature = "bound-metrics")]
            batches: RecordBatches::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get) * 2,
            ),
        }
    }

    /// Whether to measure a run's busy time: when telemetry is on for it,
    /// that is when a subscriber records its spans (`spans_recorded`) or
    /// the pool was given a meter. Off, a run pays no clock reads for it.
    #[inline]
    pub(crate) fn measures_busy(&self, spans_recorded: bool) -> bool {
        self.busy_time && (spans_recorded || self.explicit_meter)
    }

    pub(crate) fn record_wait(&self, attrs: &TaskAttributes, wait: Duration) {
        let wait = wait.as_secs_f64();
        #[cfg(feature = "bound-metrics")]
        if self.bind {
            let bound = attrs.wait_recorder.bound(&self.wait, &attrs.pool_task);
            self.batches.record(&[(bound, wait)]);
            return;
        }
        self.wait.record(wait, &attrs.pool_task);
    }

    /// Records a run's end: its run time by outcome and, if measured, its
    /// busy time (through one batch lock when bound).
    pub(crate) fn record_end(
        &self,
        attrs: &TaskAttributes,
        outcome: Outcome,
        run: Duration,
        busy: Option<Duration>,
    ) {
        let (set, _recorder) = &attrs.by_outcome[outcome_index(outcome)];
        let run = run.as_secs_f64();
        let busy = busy.map(|busy| busy.as_secs_f64());
        #[cfg(feature = "bound-metrics")]
        if self.bind {
            let run = (_recorder.bound(&self.duration, set), run);
            match busy {
                Some(busy) => {
                    let bound = attrs.busy_recorder.bound(&self.busy, &attrs.pool_task);
                    self.batches.record(&[run, (bound, busy)]);
                }
                None => self.batches.record(&[run]),
            }
            return;
        }
        self.duration.record(run, set);
        if let Some(busy) = busy {
            self.busy.record(busy, &attrs.pool_task);
        }
    }

    /// Hands the values held in batches to the meter (at each collection,
    /// through the pool's observable instruments).
    pub(crate) fn flush_records(&self) {
        #[cfg(feature = "bound-metrics")]
        self.batches.flush();
    }
}
