//! The core pool through its public API: the seed's promises, and what the
//! seed got wrong (capacity, starvation, panics, timeouts, shutdown).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bg_queue::{spawn_pool, BuildError, Builder, DropReason, SpawnError};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// A gate tasks wait on: `open` lets every waiting task finish.
#[derive(Clone)]
struct Gate(Arc<Semaphore>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(Semaphore::new(0)))
    }
    async fn wait(&self) {
        self.0.acquire().await.expect("gate never closes").forget();
    }
    fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// Spawns `n` tasks that report their start on `started` and then wait at
/// `gate`; returns once all `n` are running.
async fn occupy(pool: &bg_queue::BackgroundTx, n: usize, gate: &Gate) {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let gate = gate.clone();
        let started_tx = started_tx.clone();
        pool.try_spawn("blocker", async move {
            let _ = started_tx.send(());
            gate.wait().await;
        })
        .expect("room for the blockers");
    }
    for _ in 0..n {
        started_rx.recv().await.expect("blocker started");
    }
}

#[tokio::test]
async fn seed_drop_in_runs_every_task() {
    let bg = spawn_pool();
    let done = Arc::new(AtomicU64::new(0));
    for _ in 0..100 {
        let done = done.clone();
        bg.spawn("count", async move {
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    bg.idle().await;
    assert_eq!(done.load(Ordering::Relaxed), 100);
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.name, "default");
    assert_eq!((snapshot.capacity, snapshot.parallelism), (1024, 8));
    assert_eq!(snapshot.spawned, 100);
    assert_eq!(snapshot.completed, 100);
    assert_eq!(snapshot.task("count").unwrap().completed, 100);
    assert!(snapshot.is_consistent());
}

#[test]
fn spawn_pool_outside_a_runtime_never_panics_and_counts_drops() {
    let bg = spawn_pool();
    bg.spawn("orphan", async {});
    assert_eq!(bg.try_spawn("orphan", async {}), Err(SpawnError::NoRuntime));
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.spawned, 0);
    assert_eq!(snapshot.dropped_by_reason.no_runtime, 2);
    assert_eq!(snapshot.recent_drops[0].reason, "no_runtime");
}

#[test]
fn builder_outside_a_runtime_is_a_typed_error() {
    let error = Builder::new("jobs").build().unwrap_err();
    assert_eq!(
        error,
        BuildError::NoRuntime {
            pool: "jobs".into()
        }
    );
    assert!(error.to_string().contains("no tokio runtime"));
}

#[tokio::test]
async fn invalid_settings_are_typed_errors_naming_the_pool() {
    let cases = [
        (
            Builder::new("a").capacity(0).build(),
            "capacity must be at least 1",
        ),
        (
            Builder::new("a").parallelism(0).build(),
            "parallelism must be at least 1",
        ),
        (
            Builder::new("a")
                .capacity(bg_queue::MAX_CAPACITY + 1)
                .build(),
            "capacity 16777217 is above the maximum 16777216",
        ),
        (
            Builder::new("a")
                .parallelism(bg_queue::MAX_PARALLELISM + 1)
                .build(),
            "parallelism 65536 is above the maximum 65535",
        ),
        (
            Builder::new("a").timeout(Duration::ZERO).build(),
            "timeout must be longer than zero",
        ),
    ];
    for (result, message) in cases {
        let error = result.unwrap_err().to_string();
        assert!(error.contains(message), "{error}");
        assert!(error.contains("pool `a`"), "{error}");
    }
}

/// A multi-thread runtime of two workers, as on the project's machine, for
/// tests that drive it from plain threads.
fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn spawn_from_plain_threads_runs_on_the_pool_runtime() {
    let runtime = two_worker_runtime();
    let bg = Builder::new("threads")
        .runtime(runtime.handle().clone())
        .build()
        .unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let bg = bg.clone();
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let done_tx = done_tx.clone();
                    bg.spawn("from_thread", async move {
                        done_tx.send(()).unwrap();
                    });
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    for _ in 0..100 {
        done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    runtime.block_on(bg.idle());
    assert_eq!(bg.snapshot().completed, 100);
}

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

/// 50,000 calls from a task that never yields, on a 2-worker runtime, into
/// a pool of `parallelism` runners: its runners must run on the other
/// worker meanwhile, so more than the queue's 1,024 places get used. (The
/// seed's drainer sat in this worker's LIFO slot, and it accepted exactly
/// 1,024: nothing ran before the loop ended.)
async fn spinning_producer(parallelism: usize, standby: bool) {
    let bg = Builder::new("spin")
        .capacity(1024)
        .parallelism(parallelism)
        .build()
        .unwrap();
    if standby {
        // One task first: its runner then parks as the pool's standby, and
        // the loop below wakes it instead of starting a runner.
        bg.spawn("first", async {});
        bg.idle().await;
    }
    let calls = 50_000u64;
    let producer = {
        let bg = bg.clone();
        tokio::spawn(async move {
            for _ in 0..calls {
                bg.spawn("spin", async {});
            }
        })
    };
    producer.await.unwrap();
    bg.idle().await;
    let snapshot = bg.snapshot();
    eprintln!(
        "spinning producer, parallelism {parallelism}: {} accepted, {} dropped",
        snapshot.spawned, snapshot.dropped
    );
    assert_eq!(
        snapshot.spawned + snapshot.dropped,
        calls + u64::from(standby)
    );
    assert!(
        snapshot.spawned > 1024 + u64::from(standby),
        "accepted only {} tasks: nothing ran while the producer spun",
        snapshot.spawned
    );
    assert_eq!(snapshot.completed, snapshot.spawned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_producer_does_not_starve_the_pool() {
    spinning_producer(8, false).await;
}

/// The producer's runner waits in its LIFO slot; once three quarters of the
/// queue is full (or after 1 ms), `spawn` pushes it out, with a second
/// runner or, with one runner, an empty task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_producer_does_not_starve_a_pool_of_one_runner() {
    spinning_producer(1, false).await;
}

/// The same when the loop wakes the standby runner instead of starting
/// one: tokio puts a woken task in the waker's LIFO slot too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_producer_does_not_starve_a_woken_standby_runner() {
    spinning_producer(1, true).await;
    spinning_producer(8, true).await;
}

/// A runner that finds the queue empty lingers: it yields once and looks
/// again, and `spawn` leaves new tasks to it. It yields by waking itself,
/// into its worker's run queue, where another worker can steal it; so a
/// producer that starts a never-yielding loop on that worker just after its
/// previous task ended does not hold up the tasks it leaves to that runner.
/// (`tokio::task::yield_now` would defer the runner on that worker, where
/// no other worker can take it: nothing ran until the loop ended.) With
/// traffic: see [`with_traffic`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_lingering_on_a_spinning_producers_worker_still_runs() {
    let bg = Builder::new("linger-spin").parallelism(1).build().unwrap();
    for round in 0..20 {
        let ran = Arc::new(AtomicU64::new(0));
        let mut producer = {
            let bg = bg.clone();
            let ran = ran.clone();
            tokio::spawn(async move {
                // Run from this worker and awaited here: its runner wakes
                // this task, then lingers on this worker.
                let (done_tx, done_rx) = oneshot::channel();
                bg.spawn("first", async move {
                    let _ = done_tx.send(());
                });
                done_rx.await.unwrap();
                let start = std::time::Instant::now();
                while ran.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(10) {
                    let ran = ran.clone();
                    bg.spawn("spin", async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        };
        // The producer ends by itself, at the latest after 10 s.
        with_traffic(Duration::from_secs(30), &mut producer)
            .await
            .expect("the producer ended")
            .unwrap();
        assert!(
            ran.load(Ordering::SeqCst) > 0,
            "round {round}: no task ran while the producer spun: {:?}",
            bg.snapshot()
        );
        bg.idle().await;
    }
    let snapshot = bg.snapshot();
    assert!(snapshot.is_consistent());
    assert_eq!(snapshot.completed, snapshot.spawned);
}

#[tokio::test]
async fn panics_are_isolated_counted_and_release_the_runner() {
    let bg = Builder::new("panics").parallelism(1).build().unwrap();
    let (tx, rx) = oneshot::channel();
    bg.spawn("explodes", async {
        if true {
            panic!("boom")
        }
    });
    bg.spawn("after", async move {
        tx.send(()).unwrap();
    });
    rx.await.expect("the single runner survived the panic");
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.panicked, 1);
    assert_eq!(snapshot.task("explodes").unwrap().panicked, 1);
    assert_eq!(snapshot.completed, 1);
    assert!(snapshot.is_consistent());
}

#[tokio::test(start_paused = true)]
async fn a_task_over_its_timeout_is_cancelled_and_counted() {
    let bg = Builder::new("timeouts")
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let cancelled = Arc::new(AtomicU64::new(0));
    struct OnDrop(Arc<AtomicU64>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let guard = OnDrop(cancelled.clone());
    bg.spawn("slow", async move {
        let _guard = guard;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    bg.spawn("fast", async {
        tokio::time::sleep(Duration::from_millis(10)).await
    });
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("slow").unwrap().timed_out, 1);
    assert_eq!(snapshot.task("fast").unwrap().completed, 1);
    assert_eq!(
        cancelled.load(Ordering::Relaxed),
        1,
        "the slow future was dropped"
    );
    let run_max = snapshot.task("slow").unwrap().run_ms.max.unwrap();
    assert!((1000.0..1100.0).contains(&run_max), "{run_max}");
}

#[tokio::test]
async fn fallible_tasks_count_err_as_failed() {
    #[derive(Debug)]
    struct SmtpError;
    impl std::fmt::Display for SmtpError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("550 mailbox unavailable")
        }
    }
    let bg = Builder::new("fallible").build().unwrap();
    bg.spawn_fallible("send_email", async { Err::<(), _>(SmtpError) });
    bg.spawn_fallible("send_email", async { Ok::<(), SmtpError>(()) });
    bg.idle().await;
    let task = bg.snapshot().task("send_email").unwrap().clone();
    assert_eq!((task.failed, task.completed, task.spawned), (1, 1, 2));
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_in_time_then_refuses_new_tasks() {
    let bg = Builder::new("drain").parallelism(2).build().unwrap();
    for _ in 0..10 {
        bg.spawn("work", async {
            tokio::time::sleep(Duration::from_millis(100)).await
        });
    }
    let report = bg.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    assert_eq!(
        (report.spawned, report.completed, report.abandoned),
        (10, 10, 0)
    );
    assert!(report.is_consistent());
    assert_eq!(bg.try_spawn("late", async {}), Err(SpawnError::Closed));
    bg.spawn("late", async {});
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.dropped_by_reason.closed, 2);
    assert!(!snapshot.accepting);
    assert_eq!(DropReason::Closed.as_str(), snapshot.recent_drops[0].reason);
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_queued_and_running_tasks_at_the_deadline() {
    let bg = Builder::new("deadline")
        .parallelism(2)
        .capacity(10)
        .build()
        .unwrap();
    let aborted = Arc::new(AtomicU64::new(0));
    struct OnDrop(Arc<AtomicU64>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let gate = Gate::new();
    for _ in 0..2 {
        let guard = OnDrop(aborted.clone());
        let gate = gate.clone();
        bg.spawn("stuck_email", async move {
            let _guard = guard;
            gate.wait().await;
        });
    }
    for _ in 0..5 {
        bg.spawn("queued_subscription", async {});
    }
    bg.spawn("quick", async {});
    // Runners start in spawn order: the stuck pair occupies both.
    let report = bg.shutdown(Duration::from_secs(2)).await;
    assert!(!report.drained);
    assert_eq!(report.spawned, 8);
    assert_eq!(report.abandoned, 8 - report.completed);
    assert_eq!((report.queued, report.running), (0, 0));
    assert!(report.is_consistent(), "{report}");
    assert_eq!(
        aborted.load(Ordering::Relaxed),
        2,
        "running tasks were really aborted"
    );
    assert_eq!(
        report.abandoned_by_task[0],
        ("queued_subscription".to_owned(), 5)
    );
    assert!(report
        .abandoned_by_task
        .contains(&("stuck_email".to_owned(), 2)));
    let text = report.to_string();
    assert!(
        text.contains("stuck_email=2") && text.contains("deadline reached"),
        "{text}"
    );
}

#[test]
fn dropping_the_runtime_accounts_for_every_queued_task() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bg = runtime.block_on(async {
        let bg = Builder::new("orphaned").parallelism(1).build().unwrap();
        for _ in 0..1000 {
            bg.spawn("queued", async {});
        }
        bg
    });
    // The runner never got to run: the runtime goes away with 1000 queued.
    drop(runtime);
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.spawned, 1000);
    assert_eq!(snapshot.abandoned, 1000);
    assert_eq!(snapshot.queued, 0);
    assert!(snapshot.is_consistent());
    assert_eq!(bg.try_spawn("later", async {}), Err(SpawnError::NoRuntime));
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

#[tokio::test]
async fn several_named_pools_coexist() {
    let email = Builder::new("email").build().unwrap();
    let hooks = Builder::new("webhooks").build().unwrap();
    email.spawn("send", async {});
    hooks.spawn("follow_up", async {});
    hooks.spawn("follow_up", async {});
    email.idle().await;
    hooks.idle().await;
    assert_eq!(email.snapshot().completed, 1);
    assert_eq!(hooks.snapshot().completed, 2);
    assert!(email.snapshot().task("follow_up").is_none());
}

/// Several producers (tasks and threads), random outcomes (ok, `Err`,
/// panic, timeout), a checker reading snapshots the whole time, then a
/// shutdown that cuts work short: the invariant holds at every snapshot and
/// exactly in the report, and every call is in `spawned` or `dropped`.
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

/// A runner that finds the queue empty yields once and looks again before
/// it leaves. A task spawned meanwhile (a request handler's next call, just
/// after the previous task ended) is left to that runner: `spawn` starts no
/// other runner task, which on an idle pool is most of its cost. Counted
/// with the runtime's live tasks, on one thread so that the order is fixed;
/// rounds in which the runner already left are allowed to start one.
#[tokio::test(flavor = "current_thread")]
async fn a_spawn_while_a_runner_lingers_starts_no_other_runner() {
    let bg = Builder::new("linger").build().unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut lingering_rounds = 0;
    for round in 0..50 {
        let (ran_tx, ran_rx) = oneshot::channel();
        bg.spawn("first", async move {
            let _ = ran_tx.send(());
        });
        ran_rx.await.unwrap();
        let before = metrics.num_alive_tasks();
        let (ran_tx, ran_rx) = oneshot::channel();
        bg.spawn("second", async move {
            let _ = ran_tx.send(());
        });
        let after = metrics.num_alive_tasks();
        assert!(
            after <= before.max(1),
            "round {round}: {before} live tasks before the spawn, {after} after"
        );
        if before == 1 {
            lingering_rounds += 1;
        }
        ran_rx.await.unwrap();
        bg.idle().await;
    }
    // The case under test happened (the runner was still there).
    assert!(lingering_rounds > 0, "the runner never lingered");
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.completed, 100);
    assert!(snapshot.is_consistent());
}

/// The live tasks of the current runtime once the ones woken so far have
/// run: on a current-thread runtime, each yield lets every task that was
/// woken before it run once. Gives up after 100 yields.
async fn live_tasks_settled(expected: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..100 {
        if metrics.num_alive_tasks() == expected {
            break;
        }
        tokio::task::yield_now().await;
    }
    metrics.num_alive_tasks()
}

/// A pool that went idle keeps one runner parked, and the next `spawn`
/// wakes it instead of starting a runner task (most of the cost of a
/// `spawn` on a quiet service). The parked runner does not make the pool
/// look busy: `idle()` returns, and the snapshot shows nothing running.
#[tokio::test(flavor = "current_thread")]
async fn an_idle_pool_wakes_its_standby_runner_instead_of_starting_one() {
    let bg = Builder::new("standby").build().unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    for round in 0..20 {
        let (ran_tx, ran_rx) = oneshot::channel();
        bg.spawn("work", async move {
            let _ = ran_tx.send(());
        });
        ran_rx.await.unwrap();
        bg.idle().await;
        let snapshot = bg.snapshot();
        assert_eq!((snapshot.queued, snapshot.running), (0, 0), "round {round}");
        assert_eq!(
            metrics.num_alive_tasks(),
            1,
            "round {round}: the standby runner, and nothing else, is left"
        );
        let (ran_tx, ran_rx) = oneshot::channel();
        bg.spawn("work", async move {
            let _ = ran_tx.send(());
        });
        assert_eq!(
            metrics.num_alive_tasks(),
            1,
            "round {round}: spawn on an idle pool started a runner task"
        );
        ran_rx.await.unwrap();
        bg.idle().await;
    }
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.completed, 40);
    assert!(snapshot.is_consistent());
}

/// A handler that spawns several tasks pays for one runner wake-up, not
/// one runner task per call: its first `spawn` wakes the standby, and its
/// later calls leave their tasks to that runner while it is pending (tokio
/// runs it as soon as the handler yields). The runner then starts runners
/// for the rest, so they all still run at once. Counted with the runtime's
/// live tasks on one thread, where nothing runs until the handler yields.
#[tokio::test(flavor = "current_thread")]
async fn a_handlers_later_spawns_start_no_runner_and_all_still_run_at_once() {
    let bg = Builder::new("handler").parallelism(8).build().unwrap();
    bg.spawn("warm-up", async {});
    bg.idle().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    for round in 0..10 {
        assert_eq!(live_tasks_settled(1).await, 1, "round {round}: no standby");
        let gate = Gate::new();
        let (started_tx, mut started_rx) = mpsc::unbounded_channel();
        for call in 0..5 {
            let gate = gate.clone();
            let started_tx = started_tx.clone();
            bg.spawn("email", async move {
                let _ = started_tx.send(());
                gate.wait().await;
            });
            assert_eq!(
                metrics.num_alive_tasks(),
                1,
                "round {round}: call {call} started a runner task"
            );
        }
        for _ in 0..5 {
            started_rx.recv().await.expect("every task starts");
        }
        assert_eq!(bg.snapshot().running, 5, "round {round}: not all at once");
        gate.open();
        bg.idle().await;
    }
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.completed, 51);
    assert!(snapshot.is_consistent());
}

/// Bursts of 512 from a task on a worker, back to back, each waited for:
/// every task runs. Between bursts runners linger, park and leave while the next
/// burst arrives, from both workers. (A standby place that two runners
/// could take at once, one woken and not yet polled and one parking, let
/// the first clear the second's bit: the second was never woken, its count
/// stayed, and a later burst waited for it forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_bursts_never_strand_a_task() {
    tokio::spawn(async {
        let bg = Builder::new("bursts").parallelism(8).build().unwrap();
        let done = Arc::new(AtomicU64::new(0));
        const BURST: u64 = 512;
        for round in 0..1_000u64 {
            for _ in 0..BURST {
                let done = done.clone();
                bg.spawn("burst", async move {
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
            // Polls rather than waits to be woken: the producer then runs
            // between the runners' polls, as they linger, park and leave.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while done.load(Ordering::SeqCst) < (round + 1) * BURST {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: stranded: {:?}",
                    bg.snapshot()
                );
                tokio::task::yield_now().await;
            }
        }
        bg.idle().await;
        let snapshot = bg.snapshot();
        assert_eq!(snapshot.completed, 512_000);
        assert!(snapshot.is_consistent());
    })
    .await
    .unwrap();
}

/// Spins on its worker, never yielding, until `release` is set (at most
/// 20 s, so that a failing test ends).
async fn hog(release: Arc<std::sync::atomic::AtomicBool>) {
    let start = std::time::Instant::now();
    while !release.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(20) {
        std::hint::spin_loop();
    }
}

/// Awaits `future` for at most `limit` while spawning an empty tokio task
/// every millisecond from this thread, as a service's other traffic would.
/// Tokio can leave a task in its global or run queue while its only free
/// worker stays parked (its notification lost; docs/benchmarks-log.md,
/// "Runners yield into the run queue"); on a worker held by a task that never
/// yields, that lasts until the task ends. A new task pushed onto the
/// global queue wakes a parked worker again, which then searches every
/// queue. A task that nobody started a runner for still never runs.
async fn with_traffic<F: std::future::Future>(limit: Duration, future: F) -> Option<F::Output> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(future, deadline);
    let mut traffic = tokio::time::interval(Duration::from_millis(1));
    loop {
        tokio::select! {
            output = &mut future => return Some(output),
            () = &mut deadline => return None,
            _ = traffic.tick() => drop(tokio::spawn(async {})),
        }
    }
}

/// A task that holds its worker without yielding does not hold up the task
/// queued behind it: the runner that took it starts a runner for the next
/// one, then yields once before running it, so that its worker runs the
/// new runner (from the LIFO slot, where no other worker could take it)
/// first, without relying on another worker to steal anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_never_yields_does_not_hold_up_the_task_behind_it() {
    let bg = Builder::new("hogged").parallelism(4).build().unwrap();
    for round in 0..20 {
        let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ran_tx, ran_rx) = oneshot::channel();
        // From a worker, in one poll: the runner lands in its LIFO slot.
        let producer = {
            let bg = bg.clone();
            let release = release.clone();
            tokio::spawn(async move {
                bg.spawn("hog", hog(release));
                bg.spawn("behind", async move {
                    let _ = ran_tx.send(());
                });
            })
        };
        producer.await.unwrap();
        let ran = tokio::time::timeout(Duration::from_secs(10), ran_rx).await;
        release.store(true, Ordering::SeqCst);
        assert!(
            ran.is_ok(),
            "round {round}: the task behind the hog waited for it"
        );
        bg.idle().await;
    }
    assert_eq!(bg.snapshot().completed, 40);
}

/// A producer that holds its worker after a `spawn` keeps the runner it
/// woke in that worker's LIFO slot; `spawn` calls from other threads do not
/// rely on that runner, they start their own, and their tasks run (the
/// first task too: runners take tasks in order). With traffic: see
/// [`with_traffic`] (without it, 1 run in about 40 failed here under load,
/// the other caller's runner left in tokio's global queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_holds_its_worker_does_not_hold_up_other_callers() {
    let bg = Builder::new("other-callers")
        .parallelism(4)
        .build()
        .unwrap();
    for round in 0..20 {
        let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (spawned_tx, spawned_rx) = oneshot::channel();
        let producer = {
            let bg = bg.clone();
            let release = release.clone();
            tokio::spawn(async move {
                bg.spawn("first", async {});
                let _ = spawned_tx.send(());
                // Holds the worker, without yielding, after its spawn.
                hog(release).await;
            })
        };
        spawned_rx.await.unwrap();
        let (ran_tx, ran_rx) = oneshot::channel();
        // From this thread (not a worker).
        bg.spawn("other", async move {
            let _ = ran_tx.send(());
        });
        let ran = with_traffic(Duration::from_secs(10), ran_rx).await;
        release.store(true, Ordering::SeqCst);
        producer.await.unwrap();
        assert!(
            ran.is_some(),
            "round {round}: the other caller's task waited for the producer"
        );
        bg.idle().await;
    }
    assert_eq!(bg.snapshot().completed, 40);
}

/// The standby runner leaves when nothing can wake it any more: after
/// `shutdown`, or when the pool's last handle is dropped (so a pool that is
/// thrown away does not keep a task, or itself, alive).
#[tokio::test(flavor = "current_thread")]
async fn the_standby_runner_leaves_at_shutdown_and_with_the_last_handle() {
    for ending in ["shutdown", "last handle dropped"] {
        let bg = Builder::new("standby-leaves").build().unwrap();
        let clone = bg.clone();
        bg.spawn("work", async {});
        bg.idle().await;
        assert_eq!(
            live_tasks_settled(1).await,
            1,
            "{ending}: no standby parked"
        );
        if ending == "shutdown" {
            let report = bg.shutdown(Duration::from_secs(5)).await;
            assert!(report.drained);
            // Both handles are still here: the shutdown alone released it.
            assert_eq!(
                live_tasks_settled(0).await,
                0,
                "{ending}: the standby runner outlived the shutdown"
            );
            drop(clone);
        } else {
            // One handle gone, one left: the standby stays.
            drop(clone);
            assert_eq!(live_tasks_settled(0).await, 1, "{ending}: left too early");
        }
        drop(bg);
        assert_eq!(
            live_tasks_settled(0).await,
            0,
            "{ending}: the standby runner is still alive"
        );
    }
}

/// Spawns a `cleanup` task on its pool when dropped.
struct SpawnOnDrop(bg_queue::BackgroundTx);

impl Drop for SpawnOnDrop {
    fn drop(&mut self) {
        self.0.spawn("cleanup", async {});
    }
}

/// Runs `scenario` on a thread of its own, and fails (instead of hanging)
/// if it does not return in 20 s.
fn without_hang<T: Send + 'static>(what: &str, scenario: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(scenario());
    });
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} deadlocked"))
}

/// Runs `scenario` with a fresh current-thread runtime on a thread of its
/// own, and fails (instead of hanging) if it does not return in 20 s.
fn without_deadlock<T: Send + 'static>(
    what: &str,
    scenario: impl FnOnce(tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    without_hang(what, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        scenario(runtime)
    })
}

/// A task's future may own something whose `Drop` spawns on the same pool
/// (a cleanup, a retry). When the task is abandoned at the deadline, that
/// `Drop` runs outside the pool's lock: the late spawn is refused as
/// `closed` instead of deadlocking the shutdown.
#[test]
fn a_drop_that_spawns_while_tasks_are_abandoned_does_not_deadlock() {
    let (report, snapshot) = without_deadlock("the shutdown", |runtime| {
        runtime.block_on(async {
            let bg = Builder::new("cleanup").parallelism(1).build().unwrap();
            occupy(&bg, 1, &Gate::new()).await;
            let guard = SpawnOnDrop(bg.clone());
            bg.spawn("holds_guard", async move {
                let _guard = guard;
            });
            let report = bg.shutdown(Duration::from_millis(50)).await;
            (report, bg.snapshot())
        })
    });
    assert_eq!(report.abandoned, 2, "{report}");
    assert_eq!(snapshot.task("holds_guard").unwrap().abandoned, 1);
    assert_eq!(snapshot.task("cleanup").unwrap().dropped, 1);
    assert_eq!(snapshot.dropped_by_reason.closed, 1);
    assert!(report.is_consistent());
}

/// The same when the runtime goes away with the task still queued: the
/// late spawn is refused as `no_runtime`.
#[test]
fn a_drop_that_spawns_when_the_runtime_goes_away_does_not_deadlock() {
    let snapshot = without_deadlock("dropping the runtime", |runtime| {
        let bg = runtime.block_on(async {
            let bg = Builder::new("orphaned").parallelism(1).build().unwrap();
            let guard = SpawnOnDrop(bg.clone());
            // Queued, never run: the runtime is dropped before it polls.
            bg.spawn("holds_guard", async move {
                let _guard = guard;
            });
            bg
        });
        drop(runtime);
        bg.snapshot()
    });
    assert_eq!(snapshot.task("holds_guard").unwrap().abandoned, 1);
    assert_eq!(snapshot.task("cleanup").unwrap().dropped, 1);
    assert_eq!(snapshot.dropped_by_reason.no_runtime, 1);
    assert!(snapshot.is_consistent());
}

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

/// A task future whose `Drop` panics: once it has completed, or (when
/// `ready` is false) whenever it is dropped unfinished.
struct PanicsOnDrop {
    ready: bool,
}

impl std::future::Future for PanicsOnDrop {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.ready {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("connection guard poisoned");
    }
}

/// A panic in a task future's `Drop` is contained wherever the future is
/// dropped: after it completed (counted `panicked`), at its timeout (counted
/// `timed_out`), when refused (`spawn` does not panic) and when abandoned at
/// the shutdown deadline. The pool keeps running, with full parallelism.
/// Before, the panic unwound into the runner, and the runner's exit was
/// taken for the runtime going away: the pool abandoned its queue and
/// refused every later task as `no_runtime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_task_futures_drop_is_contained() {
    // Run to completion, and cancelled at the timeout.
    let bg = Builder::new("drop-panics")
        .parallelism(1)
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    bg.spawn("finishes", PanicsOnDrop { ready: true });
    bg.spawn("hangs", PanicsOnDrop { ready: false });
    bg.idle().await;
    let (tx, rx) = oneshot::channel();
    bg.spawn("after", async move {
        let _ = tx.send(());
    });
    rx.await.expect("a task after the panicking drops ran");
    // The task ran; its end is counted once its runner records it.
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("finishes").unwrap().panicked, 1);
    assert_eq!(snapshot.task("hangs").unwrap().timed_out, 1);
    assert_eq!(snapshot.task("after").unwrap().completed, 1);
    assert!(snapshot.accepting);
    assert!(snapshot.is_consistent());

    // Refused, and abandoned at the shutdown deadline.
    let bg = Builder::new("drop-panics-queued")
        .parallelism(1)
        .capacity(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    occupy(&bg, 1, &gate).await;
    bg.spawn("queued", PanicsOnDrop { ready: false });
    bg.spawn("queued", PanicsOnDrop { ready: false });
    assert_eq!(
        bg.try_spawn("refused", PanicsOnDrop { ready: true }),
        Err(SpawnError::QueueFull)
    );
    let report = bg.shutdown(Duration::from_millis(50)).await;
    assert_eq!(
        (report.abandoned, report.dropped),
        (3, 1),
        "the blocker and the two queued; the refused one: {report:?}"
    );
    assert!(report.is_consistent());
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("queued").unwrap().abandoned, 2);
    assert_eq!(snapshot.task("refused").unwrap().dropped, 1);
    assert_eq!(snapshot.dropped_by_reason.no_runtime, 0);
}

/// A `tracing` layer with a bug: it panics the first time a span with this
/// name is created.
struct PanicsOnceOnSpan {
    name: &'static str,
    fired: std::sync::atomic::AtomicBool,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicsOnceOnSpan {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == self.name && !self.fired.swap(true, Ordering::SeqCst) {
            panic!("layer bug");
        }
    }
}

/// A panic in the application's subscriber while a runner starts a task's
/// span is contained: that task is counted `panicked`, another runner takes
/// the queue over, and the pool stays open. Before, the runner's end was
/// taken for the runtime going away (queue abandoned, every later task
/// refused as `no_runtime`), and the task stayed counted as running.
#[tokio::test]
async fn a_panic_in_the_subscriber_does_not_take_the_pool_down() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(PanicsOnceOnSpan {
            name: "bg.run",
            fired: std::sync::atomic::AtomicBool::new(false),
        }));
    let bg = Builder::new("layer-bug").parallelism(1).build().unwrap();
    let (tx, rx) = oneshot::channel();
    // Both queued before the runner starts: the second waits behind the one
    // whose span panics.
    bg.spawn("first", async {});
    bg.spawn("second", async move {
        let _ = tx.send(());
    });
    let ran = rx.await;
    assert!(ran.is_ok(), "the second task ran: {:?}", bg.snapshot());
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("first").unwrap().panicked, 1);
    assert_eq!(snapshot.task("second").unwrap().completed, 1);
    assert_eq!((snapshot.running, snapshot.queued), (0, 0));
    assert!(snapshot.accepting);
    assert!(snapshot.is_consistent());
    assert_eq!(bg.try_spawn("later", async {}), Ok(()));
    bg.idle().await;
}

/// A `tracing` layer that panics every time a span with this name is
/// entered.
struct PanicsOnEnter(&'static str);

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>
    tracing_subscriber::Layer<S> for PanicsOnEnter
{
    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if ctx.span(id).is_some_and(|span| span.name() == self.0) {
            panic!("layer bug on enter");
        }
    }
}

/// The same with a subscriber that panics on every entry into `bg.run`:
/// while that panic unwinds, the task's scope must not enter the span again
/// (a second panic during unwinding aborts the process). Every task is
/// counted `panicked` and the pool goes on.
#[tokio::test]
async fn a_subscriber_that_panics_on_every_enter_does_not_abort_the_process() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(PanicsOnEnter("bg.run")),
    );
    let bg = Builder::new("enter-bug").parallelism(2).build().unwrap();
    for _ in 0..3 {
        bg.spawn("doomed", async {});
    }
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("doomed").unwrap().panicked, 3);
    assert!(snapshot.accepting);
    assert!(snapshot.is_consistent());
}

/// Runtimes dropped while their pool's runners are busy taking a backlog
/// and fanning out: each drop finishes (within 20 s), and every task is
/// completed or abandoned, none lost. A runner fanning out as its runtime
/// shut down used to start runners for ever, each dropped inside `spawn`:
/// against that code this hung by round 13 of the 200, in each of four
/// runs.
#[test]
fn dropping_the_runtime_under_a_backlog_finishes_and_loses_nothing() {
    const ROUNDS: usize = 200;
    const TASKS: u64 = 2_000;
    for round in 0..ROUNDS {
        let runtime = two_worker_runtime();
        let bg = Builder::new("dropped")
            .capacity(TASKS as usize)
            .runtime(runtime.handle().clone())
            .build()
            .unwrap();
        let gate = Arc::new(Semaphore::new(0));
        for _ in 0..TASKS {
            let gate = gate.clone();
            bg.spawn("backlog", async move {
                let _ = gate.acquire().await;
            });
        }
        // Let them all go at once, and drop the runtime while the runners
        // take the backlog.
        gate.add_permits(TASKS as usize);
        without_hang(&format!("round {round}: the runtime drop"), move || {
            drop(runtime)
        });
        let snapshot = bg.snapshot();
        assert_eq!(snapshot.spawned, TASKS, "round {round}");
        assert_eq!(
            snapshot.completed + snapshot.abandoned,
            TASKS,
            "round {round}: {snapshot:?}"
        );
    }
}
