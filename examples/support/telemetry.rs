//! Application-side telemetry for the demo: OTLP traces and metrics from the
//! standard `OTEL_*` variables (built by `init-tracing-opentelemetry`), the
//! propagator from `OTEL_PROPAGATORS`, and a `tracing` subscriber with a
//! `fmt` layer for logs. This belongs to the application, not the library.
//!
//! What is added to the crate's building blocks, and why:
//! - the OpenTelemetry layer has its own filter (INFO and up, the exporter's
//!   own crates off), so `RUST_LOG=warn` quiets the log without silencing
//!   the `bg.*` spans, and exporting never traces itself;
//! - export failures are logged at most once per [`EXPORT_LOG_INTERVAL`] per
//!   signal (traces, metrics), with the number held back, so a missing
//!   collector costs a line per signal every few seconds, not a flood;
//! - the final flush has a deadline ([`SHUTDOWN_DEADLINE`]): a collector that
//!   accepts and never answers cannot hold the exit;
//! - a bad `OTEL_EXPORTER_OTLP_PROTOCOL` is an error, not a silent no-export,
//!   and an unset one means gRPC (the collector's port 4317).
//!
//! (The crate's `TracingConfig` preset puts `RUST_LOG` in front of every
//! layer, OpenTelemetry included, and flushes without a deadline on drop, so
//! the demo composes the subscriber itself.)
#![allow(dead_code)]

use std::io::IsTerminal as _;
use std::time::Duration;

use init_tracing_opentelemetry::otlp::{metrics::init_meterprovider, traces::init_tracerprovider};
use init_tracing_opentelemetry::resource::DetectResource;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt as _, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

use crate::throttle::LogThrottle;

/// How often, at most, one signal's export failures reach the log.
pub const EXPORT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Longest the final flush may take at shutdown, both signals together.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

const PROTOCOL_VARIABLES: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
];

/// Checks the OTLP protocol variables and makes gRPC the default.
///
/// Call it before any thread starts (first thing in `main`, before the
/// runtime): it sets `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` when unset, which is
/// only sound while the process has a single thread.
///
/// # Errors
///
/// A one-line message naming the variable and its value when it is neither
/// `grpc` nor `http/protobuf`, checked even with `OTEL_SDK_DISABLED=true`
/// so a typo does not wait for the day export is turned on.
pub fn check_env() -> Result<(), String> {
    for name in PROTOCOL_VARIABLES {
        match std::env::var(name).as_deref() {
            Err(_) | Ok("grpc") | Ok("http/protobuf") => {}
            Ok(other) => {
                return Err(format!(
                    "{name}: unsupported value {other:?} (use grpc or http/protobuf)"
                ))
            }
        }
    }
    if std::env::var_os(PROTOCOL_VARIABLES[0]).is_none() {
        std::env::set_var(PROTOCOL_VARIABLES[0], "grpc");
    }
    Ok(())
}

/// Whether `OTEL_SDK_DISABLED=true`.
pub fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The installed providers (none with `OTEL_SDK_DISABLED=true`); call
/// [`shutdown`](Self::shutdown) at exit to flush them.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub tracer: Option<SdkTracerProvider>,
    pub meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Builds the OTLP providers from the environment, installs them, the
    /// propagator and the subscriber globally. Run inside the tokio runtime
    /// (the gRPC exporter's connection lives on it), after [`check_env`].
    ///
    /// # Errors
    ///
    /// A one-line message when an exporter or the propagator cannot be built.
    pub fn init(default_service: &str) -> Result<Self, String> {
        init_tracing_opentelemetry::init_propagator().map_err(|e| e.to_string())?;
        let telemetry = if sdk_disabled() {
            Telemetry::default()
        } else {
            let resource = resource(default_service);
            let tracer = init_tracerprovider(resource.clone(), |b| b)
                .map_err(|e| format!("OTLP span exporter: {e}"))?;
            let meter = init_meterprovider(resource, |b| b)
                .map_err(|e| format!("OTLP metric exporter: {e}"))?;
            opentelemetry::global::set_tracer_provider(tracer.clone());
            opentelemetry::global::set_meter_provider(meter.clone());
            Telemetry {
                tracer: Some(tracer),
                meter: Some(meter),
            }
        };
        let otel_layer = telemetry.tracer.as_ref().map(|tracer| {
            tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer(default_service.to_owned()))
                .with_filter(otel_filter())
        });
        let log_filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Exporter warnings go through `ExportLog`, throttled, instead.
        let fmt_layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter.and(filter_fn(|meta| !is_export_warning(meta))));
        let _ = tracing_subscriber::registry()
            .with(fmt_layer)
            .with(otel_layer)
            .with(ExportLog::default())
            .try_init();
        Ok(telemetry)
    }

    /// Flushes and shuts both providers down, in parallel, off the runtime
    /// (their exports may need it), within [`SHUTDOWN_DEADLINE`]. Past it
    /// the process can exit; what was not exported is lost, and said so.
    pub async fn shutdown(self) -> Result<(), String> {
        let Telemetry { tracer, meter } = self;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // A detached thread: the runtime must not wait for it at exit.
        std::thread::spawn(move || {
            let errors: Vec<String> = std::thread::scope(|scope| {
                let traces = tracer
                    .map(|p| scope.spawn(move || p.shutdown_with_timeout(SHUTDOWN_DEADLINE).err()));
                let metrics = meter
                    .map(|p| scope.spawn(move || p.shutdown_with_timeout(SHUTDOWN_DEADLINE).err()));
                [("traces", traces), ("metrics", metrics)]
                    .into_iter()
                    .filter_map(|(signal, handle)| {
                        let error = handle?.join().ok()??;
                        Some(format!("{signal}: {error}"))
                    })
                    .collect()
            });
            let _ = done_tx.send(errors);
        });
        match tokio::time::timeout(SHUTDOWN_DEADLINE + Duration::from_secs(1), done_rx).await {
            Ok(Ok(errors)) if errors.is_empty() => Ok(()),
            Ok(Ok(errors)) => Err(errors.join("; ")),
            _ => Err(format!(
                "telemetry did not finish flushing within {} s (collector down or not \
                 answering?); unexported telemetry is lost",
                SHUTDOWN_DEADLINE.as_secs()
            )),
        }
    }
}

/// The crate's resource (`OTEL_SERVICE_NAME`, else `default_service`;
/// `OTEL_RESOURCE_ATTRIBUTES`) plus a `service.instance.id` unique to this
/// process, so several instances stay distinct series behind the collector.
fn resource(default_service: &str) -> Resource {
    let detected = DetectResource::default()
        .with_fallback_service_name(default_service.to_owned())
        .build();
    if detected
        .get(&opentelemetry::Key::from_static_str("service.instance.id"))
        .is_some()
    {
        return detected;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    Resource::builder_empty()
        .with_attributes(
            detected
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(KeyValue::new(
            "service.instance.id",
            format!("{host}-{}", std::process::id()),
        ))
        .build()
}

/// What the OpenTelemetry layer sees: INFO and up, except the exporter's own
/// crates (their spans would be exported by themselves, forever).
fn otel_filter() -> Targets {
    [
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
        "opentelemetry-otlp",
        "tonic",
        "h2",
        "hyper",
        "hyper_util",
        "reqwest",
        "tower",
    ]
    .into_iter()
    .fold(
        Targets::new().with_default(Level::INFO),
        |targets, crate_name| targets.with_target(crate_name, LevelFilter::OFF),
    )
}

/// A warning or error from the OpenTelemetry crates (export failures).
fn is_export_warning(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::WARN && meta.target().starts_with("opentelemetry")
}

/// Which signal an exporter event is about, from its name and fields
/// (`BatchSpanProcessor.ExportError`, `PeriodicReader.ExportError`,
/// `Export.Failed.Exhausted` with `operation="TonicMetricsClient.Export"`).
fn signal_of(name: &str, fields: &str) -> &'static str {
    let about = |word: &str| name.contains(word) || fields.contains(word);
    if about("Span") || about("Trace") {
        "traces"
    } else if about("Metric") || about("PeriodicReader") || about("Meter") {
        "metrics"
    } else {
        "other"
    }
}

/// Re-logs the OpenTelemetry crates' warnings, one line per signal per
/// [`EXPORT_LOG_INTERVAL`] at most, each saying how many were held back.
/// A throttle per signal, not per target: span and metric export failures
/// share the `opentelemetry_sdk` target, and one must not starve the other.
#[derive(Debug)]
struct ExportLog {
    traces: LogThrottle,
    metrics: LogThrottle,
    other: LogThrottle,
}

impl Default for ExportLog {
    fn default() -> Self {
        ExportLog {
            traces: LogThrottle::new(EXPORT_LOG_INTERVAL),
            metrics: LogThrottle::new(EXPORT_LOG_INTERVAL),
            other: LogThrottle::new(EXPORT_LOG_INTERVAL),
        }
    }
}

impl<S: Subscriber> Layer<S> for ExportLog {
    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        let meta = event.metadata();
        if !is_export_warning(meta) {
            return;
        }
        let mut fields = String::new();
        event.record(&mut FieldText(&mut fields));
        let signal = signal_of(meta.name(), &fields);
        let throttle = match signal {
            "traces" => &self.traces,
            "metrics" => &self.metrics,
            _ => &self.other,
        };
        let Some(suppressed) = throttle.admit() else {
            return;
        };
        // Re-emitted under a target the fmt layer lets through; its own
        // target starts with "otel", never "opentelemetry", so it is not
        // caught again here.
        if *meta.level() == Level::ERROR {
            tracing::error!(target: "otel_export", signal, suppressed, "{}:{fields}", meta.target());
        } else {
            tracing::warn!(target: "otel_export", signal, suppressed, "{}:{fields}", meta.target());
        }
    }
}

/// Collects an event's fields as ` key=value` text.
struct FieldText<'a>(&'a mut String);

impl tracing::field::Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}
