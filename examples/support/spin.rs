//! The spinning-producer scenario, shared by `examples/spinning_producer.rs`
//! (20 runs, figures) and `tests/pool_starvation.rs` (one run, asserted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the producer holds its worker.
pub const SPIN: Duration = Duration::from_millis(300);
/// `spawn` calls during the spin, at an even pace.
pub const CALLS: u64 = 50_000;
/// What the README promises: at least twice the queue's capacity run
/// during the spin (a pool whose runners wait behind the producer runs
/// none, and accepts only the queue's 1,024).
pub const PROMISED: u64 = 2048;

/// How the producer calls `spawn` during the spin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// [`CALLS`] calls at an even pace over [`SPIN`].
    Even,
    /// As fast as it can for the whole spin (millions of calls, nearly all
    /// refused for a full queue): the refusals must not hide the runners.
    Flat,
}

/// One run on a new 2-worker runtime and `spawn_pool()`: the tasks that
/// ran during the spin, and those the pool accepted in all.
pub fn run_once(pace: Pace) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a 2-worker runtime");
    runtime.block_on(async {
        let bg = bg_queue::spawn_pool();
        let ran = Arc::new(AtomicU64::new(0));
        let producer = {
            let bg = bg.clone();
            let ran = Arc::clone(&ran);
            let pace_of_calls = pace;
            tokio::spawn(async move {
                let start = Instant::now();
                let pace = SPIN.as_nanos() as u64 / CALLS;
                let mut calls = 0u64;
                // Never yields: this task holds its worker for the whole
                // spin, as a CPU-bound handler would.
                loop {
                    let elapsed = start.elapsed();
                    if elapsed >= SPIN {
                        break;
                    }
                    let due = match pace_of_calls {
                        Pace::Even => calls < CALLS && elapsed.as_nanos() as u64 >= calls * pace,
                        Pace::Flat => true,
                    };
                    if due {
                        let ran = Arc::clone(&ran);
                        bg.spawn("noop", async move {
                            ran.fetch_add(1, Ordering::Relaxed);
                        });
                        calls += 1;
                    }
                    std::hint::spin_loop();
                }
                ran.load(Ordering::Relaxed)
            })
        };
        let ran_during_spin = producer.await.expect("the producer ends");
        bg.idle().await;
        (ran_during_spin, bg.snapshot().spawned)
    })
}
