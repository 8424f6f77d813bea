//! `durable::snapshot`: what an on-call engineer sees of the durable
//! queues (counts by state, oldest due age, running jobs, recent failures,
//! discarded jobs with their error history).
#![cfg(feature = "postgres")]

#[path = "common/postgres.rs"]
mod pg;

use std::time::Duration;

use bg_queue::durable::{
    snapshot, Backoff, Client, EnqueueOptions, Job, JobContext, WorkerBuilder,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Snap {
    mode: String,
}

impl Job for Snap {
    const NAME: &'static str = "snap";
}

#[derive(Serialize, Deserialize)]
struct Orphan {}

impl Job for Orphan {
    const NAME: &'static str = "orphan";
}

fn snap(mode: &str) -> Snap {
    Snap { mode: mode.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_shows_states_running_failures_and_discarded_history() {
    let Some(db) = pg::test_db("snapshot").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let worker = WorkerBuilder::new(db.pool.clone())
        .schema(db.schema.clone())
        .queue("mail")
        .poll_interval(Duration::from_millis(100))
        .backoff(Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(200),
        })
        .register(|job: Snap, cx: JobContext| async move {
            match job.mode.as_str() {
                "fail" => Err(format!("mailbox full (attempt {})", cx.attempt)),
                "hang" => std::future::pending().await,
                _ => Ok(()),
            }
        })
        .unwrap()
        .start()
        .unwrap();
    let mail = || EnqueueOptions::new().queue("mail");
    client.enqueue(&db.pool, &snap("ok"), mail()).await.unwrap();
    client
        .enqueue(&db.pool, &snap("hang"), mail())
        .await
        .unwrap();
    let failing = client
        .enqueue(&db.pool, &snap("fail"), mail().max_attempts(2))
        .await
        .unwrap()
        .unwrap();
    client.enqueue(&db.pool, &Orphan {}, mail()).await.unwrap();
    client
        .enqueue(
            &db.pool,
            &snap("ok"),
            EnqueueOptions::new()
                .queue("later")
                .delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    db.wait_for(
        // One completed, one discarded (both attempts over), one running.
        "SELECT 100 * count(*) FILTER (WHERE state = 'completed')
              + 10 * count(*) FILTER (WHERE state = 'discarded')
              + count(*) FILTER (WHERE state = 'running') FROM {s}.bg_jobs",
        111,
        Duration::from_secs(10),
    )
    .await;

    let snapshot = snapshot(&db.pool, &db.schema, 10).await.unwrap();
    let names: Vec<&str> = snapshot.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["later", "mail"]);
    let later = &snapshot.queues[0];
    assert_eq!(later.states["scheduled"], 1);
    assert_eq!(
        later.oldest_available_seconds, 0.0,
        "a scheduled job is not due"
    );
    let mail = &snapshot.queues[1];
    assert_eq!(mail.states.len(), 7);
    assert_eq!(
        (
            mail.states["completed"],
            mail.states["running"],
            mail.states["discarded"],
            mail.states["available"]
        ),
        (1, 1, 1, 1)
    );
    assert!(mail.oldest_available_seconds > 0.0, "the orphan waits");
    assert_eq!(mail.running.len(), 1);
    let running = &mail.running[0];
    assert_eq!((running.task.as_str(), running.attempt), ("snap", 1));
    assert_eq!(running.worker.as_deref(), Some(worker.id()));
    assert!(running.lease_left_seconds > 0.0 && running.lease_left_seconds <= 30.0);
    assert_eq!(mail.recent_failures.len(), 2);
    assert_eq!(mail.recent_failures[0].attempt, 2, "newest first");
    assert_eq!(mail.recent_failures[0].error, "mailbox full (attempt 2)");
    assert_eq!(mail.recent_failures[0].outcome, "failed");
    assert!(mail.recent_failures[0].at.ends_with('Z'));
    assert_eq!(mail.discarded.len(), 1);
    let discarded = &mail.discarded[0];
    assert_eq!((discarded.id, discarded.attempts), (failing.0, 2));
    let history: Vec<&str> = discarded
        .errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["mailbox full (attempt 1)", "mailbox full (attempt 2)"]
    );

    let json = serde_json::to_value(&snapshot).unwrap();
    for key in [
        "name",
        "states",
        "oldest_available_seconds",
        "running",
        "recent_failures",
        "discarded",
    ] {
        assert!(json["queues"][1].get(key).is_some(), "no {key} in {json}");
    }

    // The same on /debug/bg, beside an in-memory pool.
    let bg = bg_queue::Builder::new("webhooks").build().unwrap();
    let page = || {
        bg_queue::DebugPage::new()
            .pool(bg.clone())
            .durable(db.pool.clone(), db.schema.clone())
            .router()
    };
    let body = get(page(), "/debug/bg.json").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["pools"][0]["name"], "webhooks");
    let mail = &json["durable"]["queues"][1];
    assert_eq!(mail["name"], "mail");
    assert_eq!(mail["states"]["discarded"], 1);
    assert_eq!(
        mail["discarded"][0]["errors"][1]["error"],
        "mailbox full (attempt 2)"
    );
    let html = get(page(), "/debug/bg").await;
    for text in [
        "Durable queues (Postgres)",
        "Recent failed attempts",
        "mailbox full (attempt 2)",
        "#1 failed: mailbox full (attempt 1)",
    ] {
        assert!(html.contains(text), "no {text:?} on the page:\n{html}");
    }
    let _ = worker.shutdown(Duration::from_millis(100)).await;
}

/// The body of a GET through the router, with no server.
async fn get(app: axum::Router, path: &str) -> String {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// With the database unreachable, the page still shows the in-memory pools,
/// and one line saying the jobs table could not be read (within its limit).
#[tokio::test]
async fn an_unreachable_database_is_one_line_on_the_page() {
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let bg = bg_queue::Builder::new("webhooks").build().unwrap();
    let app = bg_queue::DebugPage::new()
        .pool(bg)
        .durable(unreachable, bg_queue::durable::Schema::default())
        .router();
    let started = std::time::Instant::now();
    let html = get(app.clone(), "/debug/bg").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(html.contains("webhooks"), "{html}");
    assert!(html.contains("the jobs table could not be read"), "{html}");
    let json: serde_json::Value = serde_json::from_str(&get(app, "/debug/bg.json").await).unwrap();
    assert!(json["durable"]["error"].is_string(), "{json}");
    assert_eq!(json["pools"][0]["name"], "webhooks");
}
