//! bg-queue against the seed module (copied in `benches/support/seed.rs`)
//! and raw `tokio::spawn`, on a 2-worker multi-thread runtime. The
//! telemetry-off caller-cost rows also measure a floor
//! (`benches/support/floor.rs`): the seed plus the two reads bg-queue's
//! contract makes in every `spawn`, which shows how much of the target
//! those reads alone use.
//!
//! Run with `cargo bench --bench throughput`; figures and ratios are in
//! BENCHMARKS.md.

#[path = "support/floor.rs"]
mod floor;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/seed.rs"]
mod seed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use harness::{Latch, Mode, Setup, Sixteen, CHUNK, TASKS};
use tracing::Instrument as _;

/// Submits `TASKS` tasks in bursts of `CHUNK`, waiting for each burst to
/// finish, from a task on a worker (where request handlers run).
fn drive(setup: &Setup, submit: Arc<dyn Fn(Sixteen) + Send + Sync>) {
    setup.runtime.block_on(async {
        tokio::spawn(async move {
            let latch = Latch::new();
            for chunk in 0..TASKS / CHUNK {
                for _ in 0..CHUNK {
                    submit(Sixteen {
                        latch: latch.clone(),
                        pad: 0,
                    });
                }
                latch.wait_for((chunk + 1) * CHUNK).await;
            }
        })
        .await
        .unwrap();
    });
}

fn throughput(c: &mut Criterion) {
    // `FullLean`: row 3 with the lean `tracing-opentelemetry` layer, an
    // application's choice (no location, thread, target or busy/idle
    // attributes), as the instructions benchmark counts it.
    for mode in [Mode::Off, Mode::Metrics, Mode::Full, Mode::FullLean] {
        let setup = Setup::new(mode);
        let mut group = c.benchmark_group(format!("throughput_100k/{mode:?}"));
        group.throughput(Throughput::Elements(TASKS as u64));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(8));

        let seed_tx = setup.runtime.block_on(async { seed::spawn_pool() });
        group.bench_function("seed", |b| {
            let tx = seed_tx.clone();
            b.iter(|| {
                let tx = tx.clone();
                drive(&setup, Arc::new(move |task| tx.spawn("noop", task)))
            })
        });
        let pool = setup.pool(1024, 8);
        group.bench_function("bg-queue", |b| {
            b.iter(|| {
                let pool = pool.clone();
                drive(&setup, Arc::new(move |task| pool.spawn("noop", task)))
            })
        });
        if mode == Mode::Metrics {
            // Busy time's cost, in the same run: the same pool without it;
            // then both through the SDK's unbound path (`bound_metrics(false)`,
            // as with a meter that does not bind).
            type Configure = fn(bg_queue::Builder) -> bg_queue::Builder;
            let variants: &[(&str, Configure)] = &[
                ("bg-queue (busy_time off)", |b| b.busy_time(false)),
                ("bg-queue (bound_metrics off)", |b| b.bound_metrics(false)),
                ("bg-queue (bound_metrics off, busy_time off)", |b| {
                    b.bound_metrics(false).busy_time(false)
                }),
            ];
            for (name, configure) in variants {
                let pool = configure(setup.builder(1024, 8)).build().unwrap();
                group.bench_function(*name, |b| {
                    b.iter(|| {
                        let pool = pool.clone();
                        drive(&setup, Arc::new(move |task| pool.spawn("noop", task)))
                    })
                });
            }
        }
        if matches!(mode, Mode::Full | Mode::FullLean) {
            // The opt-in: `bg.run` through the OpenTelemetry API.
            let pool = setup
                .builder(1024, 8)
                .run_span(bg_queue::RunSpan::OpenTelemetry)
                .build()
                .unwrap();
            group.bench_function("bg-queue (RunSpan::OpenTelemetry)", |b| {
                b.iter(|| {
                    let pool = pool.clone();
                    drive(&setup, Arc::new(move |task| pool.spawn("noop", task)))
                })
            });
        }
        group.bench_function("tokio::spawn", |b| {
            b.iter(|| {
                drive(
                    &setup,
                    Arc::new(|task| {
                        tokio::spawn(task);
                    }),
                )
            })
        });
        group.finish();
    }
}

/// Time spent in the submitting call only, for `iters` calls in bursts of
/// `burst` (at most 512: the queue never fills), each burst waited for,
/// inside a `caller` span. With `settle`, each wait also lasts until that
/// pool is idle, its runners gone (as after a quiet spell).
///
/// The span is made on the worker, where the set-up's subscriber is the
/// default (the thread that calls `block_on` has none: a span made there is
/// disabled, and with full telemetry `spawn` would find no parent to
/// capture, which is what runs before 2026-12-01 measured).
fn caller_cost(
    setup: &Setup,
    iters: u64,
    burst: u64,
    settle: Option<bg_queue::BackgroundTx>,
    submit: Submit,
) -> Duration {
    let traced = setup.dispatch.is_some();
    setup.runtime.block_on(async {
        tokio::spawn(async move {
            let caller = tracing::info_span!("caller");
            // Only this way round: with no subscriber, a callsite that an
            // earlier set-up's subscriber marked interesting still makes a
            // span (through `NoSubscriber`, recording nothing), which is not
            // "disabled" but costs `spawn` nothing either.
            if traced {
                assert!(!caller.is_disabled(), "the caller span is disabled");
            }
            async move {
                let latch = Latch::new();
                let mut total = Duration::ZERO;
                let mut submitted = 0usize;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(burst);
                    let start = Instant::now();
                    for _ in 0..n {
                        submit(Sixteen {
                            latch: latch.clone(),
                            pad: 0,
                        });
                    }
                    total += start.elapsed();
                    submitted += n as usize;
                    latch.wait_for(submitted).await;
                    if let Some(pool) = &settle {
                        pool.idle().await;
                    }
                    left -= n;
                }
                total
            }
            .instrument(caller)
            .await
        })
        .await
        .unwrap()
    })
}

/// Bursts of 512 calls: the pool is busy, its runners already started.
fn spawn_cost(c: &mut Criterion) {
    spawn_cost_group(c, "spawn_cost", 512, false);
}

/// One call at a time, each task finished before the next call, in two
/// groups. `spawn_cost_idle`: bg-queue's pool is also idle (`idle()`
/// returned: one runner parked as its standby, the others gone), as in a
/// request handler that spawns on a quiet service (bg-queue wakes its
/// standby runner; the seed wakes its drainer). `spawn_cost_warm`: the call
/// comes right after the task ended, while its runner may still linger.
/// And `spawn_cost_pair`: two calls in a row on an idle pool, as the demo's
/// webhook handler makes (a receipt email and a mailing-list subscription);
/// the time is per call.
fn spawn_cost_idle(c: &mut Criterion) {
    spawn_cost_group(c, "spawn_cost_idle", 1, true);
    spawn_cost_group(c, "spawn_cost_warm", 1, false);
    spawn_cost_group(c, "spawn_cost_pair", 2, true);
}

fn spawn_cost_group(c: &mut Criterion, name: &str, burst: u64, settle: bool) {
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    for mode in [Mode::Off, Mode::Full] {
        let setup = Setup::new(mode);
        let id = |implementation: &str| BenchmarkId::new(implementation, format!("{mode:?}"));
        let seed_tx = setup.runtime.block_on(async { seed::spawn_pool() });
        let submit: Submit = Arc::new(move |task| seed_tx.spawn("noop", task));
        measure_caller(&mut group, id("seed"), &setup, burst, None, submit);
        if mode == Mode::Off {
            // The seed plus the reads bg-queue's contract makes per call:
            // the lower bound for the telemetry-off target.
            let floor_tx = setup.runtime.block_on(async { floor::spawn_pool() });
            let submit: Submit = Arc::new(move |task| floor_tx.spawn("noop", task));
            measure_caller(&mut group, id("floor"), &setup, burst, None, submit);
        }
        let pool = setup.pool(1024, harness::caller_parallelism());
        let settle = settle.then(|| pool.clone());
        let submit: Submit = Arc::new(move |task| pool.spawn("noop", task));
        measure_caller(&mut group, id("bg-queue"), &setup, burst, settle, submit);
        let submit: Submit = Arc::new(|task| {
            tokio::spawn(task);
        });
        measure_caller(&mut group, id("tokio::spawn"), &setup, burst, None, submit);
    }
    group.finish();
}

/// How a caller-cost benchmark submits one task.
type Submit = Arc<dyn Fn(Sixteen) + Send + Sync>;

/// One caller-cost benchmark: [`caller_cost`] of `submit` as `id`.
fn measure_caller(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    setup: &Setup,
    burst: u64,
    settle: Option<bg_queue::BackgroundTx>,
    submit: Submit,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| caller_cost(setup, iters, burst, settle.clone(), Arc::clone(&submit)))
    });
}

/// The drop path: 8 runners blocked forever and the queue full, so every
/// call is refused. Measured on a worker, where the subscriber is.
fn drop_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("drop_path");
    group.sample_size(20);
    for mode in [Mode::Off, Mode::FmtSink] {
        let setup = Setup::new(mode);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let blocked = |gate: &Arc<tokio::sync::Semaphore>| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await;
            }
        };
        // Silence the set-up's own drop logs while filling.
        let seed_tx = setup.runtime.block_on(async { seed::spawn_pool() });
        let pool = setup.pool(1024, 8);
        setup.runtime.block_on(async {
            for _ in 0..8 + 1024 + 8 {
                seed_tx.spawn("blocker", blocked(&gate));
                pool.spawn("blocker", blocked(&gate));
            }
            // Let the seed's drainer take its 8 permits and fill up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for _ in 0..2048 {
                seed_tx.spawn("blocker", blocked(&gate));
                pool.spawn("blocker", blocked(&gate));
            }
        });
        assert_eq!(pool.snapshot().queued, 1024);
        let measure = |submit: Arc<dyn Fn() + Send + Sync>, iters: u64| {
            setup.runtime.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        submit();
                    }
                    start.elapsed()
                })
                .await
                .unwrap()
            })
        };
        group.bench_function(BenchmarkId::new("seed", format!("{mode:?}")), |b| {
            let tx = seed_tx.clone();
            b.iter_custom(|iters| {
                let tx = tx.clone();
                measure(Arc::new(move || tx.spawn("dropped", async {})), iters)
            })
        });
        group.bench_function(BenchmarkId::new("bg-queue", format!("{mode:?}")), |b| {
            let pool = pool.clone();
            b.iter_custom(|iters| {
                let pool = pool.clone();
                measure(Arc::new(move || pool.spawn("dropped", async {})), iters)
            })
        });
        gate.add_permits(1 << 20);
        drop(setup);
    }
    group.finish();
}

criterion_group!(benches, throughput, spawn_cost, spawn_cost_idle, drop_path);
criterion_main!(benches);
