//! Worker processes against Postgres: two drain 10,000 jobs exactly once,
//! `kill -9` mid-job (the job runs again after the lease), SIGTERM (jobs
//! back to `available` within the grace), and a Postgres restart mid-run
//! (nothing lost). The worker process is this test binary run again with
//! `worker_process` as its only test.
#![cfg(feature = "postgres")]

mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::process::Command;
use std::time::{Duration, Instant};

use bg_queue::durable::{
    Client, EnqueueBatch, EnqueueOptions, Job, JobContext, Schema, WorkerBuilder,
};
use common::process::Proc;
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;

/// A job that sleeps (on its first attempt only) and then writes a ledger
/// row, so the test can count how often each job ran to its end.
#[derive(Serialize, Deserialize)]
struct Ledger {
    n: i64,
    first_attempt_ms: u64,
}

impl Job for Ledger {
    const NAME: &'static str = "ledger";
}

async fn create_ledger(db: &pg::TestDb) {
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {} (job_id bigint NOT NULL, n bigint NOT NULL, worker text NOT NULL, attempt int NOT NULL)",
        db.table("ledger")
    )))
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn enqueue(db: &pg::TestDb, range: std::ops::Range<i64>, first_attempt_ms: u64) {
    let client = Client::new(db.schema.clone());
    let ns: Vec<i64> = range.collect();
    for chunk in ns.chunks(1000) {
        let mut batch = EnqueueBatch::new();
        for &n in chunk {
            batch
                .push(
                    &Ledger {
                        n,
                        first_attempt_ms,
                    },
                    EnqueueOptions::new(),
                )
                .unwrap();
        }
        client.enqueue_batch(&db.pool, batch).await.unwrap();
    }
}

/// Starts a worker process on `db`'s schema.
fn spawn_worker(db: &pg::TestDb, name: &str, lease_ms: u64, grace_ms: u64) -> Proc {
    let proc = Proc::spawn(
        name,
        Command::new(std::env::current_exe().unwrap())
            .args([
                "worker_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DATABASE_URL", &db.url)
            .env("DURABLE_WORKER_SCHEMA", db.schema.name())
            .env("DURABLE_WORKER_LEASE_MS", lease_ms.to_string())
            .env("DURABLE_WORKER_GRACE_MS", grace_ms.to_string())
            .env("DURABLE_WORKER_NAME", name),
    );
    proc.wait_for_line("durable worker ready", Duration::from_secs(20));
    proc
}

/// The worker process: runs until SIGTERM, then shuts down gracefully.
#[test]
#[ignore = "the worker process of the other tests, started by them"]
fn worker_process() {
    let Ok(schema) = std::env::var("DURABLE_WORKER_SCHEMA") else {
        return;
    };
    let env_ms = |key: &str| Duration::from_millis(std::env::var(key).unwrap().parse().unwrap());
    let (lease, grace) = (
        env_ms("DURABLE_WORKER_LEASE_MS"),
        env_ms("DURABLE_WORKER_GRACE_MS"),
    );
    let name = std::env::var("DURABLE_WORKER_NAME").unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let url = std::env::var("DATABASE_URL").unwrap();
        let pool = pg::pool(&url, 10).await;
        let schema = Schema::new(schema).unwrap();
        let ledger = format!("\"{}\".ledger", schema.name());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let handler_pool = pool.clone();
        let worker = WorkerBuilder::new(pool)
            .schema(schema)
            .parallelism(8)
            .lease(lease)
            .poll_interval(Duration::from_millis(200))
            .register(move |job: Ledger, cx: JobContext| {
                let (pool, ledger, name) = (handler_pool.clone(), ledger.clone(), name.clone());
                async move {
                    if cx.attempt == 1 && job.first_attempt_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(job.first_attempt_ms)).await;
                    }
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {ledger} (job_id, n, worker, attempt) VALUES ($1, $2, $3, $4)"
                    )))
                    .bind(cx.id.0)
                    .bind(job.n)
                    .bind(&name)
                    .bind(cx.attempt)
                    .execute(&pool)
                    .await
                    .map(|_| ())
                }
            })
            .unwrap()
            .start()
            .unwrap();
        eprintln!("durable worker ready {}", worker.id());
        term.recv().await;
        let report = worker.shutdown(grace).await;
        eprintln!("durable worker stopped: {report:?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_drain_10000_jobs_each_exactly_once() {
    let Some(db) = pg::test_db("proc_drain").await else {
        return;
    };
    create_ledger(&db).await;
    let a = spawn_worker(&db, "a", 30_000, 5_000);
    let b = spawn_worker(&db, "b", 30_000, 5_000);
    let started = Instant::now();
    enqueue(&db, 0..10_000, 0).await;
    let took = db
        .wait_for(
            "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed'",
            10_000,
            Duration::from_secs(180),
        )
        .await;
    let _ = started;
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.ledger").await, 10_000);
    assert_eq!(
        db.scalar("SELECT count(DISTINCT n) FROM {s}.ledger").await,
        10_000
    );
    assert_eq!(
        db.scalar("SELECT count(DISTINCT job_id) FROM {s}.ledger")
            .await,
        10_000
    );
    let by_a = db
        .scalar("SELECT count(*) FROM {s}.ledger WHERE worker = 'a'")
        .await;
    let by_b = db
        .scalar("SELECT count(*) FROM {s}.ledger WHERE worker = 'b'")
        .await;
    assert!(by_a > 0 && by_b > 0, "a ran {by_a}, b ran {by_b}");
    println!(
        "two worker processes (parallelism 8 each): 10,000 jobs in {:.2} s ({:.0} jobs/s), a {by_a}, b {by_b}",
        took.as_secs_f64(),
        10_000.0 / took.as_secs_f64()
    );
    for worker in [a, b] {
        let (status, _) = worker.terminate(Duration::from_secs(15));
        assert!(status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_is_killed_runs_again_after_the_lease() {
    let Some(db) = pg::test_db("proc_kill9").await else {
        return;
    };
    create_ledger(&db).await;
    let mut doomed = spawn_worker(&db, "doomed", 2_000, 1_000);
    enqueue(&db, 0..1, 60_000).await;
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'running'",
        1,
        Duration::from_secs(10),
    )
    .await;
    doomed.child.kill().unwrap(); // SIGKILL
    doomed.child.wait().unwrap();
    let killed = Instant::now();
    let survivor = spawn_worker(&db, "survivor", 2_000, 1_000);
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed'",
        1,
        Duration::from_secs(15),
    )
    .await;
    let rerun = killed.elapsed();
    assert_eq!(
        db.scalar("SELECT count(*) FROM {s}.ledger WHERE worker = 'survivor' AND attempt = 2")
            .await,
        1
    );
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.ledger").await, 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM {s}.bg_jobs WHERE errors->0->>'outcome' = 'lease_expired'")
            .await,
        1
    );
    println!(
        "kill -9 mid-job with a 2 s lease: completed by another worker {:.2} s after the kill",
        rerun.as_secs_f64()
    );
    assert!(rerun < Duration::from_secs(10), "{rerun:?}");
    let (status, _) = survivor.terminate(Duration::from_secs(15));
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_returns_running_jobs_to_available_within_the_grace() {
    let Some(db) = pg::test_db("proc_sigterm").await else {
        return;
    };
    create_ledger(&db).await;
    let worker = spawn_worker(&db, "w", 30_000, 500);
    enqueue(&db, 0..4, 600_000).await;
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'running'",
        4,
        Duration::from_secs(10),
    )
    .await;
    let sent = Instant::now();
    let stderr_before = worker.stderr().len();
    let pid = worker.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let took = db
        .wait_for(
            "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'available' AND attempt = 0",
            4,
            Duration::from_secs(5),
        )
        .await;
    println!(
        "SIGTERM with 0.5 s grace: 4 running jobs back to available after {:.2} s",
        took.as_secs_f64()
    );
    assert!(sent.elapsed() < Duration::from_secs(5));
    let line = worker.wait_for_line("durable worker stopped", Duration::from_secs(10));
    assert!(line.contains("returned: 4"), "{line}");
    assert!(worker.stderr().len() > stderr_before);
    let (status, _) = worker.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.ledger").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_nothing_and_workers_resume() {
    // Its own cluster: restarting the shared one would cut the other
    // tests' connections.
    let Some(cluster) = pg::Cluster::start("restart") else {
        return;
    };
    let db = pg::test_db_on(cluster.url.clone(), "proc_restart").await;
    create_ledger(&db).await;
    let a = spawn_worker(&db, "a", 5_000, 2_000);
    let b = spawn_worker(&db, "b", 5_000, 2_000);
    enqueue(&db, 0..3_000, 2).await;
    db.wait_for(
        "SELECT LEAST(count(*), 300) FROM {s}.bg_jobs WHERE state = 'completed'",
        300,
        Duration::from_secs(60),
    )
    .await;
    let restarted = Instant::now();
    cluster.restart();
    println!(
        "Postgres restarted in {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed'",
        3_000,
        Duration::from_secs(120),
    )
    .await;
    println!(
        "all 3,000 jobs completed {:.2} s after the restart began",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        db.scalar("SELECT count(DISTINCT n) FROM {s}.ledger").await,
        3_000
    );
    let duplicates = db
        .scalar("SELECT count(*) - count(DISTINCT n) FROM {s}.ledger")
        .await;
    println!("runs past the first per job (at-least-once): {duplicates}");
    for worker in [a, b] {
        let errors = worker
            .stderr()
            .iter()
            .filter(|l| l.contains("WARN"))
            .count();
        println!(
            "worker {} logged {errors} warnings through the restart",
            worker.name
        );
        assert!(
            errors <= 30,
            "{} logged {errors} warnings:\n{}",
            worker.name,
            worker.stderr().join("\n")
        );
        let (status, _) = worker.terminate(Duration::from_secs(15));
        assert!(status.success());
    }
}

/// CPU time (user + system, in clock ticks) a process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_costs_neither_cpu_nor_log_lines_and_loses_nothing() {
    let Some(cluster) = pg::Cluster::start("outage") else {
        return;
    };
    let db = pg::test_db_on(cluster.url.clone(), "proc_outage").await;
    create_ledger(&db).await;
    let worker = spawn_worker(&db, "w", 5_000, 2_000);
    enqueue(&db, 0..200, 2).await;
    db.wait_for(
        "SELECT LEAST(count(*), 50) FROM {s}.bg_jobs WHERE state = 'completed'",
        50,
        Duration::from_secs(30),
    )
    .await;
    cluster.down();
    let pid = worker.child.id();
    worker.wait_for_line("could not", Duration::from_secs(15));
    let (cpu_before, warnings_before) = (cpu_ticks(pid), worker.stderr().len());
    // The outage itself: a duration to measure over, not a wait for an event.
    let outage = Duration::from_secs(6);
    tokio::time::sleep(outage).await;
    let cpu = cpu_ticks(pid) - cpu_before;
    let lines = worker.stderr().len() - warnings_before;
    cluster.up();
    println!(
        "6 s database outage: worker used {cpu} CPU ticks (1/100 s) and wrote {lines} log lines during it"
    );
    // Backing off from 100 ms to 10 s: well under 5% of a core.
    assert!(cpu < 30, "{cpu} ticks in {outage:?}: the worker spins");
    // At most one line per operation every 30 s.
    assert!(
        lines <= 10,
        "{lines} lines:\n{}",
        worker.stderr().join("\n")
    );
    enqueue(&db, 200..300, 0).await;
    let resumed = db
        .wait_for(
            "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed'",
            300,
            Duration::from_secs(60),
        )
        .await;
    println!(
        "after the outage: all 300 jobs completed {:.2} s after the new ones were enqueued",
        resumed.as_secs_f64()
    );
    assert_eq!(
        db.scalar("SELECT count(DISTINCT n) FROM {s}.ledger").await,
        300
    );
    let (status, _) = worker.terminate(Duration::from_secs(15));
    assert!(status.success());
}
