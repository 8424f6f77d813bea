#![cfg(target_os = "linux")]
//! Busy against waiting: a run's busy time is the time inside its `poll`,
//! the CPU it burned, not the time it spent waiting on timers or I/O.
//! Recorded on `bg.run` (`bg.task.busy_ms`), in `bg.task.busy` and in the
//! snapshot's `busy_ms`, and only when telemetry is on.

mod common;

use std::time::Duration;

use bg_queue::Builder;
use common::{Metrics, Tracing};
use opentelemetry::metrics::MeterProvider as _;

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid `timespec` that lives across the call, which
    // only writes to it; the clock id is a constant Linux has had since
    // 2.6.12.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0;
    assert!(!failed, "no thread CPU clock");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// What a task burned: CPU time, and the wall time the burning took.
#[derive(Debug, Clone, Copy, Default)]
struct Burned {
    cpu: Duration,
    wall: Duration,
}

/// Burns `cpu` of this thread's CPU time, in two polls around a sleep ten
/// times as long.
async fn burn_then_wait_then_burn(cpu: Duration) -> Burned {
    let burn = |amount: Duration| {
        let (cpu_start, wall_start) = (thread_cpu_time(), std::time::Instant::now());
        while thread_cpu_time() - cpu_start < amount {
            std::hint::spin_loop();
        }
        Burned {
            cpu: thread_cpu_time() - cpu_start,
            wall: wall_start.elapsed(),
        }
    };
    let first = burn(cpu / 2);
    tokio::time::sleep(cpu * 10).await;
    let second = burn(cpu / 2);
    Burned {
        cpu: first.cpu + second.cpu,
        wall: first.wall + second.wall,
    }
}

/// Busy time against the CPU time the task measured itself. Busy time is
/// wall time inside `poll`; it equals CPU time only while the OS does not
/// run another process on this core, so an attempt counts only if the
/// task's own wall time and CPU time for its burns agree within 3% (nextest
/// runs this binary alone; other processes on the machine may still
/// preempt it). Up to 20 attempts; at least one must count.
#[test]
fn busy_time_is_the_cpu_a_task_burned_not_its_waits() {
    let tracing = Tracing::new();
    let metrics = Metrics::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _subscriber = tracing::subscriber::set_default(tracing.subscriber());
    runtime.block_on(async {
        let bg = Builder::new("busy")
            .meter(metrics.provider.meter("test"))
            .tracer(tracing.tracer())
            .build()
            .unwrap();
        let cpu = Duration::from_millis(40);
        let mut counted = 0;
        let mut runs = 0;
        let mut closest = f64::MAX;
        while counted == 0 && runs < 20 {
            runs += 1;
            let (burned_tx, burned_rx) = tokio::sync::oneshot::channel();
            bg.spawn("render_pdf", async move {
                let _ = burned_tx.send(burn_then_wait_then_burn(cpu).await);
            });
            let burned = burned_rx.await.unwrap();
            bg.idle().await;
            let run = tracing
                .spans()
                .into_iter()
                .filter(|span| span.name == "run render_pdf")
                .last()
                .expect("a bg.run span");
            let busy_ms = common::attr(&run, "bg.task.busy_ms")
                .and_then(|value| value.as_str().parse::<f64>().ok())
                .expect("bg.task.busy_ms on bg.run");
            let run_ms = (run.end_time.duration_since(run.start_time))
                .unwrap()
                .as_secs_f64()
                * 1000.0;
            let cpu_ms = burned.cpu.as_secs_f64() * 1000.0;
            let wall_ms = burned.wall.as_secs_f64() * 1000.0;
            assert!(run_ms > 5.0 * cpu_ms, "run {run_ms} ms, cpu {cpu_ms} ms");
            assert!(busy_ms < run_ms, "busy {busy_ms} ms, run {run_ms} ms");
            if wall_ms > cpu_ms * 1.03 {
                // Preempted while burning: CPU time and busy time differ
                // for a reason outside the pool.
                continue;
            }
            counted += 1;
            closest = closest.min((busy_ms - cpu_ms).abs() / cpu_ms);
        }
        assert!(
            counted > 0,
            "the machine preempted every one of {runs} attempts"
        );
        assert!(
            closest <= 0.10,
            "busy time off the CPU time burned by {:.1}%",
            closest * 100.0
        );

        let task = bg.snapshot().task("render_pdf").unwrap().clone();
        let busy_max = task.busy_ms.max.expect("busy_ms in the snapshot");
        let run_p50 = task.run_ms.p50.expect("run_ms in the snapshot");
        assert!(busy_max < run_p50, "busy {busy_max} ms, run {run_p50} ms");

        let points = metrics.collect();
        let busy = points
            .iter()
            .find(|point| point.metric == "bg.task.busy")
            .expect("bg.task.busy exported");
        assert_eq!(busy.unit, "s");
        assert_eq!(busy.count, runs);
        assert_eq!(busy.attr("bg.task.name"), Some("render_pdf"));
        assert!(busy.value > 0.0, "{busy:?}");
    });
}

/// With no subscriber and the global (no-op) meter, nothing measures busy
/// time: no clock reads in `poll`, and the snapshot has no figure.
#[tokio::test]
async fn without_telemetry_busy_time_is_not_measured() {
    let bg = Builder::new("quiet").build().unwrap();
    bg.spawn("work", async {});
    bg.idle().await;
    let task = bg.snapshot().task("work").unwrap().clone();
    assert_eq!(task.busy_ms.max, None);
    assert!(task.run_ms.max.is_some());
}

/// `Builder::busy_time(false)` turns it off even with telemetry on.
#[tokio::test]
async fn busy_time_can_be_turned_off() {
    let metrics = Metrics::new();
    let bg = Builder::new("no-busy")
        .meter(metrics.provider.meter("test"))
        .busy_time(false)
        .build()
        .unwrap();
    bg.spawn("work", async {});
    bg.idle().await;
    assert_eq!(bg.snapshot().task("work").unwrap().busy_ms.max, None);
    let points = metrics.collect();
    assert!(points.iter().all(|point| point.metric != "bg.task.busy"));
    assert!(points
        .iter()
        .any(|point| point.metric == "bg.task.duration"));
}

/// With metrics only (no subscriber), busy time is measured too: a task
/// that never waits is busy for most of its run, never more, and one that
/// waits on a timer is busy for a small part of it.
#[tokio::test]
async fn with_metrics_only_busy_time_excludes_waits_and_never_exceeds_the_run() {
    let metrics = Metrics::new();
    let bg = Builder::new("metrics-only")
        .meter(metrics.provider.meter("test"))
        .build()
        .unwrap();
    bg.spawn("hash", async {
        std::hint::black_box((0..10_000u64).sum::<u64>());
    });
    bg.spawn("fetch", async {
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    bg.idle().await;
    let points = metrics.collect();
    let sum = |metric: &str, task: &str| -> f64 {
        points
            .iter()
            .filter(|point| point.metric == metric && point.attr("bg.task.name") == Some(task))
            .map(|point| point.value)
            .sum()
    };
    let (hash_busy, hash_run) = (sum("bg.task.busy", "hash"), sum("bg.task.duration", "hash"));
    assert!(hash_busy > 0.0, "busy {hash_busy} s");
    assert!(
        hash_busy <= hash_run,
        "busy {hash_busy} s, run {hash_run} s"
    );
    let (fetch_busy, fetch_run) = (
        sum("bg.task.busy", "fetch"),
        sum("bg.task.duration", "fetch"),
    );
    assert!(fetch_run >= 0.020, "run {fetch_run} s");
    assert!(
        fetch_busy < fetch_run / 2.0,
        "busy {fetch_busy} s, run {fetch_run} s"
    );
}

/// Busy time's arithmetic, exact under tokio's paused clock: inside a
/// poll, `tokio::time::advance` moves the clock (busy); a sleep moves it
/// while the task is suspended (not busy). A task that times out while
/// suspended is busy only up to its last poll. Checked with metrics only
/// (busy time starts at the runner's start reading) and with spans
/// recorded (it starts at a reading of its own before the first poll).
async fn busy_time_counts_polls_not_suspensions(with_spans: bool) {
    let metrics = Metrics::new();
    let tracing = Tracing::new();
    let mut builder = Builder::new("paused")
        .meter(metrics.provider.meter("test"))
        .timeout(Duration::from_millis(100));
    if with_spans {
        builder = builder.tracer(tracing.tracer());
    }
    let _subscriber = with_spans.then(|| tracing::subscriber::set_default(tracing.subscriber()));
    let bg = builder.build().unwrap();
    bg.spawn("two_bursts", async {
        tokio::time::advance(Duration::from_millis(7)).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        tokio::time::advance(Duration::from_millis(5)).await;
    });
    bg.idle().await;
    bg.spawn("stuck", async {
        tokio::time::advance(Duration::from_millis(3)).await;
        std::future::pending::<()>().await;
    });
    bg.idle().await;

    let snapshot = bg.snapshot();
    let points = metrics.collect();
    for (task, busy_ms, run_ms) in [("two_bursts", 12.0, 42.0), ("stuck", 3.0, 100.0)] {
        let figures = snapshot.task(task).unwrap();
        assert_eq!(figures.busy_ms.max, Some(busy_ms), "{task}: {figures:?}");
        assert_eq!(figures.run_ms.max, Some(run_ms), "{task}: {figures:?}");
        let busy = points
            .iter()
            .find(|point| {
                point.metric == "bg.task.busy" && point.attr("bg.task.name") == Some(task)
            })
            .unwrap_or_else(|| panic!("no bg.task.busy for {task}"));
        assert_eq!(busy.count, 1);
        assert!(
            (busy.value * 1000.0 - busy_ms).abs() < 1e-6,
            "{task}: exported busy {} s",
            busy.value
        );
    }
    if with_spans {
        let spans = tracing.spans();
        for (task, busy_ms) in [("two_bursts", 12.0), ("stuck", 3.0)] {
            let run = spans
                .iter()
                .find(|span| span.name == format!("run {task}"))
                .unwrap_or_else(|| panic!("no bg.run span for {task}"));
            let recorded = common::attr(run, "bg.task.busy_ms")
                .and_then(|value| value.as_str().parse::<f64>().ok())
                .expect("bg.task.busy_ms on bg.run");
            assert!((recorded - busy_ms).abs() < 1e-6, "{task}: {recorded} ms");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn busy_time_counts_polls_not_suspensions_with_metrics_only() {
    busy_time_counts_polls_not_suspensions(false).await;
}

#[tokio::test(start_paused = true)]
async fn busy_time_counts_polls_not_suspensions_with_spans() {
    busy_time_counts_polls_not_suspensions(true).await;
}
