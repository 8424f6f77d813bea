//! Span, attribute and metric names: the contract dashboards and alerts
//! read. The metric table ([`METRICS`](super::METRICS)) uses these.

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
/// Attribute (on `bg.run`): milliseconds the task spent inside `poll`,
/// recorded when telemetry is on.
pub const TASK_BUSY_MS: &str = "bg.task.busy_ms";
/// Attribute: queue depth seen at enqueue.
pub const QUEUE_DEPTH: &str = "bg.queue.depth";
/// Attribute: the error's type on non-ok outcomes.
pub const ERROR_TYPE: &str = "error.type";
