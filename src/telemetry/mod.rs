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
//!   counters under its lock (no hot-path cost at all), and first hand the
//!   histogram values the pool holds in per-thread batches to the SDK
//!   (bound records only; see `batches.rs`), so the collection counts every
//!   run that ended before it.
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

/// One `tracing` event on target `bg_queue` for a failed run: ERROR when
/// `$panicked` is true, WARN otherwise (a failed or timed-out run), the
/// rest of the arguments as `tracing::event!` takes them. The pool and the
/// durable worker log their failures through it, so both pick the level
/// the same way; `event!` takes its level as a constant, hence two calls.
macro_rules! failure_event {
    ($panicked:expr, $($fields:tt)+) => {
        if $panicked {
            tracing::event!(target: "bg_queue", tracing::Level::ERROR, $($fields)+)
        } else {
            tracing::event!(target: "bg_queue", tracing::Level::WARN, $($fields)+)
        }
    };
}
pub(crate) use failure_event;

mod attributes;
#[cfg(feature = "bound-metrics")]
mod batches;
mod config;
mod instruments;
pub mod names;
mod observers;
mod spans;
mod table;

pub(crate) use attributes::TaskAttributes;
pub use config::{Propagation, RunSpan};
pub(crate) use instruments::Telemetry;
pub(crate) use observers::{register_observers, PoolView};
pub(crate) use spans::{trace_id_of, TaskSpans};
pub use table::{InstrumentKind, MetricDefinition, DURATION_BUCKETS_SECONDS, METRICS};
