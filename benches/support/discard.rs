//! Exporters that discard what they are given: full telemetry (recording,
//! batching, collecting) at no network cost, for the benchmarks.

use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// A metric exporter that discards everything.
#[derive(Debug)]
pub struct NoopMetrics;

impl PushMetricExporter for NoopMetrics {
    async fn export(&self, _metrics: &ResourceMetrics) -> OTelSdkResult {
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// A span exporter that discards everything.
#[derive(Debug)]
pub struct NoopSpans;

impl SpanExporter for NoopSpans {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}
