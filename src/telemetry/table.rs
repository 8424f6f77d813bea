//! The one table of every metric the crate emits: name, kind, unit,
//! attributes and description. docs/telemetry.md's metrics table mirrors
//! it (the README's has names, kinds and units), and tests fail when the
//! exported metrics, this table, those docs or the dashboards disagree.

use super::names;

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
#[non_exhaustive]
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

/// Every metric the crate exports. docs/telemetry.md's metrics table
/// mirrors it; a test fails when the exported metrics and this table
/// disagree.
pub const METRICS: [MetricDefinition; 10] = [
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
        name: "bg.task.busy",
        kind: InstrumentKind::Histogram,
        unit: "s",
        attributes: POOL_TASK,
        description: "Time the task spent inside poll, the CPU part of its run time (recorded when the run ends, when telemetry is on).",
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

pub(super) fn definition(name: &str) -> &'static MetricDefinition {
    METRICS
        .iter()
        .find(|metric| metric.name == name)
        .expect("every instrument is in METRICS")
}
