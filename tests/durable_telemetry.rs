//! Telemetry across the database: the worker's `bg.task` spans are
//! children of the enqueuer's span (same trace id, parent span id), one
//! `bg.run` per attempt with `bg.task.attempt`, and the metrics under the
//! in-memory pool's names.
#![cfg(feature = "postgres")]

mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::time::{Duration, Instant, UNIX_EPOCH};

use bg_queue::durable::{
    Backoff, Client, EnqueueOptions, Job, JobContext, WorkerBuilder, DURABLE_METRICS,
};
use common::{attr, attr_str, Metrics, Tracing};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Status, TraceContextExt};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Row};
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Serialize, Deserialize)]
struct Receipt {
    fail_first: bool,
}

impl Job for Receipt {
    const NAME: &'static str = "send_receipt_email";
}

#[derive(Serialize, Deserialize)]
struct NoHandler {}

impl Job for NoHandler {
    const NAME: &'static str = "handled_elsewhere";
}

#[tokio::test]
async fn worker_spans_continue_the_enqueuers_trace_and_metrics_use_the_pool_names() {
    let Some(db) = pg::test_db("telemetry_trace").await else {
        return;
    };
    let tracing_pipeline = Tracing::new();
    let _subscriber = tracing::subscriber::set_default(tracing_pipeline.subscriber());
    let metrics = Metrics::new();
    let meter = metrics.provider.meter("bg-queue");
    let client = Client::with_meter(db.schema.clone(), &meter);

    // The enqueuer: a request span, the job enqueued inside it.
    let request = tracing::info_span!("POST /webhooks/stripe");
    let (trace_id, span_id) = {
        let cx = request.context();
        let span_context = cx.span().span_context().clone();
        (span_context.trace_id(), span_context.span_id())
    };
    let id = async {
        client
            .enqueue(
                &db.pool,
                &Receipt { fail_first: true },
                EnqueueOptions::new(),
            )
            .await
            .unwrap()
            .unwrap()
    }
    .instrument_in(&request)
    .await;
    drop(request);
    client
        .enqueue(
            &db.pool,
            &Receipt { fail_first: false },
            EnqueueOptions::new().max_attempts(1).queue("other"),
        )
        .await
        .unwrap();
    client
        .enqueue(&db.pool, &NoHandler {}, EnqueueOptions::new())
        .await
        .unwrap();

    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .tracer(tracing_pipeline.tracer())
        .meter(meter.clone())
        .poll_interval(Duration::from_millis(100))
        .backoff(Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(200),
        })
        .register(|job: Receipt, cx: JobContext| async move {
            let _smtp = tracing::info_span!("smtp send").entered();
            if job.fail_first && cx.attempt == 1 {
                return Err("smtp 451 try again later".to_string());
            }
            Ok(())
        })
        .unwrap()
        .start()
        .unwrap();
    db.wait_for(
        &format!(
            "SELECT count(*) FROM {{s}}.bg_jobs WHERE id = {} AND state = 'completed'",
            id.0
        ),
        1,
        Duration::from_secs(10),
    )
    .await;
    let enqueued_at: f64 = sqlx::query(AssertSqlSafe(format!(
        "SELECT extract(epoch FROM enqueued_at)::float8 FROM {} WHERE id = $1",
        db.table("bg_jobs")
    )))
    .bind(id.0)
    .fetch_one(&db.pool)
    .await
    .unwrap()
    .get(0);

    // Spans end when the attempt's outcome is known; the second attempt's
    // bg.task is the last one to end.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tasks = loop {
        let tasks: Vec<_> = tracing_pipeline
            .spans()
            .into_iter()
            .filter(|s| s.name == "bg send_receipt_email")
            .collect();
        if tasks.len() == 2 || Instant::now() > deadline {
            break tasks;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        tasks.len(),
        2,
        "{:?}",
        common::names(&tracing_pipeline.spans())
    );
    let spans = tracing_pipeline.spans();
    let mut attempts = Vec::new();
    for task in &tasks {
        assert_eq!(
            task.span_context.trace_id(),
            trace_id,
            "bg.task in the enqueuer's trace"
        );
        assert_eq!(
            task.parent_span_id, span_id,
            "bg.task a child of the enqueuer's span"
        );
        assert_eq!(attr_str(task, "bg.pool.name").as_deref(), Some("default"));
        assert_eq!(
            attr_str(task, "bg.task.name").as_deref(),
            Some("send_receipt_email")
        );
        let run = spans
            .iter()
            .find(|s| {
                s.name == "run send_receipt_email"
                    && s.parent_span_id == task.span_context.span_id()
            })
            .expect("one bg.run under each bg.task");
        let attempt = attr(run, "bg.task.attempt").unwrap().as_str().into_owned();
        let outcome = attr_str(run, "bg.task.outcome").unwrap();
        assert_eq!(
            attr_str(task, "bg.task.outcome").as_deref(),
            Some(outcome.as_str())
        );
        let smtp = spans
            .iter()
            .find(|s| s.name == "smtp send" && s.parent_span_id == run.span_context.span_id());
        assert!(smtp.is_some(), "the handler's own span nests under bg.run");
        attempts.push((attempt, outcome, task.status.clone(), task.start_time));
    }
    attempts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(attempts[0].0, "1");
    assert_eq!(attempts[0].1, "failed");
    assert_eq!(attempts[0].2, Status::error("smtp 451 try again later"));
    assert_eq!(attempts[1].0, "2");
    assert_eq!(attempts[1].1, "ok");
    // The first bg.task starts at enqueued_at (database clock).
    let start = attempts[0]
        .3
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (start - enqueued_at).abs() < 0.002,
        "start {start} vs enqueued_at {enqueued_at}"
    );

    // Metrics: the other queue's job is discarded after its one attempt;
    // the job without a handler waits, in depth and oldest age.
    let deadline = Instant::now() + Duration::from_secs(10);
    let points = loop {
        let points = metrics.collect();
        let depth = points.iter().find(|p| {
            p.metric == "bg.queue.depth" && p.attr("bg.task.name") == Some("handled_elsewhere")
        });
        if depth.is_some_and(|p| p.value == 1.0) || Instant::now() > deadline {
            break points;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |metric: &str, attrs: &[(&str, &str)]| {
        points
            .iter()
            .find(|p| p.metric == metric && attrs.iter().all(|(k, v)| p.attr(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {metric} {attrs:?} in {points:#?}"))
            .clone()
    };
    let default_task = [
        ("bg.pool.name", "default"),
        ("bg.task.name", "send_receipt_email"),
    ];
    assert_eq!(find("bg.task.spawned", &default_task).value, 1.0);
    assert_eq!(
        find("bg.task.spawned", &[("bg.pool.name", "other")]).value,
        1.0
    );
    assert_eq!(find("bg.task.retried", &default_task).value, 1.0);
    let wait = find("bg.task.wait", &default_task);
    assert_eq!((wait.count, wait.unit.as_str()), (2, "s"));
    assert_eq!(
        find("bg.task.duration", &[("bg.task.outcome", "failed")]).count,
        1
    );
    assert_eq!(
        find("bg.task.duration", &[("bg.task.outcome", "ok")]).count,
        1
    );
    assert_eq!(
        find("bg.queue.depth", &[("bg.task.name", "handled_elsewhere")]).value,
        1.0
    );
    assert!(find("bg.queue.oldest_age", &[("bg.pool.name", "default")]).value > 0.0);
    // Exported names and units are exactly DURABLE_METRICS' (discarded has
    // no point yet: nothing was discarded on this queue).
    let exported: std::collections::BTreeMap<&str, &str> = points
        .iter()
        .map(|p| (p.metric.as_str(), p.unit.as_str()))
        .collect();
    let table: std::collections::BTreeMap<&str, &str> = DURABLE_METRICS
        .iter()
        .filter(|(name, _, _)| *name != "bg.task.discarded")
        .map(|(name, unit, _)| (*name, *unit))
        .collect();
    assert_eq!(exported, table);
    let _ = worker.shutdown(Duration::from_secs(2)).await;

    // The other queue's worker discards its failing job.
    let other = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .queue("other")
        .meter(meter)
        .register(|_job: Receipt, _cx: JobContext| async { Err::<(), _>("permanent") })
        .unwrap()
        .start()
        .unwrap();
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'discarded'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let _ = other.shutdown(Duration::from_secs(2)).await;
    let points = metrics.collect();
    // The stopped worker's queue no longer reports a (stale) depth.
    assert!(!points
        .iter()
        .any(|p| p.metric == "bg.queue.depth" && p.attr("bg.pool.name") == Some("default")));
    assert!(points.iter().any(|p| p.metric == "bg.task.discarded"
        && p.attr("bg.pool.name") == Some("other")
        && p.value == 1.0));
}

/// Runs a future with `span` entered around each poll.
trait InstrumentIn: std::future::Future + Sized {
    fn instrument_in(self, span: &tracing::Span) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, span.clone())
    }
}

impl<F: std::future::Future> InstrumentIn for F {}

#[derive(Serialize, Deserialize)]
struct Hang {}

impl Job for Hang {
    const NAME: &'static str = "hang";
}

#[tokio::test]
async fn an_attempt_stopped_at_shutdown_ends_its_spans_as_abandoned() {
    let Some(db) = pg::test_db("telemetry_abandoned").await else {
        return;
    };
    let tracing_pipeline = Tracing::new();
    let _subscriber = tracing::subscriber::set_default(tracing_pipeline.subscriber());
    let client = Client::new(db.schema.clone());
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .tracer(tracing_pipeline.tracer())
        .register(|_job: Hang, _cx: JobContext| async {
            std::future::pending::<Result<(), String>>().await
        })
        .unwrap()
        .start()
        .unwrap();
    client
        .enqueue(&db.pool, &Hang {}, EnqueueOptions::new())
        .await
        .unwrap();
    db.wait_for(
        "SELECT count(*) FROM {s}.bg_jobs WHERE state = 'running'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let report = worker.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.returned, 1);
    let task = tracing_pipeline.span("bg hang");
    assert_eq!(
        attr_str(&task, "bg.task.outcome").as_deref(),
        Some("abandoned")
    );
    assert!(
        matches!(task.status, Status::Error { .. }),
        "{:?}",
        task.status
    );
    let run = tracing_pipeline.span("run hang");
    assert_eq!(
        attr_str(&run, "bg.task.outcome").as_deref(),
        Some("abandoned")
    );
    assert_eq!(run.parent_span_id, task.span_context.span_id());
}
