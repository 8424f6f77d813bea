//! The pool: a bounded queue and at most `parallelism` runner tasks.
//!
//! A task's path, file by file:
//!
//! 1. [`handle`]: `BackgroundTx::spawn` boxes nothing yet and calls
//!    `Pool::submit`.
//! 2. [`admission`]: `submit` claims a place in the *admission word* with
//!    one compare-and-swap (never past `capacity`; no lock) and sends the
//!    task into the lock-free inbox (`crate::inbox`). A refused task goes
//!    to [`drops`] instead.
//! 3. [`launch`]: `ensure_runner` makes sure a runner will take it:
//!    a lingering runner, this thread's pending runner, the parked standby
//!    woken, or a new runner started, as the *runner word*
//!    ([`runner_word`]) allows.
//! 4. [`runner`]: a runner takes tasks one at a time under the lock (the
//!    queue and the counters are in [`state`]), runs each inside its spans,
//!    and records its end; when the queue is empty it lingers, parks as
//!    the standby, or leaves. Its [`guard`] accounts for its task whatever
//!    ends it.
//! 5. [`snapshot`] and [`shutdown`] read and end the pool.
//!
//! The one guarantee that spans these files, that no admitted task is ever
//! left without a runner, is stated in [`runner_word`] and checked by the
//! `loom` models in `loom_runner_protocol.rs` (`./scripts/loom`).

mod admission;
mod builder;
mod drops;
mod failures;
mod guard;
mod handle;
mod launch;
#[cfg(all(test, bg_queue_loom))]
mod loom_runner_protocol;
mod runner;
mod runner_word;
mod shutdown;
mod snapshot;
mod state;
#[cfg(all(test, not(bg_queue_loom)))]
mod tests;

pub use builder::{
    Builder, DEFAULT_CAPACITY, DEFAULT_PARALLELISM, DEFAULT_POOL_NAME, MAX_CAPACITY,
    MAX_PARALLELISM,
};
pub use handle::{spawn_pool, BackgroundTx};
