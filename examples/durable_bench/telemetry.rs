//! Full telemetry with nowhere to send it: the SDK's batch span processor
//! and periodic metric reader, exporting to exporters that discard, so a
//! run pays for recording, batching and collecting but not for a network.
//!
//! The `tracing` layer that turns `bg.run` spans into OpenTelemetry spans
//! sits behind a reload handle: the same process measures with and
//! without it. It takes bg-queue's spans only (as an application's filter
//! would), not sqlx's per-query events. Warnings and errors, such as a
//! worker's database errors, go to stderr either way.

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, Layer as _, Registry};

use crate::discard::{NoopMetrics, NoopSpans};

type OtelLayer =
    Filtered<tracing_opentelemetry::OpenTelemetryLayer<Registry, SdkTracer>, Targets, Registry>;

/// The process's telemetry: off until [`Telemetry::set`] turns it on.
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    layer: reload::Handle<Option<OtelLayer>, Registry>,
}

impl Telemetry {
    /// Installs the (empty) subscriber; call once.
    pub fn install() -> Self {
        // A queue deep enough that a burn-down's spans are exported, not
        // dropped (dropping would make telemetry look cheaper than it is).
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(1 << 17)
            .with_max_export_batch_size(2048)
            .with_scheduled_delay(Duration::from_millis(200))
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(NoopSpans)
                    .with_batch_config(batch)
                    .build(),
            )
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(NoopMetrics)
                    .with_interval(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let (layer, handle) = reload::Layer::new(None);
        tracing_subscriber::registry()
            .with(layer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    // sqlx's slow-statement warning would flag every fill.
                    .with_filter(
                        Targets::new()
                            .with_default(LevelFilter::WARN)
                            .with_target("sqlx::query", LevelFilter::ERROR),
                    ),
            )
            .init();
        Telemetry {
            tracer_provider,
            meter_provider,
            layer: handle,
        }
    }

    /// Turns the span layer on or off for what runs next.
    pub fn set(&self, on: bool) {
        let layer = on.then(|| {
            tracing_opentelemetry::layer()
                .with_tracer(self.tracer_provider.tracer("bg-queue"))
                .with_filter(Targets::new().with_target("bg_queue", LevelFilter::INFO))
        });
        self.layer
            .reload(layer)
            .expect("the subscriber is installed and alive");
    }

    /// The meter to record into: the SDK's when on, a no-op one when off.
    pub fn meter(&self, on: bool) -> Meter {
        if on {
            self.meter_provider.meter("bg-queue")
        } else {
            opentelemetry::metrics::noop::NoopMeterProvider::new().meter("bg-queue")
        }
    }

    /// The tracer for `bg.task` spans: the SDK's when on, a no-op one when
    /// off.
    pub fn tracer(&self, on: bool) -> opentelemetry::global::BoxedTracer {
        if on {
            opentelemetry::global::BoxedTracer::new(Box::new(
                self.tracer_provider.tracer("bg-queue"),
            ))
        } else {
            opentelemetry::global::BoxedTracer::new(Box::new(
                opentelemetry::trace::noop::NoopTracer::new(),
            ))
        }
    }

    /// Flushes and stops both providers.
    pub fn shutdown(self) {
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}
