//! Spans and OpenTelemetry instruments: the one table that names them, and
//! the code that records them.
//!
//! # When each piece runs
//!
//! - In `spawn` (the caller's path): the caller's OpenTelemetry context is
//!   captured (a thread-local read); nothing is built. A dropped task gets its
//!   `bg.task` span here, started and ended at once.
//! - When a runner picks the task up: the `bg.run` tracing span is created
//!   and, if a subscriber enabled it, the `bg.task` span is started with its
//!   start time set back to the enqueue instant; the wait is recorded.
//! - When the task ends: outcome and status are set, `bg.run` then `bg.task`
//!   end, the run time is recorded.
//! - At each metric collection: the observable instruments read the pool's
//!   counters under its lock (no hot-path cost at all).
//!
//! `bg.run` goes through `tracing`, so the user's own spans nest under it with
//! any subscriber. `bg.task` is started through the OpenTelemetry tracer the
//! pool was built with, because only that API can set a start time in the
//! past; `bg.run` is parented to it through `tracing-opentelemetry`'s
//! `set_parent`, so the exported tree is caller -> `bg.task` -> `bg.run` ->
//! user spans. Spans are recorded only when the current `tracing` subscriber
//! enables INFO for target `bg_queue`.
//!
//! With [`RunSpan::OpenTelemetry`] (opt-in), `bg.run` is also started
//! through the tracer, and its context is attached while the task is polled:
//! the exported tree is the same, at about half the span cost, but
//! subscribers other than the OpenTelemetry layer no longer see `bg.run`.

use std::borrow::Cow;
#[cfg(feature = "bound-metrics")]
use std::sync::OnceLock;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use opentelemetry::global::BoxedTracer;
#[cfg(feature = "bound-metrics")]
use opentelemetry::metrics::BoundHistogram;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::trace::{Link, Span as _, Status, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::stats::TaskStats;
use crate::task::{CatchPanic, Outcome, RunEnd, TaskFuture};
use crate::DropReason;

/// Attributes [`Telemetry::finish_spans`] adds to a span the pool started
/// through the OpenTelemetry API: `bg.task.outcome`, and `error.type` for a
/// non-ok outcome.
const FINISH_ATTRIBUTES: usize = 2;

/// Span, attribute and metric names: the contract dashboards and alerts read.
pub mod names {
    /// Span covering a task from `spawn` to its end (display name `bg <task>`).
    pub const SPAN_TASK: &str = "bg.task";
    /// Span covering a task's execution (display name `run <task>`).
    pub const SPAN_RUN: &str = "bg.run";
    /// Attribute: the pool's name.
    pub const POOL_NAME: &str = "bg.pool.name";
    /// Attribute: the task name given to `spawn`.
    pub const TASK_NAME: &str = "bg.task.name";
    /// Attribute: how the task ended (`ok`, `failed`, ...).
    pub const TASK_OUTCOME: &str = "bg.task.outcome";
    /// Attribute: why a task was dropped (`queue_full`, ...).
    pub const DROP_REASON: &str = "bg.drop.reason";
    /// Attribute: milliseconds between `spawn` and the start of the run.
    pub const TASK_WAIT_MS: &str = "bg.task.wait_ms";
    /// Attribute: queue depth seen at enqueue.
    pub const QUEUE_DEPTH: &str = "bg.queue.depth";
    /// Attribute: the error's type on non-ok outcomes.
    pub const ERROR_TYPE: &str = "error.type";
}

/// The kind of an OpenTelemetry instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrumentKind {
    /// Monotonic sum (exported as a Prometheus counter, `_total`).
    Counter,
    /// Non-monotonic sum.
    UpDownCounter,
    /// Last value.
    Gauge,
    /// Distribution with explicit buckets.
    Histogram,
}

/// One metric the crate exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDefinition {
    /// OpenTelemetry instrument name.
    pub name: &'static str,
    /// Instrument kind.
    pub kind: InstrumentKind,
    /// UCUM unit.
    pub unit: &'static str,
    /// Attribute keys on every data point.
    pub attributes: &'static [&'static str],
    /// One-line meaning, also the instrument's description.
    pub description: &'static str,
}

const POOL: &[&str] = &[names::POOL_NAME];
const POOL_TASK: &[&str] = &[names::POOL_NAME, names::TASK_NAME];

/// Every metric the crate exports. The README and `DESIGN.md` mirror this
/// table; a test fails when the exported metrics and this table disagree.
pub const METRICS: [MetricDefinition; 9] = [
    MetricDefinition {
        name: "bg.task.spawned",
        kind: InstrumentKind::Counter,
        unit: "{task}",
        attributes: POOL_TASK,
        description: "Tasks accepted by spawn (recorded at the spawn call).",
    },
    MetricDefinition {
        name: "bg.task.dropped",
        kind: InstrumentKind::Counter,
        unit: "{task}",
        attributes: &[names::POOL_NAME, names::TASK_NAME, names::DROP_REASON],
        description: "Tasks not accepted, by reason (recorded at the spawn call).",
    },
    MetricDefinition {
        name: "bg.task.wait",
        kind: InstrumentKind::Histogram,
        unit: "s",
        attributes: POOL_TASK,
        description: "Time from spawn to the start of the run (recorded when the run starts).",
    },
    MetricDefinition {
        name: "bg.task.duration",
        kind: InstrumentKind::Histogram,
        unit: "s",
        attributes: &[names::POOL_NAME, names::TASK_NAME, names::TASK_OUTCOME],
        description: "Run time, by outcome (recorded when the run ends; abandoned runs included).",
    },
    MetricDefinition {
        name: "bg.queue.depth",
        kind: InstrumentKind::UpDownCounter,
        unit: "{task}",
        attributes: POOL_TASK,
        description: "Tasks accepted and waiting for a runner (read at collection).",
    },
    MetricDefinition {
        name: "bg.task.active",
        kind: InstrumentKind::UpDownCounter,
        unit: "{task}",
        attributes: POOL_TASK,
        description: "Tasks running now (read at collection).",
    },
    MetricDefinition {
        name: "bg.queue.capacity",
        kind: InstrumentKind::Gauge,
        unit: "{task}",
        attributes: POOL,
        description: "Most tasks that may wait in the queue (configuration).",
    },
    MetricDefinition {
        name: "bg.pool.parallelism",
        kind: InstrumentKind::Gauge,
        unit: "{task}",
        attributes: POOL,
        description: "Most tasks that run at once (configuration).",
    },
    MetricDefinition {
        name: "bg.queue.oldest_age",
        kind: InstrumentKind::Gauge,
        unit: "s",
        attributes: POOL,
        description:
            "Age of the oldest queued task, 0 when the queue is empty (read at collection).",
    },
];

/// Explicit histogram buckets, in seconds: 0.5 ms to 120 s.
pub const DURATION_BUCKETS_SECONDS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

fn definition(name: &str) -> &'static MetricDefinition {
    METRICS
        .iter()
        .find(|metric| metric.name == name)
        .expect("every instrument is in METRICS")
}

/// How a task's spans relate to the span that was current at `spawn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// `bg.task` is a child of the caller's span, in the caller's trace.
    /// Right for work that belongs to the request (a receipt email): the
    /// trace shows the request and its background work together. Default.
    #[default]
    Child,
    /// `bg.task` stays in the caller's trace (so drops and the wait show
    /// there), but `bg.run` starts a new trace with a link to the caller's
    /// span. Right for work that runs long after the request, or fans out
    /// into many spans that would bloat the request's trace (the
    /// OpenTelemetry messaging conventions' default).
    Link,
    /// No relation: each task is its own trace. Right for periodic or
    /// internal work that has no meaningful caller.
    None,
}

/// How the `bg.run` span is made.
///
/// The exported OpenTelemetry tree is the same either way (caller ->
/// `bg.task` -> `bg.run` -> the task's own spans, with the same names and
/// attributes); what differs is who else sees `bg.run`, and what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunSpan {
    /// A `tracing` span (default): every subscriber sees it, so a `fmt`
    /// log line from inside the task carries `bg.run{bg.task.name=...}`,
    /// and `tracing-opentelemetry` turns it into the OTel span.
    #[default]
    Tracing,
    /// An OpenTelemetry span started through the pool's tracer, its context
    /// attached while the task is polled. The task's own `tracing` spans
    /// still nest under it (`tracing-opentelemetry` parents a span with no
    /// `tracing` parent to the current OpenTelemetry context, with context
    /// activation, its default), at about half the cost per task (see
    /// `BENCHMARKS.md`). Other subscribers, such as `fmt`, no longer see a
    /// `bg.run` span around the task. Pick it for high task rates with
    /// OpenTelemetry as the main consumer.
    OpenTelemetry,
}

/// Per task name: attribute sets and span names, built once when the name is
/// first used, so the hot paths never allocate them.
pub(crate) struct TaskAttributes {
    pub(crate) name: &'static str,
    task_span_name: &'static str,
    run_span_name: &'static str,
    pool_task: Vec<KeyValue>,
    /// How `bg.task.wait` records into `pool_task`.
    wait_recorder: SetRecorder,
    /// Per outcome (the run outcomes, then `abandoned`; see
    /// [`outcome_index`]): its attribute set, and how `bg.task.duration`
    /// records into it.
    by_outcome: Vec<(Vec<KeyValue>, SetRecorder)>,
}

/// How a histogram records into one attribute set. With `bound-metrics`,
/// through a handle bound to the set at its first record: outside the
/// pool's lock (binding calls into the meter), and not before, because the
/// SDK exports a bound set from the moment it is bound, with a count of 0 if
/// nothing was recorded, where an unbound one appears at its first record.
/// Only the pool that made a [`TaskAttributes`] records through it, so the
/// handle is always bound to that pool's instrument. Without the feature,
/// nothing: the set goes with every record.
#[derive(Default)]
struct SetRecorder(#[cfg(feature = "bound-metrics")] OnceLock<BoundHistogram<f64>>);

impl SetRecorder {
    fn record(&self, histogram: &Histogram<f64>, set: &[KeyValue], value: f64) {
        #[cfg(feature = "bound-metrics")]
        self.0.get_or_init(|| histogram.bind(set)).record(value);
        #[cfg(not(feature = "bound-metrics"))]
        histogram.record(value, set);
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
            wait_recorder: SetRecorder::default(),
            by_outcome,
        }
    }
}

/// Where an outcome's attribute set is in `TaskAttributes::by_outcome`.
fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Abandoned => Outcome::RUN_OUTCOMES.len(),
        other => other.run_index(),
    }
}

/// The `bg.run` span, made one way or the other (see [`RunSpan`]).
#[derive(Clone)]
enum RunHandle {
    Tracing(tracing::Span),
    /// A context holding the OpenTelemetry `bg.run` span.
    OpenTelemetry(Context),
}

/// The spans of one running task.
pub(crate) struct TaskSpans {
    run: RunHandle,
    /// Context holding the `bg.task` span (None when spans are off).
    task: Option<Context>,
}

/// A task future running inside its `bg.run` span: the span (or its
/// OpenTelemetry context) is current whenever the future is polled or
/// dropped.
///
/// Unlike `tracing::Instrumented`, it does not enter the span a second time
/// to drop a future that has completed ([`CatchPanic`] drops it inside
/// `poll`, so inside the span; with `tracing-opentelemetry` that second entry
/// was about 7% of a task's instructions). A future dropped before it
/// completes (timed out, aborted, abandoned) is dropped inside the span too.
pub(crate) struct Scoped {
    run: RunHandle,
    task: CatchPanic<TaskFuture>,
}

/// Keeps `bg.run` current while it lives (the guards act on drop).
enum Current<'a> {
    Tracing {
        _entered: tracing::span::Entered<'a>,
    },
    OpenTelemetry {
        _attached: opentelemetry::ContextGuard,
    },
}

impl RunHandle {
    /// Makes `bg.run` current until the returned guard is dropped.
    fn enter(&self) -> Current<'_> {
        match self {
            RunHandle::Tracing(span) => Current::Tracing {
                _entered: span.enter(),
            },
            RunHandle::OpenTelemetry(cx) => Current::OpenTelemetry {
                _attached: cx.clone().attach(),
            },
        }
    }
}

impl std::future::Future for Scoped {
    type Output = <CatchPanic<TaskFuture> as std::future::Future>::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // `Unpin`: the task future is boxed.
        let this = self.get_mut();
        let _current = this.run.enter();
        std::pin::Pin::new(&mut this.task).poll(cx)
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if self.task.is_unfinished() {
            // While a runner's panic unwinds (from the application's
            // subscriber, perhaps in this very span's `enter`), entering the
            // span again could panic again, which aborts the process.
            let _current = (!std::thread::panicking()).then(|| self.run.enter());
            let _ = self.task.release();
        }
    }
}

impl TaskSpans {
    /// Runs `task` inside `bg.run`.
    pub(crate) fn scope(&self, task: CatchPanic<TaskFuture>) -> Scoped {
        Scoped {
            run: self.run.clone(),
            task,
        }
    }

    /// Trace id of `bg.task`, for the "slowest" list.
    pub(crate) fn trace_id(&self) -> Option<TraceId> {
        self.task.as_ref().and_then(trace_id_of)
    }
}

/// Whether this thread has a real subscriber. `tracing` caches callsite
/// interest across dispatchers, so on a thread with none (while another
/// thread has one) a span can look enabled; checking here keeps such a
/// thread from building OpenTelemetry spans nobody asked for.
fn subscriber_present() -> bool {
    tracing::dispatcher::get_default(|dispatch| !dispatch.is::<tracing::subscriber::NoSubscriber>())
}

pub(crate) fn trace_id_of(cx: &Context) -> Option<TraceId> {
    let span = cx.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id())
}

/// The pool's tracer and sync instruments.
pub(crate) struct Telemetry {
    pub(crate) propagation: Propagation,
    run_span: RunSpan,
    tracer: BoxedTracer,
    wait: Histogram<f64>,
    duration: Histogram<f64>,
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
    ) -> Self {
        Telemetry {
            propagation,
            run_span,
            tracer,
            wait: histogram(meter, "bg.task.wait"),
            duration: histogram(meter, "bg.task.duration"),
        }
    }

    /// The caller's context, captured in `spawn` (a thread-local read when
    /// a subscriber with context activation entered the caller's span), and
    /// whether this thread has a subscriber (so the drop path asks once).
    pub(crate) fn capture_parent(&self) -> (Context, bool) {
        if !tracing::dispatcher::has_been_set() {
            return (Context::new(), false);
        }
        let traced = subscriber_present();
        // No subscriber here: no span can be current, and without one the
        // pool makes no spans from this context either.
        if !traced || self.propagation == Propagation::None {
            return (Context::new(), traced);
        }
        let current = Context::current();
        if current.has_active_span() {
            return (current, traced);
        }
        // Subscribers built without context activation: ask the span.
        let span = tracing::Span::current();
        if span.is_none() {
            (current, traced)
        } else {
            (span.context(), traced)
        }
    }

    /// Starts `bg.task` (backdated to the enqueue instant) and `bg.run`.
    ///
    /// Attribute vectors are sized for [`FINISH_ATTRIBUTES`] more.
    pub(crate) fn start_spans(
        &self,
        pool: &str,
        attrs: &TaskAttributes,
        parent: Context,
        wait: Duration,
        depth: u32,
    ) -> TaskSpans {
        let wait_ms = wait.as_secs_f64() * 1000.0;
        let run_tracing = match self.run_span {
            RunSpan::Tracing => {
                let run = tracing::info_span!(
                    target: "bg_queue",
                    parent: None,
                    "bg.run",
                    otel.name = attrs.run_span_name,
                    bg.pool.name = pool,
                    bg.task.name = attrs.name,
                    bg.task.wait_ms = wait_ms,
                    bg.task.outcome = tracing::field::Empty,
                    // Recorded for non-ok outcomes, like the outcome: as a
                    // field, every subscriber sees it.
                    error.type = tracing::field::Empty,
                );
                if run.is_disabled() || !subscriber_present() {
                    return TaskSpans {
                        run: RunHandle::Tracing(run),
                        task: None,
                    };
                }
                Some(run)
            }
            RunSpan::OpenTelemetry => {
                if !subscriber_present()
                    || !tracing::enabled!(target: "bg_queue", tracing::Level::INFO)
                {
                    return TaskSpans {
                        run: RunHandle::Tracing(tracing::Span::none()),
                        task: None,
                    };
                }
                None
            }
        };
        let parent = match self.propagation {
            Propagation::None => Context::new(),
            Propagation::Child | Propagation::Link => parent,
        };
        let start = SystemTime::now()
            .checked_sub(wait)
            .unwrap_or_else(SystemTime::now);
        // Sized once for everything the span will carry: the SDK keeps this
        // vector and `finish_spans` pushes the outcome (and, for a failure,
        // the error type) onto it, which would otherwise reallocate it on
        // every task.
        let mut attributes = Vec::with_capacity(attrs.pool_task.len() + 2 + FINISH_ATTRIBUTES);
        attributes.extend(attrs.pool_task.iter().cloned());
        attributes.push(KeyValue::new(names::TASK_WAIT_MS, wait_ms));
        attributes.push(KeyValue::new(names::QUEUE_DEPTH, i64::from(depth)));
        let task_span = self
            .tracer
            .span_builder(Cow::Borrowed(attrs.task_span_name))
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let task = parent.with_span(task_span);
        let link = self.propagation == Propagation::Link;
        let run = match run_tracing {
            Some(run) => {
                // `set_parent` only fails when no OpenTelemetry layer is
                // installed (then there is no parent to set) or the span was
                // already started, which cannot happen: it was created just
                // above and never entered.
                if link {
                    let _ = run.set_parent(Context::new());
                    run.add_link(parent.span().span_context().clone());
                } else {
                    let _ = run.set_parent(task.clone());
                }
                RunHandle::Tracing(run)
            }
            None => {
                let mut attributes =
                    Vec::with_capacity(attrs.pool_task.len() + 1 + FINISH_ATTRIBUTES);
                attributes.extend(attrs.pool_task.iter().cloned());
                attributes.push(KeyValue::new(names::TASK_WAIT_MS, wait_ms));
                let mut builder = self
                    .tracer
                    .span_builder(Cow::Borrowed(attrs.run_span_name))
                    .with_attributes(attributes);
                let run_parent = if link {
                    builder = builder.with_links(vec![Link::with_context(
                        parent.span().span_context().clone(),
                    )]);
                    Context::new()
                } else {
                    task.clone()
                };
                let span = builder.start_with_context(&self.tracer, &run_parent);
                RunHandle::OpenTelemetry(run_parent.with_span(span))
            }
        };
        TaskSpans {
            run,
            task: Some(task),
        }
    }

    /// Sets outcome and status, then ends `bg.run` and `bg.task`.
    pub(crate) fn finish_spans(spans: TaskSpans, outcome: Outcome, end: Option<&RunEnd>) {
        let TaskSpans { run, task } = spans;
        let error = end.and_then(error_details).or_else(|| {
            (outcome == Outcome::Abandoned)
                .then(|| ("abandoned at the shutdown deadline".into(), "abandoned"))
        });
        match run {
            RunHandle::Tracing(run) => {
                if !run.is_disabled() {
                    run.record(names::TASK_OUTCOME, outcome.as_str());
                    if let Some((message, error_type)) = &error {
                        run.record(names::ERROR_TYPE, *error_type);
                        run.set_status(Status::error(message.clone()));
                    }
                }
            }
            RunHandle::OpenTelemetry(cx) => end_with_outcome(&cx, outcome, error.as_ref()),
        }
        if let Some(task) = task {
            end_with_outcome(&task, outcome, error.as_ref());
        }
    }

    /// Records a dropped task's `bg.task` span (ended at once). Called only
    /// when the caller's thread has a subscriber.
    pub(crate) fn drop_span(
        &self,
        attrs: &TaskAttributes,
        parent: &Context,
        reason: DropReason,
        depth: u64,
    ) {
        if !tracing::enabled!(target: "bg_queue", tracing::Level::INFO) {
            return;
        }
        let mut attributes = Vec::with_capacity(6);
        attributes.extend(attrs.pool_task.iter().cloned());
        attributes.extend([
            KeyValue::new(names::TASK_OUTCOME, Outcome::Dropped.as_str()),
            KeyValue::new(names::DROP_REASON, reason.as_str()),
            KeyValue::new(names::QUEUE_DEPTH, i64::try_from(depth).unwrap_or(i64::MAX)),
            KeyValue::new(names::ERROR_TYPE, reason.as_str()),
        ]);
        let parent = match self.propagation {
            Propagation::None => &Context::new(),
            Propagation::Child | Propagation::Link => parent,
        };
        let mut span = self
            .tracer
            .span_builder(Cow::Borrowed(attrs.task_span_name))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        span.set_status(Status::error(drop_status(reason)));
        span.end();
    }

    pub(crate) fn record_wait(&self, attrs: &TaskAttributes, wait: Duration) {
        attrs
            .wait_recorder
            .record(&self.wait, &attrs.pool_task, wait.as_secs_f64());
    }

    pub(crate) fn record_duration(&self, attrs: &TaskAttributes, outcome: Outcome, run: Duration) {
        let (set, recorder) = &attrs.by_outcome[outcome_index(outcome)];
        recorder.record(&self.duration, set, run.as_secs_f64());
    }
}

/// The status message of a drop span (static: no allocation per drop).
fn drop_status(reason: DropReason) -> &'static str {
    match reason {
        DropReason::QueueFull => "dropped: queue_full",
        DropReason::Closed => "dropped: closed",
        DropReason::Shutdown => "dropped: shutdown",
        DropReason::NoRuntime => "dropped: no_runtime",
    }
}

/// Sets the outcome (and, for an error, its type and status) on the span in
/// `cx`, which the pool started through the OpenTelemetry API, and ends it.
fn end_with_outcome(cx: &Context, outcome: Outcome, error: Option<&(String, &'static str)>) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(names::TASK_OUTCOME, outcome.as_str()));
    if let Some((message, error_type)) = error {
        span.set_attribute(KeyValue::new(names::ERROR_TYPE, *error_type));
        span.set_status(Status::error(message.clone()));
    }
    span.end();
}

fn error_details(end: &RunEnd) -> Option<(String, &'static str)> {
    match end {
        RunEnd::Ok => None,
        RunEnd::Failed(error) => Some((error.message.clone(), error.type_name)),
        RunEnd::Panicked(message) => Some((format!("panicked: {message}"), "panic")),
        RunEnd::TimedOut => Some(("timed out".into(), "timeout")),
    }
}

/// Registers the observable instruments; their callbacks read the pool
/// through a weak reference, so a dropped pool simply stops reporting.
/// What the observable instruments read from a pool at each collection.
/// The pool implements it; telemetry knows nothing else of the pool.
pub(crate) trait PoolView: Send + Sync + 'static {
    /// `bg.pool.name` with the pool's name.
    fn name_attribute(&self) -> KeyValue;
    /// The pool's capacity.
    fn capacity(&self) -> usize;
    /// The pool's parallelism.
    fn parallelism(&self) -> usize;
    /// Age of the oldest queued task, zero when none is queued.
    fn oldest_queued_age(&self) -> Duration;
    /// Calls `f` with each task name's attributes and counters, under the
    /// pool's lock (one consistent cut).
    fn for_each_task(&self, f: &mut dyn FnMut(&TaskAttributes, &TaskStats));
}

/// Registers the pool's observable instruments. They hold the pool weakly:
/// a pool that is gone reports nothing.
pub(crate) fn register_observers(meter: &Meter, pool: Weak<dyn PoolView>) {
    let spawned = definition("bg.task.spawned");
    let weak = pool.clone();
    meter
        .u64_observable_counter(spawned.name)
        .with_unit(spawned.unit)
        .with_description(spawned.description)
        .with_callback(move |observer| {
            if let Some(pool) = weak.upgrade() {
                pool.for_each_task(&mut |attrs, stats| {
                    observer.observe(stats.spawned, &attrs.pool_task)
                });
            }
        })
        .build();

    let dropped = definition("bg.task.dropped");
    let weak = pool.clone();
    meter
        .u64_observable_counter(dropped.name)
        .with_unit(dropped.unit)
        .with_description(dropped.description)
        .with_callback(move |observer| {
            if let Some(pool) = weak.upgrade() {
                pool.for_each_task(&mut |attrs, stats| {
                    let counts = stats.dropped.by_reason();
                    for reason in DropReason::ALL {
                        let count = counts[reason.index()];
                        if count > 0 {
                            let mut set = attrs.pool_task.clone();
                            set.push(KeyValue::new(names::DROP_REASON, reason.as_str()));
                            observer.observe(count, &set);
                        }
                    }
                });
            }
        })
        .build();

    for (name, read) in [
        (
            "bg.queue.depth",
            (|stats| stats.queued) as fn(&TaskStats) -> u64,
        ),
        ("bg.task.active", |stats| stats.running),
    ] {
        let def = definition(name);
        let weak = pool.clone();
        meter
            .i64_observable_up_down_counter(def.name)
            .with_unit(def.unit)
            .with_description(def.description)
            .with_callback(move |observer| {
                if let Some(pool) = weak.upgrade() {
                    pool.for_each_task(&mut |attrs, stats| {
                        observer.observe(read(stats) as i64, &attrs.pool_task)
                    });
                }
            })
            .build();
    }

    for (name, read) in [
        (
            "bg.queue.capacity",
            (|pool| pool.capacity() as f64) as fn(&dyn PoolView) -> f64,
        ),
        ("bg.pool.parallelism", |pool| pool.parallelism() as f64),
    ] {
        let def = definition(name);
        let weak = pool.clone();
        meter
            .u64_observable_gauge(def.name)
            .with_unit(def.unit)
            .with_description(def.description)
            .with_callback(move |observer| {
                if let Some(pool) = weak.upgrade() {
                    observer.observe(read(&*pool) as u64, &[pool.name_attribute()]);
                }
            })
            .build();
    }

    let oldest = definition("bg.queue.oldest_age");
    meter
        .f64_observable_gauge(oldest.name)
        .with_unit(oldest.unit)
        .with_description(oldest.description)
        .with_callback(move |observer| {
            if let Some(pool) = pool.upgrade() {
                observer.observe(
                    pool.oldest_queued_age().as_secs_f64(),
                    &[pool.name_attribute()],
                );
            }
        })
        .build();
}
