//! A bounded, never-blocking queue for fire-and-forget work in tokio services,
//! where every task is visible: in traces, in metrics and on a live page.
//!
//! Services hand low-priority work (email sends, mailing-list subscriptions,
//! webhook follow-ups) to background tasks. `tokio::spawn` is unbounded and
//! invisible. A [`BackgroundTx`] bounds it (at most `capacity` tasks wait, at
//! most `parallelism` run; past that a task is dropped, counted and never
//! blocks the caller) and accounts for every task:
//!
//! - each task carries its caller's span: `bg.task` (from `spawn` to the end,
//!   so the queue wait shows) and `bg.run` (the execution, with your own
//!   spans inside), exported through `tracing` and `tracing-opentelemetry`;
//! - OpenTelemetry metrics for wait, run time, drops, depth, active tasks and
//!   the age of the oldest queued task ([`METRICS`]);
//! - a [`PoolSnapshot`] for code, and with the `debug-page` feature (on by
//!   default) an axum router serving `/debug/bg` for on-call engineers;
//! - panics are caught and counted, `Err` results are counted as `failed`, a
//!   per-task timeout cancels and counts, and [`BackgroundTx::shutdown`]
//!   drains within a deadline and reports every task.
//!
//! The library installs no global telemetry: the application sets up its
//! tracer and meter providers (before building pools, or passes them to the
//! [`Builder`]).
//!
//! With the `bound-metrics` feature (on by default) the histograms are
//! recorded through the OpenTelemetry SDK's experimental bound instruments,
//! which skip hashing the attribute set on every record: about half the
//! instructions per task with metrics on. It switches that feature on in the
//! application's `opentelemetry_sdk` 0.33. A meter of another implementation
//! drops what is recorded through bound instruments (the API's default
//! `bind`), so with such a meter build pools with
//! [`Builder::bound_metrics(false)`](Builder::bound_metrics).
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() {
//!     // Capacity 1024, parallelism 8, named "default".
//!     let bg = bg_queue::spawn_pool();
//!
//!     bg.spawn("send_receipt_email", async {
//!         // talk to the SMTP server...
//!     });
//!     // Fallible work: an `Err` is counted as `failed`.
//!     bg.spawn_fallible("subscribe_mailing_list", async {
//!         Err::<(), _>("list API answered 503")
//!     });
//!
//!     bg.idle().await;
//!     let snapshot = bg.snapshot();
//!     assert_eq!(snapshot.spawned, 2);
//!     assert_eq!(snapshot.completed, 1);
//!     assert_eq!(snapshot.failed, 1);
//!     assert_eq!(snapshot.queued + snapshot.running, 0);
//!
//!     // At exit: stop accepting, drain, account for everything.
//!     let report = bg.shutdown(Duration::from_secs(5)).await;
//!     assert!(report.drained && report.is_consistent());
//! }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod clock;
#[cfg(feature = "debug-page")]
mod debug_page;
#[cfg(feature = "postgres")]
pub mod durable;
mod error;
mod histogram;
mod inbox;
mod pool;
mod rate_limit;
mod report;
mod snapshot;
mod stats;
mod sync;
mod task;
mod telemetry;
#[cfg(all(test, bg_queue_loom))]
mod tests;

#[cfg(feature = "debug-page")]
pub use debug_page::{debug_router, DebugPage, DEFAULT_JAEGER_UI_URL};
pub use error::{BuildError, DropReason, SpawnError};
pub use histogram::Percentiles;
pub use pool::{
    spawn_pool, BackgroundTx, Builder, DEFAULT_CAPACITY, DEFAULT_PARALLELISM, DEFAULT_POOL_NAME,
    MAX_CAPACITY, MAX_PARALLELISM,
};
pub use report::ShutdownReport;
pub use snapshot::{
    DroppedByReason, DroppedTask, FailedTask, PoolSnapshot, SlowTask, TaskSnapshot,
    ERROR_TEXT_MAX_CHARS,
};
pub use task::{Outcome, TaskError};
pub use telemetry::{
    names, InstrumentKind, MetricDefinition, Propagation, RunSpan, DURATION_BUCKETS_SECONDS,
    METRICS,
};
