//! The pool: a bounded queue and at most `parallelism` runner tasks.
//!
//! # Design
//!
//! `spawn` never takes the pool's lock when it accepts a task: it claims a
//! place with one compare-and-swap on the *admission* word (the number of
//! accepted tasks not yet running, plus a "closed" bit), sends the task into
//! a lock-free inbox, and makes sure a runner will take it (below). So a
//! burst of `spawn` calls does not contend with the runners.
//!
//! Everything else lives under one mutex: the FIFO queue, the per-task
//! counters, the runner registry. Every reader of the counters (a snapshot,
//! `idle`, shutdown) first moves what arrived in the inbox into the queue
//! and counts it `spawned` and `queued` ("absorbs" it), so every snapshot is
//! a consistent cut: the invariant holds exactly in each one, and a `spawn`
//! that returned before the snapshot is in it. A runner absorbs only when
//! the queue has run dry or the inbox holds half its slots: a look at the
//! inbox reads the lines a producer on another core is writing. Capacity is
//! exact too: the admission word never exceeds `capacity`.
//!
//! No wakeup can be lost (the failure of a separate semaphore plus channel):
//! a producer increments the admission word *then* reads the runner word; a
//! runner about to exit decrements the runner count *then* reads the
//! admission word. Both are sequentially consistent, so at least one of them
//! sees the other: either the producer starts a runner or the runner stays.
//! Every rule below by which `spawn` starts no runner relies on runners that
//! are counted, so each of them makes that exit check before it leaves:
//! the rules decide how soon a task starts, never whether it does.
//!
//! A runner that finds the queue empty does not leave at once: it
//! *lingers*, counted as such in the runner word, yields once (by waking
//! itself, so that another worker can steal it; see [`YieldToRunQueue`]),
//! steps out of that count and looks again. A producer that sees at least as many
//! lingering runners as tasks waiting starts none (a runner task is most of
//! the cost of a `spawn` on a quiet pool).
//!
//! When the pool has no standby yet, a runner that still finds nothing does
//! not leave either: it parks as the pool's *standby*, still counted, with
//! the runner word's [`PARKED`] bit set, and the next `spawn` on the idle
//! pool clears the bit and wakes it rather than starting a runner task. The
//! same argument holds: the runner sets the bit then reads the admission
//! word, so either `spawn` sees the bit or the runner sees the task. The
//! [`STANDBY`] bit keeps the place taken until the woken runner runs, so a
//! pool has at most one standby, and it leaves at `shutdown` or when the
//! last [`BackgroundTx`] is dropped.
//!
//! **One runner per caller's burst.** A runner that `spawn` wakes or starts
//! is *pending* until its first poll (counted in the runner word), and the
//! pool notes which thread launched it. Tokio puts it in that thread's LIFO
//! slot, so it runs as soon as the caller yields; until then the same
//! thread's later calls launch none. When it takes its first task, the
//! runner starts (or wakes) runners for every task still waiting, up to
//! `parallelism`: so a handler that spawns five tasks pays for one wake-up,
//! not for five runner tasks, and the five still run at once. Calls from
//! other threads do not rely on that runner (its thread may hold its worker
//! for long) and launch their own as before. A runner started by a runner
//! lands in the starter's LIFO slot, behind the task the starter is about to
//! run, which may hold the worker: so the starter then yields once, to the
//! back of the run queue, and the worker runs the new runner first, which
//! takes the next task. This does not rely on another worker stealing
//! anything: tokio can leave a stealable task unstolen while a task holds
//! its worker (`examples/unstolen.rs`: raw tokio tasks in this pattern
//! stalled for a second in 3 of 6,000 rounds of a debug build under load,
//! none with the yield; docs/benchmarks-log.md).
//!
//! Runners are ordinary tokio tasks, so a producer that submits in a loop
//! without yielding cannot hide them the way it hid the seed's single
//! drainer, but its pending runner does wait in its LIFO slot. Once that
//! has lasted [`STALL_AFTER`], or three quarters of the queue is full, its
//! `spawn` launches another runner, which takes the slot and pushes the
//! pending one out to where another worker takes it (with every runner
//! started, an empty task does the pushing). A runner that was lingering on
//! the producer's worker when the loop began is in that worker's run queue,
//! where another worker steals it.
//!
//! The lock is held for a few hundred nanoseconds at most: no await, no
//! allocation except queue growth, no logging and no span work under it. A
//! refused task takes it once, to be counted by name and reason and
//! recorded in the recent drops; in a flood with no subscriber, only the
//! first drop of a name in each tick of the coarse clock does, and the
//! others add to an atomic counter (see [`Pool::fold_drop`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::inbox;
use crate::report::ShutdownReport;
use crate::stats::{
    DepthHistory, DropCounts, DropRecord, DroppedByReason, PoolSnapshot, Ring, SlowRecord, Slowest,
    TaskStats, WallClock,
};
use crate::task::{BoxTask, CatchPanic, Envelope, Outcome, RunEnd, TaskOutput};
use crate::telemetry::{self, names, Propagation, RunSpan, TaskAttributes, Telemetry};
use crate::{BuildError, DropReason, SpawnError};

/// Default queue capacity (the seed's `CAPACITY`).
pub const DEFAULT_CAPACITY: usize = 1024;
/// Default number of tasks running at once (the seed's `PARALLELISM`).
pub const DEFAULT_PARALLELISM: usize = 8;
/// Largest accepted capacity (2^24 queued tasks).
pub const MAX_CAPACITY: usize = 1 << 24;
/// Default pool name.
pub const DEFAULT_POOL_NAME: &str = "default";
/// Slots in a pool's inbox, at most: the capacity, rounded up to a power
/// of two, up to this (88 bytes a slot, so 22 KiB at the default capacity,
/// reserved when the pool is built). A larger pool's inbox can fill before
/// its runners absorb it into the queue; the call that finds it full does.
const INBOX_SLOTS: usize = 256;
/// How often, at most, a pool logs its drop summary.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// After the shutdown deadline, how long to wait for aborted runners to
/// unwind before reporting them as still running.
const ABORT_SETTLE: Duration = Duration::from_secs(1);
/// The admission word's "closed" bit: set once, when the pool stops
/// accepting (shutdown, or no runtime).
const CLOSED: u64 = 1 << 63;
/// One runner in the runner word (its bits below [`STANDBY`] count runners).
const RUNNER: u64 = 1;
/// The runner word's "standby" bit: one runner holds the standby place,
/// from the moment it parks until it is polled again after its wake-up (or
/// dropped). So at most one runner is ever in [`park`], and [`PARKED`]
/// always belongs to it.
const STANDBY: u64 = 1 << 30;
/// The runner word's "parked" bit: the standby runner is parked, still
/// counted, waiting for `spawn` to wake it (see the module docs). Whoever
/// clears it counts the standby [`PENDING`] and owes it one wake-up.
const PARKED: u64 = 1 << 31;
/// One lingering runner in the runner word (bits 32-47 count runners that
/// found the queue empty and yielded once before looking again).
const LINGERING: u64 = 1 << 32;
/// One pending runner in the runner word (bits 48-63 count runners started
/// or woken and not polled since: each will look at the queue when its
/// worker gets to it).
const PENDING: u64 = 1 << 48;
/// The runner word's runner count.
const RUNNERS_MASK: u64 = STANDBY - 1;
/// Largest accepted parallelism: the runner word counts lingering and
/// pending runners in 16 bits each.
pub const MAX_PARALLELISM: usize = 0xFFFF;
/// How long a producer's `spawn` calls rely on the runner it started or woke
/// last while that runner is still pending: after this, `spawn` starts
/// another (see [`Pool::check_stall`]). A producer that has not yielded for
/// this long is far past tokio's budget between awaits (10-100 us).
const STALL_AFTER: Duration = Duration::from_millis(1);
/// `spawn` reads the time for [`STALL_AFTER`] only when a multiple of this
/// many tasks wait.
const STALL_CHECK_EVERY: u64 = 16;

/// Lingering runners counted in a runner word.
fn lingering(word: u64) -> u64 {
    (word / LINGERING) & 0xFFFF
}

/// Pending runners counted in a runner word.
fn pending(word: u64) -> u64 {
    word / PENDING
}

/// The runner word after claiming a runner for waiting tasks, counted
/// pending: the parked standby if there is one, else a new runner if fewer
/// than `limit` exist; `None` if neither.
fn claim_runner(word: u64, limit: u64) -> Option<u64> {
    if word & PARKED != 0 {
        Some((word & !PARKED) + PENDING)
    } else {
        (word & RUNNERS_MASK < limit).then_some(word + RUNNER + PENDING)
    }
}

thread_local! {
    /// Its address identifies the thread (see [`thread_token`]).
    static THREAD_TOKEN: u8 = const { 0 };
    /// The drop counters of the last (pool, task name) this thread saw
    /// refused for a full queue: see [`Pool::fold_drop`].
    static LAST_DROP: RefCell<Option<CachedDrop>> = const { RefCell::new(None) };
}

/// Source of [`Pool::id`].
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// An entry of the drop path's per-thread cache.
struct CachedDrop {
    pool: u64,
    name: &'static str,
    counts: Arc<DropCounts>,
}

impl CachedDrop {
    /// Whether this entry holds the counters of `name` in the pool `pool`.
    fn is_for(&self, pool: u64, name: &'static str) -> bool {
        self.pool == pool && std::ptr::eq(self.name, name)
    }
}

/// A number that differs between live threads: the address of a
/// thread-local. A thread that exits may pass its number on to a new one,
/// which only costs that thread one runner start (see `pending_owner`).
fn thread_token() -> usize {
    THREAD_TOKEN.with(|token| std::ptr::from_ref(token) as usize)
}

/// Builds a pool. Every setting has a default; see each method.
///
/// Build the pool *after* the application installs its tracer and meter
/// providers: the global meter and tracer are bound at build time (a pool
/// built earlier records into no-op instruments forever). Or pass them with
/// [`meter`](Self::meter) and [`tracer`](Self::tracer).
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
            .finish()
    }
}

impl Builder {
    /// A builder for a pool called `name` (the `bg.pool.name` attribute).
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
    /// provider's `bg-queue` meter, read at build time.
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

    /// The runtime the runners are spawned on. Defaults to the runtime
    /// current at build time.
    pub fn runtime(mut self, handle: Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        let pool = self.name.clone();
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
    /// A [`BuildError`] naming the pool and the setting: zero capacity or
    /// parallelism, capacity above [`MAX_CAPACITY`] or parallelism above
    /// [`MAX_PARALLELISM`], a zero timeout, or no
    /// runtime (outside one, with none given).
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

    fn build_with(self, runtime: Option<Handle>) -> BackgroundTx {
        let scope = || {
            opentelemetry::InstrumentationScope::builder("bg-queue")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        };
        let meter = self
            .meter
            .unwrap_or_else(|| opentelemetry::global::meter_with_scope(scope()));
        let tracer = self
            .tracer
            .unwrap_or_else(|| opentelemetry::global::tracer_with_scope(scope()));
        let now = Instant::now();
        let name: Arc<str> = self.name.into();
        let (inbox_tx, inbox_rx) = inbox::channel(self.capacity.min(INBOX_SLOTS));
        let pool = Arc::new(Pool {
            name_attribute: KeyValue::new(names::POOL_NAME, name.to_string()),
            name,
            capacity: self.capacity,
            parallelism: self.parallelism,
            timeout: self.timeout,
            telemetry: Telemetry::new(self.propagation, self.run_span, tracer, &meter),
            state: Mutex::new(State {
                inbox: inbox_rx,
                // Grows on demand: an idle pool holds no queue storage (its
                // inbox reserves up to `INBOX_SLOTS` slots up front).
                queue: VecDeque::new(),
                tasks: Vec::new(),
                runners: Vec::with_capacity(self.parallelism),
                next_runner_id: 0,
                running: 0,
                phase: if runtime.is_some() {
                    Phase::Open
                } else {
                    Phase::NoRuntime
                },
                recent_drops: Ring::new(),
                slowest: Slowest::new(now),
                depth_history: DepthHistory::new(now),
                next_drop_log: now,
            }),
            inbox: inbox_tx,
            admission: AtomicU64::new(if runtime.is_some() { 0 } else { CLOSED }),
            runners: AtomicU64::new(0),
            pending_owner: AtomicUsize::new(0),
            pending_since: AtomicU64::new(0),
            stall_depth: (self.capacity - self.capacity / 4).max(2) as u64,
            epoch: now,
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            standby: Notify::new(),
            handles: AtomicUsize::new(1),
            runtime,
            idle: Notify::new(),
        });
        telemetry::register_observers(&meter, Arc::downgrade(&pool));
        BackgroundTx { pool }
    }
}

/// Creates a pool with the seed's defaults (capacity 1024, parallelism 8),
/// named `default`, on the current runtime.
///
/// A drop-in for the seed's `spawn_pool`. It never panics: called outside a
/// tokio runtime it logs an error and returns a pool that drops every task
/// with reason `no_runtime` (use [`Builder::build`] to get an error instead).
pub fn spawn_pool() -> BackgroundTx {
    let builder = Builder::new(DEFAULT_POOL_NAME);
    match Handle::try_current() {
        Ok(handle) => builder.build_with(Some(handle)),
        Err(_) => {
            tracing::error!(
                target: "bg_queue",
                "bg-queue spawn_pool() called outside a tokio runtime: every task will be dropped (no_runtime)"
            );
            builder.build_with(None)
        }
    }
}

/// Lifecycle of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepting tasks.
    Open,
    /// `shutdown` called: not accepting, runners drain the queue.
    Draining,
    /// The deadline passed: queued tasks were abandoned, runners aborted.
    Aborting,
    /// Shut down.
    Closed,
    /// No runtime (never had one, or it shut down under us).
    NoRuntime,
}

struct RunnerSlot {
    id: u64,
    abort: Option<AbortHandle>,
    /// Parked as the pool's standby: registered, but neither running nor
    /// looking for work, so the pool counts as idle.
    parked: bool,
}

pub(crate) struct State {
    /// Accepted tasks not yet absorbed into `queue`.
    inbox: inbox::Receiver<Envelope>,
    queue: VecDeque<Envelope>,
    tasks: Vec<(Arc<TaskAttributes>, TaskStats)>,
    runners: Vec<RunnerSlot>,
    next_runner_id: u64,
    running: usize,
    phase: Phase,
    recent_drops: Ring<DropRecord>,
    slowest: Slowest,
    depth_history: DepthHistory,
    next_drop_log: Instant,
}

impl State {
    /// Index of `name` in the per-task table, adding it on first use.
    fn task_index(&mut self, pool: &Arc<str>, name: &'static str, now: Instant) -> usize {
        // Pointer comparison first, over every name: the same literal is
        // almost always the same address, and it saves comparing bytes on
        // the hot path. Bytes only for a literal seen at a new address.
        if let Some(index) = self
            .tasks
            .iter()
            .position(|(attrs, _)| std::ptr::eq(attrs.name, name))
            .or_else(|| self.tasks.iter().position(|(attrs, _)| attrs.name == name))
        {
            return index;
        }
        self.tasks.push((
            Arc::new(TaskAttributes::new(pool, name)),
            TaskStats::new(name, now),
        ));
        self.tasks.len() - 1
    }

    /// Counts a run's end: its outcome, wait and run time, and the slowest
    /// list.
    fn record_finished(&mut self, finished: Finished, now: Instant) {
        let Finished {
            index,
            outcome,
            wait,
            run,
            trace_id,
            ..
        } = finished;
        self.running -= 1;
        let stats = &mut self.tasks[index].1;
        stats.running -= 1;
        stats.record_end(outcome);
        stats.run.record(run, now);
        stats.wait.record(wait, now);
        let run_ms = run.as_secs_f64() * 1000.0;
        if self.slowest.qualifies(run_ms) {
            let entry = SlowRecord {
                at: now,
                task: self.tasks[index].1.name,
                outcome: outcome.as_str(),
                wait_ms: wait.as_secs_f64() * 1000.0,
                run_ms,
                trace_id,
            };
            self.slowest.record(entry, now);
        }
    }

    /// Age of the oldest queued task (the queue is FIFO), zero when empty.
    fn oldest_queued_age(&self, now: Instant) -> Duration {
        self.queue.front().map_or(Duration::ZERO, |oldest| {
            now.saturating_duration_since(oldest.enqueued_at)
        })
    }

    /// Moves what arrived in the inbox into the queue, counting each task
    /// `spawned` and `queued` under its name. Every reader of the counters
    /// calls this first.
    fn absorb(&mut self, pool: &Arc<str>, now: Instant) {
        let mut absorbed = false;
        while let Some(mut envelope) = self.inbox.recv() {
            let index = self.task_index(pool, envelope.name, now);
            envelope.task_index = index as u32;
            let stats = &mut self.tasks[index].1;
            stats.spawned += 1;
            stats.queued += 1;
            self.queue.push_back(envelope);
            absorbed = true;
        }
        if absorbed {
            self.depth_history.record(self.queue.len(), now);
        }
    }

    fn is_idle(&self, admitted: u64) -> bool {
        admitted == 0
            && self.queue.is_empty()
            && self.running == 0
            && self.runners.iter().all(|slot| slot.parked)
    }

    /// Takes every queued task out, counting it abandoned. The caller has
    /// absorbed the inbox and made sure nothing admitted is still on its
    /// way (see [`Pool::abandon_queued`]).
    ///
    /// Returns the counts by name and the tasks themselves: the caller drops
    /// them after releasing the lock, since a task's `Drop` is user code and
    /// may call `spawn` on this pool.
    fn abandon_queued(
        &mut self,
        admission: &AtomicU64,
        now: Instant,
    ) -> (Vec<(&'static str, u64)>, VecDeque<Envelope>) {
        let mut abandoned: Vec<(&'static str, u64)> = Vec::new();
        let queue = std::mem::take(&mut self.queue);
        for envelope in &queue {
            admission.fetch_sub(1, Ordering::SeqCst);
            let (_, stats) = &mut self.tasks[envelope.task_index as usize];
            stats.queued -= 1;
            stats.abandoned += 1;
            match abandoned.iter_mut().find(|(name, _)| *name == stats.name) {
                Some((_, count)) => *count += 1,
                None => abandoned.push((stats.name, 1)),
            }
        }
        self.depth_history.record(0, now);
        (abandoned, queue)
    }

    /// Drops not yet mentioned in a log line, if a summary is due.
    fn drop_summary_due(&mut self, now: Instant) -> Option<String> {
        if now < self.next_drop_log {
            return None;
        }
        self.next_drop_log = now + DROP_LOG_INTERVAL;
        let mut parts = Vec::new();
        for (_, stats) in &mut self.tasks {
            let total = stats.dropped_total();
            if total > stats.dropped_logged {
                parts.push(format!("{}={}", stats.name, total - stats.dropped_logged));
                stats.dropped_logged = total;
            }
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// The shared part of a pool.
pub(crate) struct Pool {
    name: Arc<str>,
    name_attribute: KeyValue,
    capacity: usize,
    parallelism: usize,
    timeout: Option<Duration>,
    telemetry: Telemetry,
    state: Mutex<State>,
    runtime: Option<Handle>,
    /// Notified when a runner exits (the pool may have become idle).
    idle: Notify,
    /// Where `spawn` sends accepted tasks, without the lock.
    inbox: inbox::Sender<Envelope>,
    /// Accepted tasks not yet running (in the inbox, in the queue, or on
    /// their way into the inbox), plus the [`CLOSED`] bit. Incremented by
    /// `spawn` with a compare-and-swap (never past `capacity`), decremented
    /// under the lock when a task starts or is abandoned.
    admission: AtomicU64,
    /// The runner word: in its low half, runners counted as active, never
    /// more than `parallelism`; in its high half, how many of them are
    /// lingering (yielded once on an empty queue and about to look again).
    /// An exiting runner steps out of the count before it leaves the
    /// registry in `state.runners`, so the registry may briefly list one
    /// more.
    runners: AtomicU64,
    /// The thread (see [`thread_token`]) whose `spawn` started or woke a
    /// runner last. Until that runner is polled, the same thread's later
    /// calls start none: tokio put the runner in that thread's LIFO slot,
    /// so it runs as soon as the caller yields, and it starts runners for
    /// whatever waits then. Calls from other threads do not rely on it.
    pending_owner: AtomicUsize,
    /// Since when `pending_owner`'s calls have relied on its pending runner
    /// (see [`Pool::check_stall`]): nanoseconds since `epoch`, never 0; 0
    /// until noted.
    pending_since: AtomicU64,
    /// The depth at which `spawn` stops waiting for [`STALL_AFTER`] and
    /// treats its pending runner as stuck: three quarters of `capacity`, so
    /// that a producer that never yields does not fill the queue first.
    stall_depth: u64,
    /// The pool's build instant, the origin of `pending_since`.
    epoch: Instant,
    /// Unique in the process (unlike an address, never reused): the key of
    /// the drop path's per-thread cache.
    id: u64,
    /// Wakes the standby runner (one wake per clearing of [`PARKED`]).
    standby: Notify,
    /// Live [`BackgroundTx`] handles: when the last one goes, nothing can
    /// spawn any more, and the standby runner leaves.
    handles: AtomicUsize,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the lock is held (no user code runs
        // under it), but if one did, the counters are still whole integers:
        // keep going rather than poison every later caller.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock, with the inbox absorbed: what every reader of the counters
    /// takes.
    fn lock_absorbed(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        state.absorb(&self.name, now);
        state
    }

    /// Accepted tasks not yet running (the admission word without its bit).
    fn admitted(&self) -> u64 {
        self.admission.load(Ordering::SeqCst) & !CLOSED
    }

    /// Stops admitting tasks. Call under the lock, after setting the phase,
    /// so a refused caller that takes the lock sees why.
    fn close_admission(&self) {
        self.admission.fetch_or(CLOSED, Ordering::SeqCst);
    }

    /// Abandons every queued task, including any admitted by a `spawn` that
    /// is still between its compare-and-swap and its send (admission must
    /// be closed first, so that number only shrinks). Such a call is a few
    /// instructions from done, so this yields rather than waits.
    fn abandon_queued(&self) -> Vec<(&'static str, u64)> {
        loop {
            let now = self.now();
            let mut state = self.lock_absorbed(now);
            // Under the lock, nothing starts or is abandoned meanwhile: the
            // difference is tasks still on their way into the inbox.
            if self.admitted() == state.queue.len() as u64 {
                let (abandoned, tasks) = state.abandon_queued(&self.admission, now);
                drop(state);
                drop(tasks);
                return abandoned;
            }
            drop(state);
            std::thread::yield_now();
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Nothing admitted, queued or running, and no runner left.
    fn is_idle(&self) -> bool {
        let state = self.lock_absorbed(self.now());
        state.is_idle(self.admitted())
    }

    pub(crate) fn parallelism(&self) -> usize {
        self.parallelism
    }

    pub(crate) fn name_attribute(&self) -> KeyValue {
        self.name_attribute.clone()
    }

    pub(crate) fn for_each_task(&self, mut f: impl FnMut(&TaskAttributes, &TaskStats)) {
        let state = self.lock_absorbed(self.now());
        for (attrs, stats) in &state.tasks {
            f(attrs, stats);
        }
    }

    /// Enters the pool's runtime, so that `Instant::now()` reads the
    /// runtime's clock (it differs from the OS clock only when a test
    /// pauses time) from threads outside it, such as a metric reader's.
    fn enter_runtime(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.runtime.as_ref().map(Handle::enter)
    }

    /// "Now" on the pool runtime's clock, from any thread.
    fn now(&self) -> Instant {
        let _clock = self.enter_runtime();
        Instant::now()
    }

    pub(crate) fn oldest_queued_age(&self) -> Duration {
        let now = self.now();
        self.lock_absorbed(now).oldest_queued_age(now)
    }

    fn submit(
        self: &Arc<Self>,
        name: &'static str,
        make_future: impl FnOnce() -> BoxTask,
    ) -> Result<(), SpawnError> {
        let (parent, traced) = self.telemetry.capture_parent();
        // The call's one read of the precise clock (about 30 ns on a
        // virtual machine), made once it is known to be needed: wall-clock
        // times are derived from it at snapshot time.
        let mut now = None;
        let capacity = self.capacity as u64;
        let mut admission = self.admission.load(Ordering::Relaxed);
        let mut make_future = Some(make_future);
        let mut boxed = None;
        let refused = loop {
            if admission & CLOSED != 0 {
                break Some(None);
            }
            if admission >= capacity {
                break Some(Some(SpawnError::QueueFull));
            }
            // Box before claiming a place, so that the claim and the send
            // are a few instructions apart (`abandon_queued` waits out that
            // gap); a refused call allocates nothing.
            if boxed.is_none() {
                now = Some(Instant::now());
                boxed = make_future.take().map(|make| CatchPanic::new(make()));
            }
            match self.admission.compare_exchange_weak(
                admission,
                admission + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break None,
                Err(actual) => admission = actual,
            }
        };
        if let Some(error) = refused {
            // The task (user code may run in its `Drop`) goes before the
            // lock is taken.
            drop(boxed.take());
            // Not boxed yet, so not wrapped: catch a panic in its `Drop`
            // here (`spawn` never panics, whatever the future does).
            let _ = crate::task::drop_catching_panic(make_future.take());
            if error == Some(SpawnError::QueueFull) && !traced && self.fold_drop(name) {
                return Err(SpawnError::QueueFull);
            }
            let depth = admission & !CLOSED;
            let now = now.unwrap_or_else(Instant::now);
            return Err(self.refuse(name, error, depth, parent, traced, now));
        }
        let now = now.expect("read before the place was claimed");
        let future = boxed.take().expect("boxed before the place was claimed");
        // Accepted tasks not yet running, this one included.
        let admitted = admission + 1;
        let envelope = Envelope {
            future,
            name,
            task_index: 0,
            depth_at_enqueue: u32::try_from(admitted).unwrap_or(u32::MAX),
            enqueued_at: now,
            parent,
        };
        self.send_to_inbox(envelope, now);
        self.ensure_runner(admitted, now);
        Ok(())
    }

    /// Sends an admitted task into the inbox. A pool whose capacity is
    /// above [`INBOX_SLOTS`] can find it full (its runners have not taken
    /// the lock for that many sends: typically its caller holds their
    /// worker); the call then absorbs the inbox into the queue itself, once
    /// per inbox's worth of calls. At or below that capacity, the admission
    /// word keeps fewer tasks than the inbox's slots out of the queue, so
    /// it is never full.
    fn send_to_inbox(&self, mut envelope: Envelope, now: Instant) {
        while let Err(inbox::Full(back)) = self.inbox.send(envelope) {
            envelope = back;
            drop(self.lock_absorbed(now));
        }
    }

    /// Counts and reports a task that was not admitted, with `depth` the
    /// accepted tasks not yet running that `spawn` saw. `closed` errors are
    /// `None` until the phase says which (closed, or no runtime).
    fn refuse(
        self: &Arc<Self>,
        name: &'static str,
        error: Option<SpawnError>,
        depth: u64,
        parent: opentelemetry::Context,
        traced: bool,
        now: Instant,
    ) -> SpawnError {
        // No need to absorb the inbox: nothing here reads the queue.
        let mut state = self.lock();
        let error = error.unwrap_or(match state.phase {
            Phase::NoRuntime => SpawnError::NoRuntime,
            Phase::Open | Phase::Draining | Phase::Aborting | Phase::Closed => SpawnError::Closed,
        });
        // Everything a drop records happens under this one lock, with raw
        // values (formatting waits for a snapshot).
        let index = state.task_index(&self.name, name, now);
        let reason = error.reason();
        let counts = &state.tasks[index].1.dropped;
        counts.add(reason);
        // Only the drops `fold_drop` may fold later (a traced one never
        // folds: it has a span and a trace id to record).
        let tick = (reason == DropReason::QueueFull && !traced)
            .then(crate::clock::coarse_tick)
            .flatten();
        if let Some(tick) = tick {
            counts.set_recorded_tick(tick);
            self.cache_drop_counts(name, counts);
        }
        state.recent_drops.push(DropRecord {
            at: now,
            task: name,
            reason,
            trace_id: telemetry::trace_id_of(&parent),
        });
        let summary = state.drop_summary_due(now);
        let attrs = traced.then(|| Arc::clone(&state.tasks[index].0));
        drop(state);
        if let Some(attrs) = attrs {
            self.telemetry.drop_span(&attrs, &parent, reason, depth);
        }
        if let Some(summary) = summary {
            tracing::warn!(
                target: "bg_queue",
                pool = %self.name,
                last_reason = reason.as_str(),
                "background tasks dropped since the last summary: {summary}"
            );
        }
        error
    }

    /// Counts a call refused for a full queue without the lock, if the
    /// coarse clock is still on the tick of the last such drop of `name`
    /// recorded in full (by [`refuse`](Self::refuse), from any thread):
    /// a flood keeps exact counts, and one drop per name and tick in the
    /// recent-drops ring, with its time and a check for a due log summary.
    /// Only untraced calls come here: a traced drop has a span and a trace
    /// id to record.
    ///
    /// False (record it in full) on this thread's first drop of `name`, or
    /// when the tick has moved on.
    fn fold_drop(&self, name: &'static str) -> bool {
        let Some(tick) = crate::clock::coarse_tick() else {
            return false;
        };
        LAST_DROP
            .try_with(|cache| {
                let Ok(cache) = cache.try_borrow() else {
                    return false;
                };
                match &*cache {
                    Some(cached)
                        if cached.is_for(self.id, name)
                            && cached.counts.recorded_tick() == tick =>
                    {
                        cached.counts.add(DropReason::QueueFull);
                        true
                    }
                    _ => false,
                }
            })
            .unwrap_or(false)
    }

    /// Makes `counts` (of `name` in this pool) the one [`fold_drop`]
    /// (Self::fold_drop) finds on this thread.
    fn cache_drop_counts(&self, name: &'static str, counts: &Arc<DropCounts>) {
        let _ = LAST_DROP.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                match &mut *cache {
                    Some(cached) if cached.is_for(self.id, name) => {}
                    slot => {
                        *slot = Some(CachedDrop {
                            pool: self.id,
                            name,
                            counts: Arc::clone(counts),
                        });
                    }
                }
            }
        });
    }

    /// Makes sure a runner will take the `admitted` tasks waiting (accepted,
    /// not yet running, as `spawn` saw them after its own admission, at
    /// `now`). Called after a task was sent; pairs with the exit check in
    /// [`run_loop`] and with [`park`].
    ///
    /// Nothing, if at least `admitted` runners linger (each looks at the
    /// queue again before it leaves, so a `spawn` right after a task ends
    /// does not pay for a runner task that would find nothing to do), or if
    /// this thread started or woke a runner that is still pending (it runs
    /// when this caller yields, and starts runners for the rest: a handler
    /// that spawns several tasks pays for one wake-up, not one runner task
    /// each). Otherwise the standby runner, if one is parked, is woken (no
    /// new task); failing that, a runner is started if fewer than
    /// `parallelism` exist.
    fn ensure_runner(self: &Arc<Self>, admitted: u64, now: Instant) {
        let thread = thread_token();
        let mine = self.pending_owner.load(Ordering::Relaxed) == thread;
        let limit = self.runner_limit();
        let updated = self
            .runners
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                if lingering(word) >= admitted || (mine && pending(word) > 0) {
                    None
                } else {
                    claim_runner(word, limit)
                }
            });
        match updated {
            Ok(previous) => {
                self.note_pending(thread);
                self.launch(previous);
            }
            // Left to this thread's pending runner (not to lingering ones,
            // and not because every runner is busy).
            Err(word) if mine && pending(word) > 0 && lingering(word) < admitted => {
                self.check_stall(admitted, now, thread);
            }
            Err(_) => {}
        }
    }

    /// Wakes the standby runner or starts one, as `claim_runner` claimed
    /// in the runner word that was `previous`.
    fn launch(self: &Arc<Self>, previous: u64) {
        if previous & PARKED != 0 {
            self.standby.notify_one();
        } else {
            self.start_runner();
        }
    }

    /// Records that `thread` started or woke a runner. When it did is left
    /// for [`check_stall`](Self::check_stall) to note, at the thread's first
    /// call that relies on that runner: a call that launches one (every call
    /// on a quiet pool) does no clock arithmetic.
    fn note_pending(&self, thread: usize) {
        self.pending_owner.store(thread, Ordering::Relaxed);
        self.pending_since.store(0, Ordering::Relaxed);
    }

    /// Called by a runner that took a task while `waiting` more wait: starts
    /// (or wakes) runners for them, up to `parallelism`, before that task
    /// runs (it may run long). Runners that linger or are pending count.
    /// Whether it launched any.
    ///
    /// The tasks still waiting are read again before each launch, never
    /// more than `waiting`: while the runtime shuts down, it drops each new
    /// runner inside `spawn`, and that runner's guard gives its place back
    /// and abandons the queue. Counted against the figure the caller read,
    /// that place would be claimed again at once, for ever, and the worker
    /// would spin instead of shutting down (a runtime dropped with tasks
    /// queued hung at full CPU).
    fn fan_out(self: &Arc<Self>, waiting: u64) -> bool {
        let limit = self.runner_limit();
        let mut launched = false;
        loop {
            let waiting = waiting.min(self.admitted());
            let claimed = self
                .runners
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                    if lingering(word) + pending(word) >= waiting {
                        None
                    } else {
                        claim_runner(word, limit)
                    }
                });
            let Ok(previous) = claimed else {
                return launched;
            };
            self.launch(previous);
            launched = true;
        }
    }

    /// Spawns an empty task on the pool's runtime: from a worker thread, it
    /// takes that worker's LIFO slot, whose task goes to the run queue where
    /// other workers take it.
    fn spawn_empty(&self) {
        if let Some(runtime) = &self.runtime {
            drop(runtime.spawn(async {}));
        }
    }

    /// Clears the standby bit and counts the standby runner pending;
    /// whether this call did (it then owes the standby runner one wake-up,
    /// unless the runner cleared the bit itself).
    fn clear_standby(&self) -> bool {
        self.runners
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                (word & PARKED != 0).then_some((word & !PARKED) + PENDING)
            })
            .is_ok()
    }

    /// Called by the standby runner once it runs again (or is dropped):
    /// gives the standby place up and clears [`PARKED`] if nobody did, or
    /// else steps out of the pending count its waker put it in.
    ///
    /// A wake-up can come without the bit cleared: a permit left by a wake
    /// whose runner was dropped (only once the pool is closed), or the
    /// runner cleared it itself because a task arrived as it parked (then a
    /// racing waker's permit is left over). Either way the runner just looks
    /// at the queue again.
    fn leave_standby(&self) {
        let _ = self
            .runners
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                Some(if word & PARKED != 0 {
                    word & !(PARKED | STANDBY)
                } else {
                    (word & !STANDBY) - PENDING
                })
            });
    }

    /// Wakes the standby runner, if one is parked, so that it leaves: the
    /// pool closed, or its last handle went.
    fn release_standby(&self) {
        if self.clear_standby() {
            self.standby.notify_one();
        }
    }

    /// Marks a runner's registry slot parked or not, and tells `idle()`
    /// waiters when it parks.
    fn set_parked(&self, id: u64, parked: bool) {
        let mut state = self.lock();
        if let Some(slot) = state.runners.iter_mut().find(|slot| slot.id == id) {
            slot.parked = parked;
        }
        drop(state);
        if parked {
            self.idle.notify_waiters();
        }
    }

    /// The most runners the runner word may count: `parallelism` (at most
    /// [`MAX_PARALLELISM`], which the word's counts have room for).
    fn runner_limit(&self) -> u64 {
        self.parallelism as u64
    }

    /// Counts an exiting runner back in if fewer than `parallelism` are
    /// counted; whether it did (then it stays).
    fn claim_runner_slot(&self) -> bool {
        let limit = self.runner_limit();
        self.runners
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                (word & RUNNERS_MASK < limit).then_some(word + RUNNER)
            })
            .is_ok()
    }

    /// Nanoseconds from the pool's build to `now`.
    fn nanos_since_build(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Called by `spawn` when it started no runner because its thread's
    /// last runner is still pending. That runner waits in this worker's
    /// LIFO slot, where no other worker can take it, until this caller
    /// yields; a producer that never yields would keep it there. So once
    /// that has lasted [`STALL_AFTER`], or the queue reaches `stall_depth`,
    /// this starts another runner (or wakes the standby), which takes the
    /// slot and pushes the pending one out to where another worker takes
    /// it. With every runner started, an empty task does the pushing.
    ///
    /// Time is read only when a multiple of [`STALL_CHECK_EVERY`] tasks
    /// wait, which keeps the clock arithmetic off most calls in a burst: the
    /// first such call notes the time, later ones compare.
    fn check_stall(self: &Arc<Self>, admitted: u64, now: Instant, thread: usize) {
        if admitted != self.stall_depth {
            if admitted % STALL_CHECK_EVERY != 0 {
                return;
            }
            // Never 0, which means "not noted yet".
            let now_ns = self.nanos_since_build(now) | 1;
            let since = self.pending_since.load(Ordering::Relaxed);
            if since == 0 {
                self.pending_since.store(now_ns, Ordering::Relaxed);
                return;
            }
            if u128::from(now_ns.saturating_sub(since)) < STALL_AFTER.as_nanos() {
                return;
            }
        }
        self.note_pending(thread);
        let limit = self.runner_limit();
        match self
            .runners
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                claim_runner(word, limit)
            }) {
            Ok(previous) => self.launch(previous),
            Err(_) => self.spawn_empty(),
        }
    }

    /// Registers and spawns one runner (already counted in `runners`).
    fn start_runner(self: &Arc<Self>) {
        let Some(runtime) = &self.runtime else {
            // Unreachable: a pool without a runtime admits nothing.
            self.runners.fetch_sub(RUNNER, Ordering::SeqCst);
            return;
        };
        // Registered before it is spawned, so its exit always finds its slot.
        let id = {
            let mut state = self.lock();
            let id = state.next_runner_id;
            state.next_runner_id += 1;
            state.runners.push(RunnerSlot {
                id,
                abort: None,
                parked: false,
            });
            id
        };
        // The guard is created outside the async block so that it runs even
        // if the runtime drops the future without polling it (shut down).
        let guard = RunnerGuard {
            pool: Arc::clone(self),
            id,
            current: None,
            pending: None,
            counted: true,
            // Counted pending by whoever launched it, until its first poll.
            unpolled: true,
            lingering: false,
            parked: false,
            finished: false,
        };
        let handle = runtime.spawn(ContainPanic {
            pool: Arc::clone(&self.name),
            runner: Box::pin(run_loop(guard)),
        });
        let mut state = self.lock();
        if let Some(slot) = state.runners.iter_mut().find(|slot| slot.id == id) {
            slot.abort = Some(handle.abort_handle());
        }
    }

    fn snapshot(&self) -> PoolSnapshot {
        let now = self.now();
        let clock = WallClock::new(now);
        let state = self.lock_absorbed(now);
        let tasks: Vec<_> = state
            .tasks
            .iter()
            .map(|(_, stats)| stats.snapshot(now))
            .collect();
        let sum = |field: fn(&crate::stats::TaskSnapshot) -> u64| tasks.iter().map(field).sum();
        // From the task snapshots, not the counters again: drop counts are
        // atomics that a flood adds to without the lock, and the pool's
        // totals must be the sums of the rows shown beside them.
        let dropped_by_reason = DroppedByReason {
            queue_full: sum(|t| t.dropped_by_reason.queue_full),
            closed: sum(|t| t.dropped_by_reason.closed),
            shutdown: sum(|t| t.dropped_by_reason.shutdown),
            no_runtime: sum(|t| t.dropped_by_reason.no_runtime),
        };
        PoolSnapshot {
            name: self.name.to_string(),
            capacity: self.capacity,
            parallelism: self.parallelism,
            queued: sum(|t| t.queued),
            running: sum(|t| t.running),
            oldest_queued_seconds: state.oldest_queued_age(now).as_secs_f64(),
            spawned: sum(|t| t.spawned),
            completed: sum(|t| t.completed),
            failed: sum(|t| t.failed),
            dropped: sum(|t| t.dropped),
            dropped_by_reason,
            panicked: sum(|t| t.panicked),
            timed_out: sum(|t| t.timed_out),
            abandoned: sum(|t| t.abandoned),
            accepting: state.phase == Phase::Open,
            recent_drops: state
                .recent_drops
                .to_vec()
                .into_iter()
                .map(|record| record.to_public(&clock))
                .collect(),
            slowest: state.slowest.to_vec(&clock),
            depth_history: state.depth_history.samples(now),
            tasks,
        }
    }
}

/// The task a runner is running, with what its end needs.
struct Current {
    task_index: usize,
    attrs: Arc<TaskAttributes>,
    spans: Option<telemetry::TaskSpans>,
    started: Instant,
}

/// Owned by each runner. On a normal exit it is disarmed; if the runner is
/// dropped instead (aborted at the shutdown deadline, its runtime shut down,
/// or it panicked outside the task's own code, in which case this drop runs
/// while the panic unwinds), its drop accounts for the task it was running.
struct RunnerGuard {
    pool: Arc<Pool>,
    id: u64,
    current: Option<Current>,
    /// A run that ended and is not counted yet (it is counted with the next
    /// pop; the guard counts it if telemetry panicked in between).
    pending: Option<Finished>,
    /// Whether this runner is counted in `runners`.
    counted: bool,
    /// Whether this runner is counted pending there (not polled yet).
    unpolled: bool,
    /// Whether this runner is counted lingering there.
    lingering: bool,
    /// Whether this runner set the standby bit and has not been woken.
    parked: bool,
    finished: bool,
}

thread_local! {
    /// Whether this thread is inside a runner's `poll` (see
    /// [`ContainPanic`]): tells a guard dropped while a panic unwinds that
    /// its runner panicked, rather than that its runtime was dropped during
    /// some other panic.
    static POLLING_RUNNER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a runner and logs a panic that escapes it. Tasks' own panics never
/// do (see [`CatchPanic`]), but the runner also calls the application's
/// `tracing` subscriber and meter provider. The runner's guard accounts for
/// the task while the panic unwinds (see [`RunnerGuard`]); this logs it,
/// after the unwinding, where calling the subscriber again is safe.
struct ContainPanic<F> {
    pool: Arc<str>,
    runner: std::pin::Pin<Box<F>>,
}

impl<F: Future<Output = ()>> Future for ContainPanic<F> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let runner = self.runner.as_mut();
        let outer = POLLING_RUNNER.with(|polling| polling.replace(true));
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.poll(cx)));
        POLLING_RUNNER.with(|polling| polling.set(outer));
        match polled {
            Ok(poll) => poll,
            Err(payload) => {
                tracing::error!(
                    target: "bg_queue",
                    pool = %self.pool,
                    "a runner panicked outside its task's code (in a tracing subscriber or meter?): {}; \
                     its task is counted as panicked and another runner takes over",
                    crate::task::panic_message(payload.as_ref())
                );
                std::task::Poll::Ready(())
            }
        }
    }
}

impl Drop for RunnerGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The runner panicked (outside the task's code: see `ContainPanic`)
        // and this runs while the panic unwinds. No application code may run
        // here (a second panic would abort the process), so no telemetry.
        let panicking = std::thread::panicking() && POLLING_RUNNER.with(std::cell::Cell::get);
        let pool = Arc::clone(&self.pool);
        let current = self.current.take();
        if self.unpolled {
            pool.runners.fetch_sub(PENDING, Ordering::SeqCst);
        }
        if self.lingering {
            pool.runners.fetch_sub(LINGERING, Ordering::SeqCst);
        }
        if self.parked {
            // Nobody may wake a runner that is gone (a wake already sent
            // leaves a permit that the next standby takes as spurious).
            pool.leave_standby();
        }
        if self.counted {
            pool.runners.fetch_sub(RUNNER, Ordering::SeqCst);
        }
        let mut state = pool.lock();
        if let Some(finished) = self.pending.take() {
            let ended = finished.ended;
            state.record_finished(finished, ended);
        }
        state.runners.retain(|slot| slot.id != self.id);
        let mut abandoned_names = Vec::new();
        let outcome = if panicking {
            Outcome::Panicked
        } else {
            Outcome::Abandoned
        };
        if let Some(current) = &current {
            state.running -= 1;
            let stats = &mut state.tasks[current.task_index].1;
            stats.running -= 1;
            stats.record_end(outcome);
            if outcome == Outcome::Abandoned {
                abandoned_names.push((stats.name, 1));
            }
        }
        // Dropped without a shutdown deadline, and not by a panic: the
        // runtime is going away, and nothing will run what is queued. Say so
        // rather than lose it.
        let runtime_gone = !panicking && matches!(state.phase, Phase::Open | Phase::Draining);
        if runtime_gone {
            state.phase = Phase::NoRuntime;
            pool.close_admission();
        }
        drop(state);
        if runtime_gone {
            abandoned_names.extend(pool.abandon_queued());
        }
        if panicking {
            let admitted = pool.admitted();
            if admitted > 0 {
                // Another runner takes over whatever is waiting.
                pool.fan_out(admitted);
            }
        }
        pool.idle.notify_waiters();
        if let Some(current) = current {
            if panicking {
                // Dropping its spans would call the subscriber that may have
                // just panicked: they are left unfinished (never exported).
                std::mem::forget(current.spans);
                return;
            }
            let run_time = current.started.elapsed();
            pool.telemetry
                .record_duration(&current.attrs, outcome, run_time);
            if let Some(spans) = current.spans {
                Telemetry::finish_spans(spans, outcome, None);
            }
        }
        if runtime_gone && !abandoned_names.is_empty() {
            tracing::error!(
                target: "bg_queue",
                pool = %pool.name,
                "runtime shut down under the background pool; abandoned tasks: {}",
                format_counts(&abandoned_names)
            );
        }
    }
}

pub(crate) fn format_counts(counts: &[(&'static str, u64)]) -> String {
    counts
        .iter()
        .map(|(name, count)| format!("{name}={count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Yields once by waking itself, so that tokio puts the task at the back of
/// its worker's run queue, where an idle worker steals it.
/// `tokio::task::yield_now` instead defers the wake-up until the worker has
/// nothing else to run: if the worker then takes a task that holds it, a
/// lingering runner deferred there waits for that task, while `spawn` and
/// other runners count on it to take the next one.
struct YieldToRunQueue(bool);

impl Future for YieldToRunQueue {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What a runner does next.
enum Next {
    /// Run this task; `u64` tasks still wait (admitted, not running).
    Run(Envelope, Arc<TaskAttributes>, Instant, u64),
    Linger,
    Exit,
}

async fn run_loop(mut guard: RunnerGuard) {
    let pool = Arc::clone(&guard.pool);
    // Counted pending since it was launched: it looks now.
    pool.runners.fetch_sub(PENDING, Ordering::SeqCst);
    guard.unpolled = false;
    // Whether this runner already yielded once on an empty queue.
    let mut lingered = false;
    loop {
        // One lock per task: record the previous task's end, pop the next.
        let next = {
            // The previous task's end instant doubles as this pick-up's
            // (one clock read per task, not two; the lock wait between them
            // counts as run time, not wait time).
            let now = guard
                .pending
                .as_ref()
                .map_or_else(Instant::now, |finished| finished.ended);
            // The inbox is absorbed only once the queue has run dry (or,
            // below, when it holds half its slots): every look at it reads
            // the lines a producer on another core is writing, and a look
            // per task made each of a burst's calls wait for them
            // (docs/benchmarks-log.md, "Runners absorb the inbox in
            // batches"). The order is still FIFO: the queue's tasks came
            // before the inbox's.
            let mut state = pool.lock();
            if state.queue.is_empty() {
                state.absorb(&pool.name, now);
            }
            if let Some(finished) = guard.pending.take() {
                state.record_finished(finished, now);
            }
            match state.queue.pop_front() {
                Some(envelope) => {
                    // Under the lock, with the pop: `admitted == queue
                    // length` is what `abandon_queued` waits for.
                    // What it returns includes tasks admitted and still on
                    // their way into the inbox, which the queue misses.
                    let waiting = (pool.admission.fetch_sub(1, Ordering::SeqCst) & !CLOSED) - 1;
                    // Tasks in the inbox (or on their way into it): absorb
                    // them before it fills, which would make `spawn` do it.
                    let unabsorbed = waiting.saturating_sub(state.queue.len() as u64);
                    if unabsorbed >= INBOX_SLOTS as u64 / 2 {
                        state.absorb(&pool.name, now);
                    }
                    state.running += 1;
                    // The depth counts the inbox too: it is not absorbed
                    // after every task.
                    let depth = usize::try_from(waiting).unwrap_or(usize::MAX);
                    state.depth_history.record(depth, now);
                    let index = envelope.task_index as usize;
                    let (attrs, stats) = &mut state.tasks[index];
                    stats.queued -= 1;
                    stats.running += 1;
                    Next::Run(envelope, Arc::clone(attrs), now, waiting)
                }
                // Stay registered for one yield before leaving: a producer
                // in the middle of a burst refills the queue right away, and
                // exiting would make it pay for a new runner task. Still
                // registered, so no task can be stranded meanwhile.
                None if !lingered => Next::Linger,
                None => Next::Exit,
            }
        };
        let (envelope, attrs, started, launched) = match next {
            Next::Run(envelope, attrs, started, waiting) => {
                // Before this task runs (it may run long): runners for the
                // rest, started here rather than by the producer.
                let launched = waiting > 0 && pool.fan_out(waiting);
                (envelope, attrs, started, launched)
            }
            Next::Linger => {
                lingered = true;
                // Counted as lingering while it yields: a `spawn` meanwhile
                // counts on it instead of starting a runner. It steps out
                // before it looks at the queue again, and if that look
                // finds nothing, the exit check below still sees the task
                // that `spawn` admitted before it read the count.
                pool.runners.fetch_add(LINGERING, Ordering::SeqCst);
                guard.lingering = true;
                YieldToRunQueue(false).await;
                pool.runners.fetch_sub(LINGERING, Ordering::SeqCst);
                guard.lingering = false;
                continue;
            }
            Next::Exit => {
                if park(&pool, &mut guard).await {
                    lingered = false;
                    continue;
                }
                // Step out of the count, then look for a task admitted
                // meanwhile (the other half of `ensure_runner`'s check). If
                // there is one, stay, whoever else lingers or is parked.
                pool.runners.fetch_sub(RUNNER, Ordering::SeqCst);
                guard.counted = false;
                if pool.admitted() > 0 && pool.claim_runner_slot() {
                    guard.counted = true;
                    lingered = false;
                    continue;
                }
                pool.lock().runners.retain(|slot| slot.id != guard.id);
                guard.finished = true;
                pool.idle.notify_waiters();
                return;
            }
        };
        lingered = false;
        let task_index = envelope.task_index as usize;
        // Owned by the guard before any telemetry runs: telemetry calls the
        // application's subscriber and meter, and if one of them panics the
        // guard still accounts for this task.
        guard.current = Some(Current {
            task_index,
            attrs: Arc::clone(&attrs),
            spans: None,
            started,
        });
        let started = if launched {
            // The runner launched last sits in this worker's LIFO slot, where
            // no other worker can take it, and this task may hold the worker
            // for long. Yielding puts this runner at the back of the run
            // queue, so the worker runs the launched one first, which takes
            // the next task: a task queued behind one that never yields
            // starts before it, without waiting for another worker to steal
            // its runner (tokio can leave a stealable task unstolen while a
            // task holds its worker; README, "What it promises").
            YieldToRunQueue(false).await;
            let resumed = Instant::now();
            if let Some(current) = guard.current.as_mut() {
                current.started = resumed;
            }
            resumed
        } else {
            started
        };
        let wait = started.saturating_duration_since(envelope.enqueued_at);
        pool.telemetry.record_wait(&attrs, wait);
        let spans = pool.telemetry.start_spans(
            &pool.name,
            &attrs,
            envelope.parent,
            wait,
            envelope.depth_at_enqueue,
        );
        let future = spans.scope(envelope.future);
        if let Some(current) = guard.current.as_mut() {
            current.spans = Some(spans);
        }

        let end = match pool.timeout {
            Some(limit) => match tokio::time::timeout(limit, future).await {
                Ok(result) => RunEnd::from_result(result),
                Err(_elapsed) => RunEnd::TimedOut,
            },
            None => RunEnd::from_result(future.await),
        };
        let ended = Instant::now();
        let run = ended.saturating_duration_since(started);
        let current = guard.current.take().expect("set before the run");
        let outcome = end.outcome();
        let trace_id = current.spans.as_ref().and_then(|spans| spans.trace_id());
        // Counted with the next pop, or by the guard if telemetry panics.
        guard.pending = Some(Finished {
            index: task_index,
            outcome,
            wait,
            run,
            trace_id,
            ended,
        });
        pool.telemetry.record_duration(&current.attrs, outcome, run);
        if let Some(spans) = current.spans {
            Telemetry::finish_spans(spans, outcome, Some(&end));
        }
    }
}

/// Parks the runner as the pool's standby, if the pool has none, is open
/// and still has handles; returns once woken (true), or at once if it may
/// not park (false: the runner leaves).
///
/// A parked runner stays counted in the runner word, so the lost-wakeup
/// argument of the module docs carries over: `spawn` admits then reads the
/// word, the runner sets [`PARKED`] then reads the admission word and the
/// handle count. Either `spawn` sees the bit and wakes it, or the runner
/// sees the task (or the close, or the last handle's drop) and stays awake.
async fn park(pool: &Arc<Pool>, guard: &mut RunnerGuard) -> bool {
    let claimed = pool
        .runners
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
            let may_park = word & STANDBY == 0
                && pool.admission.load(Ordering::SeqCst) & CLOSED == 0
                && pool.handles.load(Ordering::SeqCst) != 0;
            may_park.then_some(word | STANDBY | PARKED)
        });
    if claimed.is_err() {
        return false;
    }
    guard.parked = true;
    pool.set_parked(guard.id, true);
    let wake_now =
        pool.admission.load(Ordering::SeqCst) != 0 || pool.handles.load(Ordering::SeqCst) == 0;
    if !wake_now {
        pool.standby.notified().await;
    }
    guard.parked = false;
    pool.leave_standby();
    pool.set_parked(guard.id, false);
    true
}

/// A task the runner finished, recorded under the lock with the next pop.
struct Finished {
    index: usize,
    outcome: Outcome,
    wait: Duration,
    run: Duration,
    trace_id: Option<opentelemetry::trace::TraceId>,
    ended: Instant,
}

/// The handle to a pool: cheap to clone, `Send + Sync`, never blocks.
///
/// Tasks are fire-and-forget: `spawn` returns at once, whatever the pool's
/// state. At most `parallelism` tasks run at once and at most `capacity` wait;
/// past that a task is dropped and counted (never silently: see
/// [`snapshot`](Self::snapshot), the `bg.task.dropped` metric and the drop
/// span). Dropping every handle does not stop the pool: call
/// [`shutdown`](Self::shutdown) to drain it. An idle pool keeps one runner
/// task parked for the next `spawn`; it leaves at `shutdown` or with the
/// last handle.
///
/// Compared with `tokio::spawn`, the pool bounds memory and concurrency and
/// makes every task visible; compared with the seed's channel-and-semaphore
/// module, it keeps its promises (never blocks, never panics) and adds panic
/// isolation, timeouts, honest capacity, a drain at shutdown and telemetry.
#[must_use = "a pool handle does nothing unless tasks are spawned on it"]
pub struct BackgroundTx {
    pool: Arc<Pool>,
}

impl Clone for BackgroundTx {
    fn clone(&self) -> Self {
        self.pool.handles.fetch_add(1, Ordering::Relaxed);
        BackgroundTx {
            pool: Arc::clone(&self.pool),
        }
    }
}

impl Drop for BackgroundTx {
    fn drop(&mut self) {
        // The last handle: nothing can spawn on this pool any more, so its
        // standby runner leaves (and with the runners, the pool itself).
        if self.pool.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.pool.release_standby();
        }
    }
}

impl fmt::Debug for BackgroundTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundTx")
            .field("name", &self.pool.name)
            .field("capacity", &self.pool.capacity)
            .field("parallelism", &self.pool.parallelism)
            .field("timeout", &self.pool.timeout)
            .field("telemetry", &self.pool.telemetry)
            .finish_non_exhaustive()
    }
}

impl BackgroundTx {
    /// Submits a fire-and-forget task. Never blocks; never panics, from a
    /// runtime task or from a plain thread.
    ///
    /// If the task cannot be accepted it is dropped and counted (reason
    /// `queue_full`, `closed` or `no_runtime`); drops are logged as a
    /// rate-limited summary per pool, not one line per task. Use
    /// [`try_spawn`](Self::try_spawn) to learn the outcome.
    ///
    /// `fut` may return `()` or `Result<(), E>` with `E: Display`: an `Err`
    /// is counted as `failed` (see [`TaskOutput`]).
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let _ = self.try_spawn(name, fut);
    }

    /// Like [`spawn`](Self::spawn), but says whether the task was accepted.
    ///
    /// # Errors
    ///
    /// [`SpawnError::QueueFull`], [`SpawnError::Closed`] or
    /// [`SpawnError::NoRuntime`]; the task is dropped and counted either way.
    pub fn try_spawn<F>(&self, name: &'static str, fut: F) -> Result<(), SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.pool.submit(name, move || {
            Box::pin(async move { fut.await.into_result() })
        })
    }

    /// A consistent view of the pool: depth, counters, percentiles, recent
    /// drops and slowest runs.
    pub fn snapshot(&self) -> PoolSnapshot {
        self.pool.snapshot()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.pool.name
    }

    /// Stops accepting tasks, lets queued and running tasks finish within
    /// `grace`, then abandons the rest: queued tasks are discarded and
    /// running ones aborted (each counted `abandoned` and named in the
    /// report and a log line).
    ///
    /// Tasks spawned after this call are dropped with reason `closed`.
    /// Calling it again waits again and returns a fresh report.
    ///
    /// # Cancel safety
    ///
    /// Cancelling the returned future leaves the pool closed to new tasks,
    /// with its queue still draining; nothing is abandoned.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + grace;
        {
            let mut state = self.pool.lock();
            if state.phase == Phase::Open {
                state.phase = Phase::Draining;
            }
            self.pool.close_admission();
        }
        self.pool.release_standby();
        let drained = self.wait_idle(Some(deadline)).await;
        if !drained {
            {
                let mut state = self.pool.lock();
                if matches!(state.phase, Phase::Draining | Phase::Open) {
                    state.phase = Phase::Aborting;
                }
            }
            let abandoned = self.pool.abandon_queued();
            let aborts: Vec<AbortHandle> = self
                .pool
                .lock()
                .runners
                .iter_mut()
                .filter_map(|slot| slot.abort.take())
                .collect();
            if !abandoned.is_empty() {
                tracing::warn!(
                    target: "bg_queue",
                    pool = %self.pool.name,
                    "shutdown deadline reached; abandoned queued tasks: {}",
                    format_counts(&abandoned)
                );
            }
            for abort in &aborts {
                abort.abort();
            }
            let settle = tokio::time::Instant::now() + ABORT_SETTLE;
            self.wait_idle(Some(settle)).await;
        }
        let snapshot = {
            let mut state = self.pool.lock();
            if state.phase != Phase::NoRuntime {
                state.phase = Phase::Closed;
            }
            drop(state);
            self.pool.snapshot()
        };
        let report = ShutdownReport::from_snapshot(snapshot, drained, started.elapsed());
        report.log();
        report
    }

    /// Waits until nothing is queued or running (or the deadline passes);
    /// returns whether the pool is idle.
    async fn wait_idle(&self, deadline: Option<tokio::time::Instant>) -> bool {
        loop {
            let notified = self.pool.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so an exit between the check and
            // the await still wakes us.
            notified.as_mut().enable();
            if self.pool.is_idle() {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.pool.is_idle();
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Waits until the queue is empty and nothing runs. Handy in tests and
    /// before a planned pause; it does not stop new tasks from arriving.
    /// The pool's standby runner, parked until the next `spawn`, does not
    /// count as running.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the pool.
    pub async fn idle(&self) {
        self.wait_idle(None).await;
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::Builder;
    use crate::clock::coarse_tick;
    use crate::SpawnError;
    use std::sync::Arc;
    use std::time::Duration;

    /// Spins (in clock reads, not time) until the coarse clock moves on.
    fn next_tick() -> u64 {
        let start = coarse_tick().expect("a coarse clock");
        for _ in 0..500_000_000u64 {
            let now = coarse_tick().unwrap();
            if now != start {
                return now;
            }
        }
        panic!("the coarse clock did not move");
    }

    /// A runner that took a task while others waited fans out with the
    /// count it read, which may be stale by then. Once the runtime is
    /// shutting down, every runner `fan_out` starts is dropped inside
    /// `spawn`, and its guard closes the pool and abandons the queue.
    /// `fan_out` must then stop, not claim the freed place again for tasks
    /// that are gone: it did, for ever (a benchmark's runtime drop hung at
    /// full CPU).
    #[test]
    fn fan_out_stops_for_tasks_that_are_gone() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        let bg = Builder::new("gone")
            .runtime(handle.clone())
            .build()
            .unwrap();
        runtime.shutdown_background();
        // The worker closes the runtime's task list as it shuts down; from
        // then on a spawned task is dropped inside `spawn`.
        while !handle.spawn(std::future::pending::<()>()).is_finished() {
            std::thread::yield_now();
        }
        let (done, finished) = std::sync::mpsc::channel();
        let pool = Arc::clone(&bg.pool);
        std::thread::spawn(move || {
            // Three tasks waited when this runner looked; none does now.
            let _ = done.send(pool.fan_out(3));
        });
        let launched = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("fan_out still launching runners after 30 s");
        assert!(!launched, "a runner launched for no task");
        assert!(bg.snapshot().accepting, "nothing closed the pool");
        // A task spawned now starts a runner, which the runtime drops: its
        // guard closes the pool, and the task is abandoned, not lost.
        assert_eq!(bg.try_spawn("late", async {}), Ok(()));
        let snapshot = bg.snapshot();
        assert!(!snapshot.accepting);
        assert_eq!(snapshot.abandoned, 1);
        assert_eq!(bg.try_spawn("later", async {}), Err(SpawnError::NoRuntime));
    }

    /// Without a subscriber, a flood of `queue_full` drops is counted
    /// exactly, and records one drop per task name and clock tick in the
    /// recent-drops ring: the next tick's first drop is recorded in full.
    #[test]
    fn repeated_drops_in_one_tick_are_counted_and_recorded_once() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let bg = Builder::new("ticks")
            .capacity(1)
            .parallelism(1)
            .build()
            .unwrap();
        bg.spawn("kept", async {});
        let mut dropped = 0u64;
        let mut folded_once = false;
        // Until the ring of 20 is full: each round adds at least one.
        for _ in 0..crate::stats::RING_LEN {
            let recorded = bg.snapshot().recent_drops.len();
            let tick = next_tick();
            for _ in 0..100 {
                bg.spawn("flood", async {});
            }
            dropped += 100;
            let snapshot = bg.snapshot();
            assert_eq!(snapshot.dropped, dropped, "every drop counted");
            assert_eq!(snapshot.dropped_by_reason.queue_full, dropped);
            let grew = snapshot.recent_drops.len() - recorded;
            assert!(grew >= 1, "the new tick's first drop is recorded");
            if recorded + grew == crate::stats::RING_LEN {
                break;
            }
            // All 100 in the tick that began just before: one recorded.
            if coarse_tick() == Some(tick) {
                assert_eq!(grew, 1, "one drop recorded per name and tick");
                folded_once = true;
            }
        }
        assert!(folded_once, "no round of 100 drops fit in one tick");
        let ring = bg.snapshot().recent_drops;
        assert!(ring
            .iter()
            .all(|drop| drop.task == "flood" && drop.reason == "queue_full"));
    }
}
