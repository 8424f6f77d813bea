//! Races and load: a task spawned while the last runner leaves, and many
//! producers with random outcomes against a checker and a shutdown.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bg_queue::Builder;
use common::pool::two_worker_runtime;

/// `spawn` admits without the lock, and a runner leaves (or parks as the
/// pool's standby) when the queue is empty: the two race whenever a task
/// arrives as the last one finishes, which is where a lost wakeup would
/// strand a task (admitted, but no runner coming). In each round, three
/// threads submit one task each after a delay that sweeps across the
/// runner's exit, at parallelism 1, and the round waits until all three
/// ran: nothing later can rescue a stranded task. The timeout only turns a
/// stranded task into a failure, not a hang.
#[test]
fn a_task_spawned_while_the_last_runner_leaves_still_runs() {
    const ROUNDS: usize = 3_000;
    const THREADS: usize = 3;
    let runtime = two_worker_runtime();
    let bg = runtime.block_on(async { Builder::new("handoff").parallelism(1).build().unwrap() });
    let start = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let producers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let bg = bg.clone();
            let start = start.clone();
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    start.wait();
                    for _ in 0..((round * 37 + thread * 101) % 2_000) {
                        std::hint::spin_loop();
                    }
                    let done_tx = done_tx.clone();
                    bg.spawn("handoff", async move {
                        let _ = done_tx.send(());
                    });
                }
            })
        })
        .collect();
    for round in 0..ROUNDS {
        start.wait();
        for _ in 0..THREADS {
            done_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("round {round}: stranded: {:?}", bg.snapshot()));
        }
    }
    for producer in producers {
        producer.join().unwrap();
    }
    // The last task signalled from inside its future; its runner records
    // the completion just after.
    runtime.block_on(bg.idle());
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.completed, (ROUNDS * THREADS) as u64);
    assert!(snapshot.is_consistent());
}

/// Several producers (tasks and threads), random outcomes (ok, `Err`,
/// panic, timeout), a checker reading snapshots the whole time, then a
/// shutdown that cuts work short: the invariant holds at every snapshot and
/// exactly in the report, and every call is in `spawned` or `dropped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_invariant_holds_continuously_and_at_shutdown() {
    use rand::{Rng as _, SeedableRng as _};
    const PRODUCERS: u64 = 4;
    const CALLS: u64 = 5_000;
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let bg = Builder::new("stress")
        .capacity(256)
        .parallelism(6)
        .timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let checker = {
        let (bg, calls, done) = (bg.clone(), calls.clone(), done.clone());
        tokio::spawn(async move {
            let mut checks = 0u64;
            while !done.load(Ordering::SeqCst) {
                let before = calls.load(Ordering::SeqCst);
                let snapshot = bg.snapshot();
                let after = calls.load(Ordering::SeqCst);
                assert!(snapshot.is_consistent(), "{snapshot:?}");
                let accounted = snapshot.spawned + snapshot.dropped;
                // Calls in flight during the snapshot may or may not count.
                assert!(accounted <= after + PRODUCERS, "{accounted} > {after}");
                assert!(accounted + PRODUCERS >= before, "{accounted} < {before}");
                assert!(snapshot.queued <= 256 && snapshot.running <= 6);
                checks += 1;
                tokio::task::yield_now().await;
            }
            checks
        })
    };

    let produce = move |seed: u64, bg: bg_queue::BackgroundTx, calls: Arc<AtomicU64>| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..CALLS {
            let kind: u8 = rng.random_range(0..10);
            let micros: u64 = rng.random_range(0..2_000);
            calls.fetch_add(1, Ordering::SeqCst);
            bg.spawn_fallible("stress", async move {
                tokio::time::sleep(Duration::from_micros(micros)).await;
                match kind {
                    0 => panic!("random panic"),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(())
                    }
                    2 => Err("random failure"),
                    _ => Ok(()),
                }
            });
            if rng.random_bool(0.01) {
                std::thread::yield_now();
            }
        }
    };
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (bg, calls) = (bg.clone(), calls.clone());
            std::thread::spawn(move || produce(i, bg, calls))
        })
        .collect();
    let tasks: Vec<_> = (2..4)
        .map(|i| {
            let (bg, calls) = (bg.clone(), calls.clone());
            tokio::spawn(async move { produce(i, bg, calls) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for thread in threads {
        thread.join().unwrap();
    }
    // Every kind of outcome has happened at least once before the shutdown
    // (a fast machine may finish producing before any timeout fires).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = bg.snapshot();
        if s.panicked > 0 && s.timed_out > 0 && s.failed > 0 && s.completed > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "outcomes missing: {s:?}"
        );
        tokio::task::yield_now().await;
    }
    // Shut down while work may still be queued and running.
    let report = bg.shutdown(Duration::from_millis(5)).await;
    done.store(true, Ordering::SeqCst);
    let checks = checker.await.unwrap();
    std::panic::set_hook(prev_hook);

    assert!(report.is_consistent(), "{report}");
    assert_eq!(
        report.spawned + report.dropped,
        PRODUCERS * CALLS,
        "{report}"
    );
    assert_eq!(report.queued, 0);
    assert!(checks > 10, "the checker ran only {checks} times");
    // Every outcome occurred, and the numbers are whole.
    assert!(
        report.panicked > 0 && report.timed_out > 0 && report.failed > 0 && report.completed > 0,
        "{report}"
    );
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.spawned, report.spawned);
    assert_eq!(snapshot.dropped, report.dropped);
}
