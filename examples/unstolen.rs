//! Tokio alone, no bg-queue: how often a task that another worker could
//! steal stays unstolen while the task that queued it holds its worker.
//!
//! This is the pattern a pool runner meets when it starts a runner for the
//! task behind the one it is about to run: on a 2-worker runtime, a task
//! parked on a `Notify` is woken, spawns a task `X` (which lands in its
//! worker's LIFO slot, where no other worker can take it), moves `X` out to
//! the run queue, then spins without yielding until `X` has run or a
//! second has passed. The other worker is idle, so `X` should run within
//! microseconds.
//!
//! ```sh
//! cargo run --release --example unstolen -- spawn 6000   # push X out with an empty task
//! cargo run --release --example unstolen -- yield 6000   # yield once instead
//! ```
//!
//! With `spawn` an empty task takes the LIFO slot and `X` goes to the run
//! queue, to be stolen: this counts the rounds in which nobody stole it.
//! With `yield` the spinning task yields once first, so its own worker runs
//! `X` from the LIFO slot: no round should stall. Run it with other load on
//! the machine (a stall needs a particular interleaving);
//! docs/benchmarks-log.md ("Runners yield into the run queue") has the
//! figures. Prints one line: mode, rounds, stalled rounds.

use std::future::poll_fn;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

/// How long a round waits for `X` before it counts as stalled.
const STALL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Spawn,
    Yield,
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("spawn") => Mode::Spawn,
        Some("yield") => Mode::Yield,
        other => {
            eprintln!("usage: unstolen spawn|yield [ROUNDS]; got {other:?}");
            return ExitCode::from(2);
        }
    };
    let rounds: u32 = match args.next().map(|n| n.parse()) {
        None => 6_000,
        Some(Ok(n)) => n,
        Some(Err(error)) => {
            eprintln!("ROUNDS must be a whole number: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let stalled = runtime.block_on(run(mode, rounds));
    let name = if mode == Mode::Spawn {
        "spawn"
    } else {
        "yield"
    };
    println!("mode {name}: {stalled} of {rounds} rounds stalled for {STALL:?}");
    ExitCode::SUCCESS
}

async fn run(mode: Mode, rounds: u32) -> u32 {
    let notify = Arc::new(Notify::new());
    let mut stalled = 0;
    for _ in 0..rounds {
        let release = Arc::new(AtomicBool::new(false));
        let (ran_tx, ran_rx) = oneshot::channel::<()>();
        let (parked_tx, parked_rx) = oneshot::channel::<()>();
        let waiter = {
            let notify = notify.clone();
            let release = release.clone();
            async move {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let _ = parked_tx.send(());
                notified.await;
                tokio::spawn(async move {
                    let _ = ran_tx.send(());
                });
                match mode {
                    Mode::Spawn => drop(tokio::spawn(async {})),
                    Mode::Yield => yield_to_run_queue().await,
                }
                spin(&release);
            }
        };
        tokio::spawn(waiter);
        parked_rx.await.expect("the waiter registered");
        // Woken from a worker, as a pool's `spawn` wakes its standby runner.
        let waker = {
            let notify = notify.clone();
            tokio::spawn(async move { notify.notify_one() })
        };
        waker.await.expect("the waker ran");
        if tokio::time::timeout(STALL, ran_rx).await.is_err() {
            stalled += 1;
        }
        release.store(true, Ordering::SeqCst);
    }
    stalled
}

/// Yields once by waking itself: tokio puts the task at the back of its
/// worker's run queue.
async fn yield_to_run_queue() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Holds the worker until released (at most 5 s).
fn spin(release: &AtomicBool) {
    let start = Instant::now();
    while !release.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(5) {
        std::hint::spin_loop();
    }
}
