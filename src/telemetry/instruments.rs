//! The pool's tracer and its synchronous instruments (the three
//! histograms); the observable ones are in `observers.rs`.

use std::time::Duration;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{Histogram, Meter};

use super::attributes::outcome_index;
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
    /// `Builder::bound_metrics`; always false without the feature.
    bind: bool,
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
        Telemetry {
            propagation,
            run_span,
            tracer,
            wait: histogram(meter, "bg.task.wait"),
            duration: histogram(meter, "bg.task.duration"),
            busy: histogram(meter, "bg.task.busy"),
            explicit_meter,
            busy_time,
            bind,
        }
    }

    /// Whether to measure a run's busy time: when telemetry is on for it,
    /// that is when a subscriber records its spans (`spans_recorded`) or
    /// the pool was given a meter. Off, a run pays no clock reads for it.
    #[inline]
    pub(crate) fn measures_busy(&self, spans_recorded: bool) -> bool {
        self.busy_time && (spans_recorded || self.explicit_meter)
    }

    pub(crate) fn record_busy(&self, attrs: &TaskAttributes, busy: Duration) {
        attrs
            .busy_recorder
            .record(&self.busy, &attrs.pool_task, busy.as_secs_f64(), self.bind);
    }
    pub(crate) fn record_wait(&self, attrs: &TaskAttributes, wait: Duration) {
        attrs
            .wait_recorder
            .record(&self.wait, &attrs.pool_task, wait.as_secs_f64(), self.bind);
    }

    pub(crate) fn record_duration(&self, attrs: &TaskAttributes, outcome: Outcome, run: Duration) {
        let (set, recorder) = &attrs.by_outcome[outcome_index(outcome)];
        recorder.record(&self.duration, set, run.as_secs_f64(), self.bind);
    }
}
