//! Typed errors: building a pool, and spawning into one.

use std::fmt;

/// Why a pool could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// An empty (or blank) pool name: the pool's metrics, spans and page
    /// rows would have no name to tell them apart.
    #[error("bg-queue pool name must not be empty")]
    EmptyName,
    /// `capacity(0)`: a queue that can hold nothing would drop every task
    /// that finds all runners busy.
    #[error("bg-queue pool `{pool}`: capacity must be at least 1")]
    ZeroCapacity {
        /// The pool's name.
        pool: String,
    },
    /// `parallelism(0)`: no task would ever run.
    #[error("bg-queue pool `{pool}`: parallelism must be at least 1")]
    ZeroParallelism {
        /// The pool's name.
        pool: String,
    },
    /// `capacity` above [`MAX_CAPACITY`](crate::MAX_CAPACITY).
    #[error("bg-queue pool `{pool}`: capacity {capacity} is above the maximum {max}")]
    CapacityTooLarge {
        /// The pool's name.
        pool: String,
        /// The capacity asked for.
        capacity: usize,
        /// The largest capacity accepted.
        max: usize,
    },
    /// `parallelism` above [`MAX_PARALLELISM`](crate::MAX_PARALLELISM).
    #[error("bg-queue pool `{pool}`: parallelism {parallelism} is above the maximum {max}")]
    ParallelismTooLarge {
        /// The pool's name.
        pool: String,
        /// The parallelism asked for.
        parallelism: usize,
        /// The largest parallelism accepted.
        max: usize,
    },
    /// `timeout(Duration::ZERO)`: every task would time out at once.
    #[error("bg-queue pool `{pool}`: the per-task timeout must be longer than zero")]
    ZeroTimeout {
        /// The pool's name.
        pool: String,
    },
    /// `build()` was called outside a tokio runtime and no
    /// [`Handle`](tokio::runtime::Handle) was given.
    #[error(
        "bg-queue pool `{pool}`: no tokio runtime: build the pool inside a runtime or pass one with `.runtime(handle)`"
    )]
    NoRuntime {
        /// The pool's name.
        pool: String,
    },
}

/// Why a task was not accepted. The string forms are the values of the
/// `bg.drop.reason` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The queue held `capacity` tasks waiting for a runner.
    QueueFull,
    /// The pool was shut down (or is shutting down) before the call.
    Closed,
    /// The task was accepted, then discarded by a shutdown that ran out of
    /// time before it started. Counted as abandoned in the report; this reason
    /// exists so spans and logs can say why.
    Shutdown,
    /// The pool has no live tokio runtime to run on (built by
    /// [`spawn_pool`](crate::spawn_pool) outside a runtime, or its runtime
    /// was shut down).
    NoRuntime,
}

impl DropReason {
    /// Every reason, in the order used by per-reason tables.
    pub const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::Closed,
        DropReason::Shutdown,
        DropReason::NoRuntime,
    ];

    /// The attribute value, e.g. `"queue_full"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Closed => "closed",
            DropReason::Shutdown => "shutdown",
            DropReason::NoRuntime => "no_runtime",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            DropReason::QueueFull => 0,
            DropReason::Closed => 1,
            DropReason::Shutdown => 2,
            DropReason::NoRuntime => 3,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why [`BackgroundTx::try_spawn`](crate::BackgroundTx::try_spawn) did not
/// accept a task. The task is counted in `dropped` either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The queue is full: `capacity` tasks are already waiting.
    #[error("background queue full")]
    QueueFull,
    /// The pool is shut down or shutting down.
    #[error("background pool closed")]
    Closed,
    /// The pool has no live tokio runtime.
    #[error("background pool has no runtime")]
    NoRuntime,
}

impl SpawnError {
    /// The drop reason this error is counted under.
    pub const fn reason(self) -> DropReason {
        match self {
            SpawnError::QueueFull => DropReason::QueueFull,
            SpawnError::Closed => DropReason::Closed,
            SpawnError::NoRuntime => DropReason::NoRuntime,
        }
    }
}
