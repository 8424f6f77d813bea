//! Shared benchmark set-up: runtimes, telemetry modes with no-op exporters,
//! and a completion latch.
#![allow(dead_code, unreachable_pub, missing_debug_implementations)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::sync::Notify;

#[path = "discard.rs"]
mod discard;
pub use discard::{NoopMetrics, NoopSpans};
use tracing_subscriber::layer::SubscriberExt as _;

/// Tasks per throughput iteration, and the burst size (below the seed's
/// capacity of 1024, so no design drops anything).
pub const TASKS: usize = 100_000;
pub const CHUNK: usize = 1_000;

/// What is switched on for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No subscriber, no meter provider.
    Off,
    /// SDK meter provider with a periodic reader and a no-op exporter.
    Metrics,
    /// Metrics plus `tracing-opentelemetry` with a batch span processor to
    /// a no-op exporter.
    Full,
    /// `Full` with a lean `tracing-opentelemetry` layer: no code location,
    /// thread, target or busy/idle attributes on spans made through
    /// `tracing` (the layer adds all of them by default).
    FullLean,
    /// Only a `fmt` subscriber writing to a sink (for the drop path).
    FmtSink,
}

/// Worker threads for every benchmark runtime: 2, the set-up, unless
/// `BENCH_WORKERS` says otherwise (1 shows a caller's cost when no runner
/// can run beside it; see BENCHMARKS.md).
fn workers() -> usize {
    positive_from_env("BENCH_WORKERS", 2)
}

/// The parallelism of bg-queue's pools in the caller-cost rows: 8, the
/// seed's, unless `BENCH_PARALLELISM` says otherwise (1 leaves no runner to
/// spare for the other core during a burst; see docs/benchmarks-log.md,
/// "Runners beside the producer").
pub fn caller_parallelism() -> usize {
    positive_from_env("BENCH_PARALLELISM", 8)
}

/// The positive integer in the environment variable `name`, or `default`
/// if it is not set; a benchmark run with a bad value stops at once.
fn positive_from_env(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|&parsed| parsed > 0)
            .unwrap_or_else(|| panic!("{name} must be a positive integer, not {value:?}")),
        Err(_) => default,
    }
}

/// A multi-thread runtime (2 workers unless `BENCH_WORKERS` is set) with
/// `mode`'s telemetry, and what the pools need.
pub struct Setup {
    pub runtime: tokio::runtime::Runtime,
    pub meter: Option<SdkMeterProvider>,
    pub tracer: Option<SdkTracerProvider>,
    pub dispatch: Option<tracing::Dispatch>,
}

impl Setup {
    pub fn new(mode: Mode) -> Self {
        let meter = matches!(mode, Mode::Metrics | Mode::Full | Mode::FullLean).then(|| {
            SdkMeterProvider::builder()
                .with_reader(
                    PeriodicReader::builder(NoopMetrics)
                        .with_interval(Duration::from_secs(1))
                        .build(),
                )
                .build()
        });
        let tracer = matches!(mode, Mode::Full | Mode::FullLean).then(|| {
            SdkTracerProvider::builder()
                .with_batch_exporter(NoopSpans)
                .build()
        });
        let dispatch = match (&tracer, mode) {
            (Some(provider), Mode::FullLean) => Some(tracing::Dispatch::new(
                tracing_subscriber::registry().with(
                    tracing_opentelemetry::layer()
                        .with_tracer(provider.tracer("bench"))
                        .with_location(false)
                        .with_threads(false)
                        .with_target(false)
                        .with_tracked_inactivity(false),
                ),
            )),
            (Some(provider), _) => Some(tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
            )),
            (None, Mode::FmtSink) => Some(tracing::Dispatch::new(
                tracing_subscriber::fmt()
                    .with_writer(std::io::sink)
                    .finish(),
            )),
            _ => None,
        };
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers()).enable_all();
        if let Some(dispatch) = dispatch.clone() {
            // Every worker gets the subscriber as its default.
            builder.on_thread_start(move || {
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            });
        }
        let runtime = builder.build().unwrap();
        Setup {
            runtime,
            meter,
            tracer,
            dispatch,
        }
    }

    /// A bg-queue pool with the seed's defaults and this setup's telemetry.
    pub fn pool(&self, capacity: usize, parallelism: usize) -> bg_queue::BackgroundTx {
        self.builder(capacity, parallelism).build().unwrap()
    }

    /// A pool builder wired to this set-up's runtime, meter and tracer.
    pub fn builder(&self, capacity: usize, parallelism: usize) -> bg_queue::Builder {
        let mut builder = bg_queue::Builder::new("bench")
            .capacity(capacity)
            .parallelism(parallelism)
            .runtime(self.runtime.handle().clone());
        if let Some(meter) = &self.meter {
            builder = builder.meter(meter.meter("bg-queue"));
        }
        if let Some(tracer) = &self.tracer {
            builder = builder.tracer(tracer.tracer("bg-queue"));
        }
        builder
    }

    /// Runs `f` with this setup's subscriber as the thread's default.
    pub fn with_subscriber<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.dispatch {
            Some(dispatch) => tracing::dispatcher::with_default(dispatch, f),
            None => f(),
        }
    }
}

/// Counts finished tasks and wakes the producer when a target is reached.
#[derive(Default)]
pub struct Latch {
    done: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
}

impl Latch {
    pub fn new() -> Arc<Self> {
        Arc::new(Latch::default())
    }

    pub fn finish_one(&self) {
        // SeqCst on both sides: the producer stores `target` then reads
        // `done`, a task bumps `done` then reads `target` (a store-buffer
        // pattern); weaker orderings let both read stale values and lose
        // the wakeup.
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if done == self.target.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }

    /// Waits until `target` tasks in all have finished.
    pub async fn wait_for(&self, target: usize) {
        self.target.store(target, Ordering::SeqCst);
        while self.done.load(Ordering::SeqCst) < target {
            // notify_one stores a permit, so a finish between the check and
            // the await is not lost.
            self.reached.notified().await;
        }
    }
}

/// A future of exactly 16 bytes that completes when polled.
pub struct Sixteen {
    pub latch: Arc<Latch>,
    pub pad: u64,
}

impl std::future::Future for Sixteen {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.latch.finish_one();
        std::task::Poll::Ready(())
    }
}
