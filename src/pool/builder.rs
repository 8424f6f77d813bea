//! The builder, its defaults and its checks.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::admission::Admission;
use super::handle::BackgroundTx;
use super::launch::PendingRunner;
use super::runner::INBOX_SLOTS;
use super::runner_word::{RunnerWord, MAX_RUNNERS};
use super::state::{Phase, Pool, State};
use crate::inbox;
use crate::stats::{DepthHistory, Ring, Slowest};
use crate::telemetry::{self, names, Propagation, RunSpan, Telemetry};
use crate::BuildError;

/// Default queue capacity: 1024, as in the module bg-queue replaces.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Default number of tasks running at once: 8.
pub const DEFAULT_PARALLELISM: usize = 8;
/// Largest accepted capacity (2^24 queued tasks).
pub const MAX_CAPACITY: usize = 1 << 24;
/// Largest accepted parallelism (65,535).
pub const MAX_PARALLELISM: usize = MAX_RUNNERS as usize;
/// Default pool name.
pub const DEFAULT_POOL_NAME: &str = "default";

/// Source of each pool's process-unique id.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// Live pools by name, to warn when two share one (and so their metric
/// series).
static LIVE_NAMES: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());

/// Counts a new live pool named `name`; how many others have that name.
fn remember_live_name(name: &str) -> usize {
    let mut live = LIVE_NAMES.lock().unwrap_or_else(|p| p.into_inner());
    match live.iter_mut().find(|(live_name, _)| live_name == name) {
        Some((_, count)) => {
            *count += 1;
            *count - 1
        }
        None => {
            live.push((name.to_owned(), 1));
            0
        }
    }
}

/// A pool named `name` is gone.
pub(super) fn forget_live_name(name: &str) {
    let mut live = LIVE_NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(index) = live.iter().position(|(live_name, _)| live_name == name) {
        live[index].1 -= 1;
        if live[index].1 == 0 {
            live.swap_remove(index);
        }
    }
}

/// Builds a pool. Every setting has a default; see each method.
///
/// Build the pool *after* the application installs its tracer and meter
/// providers: the global meter and tracer are bound at build time (a pool
/// built earlier records into no-op instruments for ever). Or pass them
/// with [`meter`](Self::meter) and [`tracer`](Self::tracer).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = bg_queue::Builder::new("email")
///     .capacity(256)
///     .parallelism(4)
///     .timeout(Duration::from_secs(30))
///     .build()
///     .expect("valid pool settings");
/// pool.spawn("send_receipt_email", async { /* ... */ });
/// # let _ = pool.shutdown(Duration::from_secs(1)).await;
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    name: String,
    capacity: usize,
    parallelism: usize,
    timeout: Option<Duration>,
    propagation: Propagation,
    run_span: RunSpan,
    meter: Option<Meter>,
    tracer: Option<BoxedTracer>,
    runtime: Option<Handle>,
    busy_time: bool,
    bound_metrics: bool,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("parallelism", &self.parallelism)
            .field("timeout", &self.timeout)
            .field("propagation", &self.propagation)
            .field("run_span", &self.run_span)
            .field("meter", &self.meter.is_some())
            .field("tracer", &self.tracer.is_some())
            .field("runtime", &self.runtime.is_some())
            .field("busy_time", &self.busy_time)
            .field("bound_metrics", &self.bound_metrics)
            .finish()
    }
}

impl Builder {
    /// A builder for a pool called `name` (the `bg.pool.name` attribute).
    /// The name must not be empty. Give each live pool its own: two with
    /// the same name share their metric series, and the second one's build
    /// logs a warning saying so.
    pub fn new(name: impl Into<String>) -> Self {
        Builder {
            name: name.into(),
            capacity: DEFAULT_CAPACITY,
            parallelism: DEFAULT_PARALLELISM,
            timeout: None,
            propagation: Propagation::Child,
            run_span: RunSpan::Tracing,
            meter: None,
            tracer: None,
            runtime: None,
            busy_time: true,
            bound_metrics: true,
        }
    }

    /// Most tasks that may wait for a runner; one more is dropped with
    /// `queue_full`. Tasks already running do not count. Defaults to 1024.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Most tasks running at once, at most [`MAX_PARALLELISM`]. Defaults
    /// to 8.
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Cancels a task that runs longer than `timeout` (outcome `timed_out`).
    /// The wait in the queue does not count. Needs the runtime's time driver.
    /// Defaults to no timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How task spans relate to the caller's span. Defaults to
    /// [`Propagation::Child`].
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// How `bg.run` spans are made. Defaults to [`RunSpan::Tracing`], which
    /// every subscriber sees; [`RunSpan::OpenTelemetry`] halves the span
    /// cost per task when OpenTelemetry is the only consumer.
    pub fn run_span(mut self, run_span: RunSpan) -> Self {
        self.run_span = run_span;
        self
    }

    /// The meter for the pool's instruments. Defaults to the global meter
    /// provider's `bg-queue` meter, read at build time. A pool given a
    /// meter measures every run's busy time (`bg.task.busy`); with the
    /// global meter, only runs whose spans a subscriber records.
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The tracer for `bg.task` spans. Defaults to the global tracer
    /// provider's `bg-queue` tracer, read at build time. Use the same
    /// provider as your `tracing-opentelemetry` layer.
    pub fn tracer<T>(mut self, tracer: T) -> Self
    where
        T: opentelemetry::trace::Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.tracer = Some(BoxedTracer::new(Box::new(tracer)));
        self
    }

    /// Whether to measure busy time (the time inside each task's `poll`:
    /// `bg.task.busy`, `bg.task.busy_ms`, the snapshot's `busy_ms`) when
    /// telemetry is on. It costs two clock reads per suspension (with
    /// metrics only, none for a task that completes in its first poll;
    /// with spans recorded, one more) and one histogram record per task.
    /// For a no-op task with metrics on, on a 2-core machine, that is 0-7%
    /// of throughput (medians by benchmark driver) and 9.5% of its
    /// instructions through bound instruments (the default), and 25% of
    /// its instructions without them; real tasks dwarf it. Defaults to on.
    pub fn busy_time(mut self, on: bool) -> Self {
        self.busy_time = on;
        self
    }

    /// Whether the histograms record through instruments bound to each task
    /// name's attribute sets, when the `bound-metrics` feature (on by
    /// default) is compiled in: about half the instructions of a task with
    /// metrics on, because the SDK then skips its attribute-set lookup on
    /// every record. Bound records are also batched per thread, 64 values
    /// of a histogram at a time, so two workers seldom fight over one of
    /// the SDK's histogram locks. Every collection first hands the held
    /// values over, as long as one of the pool's observable instruments is
    /// kept by the meter's views, and so do the pool's shutdown and drop.
    /// Without the feature, histograms are never bound and this does
    /// nothing. Defaults to on.
    ///
    /// Turn it off when the meter is not from `opentelemetry_sdk`: an
    /// implementation that does not bind drops what is recorded this way
    /// (the API's default `bind`), and nothing says so. It exists whatever
    /// the features, so code that uses such a meter compiles and stays
    /// correct when another crate in the build switches the feature on.
    pub fn bound_metrics(mut self, on: bool) -> Self {
        self.bound_metrics = on;
        self
    }

    /// The runtime the runners are spawned on. Defaults to the runtime
    /// current at build time.
    pub fn runtime(mut self, handle: Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        let pool = self.name.clone();
        if self.name.trim().is_empty() {
            return Err(BuildError::EmptyName);
        }
        if self.capacity == 0 {
            return Err(BuildError::ZeroCapacity { pool });
        }
        if self.capacity > MAX_CAPACITY {
            return Err(BuildError::CapacityTooLarge {
                pool,
                capacity: self.capacity,
                max: MAX_CAPACITY,
            });
        }
        if self.parallelism == 0 {
            return Err(BuildError::ZeroParallelism { pool });
        }
        if self.parallelism > MAX_PARALLELISM {
            return Err(BuildError::ParallelismTooLarge {
                pool,
                parallelism: self.parallelism,
                max: MAX_PARALLELISM,
            });
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(BuildError::ZeroTimeout { pool });
        }
        Ok(())
    }

    /// Builds the pool.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the pool and the setting: an empty name, zero capacity or
    /// parallelism, capacity above [`MAX_CAPACITY`] or parallelism above
    /// [`MAX_PARALLELISM`], a zero timeout, or no runtime (outside one,
    /// with none given).
    pub fn build(mut self) -> Result<BackgroundTx, BuildError> {
        self.validate()?;
        let runtime = match self.runtime.take() {
            Some(handle) => handle,
            None => Handle::try_current().map_err(|_| BuildError::NoRuntime {
                pool: self.name.clone(),
            })?,
        };
        Ok(self.build_with(Some(runtime)))
    }

    /// Builds a pool whose settings are valid; with no runtime, a pool that
    /// refuses every task (`no_runtime`).
    pub(super) fn build_with(self, runtime: Option<Handle>) -> BackgroundTx {
        let scope = || {
            opentelemetry::InstrumentationScope::builder("bg-queue")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        };
        let explicit_meter = self.meter.is_some();
        let busy_time = self.busy_time;
        let bind = cfg!(feature = "bound-metrics") && self.bound_metrics;
        let meter = self
            .meter
            .unwrap_or_else(|| opentelemetry::global::meter_with_scope(scope()));
        let tracer = self
            .tracer
            .unwrap_or_else(|| opentelemetry::global::tracer_with_scope(scope()));
        let now = Instant::now();
        let others = remember_live_name(&self.name);
        if others > 0 {
            tracing::warn!(
                target: "bg_queue",
                pool = %self.name,
                others,
                "another live bg-queue pool has this name: their metric series \
                 (bg.pool.name) are shared; give each pool its own name"
            );
        }
        let name: Arc<str> = self.name.into();
        let (inbox_tx, inbox_rx) = inbox::channel(self.capacity.min(INBOX_SLOTS));
        let open = runtime.is_some();
        let pool = Arc::new(Pool {
            name_attribute: KeyValue::new(names::POOL_NAME, name.to_string()),
            name,
            capacity: self.capacity,
            parallelism: self.parallelism,
            timeout: self.timeout,
            telemetry: Telemetry::new(
                self.propagation,
                self.run_span,
                tracer,
                &meter,
                explicit_meter,
                busy_time,
                bind,
            ),
            state: Mutex::new(State {
                inbox: inbox_rx,
                // Grows on demand: an idle pool holds no queue storage (its
                // inbox reserves its slots up front).
                queue: VecDeque::new(),
                tasks: Vec::new(),
                runners: Vec::with_capacity(self.parallelism),
                next_runner_id: 0,
                running: 0,
                phase: if open { Phase::Open } else { Phase::NoRuntime },
                recent_drops: Ring::new(),
                recent_failures: Ring::new(),
                slowest: Slowest::new(now),
                depth_history: DepthHistory::new(now),
                next_drop_log: now,
            }),
            inbox: inbox_tx,
            admission: Admission::new(open),
            runners: RunnerWord::new(),
            pending: PendingRunner::new(now),
            stall_depth: (self.capacity - self.capacity / 4).max(2) as u64,
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            standby: Notify::new(),
            handles: AtomicUsize::new(1),
            no_runtime_log: crate::rate_limit::RateLimit::new(1, Duration::from_secs(60)),
            runtime,
            idle: Notify::new(),
        });
        let view: Arc<dyn telemetry::PoolView> = pool.clone();
        telemetry::register_observers(&meter, Arc::downgrade(&view));
        BackgroundTx::from_pool(pool)
    }
}
