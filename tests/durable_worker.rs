//! The worker in one process against Postgres: runs, retries with backoff
//! to discarded, panics and timeouts, unknown and undecodable jobs, the
//! lease rescuer, retention, graceful shutdown, and pickup latency.
#![cfg(feature = "postgres")]

#[path = "common/postgres.rs"]
mod pg;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_queue::durable::{
    Backoff, Client, EnqueueBatch, EnqueueOptions, Job, JobContext, WorkerBuilder,
};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::mpsc;

#[derive(Serialize, Deserialize)]
struct Work {
    n: i64,
}

impl Job for Work {
    const NAME: &'static str = "work";
}

#[derive(Serialize, Deserialize)]
struct Flaky {
    n: i64,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_every_job_once_with_at_most_parallelism_at_once() {
    let Some(db) = pg::test_db("worker_runs").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .parallelism(4)
        .register(move |job: Work, cx: JobContext| {
            let (tx, running, peak) = (tx.clone(), r.clone(), p.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                tx.send((job.n, cx.attempt)).unwrap();
                Ok::<(), String>(())
            }
        })
        .unwrap()
        .start()
        .unwrap();
    for n in 0..200 {
        client
            .enqueue(&db.pool, &Work { n }, EnqueueOptions::new())
            .await
            .unwrap();
    }
    let mut seen = vec![0; 200];
    for _ in 0..200 {
        let (n, attempt) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("200 jobs run within 20 s")
            .unwrap();
        assert_eq!(attempt, 1);
        seen[n as usize] += 1;
    }
    assert!(seen.iter().all(|&c| c == 1), "{seen:?}");
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed' AND finished_at IS NOT NULL",
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(peak.load(Ordering::SeqCst) <= 4);
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained && report.completions_flushed);
    assert_eq!(report.stats.completed, 200);
    assert_eq!(report.returned, 0);
}

/// While jobs are backed up the fetch loop waits for every slot to be free
/// before fetching; a job that holds its slot must not stall the rest, so
/// that wait is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_holding_its_slot_does_not_stall_a_backlog() {
    let Some(db) = pg::test_db("worker_backlog").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    // Job 0 first (fetched first), then 100 quick ones, in one commit.
    let mut batch = EnqueueBatch::new();
    for n in 0..=100 {
        batch.push(&Work { n }, EnqueueOptions::new()).unwrap();
    }
    client.enqueue_batch(&db.pool, batch).await.unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let held = Arc::clone(&gate);
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .parallelism(4)
        .register(move |job: Work, _: JobContext| {
            let (tx, gate) = (tx.clone(), Arc::clone(&held));
            async move {
                if job.n == 0 {
                    let _ = gate.acquire().await.unwrap();
                }
                tx.send(job.n).unwrap();
                Ok::<(), String>(())
            }
        })
        .unwrap()
        .start()
        .unwrap();
    for _ in 0..100 {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the 100 quick jobs run within 20 s beside the held one")
            .unwrap();
        assert_ne!(n, 0, "job 0 finished before its gate opened");
    }
    gate.add_permits(1);
    let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("job 0 runs once its gate opens")
        .unwrap();
    assert_eq!(n, 0);
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained && report.completions_flushed);
    assert_eq!(report.stats.completed, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_then_end_discarded_with_every_error_kept() {
    let Some(db) = pg::test_db("worker_retries").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .backoff(fast_backoff())
        .poll_interval(Duration::from_millis(100))
        .register(|job: Flaky, cx: JobContext| async move {
            Err::<(), String>(format!(
                "smtp said no to {} on attempt {}",
                job.n, cx.attempt
            ))
        })
        .unwrap()
        .start()
        .unwrap();
    let id = client
        .enqueue(
            &db.pool,
            &Flaky { n: 7 },
            EnqueueOptions::new().max_attempts(4),
        )
        .await
        .unwrap()
        .unwrap();
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'discarded'",
        1,
        Duration::from_secs(20),
    )
    .await;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT attempt, finished_at IS NOT NULL, errors::text FROM {} WHERE id = $1",
        db.table("bg_jobs")
    )))
    .bind(id.0)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<i32, _>(0), 4);
    assert!(row.get::<bool, _>(1));
    let errors: Vec<serde_json::Value> = serde_json::from_str(&row.get::<String, _>(2)).unwrap();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    for (i, error) in errors.iter().enumerate() {
        assert_eq!(error["attempt"], i as i64 + 1);
        assert_eq!(error["outcome"], "failed");
        assert_eq!(error["type"], "String");
        assert_eq!(
            error["error"],
            format!("smtp said no to 7 on attempt {}", i + 1)
        );
    }
    // The gaps between attempts follow the backoff: at least half the
    // nominal 200 ms, 400 ms, 800 ms (jitter), and no more than it plus
    // the time to fetch (the worker sleeps until the retry is due).
    let at: Vec<f64> = sqlx::query(AssertSqlSafe(format!(
        "SELECT extract(epoch FROM (e->>'at')::timestamptz)::float8
         FROM {}, jsonb_array_elements(errors) e WHERE id = $1",
        db.table("bg_jobs")
    )))
    .bind(id.0)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    for (i, gap) in at.windows(2).map(|w| w[1] - w[0]).enumerate() {
        let nominal = 0.2 * f64::from(1u32 << i);
        assert!(
            gap >= nominal / 2.0 && gap <= nominal + 0.5,
            "gap {i}: {gap} s, nominal {nominal} s"
        );
    }
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        (
            report.stats.failed,
            report.stats.retried,
            report.stats.discarded
        ),
        (4, 3, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_and_a_timeout_are_caught_recorded_and_retried() {
    let Some(db) = pg::test_db("worker_panics").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .backoff(fast_backoff())
        .poll_interval(Duration::from_millis(100))
        .attempt_timeout(Duration::from_millis(300))
        .register(|_job: Flaky, cx: JobContext| async move {
            match cx.attempt {
                1 => panic!("template missing"),
                2 => std::future::pending::<()>().await,
                _ => {}
            }
            Ok::<(), String>(())
        })
        .unwrap()
        .start()
        .unwrap();
    let id = client
        .enqueue(&db.pool, &Flaky { n: 1 }, EnqueueOptions::new())
        .await
        .unwrap()
        .unwrap();
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed'",
        1,
        Duration::from_secs(20),
    )
    .await;
    let errors: String = sqlx::query(AssertSqlSafe(format!(
        "SELECT errors::text FROM {} WHERE id = $1",
        db.table("bg_jobs")
    )))
    .bind(id.0)
    .fetch_one(&db.pool)
    .await
    .unwrap()
    .get(0);
    let errors: Vec<serde_json::Value> = serde_json::from_str(&errors).unwrap();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0]["outcome"], "panicked");
    assert_eq!(errors[0]["error"], "panicked: template missing");
    assert_eq!(errors[1]["outcome"], "timed_out");
    let stats = worker.shutdown(Duration::from_secs(5)).await.stats;
    assert_eq!(
        (stats.panicked, stats.timed_out, stats.completed),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_names_are_left_and_undecodable_arguments_discarded() {
    let Some(db) = pg::test_db("worker_unknown").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .poll_interval(Duration::from_millis(100))
        .register(|_job: Work, _cx: JobContext| async { Ok::<(), String>(()) })
        .unwrap()
        .start()
        .unwrap();
    client
        .enqueue(&db.pool, &Flaky { n: 1 }, EnqueueOptions::new())
        .await
        .unwrap();
    db.scalar("WITH i AS (INSERT INTO {s}.bg_jobs (queue, task_name, args, max_attempts) VALUES ('default', 'work', '{\"n\": \"not a number\"}', 5) RETURNING 1) SELECT count(*) FROM i").await;
    client
        .enqueue(&db.pool, &Work { n: 2 }, EnqueueOptions::new())
        .await
        .unwrap();
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state IN ('completed', 'discarded')",
        2,
        Duration::from_secs(10),
    )
    .await;
    let error = db.scalar("SELECT count(*) FROM {s}.bg_jobs WHERE state = 'discarded' AND attempt = 1 AND errors->0->>'type' = 'decode' AND errors->0->>'error' LIKE 'arguments do not decode into job work%'").await;
    assert_eq!(error, 1);
    // A poll or two later the unknown job is still untouched.
    let polls = worker.stats().fetched;
    db.wait_for("SELECT count(*) FROM {s}.bg_jobs WHERE task_name = 'flaky' AND state = 'available' AND attempt = 0", 1, Duration::from_secs(1)).await;
    assert_eq!(polls, 2);
    let _ = worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_rescued_and_run_again_and_old_rows_are_pruned() {
    let Some(db) = pg::test_db("worker_rescue").await else {
        return;
    };
    // A job a dead worker held, its lease passed; a completed row two days old.
    db.scalar("WITH i AS (INSERT INTO {s}.bg_jobs (queue, task_name, args, max_attempts, state, attempt, locked_by, locked_until) VALUES ('default', 'work', '{\"n\": 1}', 5, 'running', 1, 'dead-worker', now() - interval '1 second') RETURNING 1) SELECT count(*) FROM i").await;
    // Its last attempt: discarded, not run again.
    db.scalar("WITH i AS (INSERT INTO {s}.bg_jobs (queue, task_name, args, max_attempts, state, attempt, locked_by, locked_until) VALUES ('default', 'work', '{\"n\": 3}', 2, 'running', 2, 'dead-worker', now() - interval '1 second') RETURNING 1) SELECT count(*) FROM i").await;
    db.scalar("WITH i AS (INSERT INTO {s}.bg_jobs (queue, task_name, args, max_attempts, state, finished_at) VALUES ('default', 'work', '{\"n\": 2}', 5, 'completed', now() - interval '2 days') RETURNING 1) SELECT count(*) FROM i").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .lease(Duration::from_millis(600))
        .register(move |job: Work, cx: JobContext| {
            let tx = tx.clone();
            async move {
                tx.send((job.n, cx.attempt)).unwrap();
                Ok::<(), String>(())
            }
        })
        .unwrap()
        .start()
        .unwrap();
    let (n, attempt) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n, attempt), (1, 2));
    db.wait_for("SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed' AND errors->0->>'outcome' = 'lease_expired' AND errors->0->>'error' LIKE '%dead-worker%'", 1, Duration::from_secs(5)).await;
    db.wait_for("SELECT count(*) FROM {s}.bg_jobs WHERE state = 'discarded' AND attempt = 2 AND finished_at IS NOT NULL AND errors->0->>'outcome' = 'lease_expired'", 1, Duration::from_secs(5)).await;
    assert!(rx.try_recv().is_err(), "the discarded job did not run");
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE finished_at < now() - interval '1 day'",
        0,
        Duration::from_secs(5),
    )
    .await;
    let _ = worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_unfinished_jobs_to_available_at_once() {
    let Some(db) = pg::test_db("worker_shutdown").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .parallelism(3)
        .register(move |job: Work, _cx: JobContext| {
            let tx = tx.clone();
            async move {
                tx.send(job.n).unwrap();
                if job.n > 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<(), String>(())
            }
        })
        .unwrap()
        .start()
        .unwrap();
    for n in 0..5 {
        client
            .enqueue(&db.pool, &Work { n }, EnqueueOptions::new())
            .await
            .unwrap();
    }
    // Job 0 finishes; three of the four others then hold every slot.
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'running'",
        3,
        Duration::from_secs(5),
    )
    .await;
    let started = Instant::now();
    let report = worker.shutdown(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!report.drained);
    assert_eq!(report.returned, 3);
    assert_eq!(db.count("running").await, 0);
    assert_eq!(db.count("completed").await, 1);
    // Returned without spending an attempt.
    assert_eq!(
        db.scalar("SELECT count(*) FROM {s}.bg_jobs WHERE state = 'available' AND attempt = 0")
            .await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_picks_a_job_up_through_notify_not_polling() {
    let Some(db) = pg::test_db("worker_latency").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        // Polling would take 60 s: only LISTEN/NOTIFY can be this quick.
        .poll_interval(Duration::from_secs(60))
        .register(move |job: Work, _cx: JobContext| {
            let tx = tx.clone();
            async move {
                tx.send((job.n, Instant::now())).unwrap();
                Ok::<(), String>(())
            }
        })
        .unwrap()
        .start()
        .unwrap();
    // Wait until the listener is up: the first job's pickup proves it.
    client
        .enqueue(&db.pool, &Work { n: -1 }, EnqueueOptions::new())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let mut latencies = Vec::new();
    for n in 0..300 {
        let before = Instant::now();
        client
            .enqueue(&db.pool, &Work { n }, EnqueueOptions::new())
            .await
            .unwrap();
        let (got, started) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("picked up within 5 s")
            .unwrap();
        assert_eq!(got, n);
        latencies.push(started - before);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "pickup latency (enqueue outside a tx -> handler start, idle worker, {} jobs): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    assert!(pct(0.99) < Duration::from_secs(1), "p99 {:?}", pct(0.99));
    let _ = worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_starts_when_due_without_waiting_for_a_poll() {
    let Some(db) = pg::test_db("worker_delayed").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .poll_interval(Duration::from_secs(60))
        .register(move |_job: Work, _cx: JobContext| {
            let tx = tx.clone();
            async move {
                tx.send(Instant::now()).unwrap();
                Ok::<(), String>(())
            }
        })
        .unwrap()
        .start()
        .unwrap();
    // One job run first, so the worker is asleep (for its 60 s poll) when
    // the delayed one arrives.
    client
        .enqueue(&db.pool, &Work { n: 0 }, EnqueueOptions::new())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'completed'",
        1,
        Duration::from_secs(5),
    )
    .await;
    let enqueued = Instant::now();
    client
        .enqueue(
            &db.pool,
            &Work { n: 1 },
            EnqueueOptions::new().delay(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    let started = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the delayed job ran within 10 s, not at the 60 s poll")
        .unwrap();
    let after = started - enqueued;
    println!(
        "delayed 1.5 s: started {:.3} s after the enqueue",
        after.as_secs_f64()
    );
    assert!(
        after >= Duration::from_millis(1450),
        "{after:?}: before its run_at"
    );
    assert!(after < Duration::from_millis(2500), "{after:?}");
    let _ = worker.shutdown(Duration::from_secs(1)).await;
}

/// A `fmt` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A failed attempt is a WARN a plain `fmt` subscriber prints, with the
/// queue, the task, the outcome, the attempt and the error text, as the
/// in-memory pool's failures are; repeated failures of one task name are
/// held back, not logged one line each.
#[tokio::test]
async fn a_failed_attempt_is_logged_with_its_error_once_per_interval() {
    let Some(db) = pg::test_db("worker_failure_events").await else {
        return;
    };
    let captured = Captured::default();
    let writer = captured.clone();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let client = Client::new(db.schema.clone());
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .queue("mail")
        .backoff(fast_backoff())
        .poll_interval(Duration::from_millis(100))
        .register(|job: Flaky, cx: JobContext| async move {
            Err::<(), String>(format!("mailbox {} full on attempt {}", job.n, cx.attempt))
        })
        .unwrap()
        .start()
        .unwrap();
    for n in 0..3 {
        client
            .enqueue(
                &db.pool,
                &Flaky { n },
                EnqueueOptions::new().queue("mail").max_attempts(1),
            )
            .await
            .unwrap();
    }
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'discarded'",
        3,
        Duration::from_secs(20),
    )
    .await;
    let _ = worker.shutdown(Duration::from_millis(100)).await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let failures: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("durable job flaky failed"))
        .collect();
    assert_eq!(failures.len(), 1, "one line per interval: {text}");
    let events = text
        .lines()
        .filter(|line| line.contains("bg.task.outcome=\"failed\""))
        .count();
    assert_eq!(events, 1, "one failure event, not one per layer: {text}");
    let line = failures[0];
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("bg.pool.name=mail"), "{line}");
    assert!(line.contains("bg.task.name=\"flaky\""), "{line}");
    assert!(line.contains("bg.task.outcome=\"failed\""), "{line}");
    assert!(line.contains("on attempt 1"), "{line}");
    assert!(line.contains("full on attempt 1"), "{line}");
}
