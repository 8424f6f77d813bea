//! Spans and metrics over OTLP, gRPC and HTTP/protobuf, to a real receiver:
//! what arrives on the wire has the structure, names, units and attributes
//! of the contract.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bg_queue::{Builder, METRICS};
use common::otlp::{wire_kind, Receiver, WireSpan};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// The OTLP transport.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// OTLP providers (the SDK's batch span processor and periodic reader)
/// exporting to `endpoint`, given explicitly: the `OTEL_*` variables are
/// process-wide and these tests run side by side.
fn otlp_providers(protocol: Protocol, endpoint: &str) -> (SdkTracerProvider, SdkMeterProvider) {
    let (spans, metrics) = match protocol {
        Protocol::Grpc => (
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
        ),
        Protocol::HttpProtobuf => (
            SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .build(),
            MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/metrics"))
                .build(),
        ),
    };
    let resource = Resource::builder().with_service_name("otlp-test").build();
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans.unwrap())
        .with_resource(resource.clone())
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.unwrap()).build())
        .with_resource(resource)
        .build();
    (tracer, meter)
}

/// Runs `f` on a blocking thread: the exporters' gRPC connections live on
/// this (current-thread) runtime, which must stay free to drive them.
async fn off_runtime(f: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(f).await.unwrap();
}

async fn flush(tracer: &SdkTracerProvider, meter: &SdkMeterProvider) {
    let (tracer, meter) = (tracer.clone(), meter.clone());
    off_runtime(move || {
        tracer.force_flush().unwrap();
        meter.force_flush().unwrap();
    })
    .await;
}

/// Keeps a reference to both providers and leaks it if the test panics.
/// The providers' last `Drop` shuts them down and waits for exports that run
/// on this (current-thread) runtime, which the panic is unwinding: without
/// this, a failed assertion would hang the test instead of failing it.
struct LeakOnPanic(Option<(SdkTracerProvider, SdkMeterProvider)>);

impl Drop for LeakOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

fn named<'a>(spans: &'a [WireSpan], name: &str) -> Vec<&'a WireSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

async fn spans_and_metrics_arrive_over(protocol: Protocol) {
    let receiver = Receiver::start().await;
    let endpoint = match protocol {
        Protocol::Grpc => format!("http://{}", receiver.grpc),
        Protocol::HttpProtobuf => format!("http://{}", receiver.http),
    };
    let (tracer_provider, meter_provider) = otlp_providers(protocol, &endpoint);
    let _leak_on_panic = LeakOnPanic(Some((tracer_provider.clone(), meter_provider.clone())));
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("app")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let bg = Builder::new("mail")
        .capacity(1)
        .parallelism(1)
        .tracer(tracer_provider.tracer("bg-queue"))
        .meter(meter_provider.meter("bg-queue"))
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let task_gate = gate.clone();
    async {
        bg.spawn("send_receipt_email", async move {
            let _ = task_gate.acquire().await;
            async {}.instrument(tracing::info_span!("smtp.send")).await;
        });
        // Capacity 1 and the runner has not started: this one is dropped.
        bg.spawn("subscribe_mailing_list", async {});
    }
    .instrument(tracing::info_span!("POST /webhooks/stripe"))
    .await;
    gate.add_permits(1);
    bg.idle().await;
    flush(&tracer_provider, &meter_provider).await;

    let spans = receiver
        .wait_until("five spans", Duration::from_secs(20), |r| {
            let spans = r.spans();
            (spans.len() >= 5).then_some(spans)
        })
        .await;
    let caller = named(&spans, "POST /webhooks/stripe")[0];
    let task = named(&spans, "bg send_receipt_email")[0];
    let run = named(&spans, "run send_receipt_email")[0];
    let user = named(&spans, "smtp.send")[0];
    let dropped = named(&spans, "bg subscribe_mailing_list")[0];
    for span in [task, run, user, dropped] {
        assert_eq!(span.trace_id, caller.trace_id, "{}", span.name);
        assert_eq!(span.service, "otlp-test");
    }
    assert_eq!(task.parent_span_id, caller.span_id);
    assert_eq!(run.parent_span_id, task.span_id);
    assert_eq!(user.parent_span_id, run.span_id);
    assert_eq!(dropped.parent_span_id, caller.span_id);
    assert_eq!(task.attr("bg.task.outcome"), Some("ok"));
    assert_eq!(task.attr("bg.pool.name"), Some("mail"));
    assert!(task.attr("bg.task.wait_ms").is_some());
    assert!(task.start_ns <= run.start_ns && task.end_ns >= run.end_ns);
    assert_eq!(dropped.attr("bg.task.outcome"), Some("dropped"));
    assert_eq!(dropped.attr("bg.drop.reason"), Some("queue_full"));
    assert_eq!(dropped.status_code, 2);

    let points = receiver
        .wait_until("every bg metric", Duration::from_secs(20), |r| {
            let points = r.points();
            METRICS
                .iter()
                .all(|m| points.iter().any(|p| p.metric == m.name))
                .then_some(points)
        })
        .await;
    for def in METRICS {
        let point = points.iter().find(|p| p.metric == def.name).unwrap();
        assert_eq!(point.unit, def.unit, "{}", def.name);
        assert_eq!(point.kind, wire_kind(def.kind), "{}", def.name);
        let mut keys: Vec<&str> = point.attributes.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = def.attributes.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{}", def.name);
    }
    let spawned = points
        .iter()
        .rfind(|p| {
            p.metric == "bg.task.spawned" && p.attr("bg.task.name") == Some("send_receipt_email")
        })
        .unwrap();
    assert_eq!((spawned.kind, spawned.value), ("monotonic_sum", 1.0));
    let dropped = points
        .iter()
        .rfind(|p| p.metric == "bg.task.dropped")
        .unwrap();
    assert_eq!(dropped.attr("bg.drop.reason"), Some("queue_full"));
    assert_eq!(dropped.value, 1.0);
    let duration = points
        .iter()
        .rfind(|p| p.metric == "bg.task.duration")
        .unwrap();
    assert_eq!((duration.kind, duration.count), ("histogram", 1));
    assert_eq!(duration.attr("bg.task.outcome"), Some("ok"));

    drop(_guard);
    off_runtime(move || {
        tracer_provider.shutdown().unwrap();
        meter_provider.shutdown().unwrap();
    })
    .await;
}

#[tokio::test]
async fn over_grpc() {
    spans_and_metrics_arrive_over(Protocol::Grpc).await;
}

#[tokio::test]
async fn over_http_protobuf() {
    spans_and_metrics_arrive_over(Protocol::HttpProtobuf).await;
}
