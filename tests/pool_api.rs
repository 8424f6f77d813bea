//! The core pool through its public API: the seed's drop-in, typed errors
//! from the builder, use outside a runtime and from plain threads, named
//! pools, and what each task's outcome counts as (`Err`, timeout).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bg_queue::{spawn_pool, BuildError, Builder, SpawnError};
use common::pool::two_worker_runtime;

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
