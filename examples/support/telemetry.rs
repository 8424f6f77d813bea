//! Application-side telemetry wiring: OTLP tracer and meter providers, the
//! W3C propagator and the `tracing` subscriber. This belongs to the
//! application, not the library; the demo and the OTLP tests share it.
//!
//! Honours the standard variables: `OTEL_SDK_DISABLED`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (and the per-signal ones),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_BSP_*`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// How often, at most, one exporter's warnings or errors reach the log.
pub const EXPORT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (default, port 4317).
    Grpc,
    /// HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
}

/// Reads `OTEL_EXPORTER_OTLP_PROTOCOL`.
pub fn protocol_from_env() -> Result<Protocol, String> {
    match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Err(_) | Ok("") | Ok("grpc") => Ok(Protocol::Grpc),
        Ok("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Ok(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL: unsupported value {other:?} (use grpc or http/protobuf)"
        )),
    }
}

/// Whether `OTEL_SDK_DISABLED=true`.
pub fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The installed providers; shut them down at exit.
#[derive(Debug, Default)]
pub struct Providers {
    pub tracer: Option<SdkTracerProvider>,
    pub meter: Option<SdkMeterProvider>,
}

impl Providers {
    /// Builds OTLP providers for `protocol` (must run inside a tokio
    /// runtime: exports run as tasks on it).
    pub fn otlp(protocol: Protocol, default_service: &str) -> Result<Self, String> {
        Self::otlp_to(protocol, None, default_service)
    }

    /// Like [`otlp`](Self::otlp), with an explicit collector base address
    /// (e.g. `http://127.0.0.1:4317`) instead of the `OTEL_*` variables.
    pub fn otlp_to(
        protocol: Protocol,
        endpoint: Option<&str>,
        default_service: &str,
    ) -> Result<Self, String> {
        let resource = resource(default_service);
        let base = endpoint.map(|e| e.trim_end_matches('/').to_owned());
        let spans = match protocol {
            Protocol::Grpc => {
                let b = SpanExporter::builder().with_tonic();
                match &base {
                    Some(e) => b.with_endpoint(e.clone()).build(),
                    None => b.build(),
                }
            }
            Protocol::HttpProtobuf => {
                let b = SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match &base {
                    Some(e) => b.with_endpoint(format!("{e}/v1/traces")).build(),
                    None => b.build(),
                }
            }
        }
        .map_err(|e| format!("OTLP span exporter: {e}"))?;
        let metrics = match protocol {
            Protocol::Grpc => {
                let b = MetricExporter::builder().with_tonic();
                match &base {
                    Some(e) => b.with_endpoint(e.clone()).build(),
                    None => b.build(),
                }
            }
            Protocol::HttpProtobuf => {
                let b = MetricExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match &base {
                    Some(e) => b.with_endpoint(format!("{e}/v1/metrics")).build(),
                    None => b.build(),
                }
            }
        }
        .map_err(|e| format!("OTLP metric exporter: {e}"))?;
        let tracer = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(spans, runtime::Tokio).build())
            .with_resource(resource.clone())
            .build();
        let meter = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics, runtime::Tokio).build())
            .with_resource(resource)
            .build();
        Ok(Providers {
            tracer: Some(tracer),
            meter: Some(meter),
        })
    }

    /// Installs the providers and the W3C propagator globally, and a
    /// subscriber: `fmt` (filtered by `RUST_LOG`, default `info`, with
    /// exporter warnings rate-limited) plus the OpenTelemetry layer with its
    /// own filter, so `RUST_LOG=warn` does not silence `bg.*` spans and the
    /// exporter's own crates never trace themselves.
    pub fn install(&self) {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Some(meter) = &self.meter {
            opentelemetry::global::set_meter_provider(meter.clone());
        }
        let otel_layer = self.tracer.as_ref().map(|tracer| {
            opentelemetry::global::set_tracer_provider(tracer.clone());
            tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer("bg-queue-demo"))
                .with_filter(otel_filter())
        });
        let fmt_filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let fmt_layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(fmt_filter)
            .with_filter(ExportLogThrottle::default());
        let _ = tracing_subscriber::registry()
            .with(fmt_layer)
            .with(otel_layer)
            .try_init();
    }

    /// Flushes and shuts down both providers, in parallel, each on its own
    /// thread (their exports run as tasks on this runtime, so shutting down
    /// from a worker thread could wait on itself), within
    /// [`SHUTDOWN_DEADLINE`] in total.
    ///
    /// The SDK's own timeout bounds one wait, not the whole flush: with a
    /// collector that accepts connections and never answers, every queued
    /// batch waits out `OTEL_EXPORTER_OTLP_TIMEOUT` in turn. Past the
    /// deadline this returns an error naming what did not finish, and the
    /// process can exit; what was not exported is lost, and said so.
    pub async fn shutdown(self) -> Result<(), String> {
        type Job = Box<dyn FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send>;
        let mut jobs: Vec<(&'static str, Job)> = Vec::new();
        if let Some(tracer) = self.tracer {
            jobs.push((
                "tracer provider",
                Box::new(move || tracer.shutdown_with_timeout(SHUTDOWN_DEADLINE)),
            ));
        }
        if let Some(meter) = self.meter {
            jobs.push((
                "meter provider",
                Box::new(move || meter.shutdown_with_timeout(SHUTDOWN_DEADLINE)),
            ));
        }
        let mut pending: Vec<&str> = jobs.iter().map(|(what, _)| *what).collect();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for (what, job) in jobs {
            spawn_shutdown(what, done_tx.clone(), job);
        }
        drop(done_tx);
        let mut errors = Vec::new();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some((what, result))) => {
                    pending.retain(|p| *p != what);
                    if let Err(e) = result {
                        errors.push(format!("{what}: {e}"));
                    }
                }
                Ok(None) => break,
                Err(_elapsed) => {
                    errors.push(format!(
                        "{} did not finish flushing within {}s (collector down or not \
                         answering?); unexported telemetry is lost",
                        pending.join(" and "),
                        SHUTDOWN_DEADLINE.as_secs()
                    ));
                    break;
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Longest the providers' final flush may take at shutdown, both together.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Runs one provider's shutdown on a detached thread (not `spawn_blocking`:
/// the runtime would wait for it when it is dropped, deadline or not) and
/// reports the result on `done`.
fn spawn_shutdown(
    what: &'static str,
    done: tokio::sync::mpsc::UnboundedSender<(&'static str, Result<(), String>)>,
    shutdown: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name(format!(
            "otel-shutdown-{}",
            what.split(' ').next().unwrap_or(what)
        ))
        .spawn({
            let done = done.clone();
            move || {
                let _ = done.send((what, shutdown().map_err(|e| e.to_string())));
            }
        });
    if let Err(e) = spawned {
        let _ = done.send((
            what,
            Err(format!("could not start its shutdown thread: {e}")),
        ));
    }
}

/// `service.name` (from `OTEL_SERVICE_NAME`, else `default_service`) and a
/// `service.instance.id` unique to this process, so several instances stay
/// distinct series behind the collector (Prometheus' `instance` label).
fn resource(default_service: &str) -> Resource {
    let mut builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        // Otherwise the default detectors already read OTEL_SERVICE_NAME.
        builder = builder.with_service_name(default_service.to_owned());
    }
    let has_instance = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .is_ok_and(|attributes| attributes.contains("service.instance.id="));
    if !has_instance {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        builder = builder.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            format!("{host}-{}", std::process::id()),
        ));
    }
    builder.build()
}

/// What the OpenTelemetry layer sees: INFO and up, except the exporter's own
/// crates (their spans would be exported by themselves, forever).
fn otel_filter() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF)
        .with_target(
            "opentelemetry_sdk",
            tracing::level_filters::LevelFilter::OFF,
        )
        .with_target(
            "opentelemetry_otlp",
            tracing::level_filters::LevelFilter::OFF,
        )
        .with_target(
            "opentelemetry-otlp",
            tracing::level_filters::LevelFilter::OFF,
        )
        .with_target("tonic", tracing::level_filters::LevelFilter::OFF)
        .with_target("h2", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper_util", tracing::level_filters::LevelFilter::OFF)
        .with_target("reqwest", tracing::level_filters::LevelFilter::OFF)
        .with_target("tower", tracing::level_filters::LevelFilter::OFF)
}

/// Lets at most one event per [`EXPORT_LOG_INTERVAL`] through for each
/// OpenTelemetry target: with no collector, the exporters fail every few
/// seconds per signal, and that must not flood the log. Other events pass.
#[derive(Debug, Default)]
pub struct ExportLogThrottle {
    last: Mutex<HashMap<String, Instant>>,
}

fn is_exporter_target(target: &str) -> bool {
    target.starts_with("opentelemetry")
}

impl<S: Subscriber> Filter<S> for ExportLogThrottle {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // Only warnings and errors are throttled; quieter events are left
        // to the level filter.
        if !meta.is_event()
            || !is_exporter_target(meta.target())
            || *meta.level() > tracing::Level::WARN
        {
            return true;
        }
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(meta.target()) {
            Some(at) if now.duration_since(*at) < EXPORT_LOG_INTERVAL => false,
            _ => {
                last.insert(meta.target().to_owned(), now);
                true
            }
        }
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if is_exporter_target(meta.target()) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }
}

/// Reads the OTLP endpoint the exporters will use, for the startup log.
pub fn endpoint_for_log(protocol: Protocol) -> String {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|_| match protocol {
        Protocol::Grpc => "http://localhost:4317".into(),
        Protocol::HttpProtobuf => "http://localhost:4318".into(),
    })
}
