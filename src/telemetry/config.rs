//! How a pool's spans relate to its callers', and how `bg.run` is made.

/// How a task's spans relate to the span that was current at `spawn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
#[non_exhaustive]
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
