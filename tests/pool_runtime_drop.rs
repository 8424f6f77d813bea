//! The runtime going away under the pool: every queued task is accounted
//! for as abandoned, later calls are refused, and the drop itself finishes.

mod common;

use std::sync::Arc;

use bg_queue::{Builder, SpawnError};
use common::pool::{two_worker_runtime, without_deadlock, without_hang, SpawnOnDrop};
use tokio::sync::Semaphore;

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
