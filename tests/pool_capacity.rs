//! Capacity: exactly `capacity` tasks wait while every runner is busy, in
//! pools larger than the inbox too (in order, with concurrent callers,
//! nothing lost); the oldest waiting task's age; drops logged as a summary.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bg_queue::{Builder, SpawnError};
use common::pool::{occupy, two_worker_runtime, Gate};

#[tokio::test]
async fn capacity_is_exact_while_every_runner_is_busy() {
    let bg = Builder::new("exact")
        .capacity(3)
        .parallelism(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    occupy(&bg, 2, &gate).await;
    for _ in 0..3 {
        bg.try_spawn("queued", async {})
            .expect("capacity not reached");
    }
    assert_eq!(bg.try_spawn("queued", async {}), Err(SpawnError::QueueFull));
    let snapshot = bg.snapshot();
    assert_eq!((snapshot.running, snapshot.queued), (2, 3));
    assert_eq!(snapshot.dropped_by_reason.queue_full, 1);
    assert_eq!(snapshot.task("queued").unwrap().dropped, 1);
    assert_eq!(snapshot.recent_drops[0].task, "queued");
    assert!(snapshot.is_consistent());

    gate.open();
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(
        (snapshot.spawned, snapshot.completed, snapshot.dropped),
        (5, 5, 1)
    );
}

/// A pool whose capacity is above its inbox's 256 slots, on a
/// current-thread runtime, so that no runner absorbs anything while the
/// calls come: the calls that find the inbox full move it into the queue
/// themselves. Every place is usable, the next call is refused, and one
/// runner runs the tasks in the order they were spawned.
#[test]
fn a_pool_larger_than_its_inbox_fills_to_capacity_and_keeps_fifo_order() {
    const CAPACITY: usize = 5_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::with_capacity(CAPACITY)));
    let bg = runtime.block_on(async {
        let bg = Builder::new("large")
            .capacity(CAPACITY)
            .parallelism(1)
            .build()
            .unwrap();
        for i in 0..CAPACITY {
            let order = order.clone();
            bg.try_spawn("ordered", async move { order.lock().unwrap().push(i) })
                .unwrap_or_else(|error| panic!("call {i} refused: {error}"));
        }
        assert_eq!(
            bg.try_spawn("ordered", async {}),
            Err(SpawnError::QueueFull)
        );
        let snapshot = bg.snapshot();
        assert_eq!((snapshot.queued, snapshot.running), (CAPACITY as u64, 0));
        assert!(snapshot.is_consistent());
        bg.idle().await;
        bg
    });
    let order = order.lock().unwrap();
    assert!(
        order.iter().copied().eq(0..CAPACITY),
        "ran out of order: first misplaced at {:?}",
        order.iter().enumerate().find(|(at, &i)| *at != i)
    );
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.completed, CAPACITY as u64);
    assert_eq!(snapshot.dropped, 1);
}

/// Four threads spawn into a pool larger than its inbox while one runner
/// takes tasks on the runtime: the inbox is emptied by the runner and, when
/// the callers outrun it by 256 calls, by a caller (the test above forces
/// that path). Nothing is lost or run twice, every call is
/// either accepted or counted as a drop, and each thread's tasks run in the
/// order it spawned them (one runner, a FIFO queue).
#[test]
fn concurrent_callers_into_a_pool_larger_than_its_inbox_lose_nothing() {
    const THREADS: usize = 4;
    const CALLS: usize = 25_000;
    let runtime = two_worker_runtime();
    let bg = Builder::new("large")
        .capacity(8_192)
        .parallelism(1)
        .runtime(runtime.handle().clone())
        .build()
        .unwrap();
    let ran = Arc::new(std::sync::Mutex::new(vec![Vec::new(); THREADS]));
    let start = Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (bg, ran, start) = (bg.clone(), ran.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut accepted = 0u64;
                for seq in 0..CALLS {
                    let ran = ran.clone();
                    let task = async move { ran.lock().unwrap()[thread].push(seq) };
                    match bg.try_spawn("caller", task) {
                        Ok(()) => accepted += 1,
                        Err(SpawnError::QueueFull) => {}
                        Err(other) => panic!("unexpected refusal: {other}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    runtime.block_on(bg.idle());
    let snapshot = bg.snapshot();
    assert!(snapshot.is_consistent(), "{snapshot:?}");
    assert_eq!(snapshot.spawned, accepted);
    assert_eq!(snapshot.completed, accepted);
    assert_eq!(
        snapshot.spawned + snapshot.dropped,
        (THREADS * CALLS) as u64
    );
    let ran = ran.lock().unwrap();
    assert_eq!(ran.iter().map(Vec::len).sum::<usize>() as u64, accepted);
    for (thread, seqs) in ran.iter().enumerate() {
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "thread {thread}'s tasks ran out of order or twice"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn oldest_queued_age_grows_while_the_queue_is_blocked() {
    let bg = Builder::new("age").parallelism(1).build().unwrap();
    let gate = Gate::new();
    occupy(&bg, 1, &gate).await;
    bg.spawn("waiting", async {});
    assert!(bg.snapshot().oldest_queued_seconds < 0.001);
    tokio::time::advance(Duration::from_secs(5)).await;
    let age = bg.snapshot().oldest_queued_seconds;
    assert!((5.0..5.1).contains(&age), "{age}");
    gate.open();
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.oldest_queued_seconds, 0.0);
    let wait = snapshot.task("waiting").unwrap().wait_ms.max.unwrap();
    assert!((5000.0..5100.0).contains(&wait), "{wait}");
}

/// Counts WARN events from `bg_queue`.
struct WarnCounter(Arc<AtomicU64>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == "bg_queue" && *meta.level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test]
async fn drops_are_logged_as_a_rate_limited_summary_not_one_line_each() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let warnings = Arc::new(AtomicU64::new(0));
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(WarnCounter(warnings.clone())),
    );
    let bg = Builder::new("quiet-drops")
        .capacity(1)
        .parallelism(1)
        .build()
        .unwrap();
    for _ in 0..10_000 {
        bg.spawn("overflow", async {});
    }
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.dropped, 9_999);
    // The first drop logs a summary at once; the next is due 10 s later.
    assert_eq!(warnings.load(Ordering::Relaxed), 1);
    bg.idle().await;
}
