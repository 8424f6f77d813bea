//! Spans and metrics of durable jobs: the in-memory pool's names, with
//! `bg.pool.name` = the queue, plus the attempt number and two counters of
//! their own.
//!
//! # When each piece is recorded
//!
//! - Enqueue: the current span's OpenTelemetry context is written to the
//!   row (`traceparent`, `tracestate`) with the W3C
//!   [`TraceContextPropagator`]; `bg.task.spawned` counts inserted rows
//!   (also those whose transaction later rolls back: the counter cannot
//!   see the commit).
//! - Fetch: `bg.task.wait` records the time from `run_at` (the enqueue, the
//!   delay's end or the retry's due time) to the fetch, computed by the
//!   database on its own clock.
//! - Each attempt: a `bg.task` span, child of the stored context, started
//!   at `run_at` (so its length shows the wait), with one `bg.run` child
//!   (a `tracing` span, so the handler's spans nest under it) carrying
//!   `bg.task.attempt`. At the end both get `bg.task.outcome`; non-ok
//!   outcomes set error status and `error.type`, and emit a WARN event
//!   (ERROR for a panic), rate-limited per job name.
//!   `bg.task.duration` records the run by outcome; `bg.task.retried` or
//!   `bg.task.discarded` count what followed a failure.
//! - Each metric collection: `bg.queue.depth` (due rows waiting, per job
//!   name) and `bg.queue.oldest_age` (the oldest due row's age) are read
//!   from the table by one indexed query, which the collection triggers;
//!   the values observed are those of the previous query, at most one
//!   collection interval old.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::sync::Notify;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::names::{
    ERROR_TYPE, POOL_NAME, SPAN_RUN, TASK_NAME, TASK_OUTCOME, TASK_WAIT_MS,
};
use crate::DURATION_BUCKETS_SECONDS;

/// Names the durable jobs add to the crate's (`bg_queue::names`).
pub mod names {
    /// Attribute on `bg.run` and `bg.task`: the attempt's number, 1 for the
    /// first.
    pub const TASK_ATTEMPT: &str = "bg.task.attempt";
    /// Counter (`{task}`; pool, task): failed attempts that will be tried
    /// again.
    pub const METRIC_RETRIED: &str = "bg.task.retried";
    /// Counter (`{task}`; pool, task): jobs discarded (attempts exhausted,
    /// or arguments that do not decode).
    pub const METRIC_DISCARDED: &str = "bg.task.discarded";
}

/// Every metric durable jobs export: name, unit, description.
pub const DURABLE_METRICS: [(&str, &str, &str); 7] = [
    (
        "bg.task.spawned",
        "{task}",
        "Jobs enqueued (rows inserted).",
    ),
    (
        "bg.task.wait",
        "s",
        "Time from a job's run_at to its fetch by a worker (database clock).",
    ),
    ("bg.task.duration", "s", "Attempt run time, by outcome."),
    (
        names::METRIC_RETRIED,
        "{task}",
        "Failed attempts that will be retried.",
    ),
    (
        names::METRIC_DISCARDED,
        "{task}",
        "Jobs discarded: attempts exhausted or undecodable arguments.",
    ),
    (
        "bg.queue.depth",
        "{task}",
        "Due jobs waiting for a worker (read from the table at collection).",
    ),
    (
        "bg.queue.oldest_age",
        "s",
        "Age of the oldest due job, 0 when none (read from the table at collection).",
    ),
];

fn describe(name: &str) -> (&'static str, &'static str) {
    let (_, unit, description) = DURABLE_METRICS
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("every durable instrument is in DURABLE_METRICS");
    (unit, description)
}

fn counter(meter: &Meter, name: &'static str) -> Counter<u64> {
    let (unit, description) = describe(name);
    meter
        .u64_counter(name)
        .with_unit(unit)
        .with_description(description)
        .build()
}

fn histogram(meter: &Meter, name: &'static str) -> Histogram<f64> {
    let (unit, description) = describe(name);
    meter
        .f64_histogram(name)
        .with_unit(unit)
        .with_description(description)
        .with_boundaries(DURATION_BUCKETS_SECONDS.to_vec())
        .build()
}

pub(crate) fn global_meter() -> Meter {
    opentelemetry::global::meter("bg-queue")
}

/// The current span's context as W3C `traceparent` and `tracestate`
/// (none when no span with a valid context is current).
pub(crate) fn current_trace_context() -> (Option<String>, Option<String>) {
    let mut cx = Context::current();
    if !cx.has_active_span() {
        let span = tracing::Span::current();
        if !span.is_none() {
            cx = span.context();
        }
    }
    if !cx.span().span_context().is_valid() {
        return (None, None);
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let tracestate = carrier.remove("tracestate").filter(|s| !s.is_empty());
    (carrier.remove("traceparent"), tracestate)
}

/// The context stored with a job, or an empty one.
fn stored_context(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let Some(traceparent) = traceparent else {
        return Context::new();
    };
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    carrier.insert("traceparent".into(), traceparent.into());
    if let Some(tracestate) = tracestate {
        carrier.insert("tracestate".into(), tracestate.into());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// `bg.task.spawned`, recorded by [`Client`](super::Client).
#[derive(Clone)]
pub(crate) struct EnqueueMetrics {
    spawned: Counter<u64>,
}

impl std::fmt::Debug for EnqueueMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnqueueMetrics")
    }
}

impl EnqueueMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        EnqueueMetrics {
            spawned: counter(meter, "bg.task.spawned"),
        }
    }

    pub(crate) fn spawned(&self, queue: &str, task: &str) {
        self.spawned.add(
            1,
            &[
                KeyValue::new(POOL_NAME, queue.to_string()),
                KeyValue::new(TASK_NAME, task.to_string()),
            ],
        );
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Ok,
    Failed,
    Panicked,
    TimedOut,
}

impl AttemptOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Panicked => "panicked",
            AttemptOutcome::TimedOut => "timed_out",
        }
    }
}

/// What the worker knows of a fetched job, for its spans.
pub(crate) struct AttemptInfo<'a> {
    pub(crate) queue: &'a str,
    pub(crate) task: &'a str,
    pub(crate) attempt: i32,
    pub(crate) run_at_epoch: f64,
    pub(crate) wait: Duration,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) tracestate: Option<&'a str>,
}

/// The two spans of one attempt.
pub(crate) struct AttemptSpans {
    task: Context,
    pub(crate) run: tracing::Span,
    /// Set by [`WorkerTelemetry::finish`]; spans dropped without it belong
    /// to an attempt stopped at shutdown (its job back in the queue).
    finished: bool,
}

impl Drop for AttemptSpans {
    fn drop(&mut self) {
        if !self.finished {
            const MESSAGE: &str = "abandoned: stopped at shutdown and returned to the queue";
            self.run.record(TASK_OUTCOME, "abandoned");
            self.run.record(ERROR_TYPE, "abandoned");
            self.run.set_status(Status::error(MESSAGE));
            let task = self.task.span();
            task.set_attribute(KeyValue::new(TASK_OUTCOME, "abandoned"));
            task.set_attribute(KeyValue::new(ERROR_TYPE, "abandoned"));
            task.set_status(Status::error(MESSAGE));
        }
        // `bg.run` closes before its parent ends (the future being run may
        // still hold a clone; it goes with the attempt).
        drop(std::mem::replace(&mut self.run, tracing::Span::none()));
        self.task.span().end();
    }
}

/// The worker's tracer, instruments and rate limiters.
pub(crate) struct WorkerTelemetry {
    tracer: BoxedTracer,
    wait: Histogram<f64>,
    duration: Histogram<f64>,
    retried: Counter<u64>,
    discarded: Counter<u64>,
    events: RateLimiter,
}

impl WorkerTelemetry {
    pub(crate) fn new(tracer: BoxedTracer, meter: &Meter) -> Self {
        WorkerTelemetry {
            tracer,
            wait: histogram(meter, "bg.task.wait"),
            duration: histogram(meter, "bg.task.duration"),
            retried: counter(meter, names::METRIC_RETRIED),
            discarded: counter(meter, names::METRIC_DISCARDED),
            events: RateLimiter::new(Duration::from_secs(5)),
        }
    }

    /// Records the wait and starts `bg.task` (backdated to `run_at`) and
    /// `bg.run`.
    pub(crate) fn start(&self, info: &AttemptInfo<'_>) -> AttemptSpans {
        let pool_task = [
            KeyValue::new(POOL_NAME, info.queue.to_string()),
            KeyValue::new(TASK_NAME, info.task.to_string()),
        ];
        self.wait.record(info.wait.as_secs_f64(), &pool_task);
        let wait_ms = info.wait.as_secs_f64() * 1000.0;
        let start = UNIX_EPOCH
            .checked_add(Duration::from_secs_f64(info.run_at_epoch.max(0.0)))
            .unwrap_or_else(SystemTime::now);
        let parent = stored_context(info.traceparent, info.tracestate);
        let mut attributes = pool_task.to_vec();
        attributes.push(KeyValue::new(TASK_WAIT_MS, wait_ms));
        attributes.push(KeyValue::new(names::TASK_ATTEMPT, i64::from(info.attempt)));
        let span = self
            .tracer
            .span_builder(Cow::Owned(format!("bg {}", info.task)))
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let task = parent.with_span(span);
        let run = tracing::info_span!(
            target: "bg_queue",
            parent: None,
            "bg.run",
            otel.name = format!("run {}", info.task),
            bg.pool.name = info.queue,
            bg.task.name = info.task,
            bg.task.attempt = info.attempt,
            bg.task.wait_ms = wait_ms,
            bg.task.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        // The macro needs the literal name; this ties it to the contract's.
        debug_assert_eq!(SPAN_RUN, "bg.run");
        // Fails only without an OpenTelemetry layer (no parent to set then):
        // the span was created just above and never entered.
        let _ = run.set_parent(task.clone());
        AttemptSpans {
            task,
            run,
            finished: false,
        }
    }

    /// Ends the spans and records the duration. A failure's log event is
    /// the attempt's own (`attempt.rs`), which has the enqueuer's trace id
    /// even with no tracer installed.
    pub(crate) fn finish(
        &self,
        spans: AttemptSpans,
        info: &AttemptInfo<'_>,
        outcome: AttemptOutcome,
        run_time: Duration,
        error: Option<(&str, &str)>,
    ) {
        let attrs = [
            KeyValue::new(POOL_NAME, info.queue.to_string()),
            KeyValue::new(TASK_NAME, info.task.to_string()),
            KeyValue::new(TASK_OUTCOME, outcome.as_str()),
        ];
        self.duration.record(run_time.as_secs_f64(), &attrs);
        let mut spans = spans;
        spans.finished = true;
        let (task, run) = (&spans.task, &spans.run);
        run.record(TASK_OUTCOME, outcome.as_str());
        let task_span = task.span();
        task_span.set_attribute(KeyValue::new(TASK_OUTCOME, outcome.as_str()));
        if let Some((message, error_type)) = error {
            run.record(ERROR_TYPE, error_type);
            run.set_status(Status::error(message.to_string()));
            task_span.set_attribute(KeyValue::new(ERROR_TYPE, error_type.to_string()));
            task_span.set_status(Status::error(message.to_string()));
        }
        // Dropping `spans` ends them.
    }

    /// A job's lease lapsed (its worker died or lost the database): WARN,
    /// at most one per job name every 5 s.
    pub(crate) fn lease_expired(
        &self,
        queue: &str,
        task: &str,
        id: i64,
        attempt: i32,
        lost_by: &str,
        discarded: bool,
    ) {
        let Some(suppressed) = self.events.allow(task) else {
            return;
        };
        tracing::event!(
            target: "bg_queue",
            tracing::Level::WARN,
            bg.pool.name = queue,
            bg.task.name = task,
            bg.task.outcome = "lease_expired",
            bg.task.attempt = attempt,
            job_id = id,
            worker = lost_by,
            discarded,
            suppressed,
            "durable job's lease expired: {}",
            if discarded { "discarded (last attempt)" } else { "back to available" }
        );
    }

    pub(crate) fn retried(&self, queue: &str, task: &str) {
        self.retried.add(1, &pool_task(queue, task));
    }

    pub(crate) fn discarded(&self, queue: &str, task: &str) {
        self.discarded.add(1, &pool_task(queue, task));
    }
}

fn pool_task(queue: &str, task: &str) -> [KeyValue; 2] {
    [
        KeyValue::new(POOL_NAME, queue.to_string()),
        KeyValue::new(TASK_NAME, task.to_string()),
    ]
}

/// At most one event per key and interval, reporting how many were held
/// back since the last one let through (the crate's log-line limit).
pub(crate) use crate::rate_limit::KeyedRateLimit as RateLimiter;

/// The last reading of the queue's depth and oldest age, shared between
/// the worker's stats task (which queries) and the observable instruments'
/// callbacks (which read it and ask for the next query).
#[derive(Debug, Default)]
pub(crate) struct QueueReading {
    /// Due rows waiting, per job name; names once seen stay, at 0.
    pub(crate) depth: BTreeMap<String, i64>,
    pub(crate) oldest_age_seconds: f64,
}

/// Registers `bg.queue.depth` and `bg.queue.oldest_age` for `queue`; each
/// collection reads `reading` and wakes `refresh`. The callbacks hold weak
/// references: once the worker stops (its refresh task, the owner, ends)
/// they report nothing rather than a stale reading.
pub(crate) fn register_queue_observers(
    meter: &Meter,
    queue: Arc<str>,
    reading: &Arc<Mutex<QueueReading>>,
    refresh: &Arc<Notify>,
) {
    let (unit, description) = describe("bg.queue.depth");
    let (depth_queue, depth_reading, depth_refresh) = (
        Arc::clone(&queue),
        Arc::downgrade(reading),
        Arc::downgrade(refresh),
    );
    meter
        .i64_observable_up_down_counter("bg.queue.depth")
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |observer| {
            let (Some(reading), Some(refresh)) = (depth_reading.upgrade(), depth_refresh.upgrade())
            else {
                return;
            };
            refresh.notify_one();
            let reading = reading.lock().unwrap_or_else(|e| e.into_inner());
            for (task, depth) in &reading.depth {
                observer.observe(*depth, &pool_task(&depth_queue, task));
            }
        })
        .build();
    let (unit, description) = describe("bg.queue.oldest_age");
    let (reading, refresh) = (Arc::downgrade(reading), Arc::downgrade(refresh));
    meter
        .f64_observable_gauge("bg.queue.oldest_age")
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |observer| {
            let (Some(reading), Some(refresh)) = (reading.upgrade(), refresh.upgrade()) else {
                return;
            };
            refresh.notify_one();
            let age = reading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .oldest_age_seconds;
            observer.observe(age, &[KeyValue::new(POOL_NAME, queue.to_string())]);
        })
        .build();
}

/// Runs the depth query whenever a collection asks (at most once a
/// second), until the worker stops.
pub(crate) async fn refresh_queue_reading(
    shared: Arc<super::worker::Shared>,
    reading: Arc<Mutex<QueueReading>>,
    refresh: Arc<Notify>,
) {
    use sqlx::Row;
    loop {
        let result = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&shared.sql.depth)))
            .bind(&*shared.config.queue)
            .fetch_all(&shared.pool)
            .await;
        match result {
            Ok(rows) => {
                let mut reading = reading.lock().unwrap_or_else(|e| e.into_inner());
                for depth in reading.depth.values_mut() {
                    *depth = 0;
                }
                let mut oldest: f64 = 0.0;
                for row in rows {
                    let task: String = row.try_get("task_name").unwrap_or_default();
                    let depth: i64 = row.try_get("depth").unwrap_or(0);
                    let age: f64 = row.try_get("oldest").unwrap_or(0.0);
                    oldest = oldest.max(age);
                    reading.depth.insert(task, depth);
                }
                reading.oldest_age_seconds = oldest;
            }
            Err(error) => shared.database_error("read the queue depth", &error),
        }
        tokio::select! {
            _ = refresh.notified() => {}
            _ = shared.stopped() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shared.stopped() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_lets_one_through_per_interval_and_counts_the_rest() {
        let limiter = RateLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow("a"), Some(0));
        assert_eq!(limiter.allow("a"), None);
        assert_eq!(limiter.allow("a"), None);
        assert_eq!(limiter.allow("b"), Some(0));
        let limiter = RateLimiter::new(Duration::ZERO);
        assert_eq!(limiter.allow("a"), Some(0));
        assert_eq!(limiter.allow("a"), Some(0));
    }

    #[test]
    fn trace_context_round_trips_through_the_row_columns() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let span_context = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(span_context.clone());
        let _guard = cx.attach();
        let (traceparent, tracestate) = current_trace_context();
        assert_eq!(
            traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(tracestate.as_deref(), Some("vendor=x"));
        let back = stored_context(traceparent.as_deref(), tracestate.as_deref());
        assert_eq!(
            back.span().span_context().trace_id(),
            span_context.trace_id()
        );
        assert_eq!(back.span().span_context().span_id(), span_context.span_id());
    }
}
