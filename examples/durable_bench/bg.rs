//! bg-queue's side of the benchmark: each figure on a fresh `bench`
//! schema's table, with or without full telemetry.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_queue::durable::{self, Client, EnqueueBatch, EnqueueOptions, Job, Schema, WorkerBuilder};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};

use crate::telemetry::Telemetry;

/// Longest a burn-down or a pickup may take before the bench gives up
/// with an error instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(600);

/// The job every figure uses: no arguments, a handler that does nothing.
#[derive(Serialize, Deserialize)]
pub struct Noop {}

impl Job for Noop {
    const NAME: &'static str = "bench_noop";
}

pub fn schema() -> Schema {
    Schema::new("bench").expect("a valid schema name")
}

/// Creates the schema's table if needed and empties it.
pub async fn reset(pool: &PgPool) -> Result<(), String> {
    durable::migrate(pool, &schema())
        .await
        .map_err(|e| format!("migrating schema bench: {e}"))?;
    sqlx::query("TRUNCATE bench.bg_jobs")
        .execute(pool)
        .await
        .map_err(|e| format!("emptying bench.bg_jobs: {e}"))?;
    Ok(())
}

fn client(telemetry: &Telemetry, on: bool) -> Client {
    Client::with_meter(schema(), &telemetry.meter(on))
}

/// Inserts `jobs` in batches of `batch` from one connection; jobs/s.
pub async fn enqueue_batch(
    pool: &PgPool,
    telemetry: &Telemetry,
    on: bool,
    jobs: usize,
    batch: usize,
) -> Result<f64, String> {
    let client = client(telemetry, on);
    let started = Instant::now();
    let mut left = jobs;
    while left > 0 {
        let size = left.min(batch);
        let mut next = EnqueueBatch::new();
        for _ in 0..size {
            next.push(&Noop {}, EnqueueOptions::new())
                .map_err(|e| format!("batch enqueue: {e}"))?;
        }
        client
            .enqueue_batch(pool, next)
            .await
            .map_err(|e| format!("batch enqueue: {e}"))?;
        left -= size;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

/// Inserts `jobs` one per transaction (`BEGIN`, insert, `COMMIT`), from
/// `clients` connections at once; jobs/s.
pub async fn enqueue_single(
    pool: &PgPool,
    telemetry: &Telemetry,
    on: bool,
    jobs: usize,
    clients: usize,
) -> Result<f64, String> {
    let client = client(telemetry, on);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..clients {
        let share = jobs / clients + usize::from(index < jobs % clients);
        let (pool, client) = (pool.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let mut tx = pool.begin().await.map_err(|e| format!("BEGIN: {e}"))?;
                client
                    .enqueue(&mut *tx, &Noop {}, EnqueueOptions::new())
                    .await
                    .map_err(|e| format!("enqueue: {e}"))?;
                tx.commit().await.map_err(|e| format!("COMMIT: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("single enqueue task: {e}"))?
            .map_err(|e| format!("single enqueue: {e}"))?;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

fn worker(pool: &PgPool, telemetry: &Telemetry, on: bool, parallelism: usize) -> WorkerBuilder {
    WorkerBuilder::new(pool.clone())
        .schema(schema())
        .parallelism(parallelism)
        .meter(telemetry.meter(on))
        .tracer(telemetry.tracer(on))
}

/// Works off every job in the table (inserted beforehand) with one worker
/// of `parallelism` handlers; jobs/s from the worker's start until the
/// last completion is written (its graceful shutdown flushes them).
pub async fn burn_down(
    pool: &PgPool,
    telemetry: &Telemetry,
    on: bool,
    jobs: usize,
    parallelism: usize,
) -> Result<f64, String> {
    let ran = Arc::new(AtomicUsize::new(0));
    let all_ran = Arc::new(Notify::new());
    let (counter, signal) = (Arc::clone(&ran), Arc::clone(&all_ran));
    let builder = worker(pool, telemetry, on, parallelism)
        .register(move |_: Noop, _| {
            if counter.fetch_add(1, Ordering::Relaxed) + 1 == jobs {
                signal.notify_one();
            }
            async { Ok::<(), Infallible>(()) }
        })
        .map_err(|e| format!("burn-down worker: {e}"))?;
    let started = Instant::now();
    let handle = builder
        .start()
        .map_err(|e| format!("burn-down worker: {e}"))?;
    if tokio::time::timeout(DEADLINE, all_ran.notified())
        .await
        .is_err()
    {
        let stats = handle.stats();
        let _ = handle.shutdown(Duration::from_secs(10)).await;
        return Err(format!(
            "burn-down: only {} of {jobs} jobs ran in {DEADLINE:?} ({stats:?})",
            ran.load(Ordering::Relaxed)
        ));
    }
    let report = handle.shutdown(Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM bench.bg_jobs WHERE state = 'completed'")
            .fetch_one(pool)
            .await
            .map_err(|e| format!("counting completed rows: {e}"))?;
    if completed as usize != jobs {
        return Err(format!(
            "burn-down: {completed} of {jobs} rows completed ({report:?})"
        ));
    }
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// Enqueue-to-start latency on an idle worker, one job at a time (each
/// enqueue commits on its own and waits for the handler to start): the
/// `NOTIFY` path. Returns the sorted latencies.
pub async fn pickup(
    pool: &PgPool,
    telemetry: &Telemetry,
    on: bool,
    jobs: usize,
) -> Result<Vec<Duration>, String> {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let handle = worker(pool, telemetry, on, 8)
        .register(move |_: Noop, _| {
            let _ = started_tx.send(Instant::now());
            async { Ok::<(), Infallible>(()) }
        })
        .map_err(|e| format!("pickup worker: {e}"))?
        .start()
        .map_err(|e| format!("pickup worker: {e}"))?;
    let client = client(telemetry, on);
    // One unmeasured job first, so the worker is up and idle. Its
    // `LISTEN` connection may still be connecting: a job enqueued before
    // it listens waits for the next poll (1 s), which would show in the
    // maximum and, if more than one in a hundred, in p99.
    client
        .enqueue(pool, &Noop {}, EnqueueOptions::new())
        .await
        .map_err(|e| format!("pickup enqueue: {e}"))?;
    next_start(&mut started_rx).await?;
    let mut latencies = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let sent = Instant::now();
        client
            .enqueue(pool, &Noop {}, EnqueueOptions::new())
            .await
            .map_err(|e| format!("pickup enqueue: {e}"))?;
        let began = next_start(&mut started_rx).await?;
        latencies.push(began.saturating_duration_since(sent));
    }
    let _report = handle.shutdown(Duration::from_secs(10)).await;
    latencies.sort();
    Ok(latencies)
}

/// The next handler start, or an error after [`DEADLINE`].
async fn next_start(started: &mut mpsc::UnboundedReceiver<Instant>) -> Result<Instant, String> {
    match tokio::time::timeout(DEADLINE, started.recv()).await {
        Ok(Some(at)) => Ok(at),
        Ok(None) => Err("pickup: the worker stopped".into()),
        Err(_) => Err(format!("pickup: no job started in {DEADLINE:?}")),
    }
}
