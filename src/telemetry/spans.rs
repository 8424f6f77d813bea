//! Spans: the caller's context captured in `spawn`, `bg.task` and `bg.run`
//! started when a runner takes the task, ended with its outcome; and the
//! drop span.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Link, Span as _, Status, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{names, Propagation, RunSpan, TaskAttributes, Telemetry};
use crate::task::{CatchPanic, Outcome, RunEnd, TaskFuture};
use crate::DropReason;

/// Attributes [`Telemetry::finish_spans`] adds to a span the pool started
/// through the OpenTelemetry API: `bg.task.outcome`, `bg.task.busy_ms` (on
/// `bg.run`), and `error.type` for a non-ok outcome.
const FINISH_ATTRIBUTES: usize = 3;

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
/// `poll`, so inside the span; with `tracing-opentelemetry` a second entry
/// costs a span lookup and a context switch per task). A future dropped before it
/// completes (timed out, aborted, abandoned) is dropped inside the span too.
///
/// With busy time on, it also adds up the time spent inside the task's
/// `poll`: the task's busy time, against its run time, which includes its
/// waits on I/O and timers. See [`BusyClock`] for the clock reads.
pub(crate) struct Scoped {
    run: RunHandle,
    task: CatchPanic<TaskFuture>,
    /// `None` when busy time is off.
    busy: Option<BusyClock>,
}

/// Busy time, measured as the time the task was *not* suspended: from
/// where busy time starts to the runner's end reading, less every stretch
/// between a poll that returned `Pending` and the next poll. A task that
/// completes in its first poll (the common case for short work) costs no
/// clock read and no subtraction of readings: its busy time is its run
/// time. Each suspension costs two clock reads, one as it starts and one
/// as it ends. Busy time never exceeds run time.
///
/// Busy time starts at the runner's start reading (the run time's) when no
/// span is created before the first poll: it then also holds the runner's
/// pick-up work, recording the wait (usually a push into a batch, a
/// fraction of a microsecond; at times a batch of 64 values handed to the
/// SDK, a few microseconds), which a clock read would cost more than it
/// removes. When spans are recorded their creation takes microseconds, so
/// it starts at a reading taken just before the first poll.
///
/// Readings are `tokio::time::Instant`s, like the run time's: under a
/// paused test clock both are the mocked time.
pub(crate) struct BusyClock {
    /// Where busy time starts; `None` for the runner's start reading.
    from: Option<tokio::time::Instant>,
    /// The suspensions that have ended.
    suspended: Duration,
    /// End of the last poll, if it returned `Pending`.
    pending_since: Option<tokio::time::Instant>,
}

impl Scoped {
    /// The time spent inside the task's `poll`, if measured. `ended` is
    /// the runner's reading right after the task's last poll (a timed-out
    /// task's last suspension ends there) and `run` the run time, `ended`
    /// less the runner's start reading.
    #[inline]
    pub(crate) fn busy(&self, ended: tokio::time::Instant, run: Duration) -> Option<Duration> {
        let clock = self.busy.as_ref()?;
        let mut busy = clock
            .from
            .map_or(run, |from| ended.saturating_duration_since(from));
        if let Some(since) = clock.pending_since {
            busy = busy.saturating_sub(ended.saturating_duration_since(since));
        }
        Some(busy.saturating_sub(clock.suspended))
    }
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
        let Some(busy) = this.busy.as_mut() else {
            return std::pin::Pin::new(&mut this.task).poll(cx);
        };
        if let Some(since) = busy.pending_since.take() {
            busy.suspended += since.elapsed();
        }
        let poll = std::pin::Pin::new(&mut this.task).poll(cx);
        if poll.is_pending() {
            busy.pending_since = Some(tokio::time::Instant::now());
        }
        poll
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
    /// Runs `task` inside `bg.run`, measuring its busy time if
    /// `measure_busy` (see [`BusyClock`] for where busy time starts).
    pub(crate) fn scope(&self, task: CatchPanic<TaskFuture>, measure_busy: bool) -> Scoped {
        let busy = measure_busy.then(|| BusyClock {
            from: self.recorded().then(tokio::time::Instant::now),
            suspended: Duration::ZERO,
            pending_since: None,
        });
        Scoped {
            run: self.run.clone(),
            task,
            busy,
        }
    }

    /// Whether the task's spans are recorded (a subscriber enabled them).
    #[inline]
    pub(crate) fn recorded(&self) -> bool {
        self.task.is_some()
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

impl Telemetry {
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
                    bg.task.busy_ms = tracing::field::Empty,
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
    /// `busy` is the run's busy time, when measured (it goes on `bg.run`).
    pub(crate) fn finish_spans(
        spans: TaskSpans,
        outcome: Outcome,
        end: Option<&RunEnd>,
        busy: Option<Duration>,
    ) {
        let TaskSpans { run, task } = spans;
        let busy_ms = busy.map(|busy| busy.as_secs_f64() * 1000.0);
        let error = end.and_then(error_details).or_else(|| {
            (outcome == Outcome::Abandoned)
                .then(|| ("abandoned at the shutdown deadline".into(), "abandoned"))
        });
        match run {
            RunHandle::Tracing(run) => {
                if !run.is_disabled() {
                    run.record(names::TASK_OUTCOME, outcome.as_str());
                    if let Some(busy_ms) = busy_ms {
                        run.record(names::TASK_BUSY_MS, busy_ms);
                    }
                    if let Some((message, error_type)) = &error {
                        run.record(names::ERROR_TYPE, *error_type);
                        run.set_status(Status::error(message.clone()));
                    }
                }
            }
            RunHandle::OpenTelemetry(cx) => {
                if let Some(busy_ms) = busy_ms {
                    cx.span()
                        .set_attribute(KeyValue::new(names::TASK_BUSY_MS, busy_ms));
                }
                end_with_outcome(&cx, outcome, error.as_ref());
            }
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
