//! Test helpers: in-memory OpenTelemetry pipelines wired the way an
//! application wires them (SDK providers + `tracing-opentelemetry` layer),
//! and the skips of a test whose external tool (`require_tool`) or second
//! CPU (`needs_two_cpus`) is missing. Each test binary compiles all of
//! `common` and uses part of it, hence the `dead_code` allowance here and
//! in each submodule.
#![allow(dead_code, unreachable_pub)]

pub mod otlp;
pub mod pool;
pub mod process;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// Whether the external tool `name` a test needs is here (`found`, from
/// the test's own lookup). When it is missing, prints one line saying so
/// and returns false, and the test returns early: a plain `cargo test` on a
/// machine where nothing was installed passes. With `CI=true` a missing
/// tool panics instead, because there `./scripts/test` has installed every
/// tool and a missing one is a broken setup, not a skip.
///
/// Use as `if !common::require_tool("chromium", path.exists()) { return; }`.
#[track_caller]
pub fn require_tool(name: &str, found: bool) -> bool {
    if found {
        return true;
    }
    let message = format!("{name} is missing (./scripts/test installs it)");
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{message}");
    }
    skipped(&message);
    false
}

/// Whether this machine has a second CPU, for tests on a two-worker
/// runtime that check what one worker does while a task holds the other:
/// with one CPU the two workers take turns on it, and the test would
/// measure the operating system's time slices instead of the pool. When
/// there is one CPU, prints one line saying so and returns false, and the
/// test returns early; under `CI=true` too, since CI cannot install a CPU.
///
/// Use as `if !common::needs_two_cpus() { return; }`.
pub fn needs_two_cpus() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if cpus >= 2 {
        return true;
    }
    skipped(&format!("needs a second CPU, this machine has {cpus}"));
    false
}

/// Prints `skipped: {why}` as one line on the process's stderr, followed
/// by `[test name]` when the harness named the thread after the test.
/// Written past the harness's output capture (which `eprintln!` goes
/// through), so that a plain `cargo test` shows it.
fn skipped(why: &str) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let line = match thread.name() {
        Some(test) if test != "main" => format!("skipped: {why} [{test}]"),
        _ => format!("skipped: {why}"),
    };
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Spans exported synchronously into memory, and a subscriber that feeds
/// them. Install the subscriber with `tracing::subscriber::set_default` on a
/// current-thread runtime so runners see it too.
pub struct Tracing {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
}

impl Tracing {
    pub fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Tracing { exporter, provider }
    }

    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(self.provider.tracer("app")))
    }

    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer("bg-queue")
    }

    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }

    pub fn span(&self, name: &str) -> SpanData {
        let spans = self.spans();
        let mut found: Vec<_> = spans.iter().filter(|s| s.name == name).cloned().collect();
        assert_eq!(
            found.len(),
            1,
            "expected one span {name:?}, got {:?}",
            names(&spans)
        );
        found.remove(0)
    }
}

pub fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

pub fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

pub fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

/// A meter provider exporting into memory on demand (`force_flush`).
pub struct Metrics {
    pub exporter: InMemoryMetricExporter,
    pub provider: SdkMeterProvider,
}

impl Metrics {
    pub fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone()).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        Metrics { exporter, provider }
    }
}

pub fn kv(key: &'static str, value: &'static str) -> KeyValue {
    KeyValue::new(key, value)
}

/// One exported data point, flattened for assertions.
#[derive(Debug, Clone)]
pub struct Point {
    pub metric: String,
    pub unit: String,
    /// `counter`, `updowncounter`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Sum or gauge value; histogram sum.
    pub value: f64,
    /// Histogram count.
    pub count: u64,
    pub bounds: Vec<f64>,
}

impl Point {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn flatten<T: Copy>(
    name: &str,
    unit: &str,
    data: &opentelemetry_sdk::metrics::data::MetricData<T>,
    to_f64: fn(T) -> f64,
    out: &mut Vec<Point>,
) {
    use opentelemetry_sdk::metrics::data::MetricData;
    let attrs = |iter: &mut dyn Iterator<Item = &KeyValue>| {
        iter.map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
            .collect()
    };
    let point = |kind, attributes, value, count, bounds| Point {
        metric: name.to_owned(),
        unit: unit.to_owned(),
        kind,
        attributes,
        value,
        count,
        bounds,
    };
    match data {
        MetricData::Gauge(gauge) => {
            for p in gauge.data_points() {
                out.push(point(
                    "gauge",
                    attrs(&mut p.attributes()),
                    to_f64(p.value()),
                    0,
                    vec![],
                ));
            }
        }
        MetricData::Sum(sum) => {
            let kind = if sum.is_monotonic() {
                "counter"
            } else {
                "updowncounter"
            };
            for p in sum.data_points() {
                out.push(point(
                    kind,
                    attrs(&mut p.attributes()),
                    to_f64(p.value()),
                    0,
                    vec![],
                ));
            }
        }
        MetricData::Histogram(histogram) => {
            for p in histogram.data_points() {
                out.push(point(
                    "histogram",
                    attrs(&mut p.attributes()),
                    to_f64(p.sum()),
                    p.count(),
                    p.bounds().collect(),
                ));
            }
        }
        MetricData::ExponentialHistogram(_) => panic!("{name}: unexpected exponential histogram"),
    }
}

impl Metrics {
    /// Collects now and returns every data point of the latest collection.
    pub fn collect(&self) -> Vec<Point> {
        use opentelemetry_sdk::metrics::data::AggregatedMetrics;
        self.exporter.reset();
        self.provider.force_flush().unwrap();
        let batches = self.exporter.get_finished_metrics().unwrap();
        let latest = batches.last().expect("one collection");
        let mut out = Vec::new();
        for scope in latest.scope_metrics() {
            for metric in scope.metrics() {
                match metric.data() {
                    AggregatedMetrics::F64(data) => {
                        flatten(metric.name(), metric.unit(), data, |v| v, &mut out)
                    }
                    AggregatedMetrics::U64(data) => {
                        flatten(metric.name(), metric.unit(), data, |v| v as f64, &mut out)
                    }
                    AggregatedMetrics::I64(data) => {
                        flatten(metric.name(), metric.unit(), data, |v| v as f64, &mut out)
                    }
                }
            }
        }
        out
    }
}

/// Spawns `n` tasks named `name` that wait at a gate, and returns once all
/// of them run (so the pool's runners are busy). `gate.add_permits(n)`
/// releases them.
pub async fn occupy(
    bg: &bg_queue::BackgroundTx,
    name: &'static str,
    n: usize,
) -> std::sync::Arc<tokio::sync::Semaphore> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..n {
        let (gate, started_tx) = (gate.clone(), started_tx.clone());
        bg.try_spawn(name, async move {
            let _ = started_tx.send(());
            let _ = gate.acquire().await;
        })
        .expect("room for the blockers");
    }
    for _ in 0..n {
        started_rx.recv().await.expect("blocker started");
    }
    gate
}
