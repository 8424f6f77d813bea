//! Helpers for the pool's tests (`tests/pool_*.rs`): a gate to hold tasks,
//! runtimes of two workers, a task that holds its worker, other traffic,
//! and bounds that turn a hang into a failure.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

/// A gate tasks wait on: `open` lets every waiting task finish.
#[derive(Clone)]
pub struct Gate(Arc<Semaphore>);

impl Gate {
    pub fn new() -> Self {
        Gate(Arc::new(Semaphore::new(0)))
    }
    pub async fn wait(&self) {
        self.0.acquire().await.expect("gate never closes").forget();
    }
    pub fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// Spawns `n` tasks that report their start on `started` and then wait at
/// `gate`; returns once all `n` are running.
pub async fn occupy(pool: &bg_queue::BackgroundTx, n: usize, gate: &Gate) {
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

/// A multi-thread runtime of two workers, as on the project's machine, for
/// tests that drive it from plain threads.
pub fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The live tasks of the current runtime once the ones woken so far have
/// run: on a current-thread runtime, each yield lets every task that was
/// woken before it run once. Gives up after 100 yields.
pub async fn live_tasks_settled(expected: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..100 {
        if metrics.num_alive_tasks() == expected {
            break;
        }
        tokio::task::yield_now().await;
    }
    metrics.num_alive_tasks()
}

/// Spins on its worker, never yielding, until `release` is set (at most
/// 20 s, so that a failing test ends).
pub async fn hog(release: Arc<std::sync::atomic::AtomicBool>) {
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
pub async fn with_traffic<F: std::future::Future>(limit: Duration, future: F) -> Option<F::Output> {
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

/// Spawns a `cleanup` task on its pool when dropped.
pub struct SpawnOnDrop(pub bg_queue::BackgroundTx);

impl Drop for SpawnOnDrop {
    fn drop(&mut self) {
        self.0.spawn("cleanup", async {});
    }
}

/// Runs `scenario` on a thread of its own, and fails (instead of hanging)
/// if it does not return in 20 s.
pub fn without_hang<T: Send + 'static>(
    what: &str,
    scenario: impl FnOnce() -> T + Send + 'static,
) -> T {
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
pub fn without_deadlock<T: Send + 'static>(
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
