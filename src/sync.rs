//! The atomics, cells and spin hints that the crate's lock-free protocols
//! use, imported from one place so that `loom` can model them.
//!
//! Normally these are `std`'s. Built with `RUSTFLAGS="--cfg bg_queue_loom"`
//! they are `loom`'s, whose model checker runs every interleaving of a
//! small test (`src/tests/loom_inbox.rs`, `src/pool/loom_runner_protocol.rs`, run by `./scripts/loom`). The cfg is not the
//! usual `loom`: tokio reads that one too, and would then need `loom`
//! itself. Only the protocol state goes through here: the inbox's ring,
//! the admission word and the runner word. Everything else (counters under
//! the pool's mutex, ids) uses `std` directly.

#[cfg(bg_queue_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(bg_queue_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Busy-wait hints for a receiver that waits out a sender a few
/// instructions from done. Under `loom` both yield to the model's
/// scheduler, which otherwise would spin for ever on one interleaving.
pub(crate) mod hint {
    #[cfg(bg_queue_loom)]
    pub(crate) use loom::hint::spin_loop;
    #[cfg(not(bg_queue_loom))]
    pub(crate) use std::hint::spin_loop;

    #[cfg(bg_queue_loom)]
    pub(crate) use loom::thread::yield_now;
    #[cfg(not(bg_queue_loom))]
    pub(crate) use std::thread::yield_now;
}

/// `UnsafeCell` with `loom`'s closure API on both builds, so that `loom`
/// can check every access for a data race.
pub(crate) mod cell {
    #[cfg(bg_queue_loom)]
    pub(crate) use loom::cell::UnsafeCell;

    /// `std::cell::UnsafeCell` behind `loom`'s API.
    #[cfg(not(bg_queue_loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(bg_queue_loom))]
    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a raw pointer to the value. Dereferencing it is
        /// `f`'s own `unsafe` block, whose contract is that no other access
        /// to the value overlaps the call.
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}
