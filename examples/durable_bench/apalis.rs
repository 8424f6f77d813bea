//! The peer: `apalis` 1.0 with `apalis-postgres` 1.0, on the same database,
//! set up as apalis-postgres's own example does (`lock_tasks(false)`, a
//! 1 s heartbeat, `LISTEN/NOTIFY` through `with_pubsub`, handlers spawned
//! with `parallelize(tokio::spawn)`), with the batch size raised from its
//! default of 10 to 5,000 (`APALIS_BATCH`), the fastest of a sweep here
//! (10: about 1,400 jobs/s; 1,000: 8,600; 5,000: about 16,000).
//!
//! Timed like bg-queue's burn-down: from the worker's start until every
//! handler ran and the graceful stop wrote the last results; then every
//! row is checked to be `Done`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{
    BoxDynError, Data, ParallelizeExt as _, TaskSink as _, WorkerBuilder, WorkerBuilderExt as _,
    WorkerContext,
};
use apalis_postgres::{Config, PostgresStorage};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

/// apalis's job type names the queue (its `job_type` column).
const QUEUE: &str = "bench_apalis";

/// Counts handler runs; wakes the bench at the last one.
struct Progress {
    ran: AtomicUsize,
    jobs: usize,
    all_ran: Notify,
}

async fn noop(_job: u32, progress: Data<Arc<Progress>>) -> Result<(), BoxDynError> {
    if progress.ran.fetch_add(1, Ordering::Relaxed) + 1 == progress.jobs {
        progress.all_ran.notify_one();
    }
    Ok(())
}

fn batch_size() -> Result<usize, String> {
    match std::env::var("APALIS_BATCH") {
        Err(_) => Ok(5000),
        Ok(value) => value
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("APALIS_BATCH={value:?} is not a positive whole number")),
    }
}

async fn run(url: &str, jobs: usize, parallelism: usize) -> Result<f64, BoxDynError> {
    // A pool of its own, closed at the end: a worker's registration holds a
    // session advisory lock on the connection that made it.
    let pool = PgPoolOptions::new()
        .max_connections(crate::POOL_SIZE)
        .connect(url)
        .await?;
    PostgresStorage::setup(&pool).await?;
    sqlx::query("TRUNCATE apalis.jobs, apalis.workers")
        .execute(&pool)
        .await?;
    let config = Config::default()
        .queue(QUEUE)
        .batch_size(batch_size()?)
        .lock_tasks(false)
        .persist_results(true)
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(10);
    let mut storage = PostgresStorage::<u32>::new(&pool).with_config(config);
    let payloads: Vec<u32> = (0..jobs as u32).collect();
    for chunk in payloads.chunks(50_000) {
        storage.push_bulk(chunk.to_vec()).await?;
    }
    sqlx::query("VACUUM ANALYZE apalis.jobs")
        .execute(&pool)
        .await?;

    let progress = Arc::new(Progress {
        ran: AtomicUsize::new(0),
        jobs,
        all_ran: Notify::new(),
    });
    // Names must be unique: a stopped worker's name stays registered.
    let name = format!("bench-{}-{}", std::process::id(), fastrand::u64(..));
    let context = WorkerContext::new(&name);
    let worker = WorkerBuilder::new(&context)
        .backend(storage.with_pubsub())
        .concurrency(parallelism)
        .parallelize(tokio::spawn)
        .data(Arc::clone(&progress))
        .build(noop);
    let started = Instant::now();
    let mut running = tokio::spawn(worker.run());
    tokio::select! {
        _ = progress.all_ran.notified() => {}
        ended = &mut running => {
            return Err(format!("the apalis worker stopped early: {ended:?}").into());
        }
        _ = tokio::time::sleep(crate::bg::DEADLINE) => {
            let ran = progress.ran.load(Ordering::Relaxed);
            return Err(format!("only {ran} of {jobs} jobs ran in {:?}", crate::bg::DEADLINE).into());
        }
    }
    context.stop()?;
    running.await??;
    let elapsed = started.elapsed();
    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'",
    )
    .bind(QUEUE)
    .fetch_one(&pool)
    .await?;
    sqlx::query("TRUNCATE apalis.jobs, apalis.workers")
        .execute(&pool)
        .await?;
    pool.close().await;
    if done as usize != jobs {
        return Err(format!("apalis: {done} of {jobs} rows Done").into());
    }
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// apalis's burn-down of `jobs` no-op jobs with `parallelism` handlers at
/// once; jobs/s.
pub async fn burn_down(url: &str, jobs: usize, parallelism: usize) -> Result<f64, String> {
    run(url, jobs, parallelism)
        .await
        .map_err(|e| format!("apalis burn-down: {e}"))
}
