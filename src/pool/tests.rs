//! Unit tests of private paths that the public API cannot reach on
//! demand: a stale fan-out count on a shutting-down runtime, and the drop
//! path's folding within one coarse clock tick (Linux only).
#![cfg(target_os = "linux")]

use super::Builder;
use crate::clock::coarse_tick;
use crate::SpawnError;
use std::sync::Arc;
use std::time::Duration;

/// Spins (in clock reads, not time) until the coarse clock moves on.
fn next_tick() -> u64 {
    let start = coarse_tick().expect("a coarse clock");
    for _ in 0..500_000_000u64 {
        let now = coarse_tick().unwrap();
        if now != start {
            return now;
        }
    }
    panic!("the coarse clock did not move");
}

/// A runner that took a task while others waited fans out with the
/// count it read, which may be stale by then. Once the runtime is
/// shutting down, every runner `fan_out` starts is dropped inside
/// `spawn`, and its guard closes the pool and abandons the queue.
/// `fan_out` must then stop, not claim the freed place again for tasks
/// that are gone, for ever (the runtime's drop would spin at full CPU).
#[test]
fn fan_out_stops_for_tasks_that_are_gone() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let bg = Builder::new("gone")
        .runtime(handle.clone())
        .build()
        .unwrap();
    runtime.shutdown_background();
    // The worker closes the runtime's task list as it shuts down; from
    // then on a spawned task is dropped inside `spawn`.
    while !handle.spawn(std::future::pending::<()>()).is_finished() {
        std::thread::yield_now();
    }
    let (done, finished) = std::sync::mpsc::channel();
    let pool = Arc::clone(&bg.pool);
    std::thread::spawn(move || {
        // Three tasks waited when this runner looked; none does now.
        let _ = done.send(pool.fan_out(3));
    });
    let launched = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("fan_out still launching runners after 30 s");
    assert!(!launched, "a runner launched for no task");
    assert!(bg.snapshot().accepting, "nothing closed the pool");
    // A task spawned now starts a runner, which the runtime drops: its
    // guard closes the pool, and the task is abandoned, not lost.
    assert_eq!(bg.try_spawn("late", async {}), Ok(()));
    let snapshot = bg.snapshot();
    assert!(!snapshot.accepting);
    assert_eq!(snapshot.abandoned, 1);
    assert_eq!(bg.try_spawn("later", async {}), Err(SpawnError::NoRuntime));
}

/// Without a subscriber, a flood of `queue_full` drops is counted
/// exactly, and records one drop per task name and clock tick in the
/// recent-drops ring: the next tick's first drop is recorded in full.
#[test]
fn repeated_drops_in_one_tick_are_counted_and_recorded_once() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let bg = Builder::new("ticks")
        .capacity(1)
        .parallelism(1)
        .build()
        .unwrap();
    bg.spawn("kept", async {});
    let mut dropped = 0u64;
    let mut folded_once = false;
    // Until the ring of 20 is full: each round adds at least one.
    for _ in 0..crate::stats::RING_LEN {
        let recorded = bg.snapshot().recent_drops.len();
        let tick = next_tick();
        for _ in 0..100 {
            bg.spawn("flood", async {});
        }
        dropped += 100;
        let snapshot = bg.snapshot();
        assert_eq!(snapshot.dropped, dropped, "every drop counted");
        assert_eq!(snapshot.dropped_by_reason.queue_full, dropped);
        let grew = snapshot.recent_drops.len() - recorded;
        assert!(grew >= 1, "the new tick's first drop is recorded");
        if recorded + grew == crate::stats::RING_LEN {
            break;
        }
        // All 100 in the tick that began just before: one recorded.
        if coarse_tick() == Some(tick) {
            assert_eq!(grew, 1, "one drop recorded per name and tick");
            folded_once = true;
        }
    }
    assert!(folded_once, "no round of 100 drops fit in one tick");
    let ring = bg.snapshot().recent_drops;
    assert!(ring
        .iter()
        .all(|drop| drop.task == "flood" && drop.reason == "queue_full"));
}
