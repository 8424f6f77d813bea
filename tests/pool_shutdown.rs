//! `shutdown`: drains in time, or abandons what is left at the deadline and
//! says what; the standby runner leaves; a `Drop` that spawns during it
//! does not deadlock.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bg_queue::{Builder, DropReason, SpawnError};
use common::pool::{live_tasks_settled, occupy, without_deadlock, Gate, SpawnOnDrop};

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
