//! The webhook demo in durable mode, end to end over loopback: the built
//! `webhook` example (feature `postgres`) as a process against a private
//! Postgres cluster (`scripts/pg`), driven with signed Stripe events.
//! A signed event answers 200 after the commit and both jobs run; its
//! redelivery answers 200 and enqueues nothing; with the database down the
//! answer is 503 + `Retry-After` and, once it is back, nothing is lost.
#![cfg(feature = "postgres")]

mod common;
#[path = "common/postgres.rs"]
mod pg;
#[path = "../examples/support/signature.rs"]
mod signature;

use std::time::{Duration, Instant};

use common::process::{free_port, start_demo, Proc};
use sqlx::{PgPool, Row as _};

const SECRET: &str = "whsec_durable_demo_test";

/// The demo on `port`, durable on `url`.
fn demo(port: u16, url: &str, email_delay_ms: u64) -> Proc {
    demo_with_debug(port, None, url, email_delay_ms)
}

/// The durable demo, with its debug listener on `debug_port` if given.
fn demo_with_debug(port: u16, debug_port: Option<u16>, url: &str, email_delay_ms: u64) -> Proc {
    let mut env = vec![
        ("DATABASE_URL", url.to_owned()),
        ("STRIPE_WEBHOOK_SECRET", SECRET.to_owned()),
        ("OTEL_SDK_DISABLED", "true".to_owned()),
        ("DEMO_EMAIL_DELAY_MS", email_delay_ms.to_string()),
        ("DEMO_FAILURE_RATE", "0".to_owned()),
        ("BG_JOB_LEASE_SECS", "5".to_owned()),
        ("BG_PARALLELISM", "4".to_owned()),
    ];
    if let Some(debug_port) = debug_port {
        env.push(("DEBUG_LISTEN_ADDR", format!("127.0.0.1:{debug_port}")));
    }
    start_demo(port, &env)
}

fn event(id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": { "object": {
            "id": format!("cs_{id}"),
            "object": "checkout.session",
            "customer_email": format!("{id}@example.com"),
            "amount_total": 4200,
            "currency": "eur",
        } }
    }))
    .unwrap()
}

/// Posts `body` signed now; returns the status, `Retry-After` and JSON.
async fn post(
    client: &reqwest::Client,
    port: u16,
    body: &[u8],
) -> (u16, Option<String>, serde_json::Value) {
    let header = signature::sign(&[SECRET], signature::unix_now(), body);
    let response = client
        .post(format!("http://127.0.0.1:{port}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(signature::HEADER, header)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

async fn scalar(pool: &PgPool, sql: &'static str, bind: &str) -> i64 {
    sqlx::query(sql)
        .bind(bind)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

/// Rows of `bg_jobs` for event `id`, in `state` (`%` for any).
async fn jobs(pool: &PgPool, id: &str, state: &str) -> i64 {
    sqlx::query("SELECT count(*) FROM bg_jobs WHERE unique_key LIKE $1 AND state::text LIKE $2")
        .bind(format!("{id}:%"))
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

/// Waits until both jobs of each event are `completed`, failing after
/// `limit`.
async fn wait_completed(pool: &PgPool, ids: &[&str], limit: Duration) {
    let start = Instant::now();
    loop {
        let mut done = 0;
        for id in ids {
            done += jobs(pool, id, "completed").await;
        }
        if done == 2 * ids.len() as i64 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{done} of {} jobs completed within {limit:?}",
            2 * ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_event_runs_both_jobs_once_and_its_redelivery_adds_nothing() {
    let Some(cluster) = pg::Cluster::start("demo_once") else {
        return;
    };
    let port = free_port();
    let debug_port = free_port();
    let demo = demo_with_debug(port, Some(debug_port), &cluster.url, 10);
    let pool = pg::pool(&cluster.url, 2).await;
    let client = reqwest::Client::new();
    let body = event("evt_durable_once");

    let (status, _, json) = post(&client, port, &body).await;
    let answered = Instant::now();
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["duplicate"], false, "{json}");
    assert_eq!(
        json["enqueued"],
        serde_json::json!(["send_receipt_email", "subscribe_mailing_list"])
    );
    // Committed before the answer: the event and both jobs are there now.
    let recorded = "SELECT count(*) FROM stripe_events WHERE id = $1";
    assert_eq!(scalar(&pool, recorded, "evt_durable_once").await, 1);
    assert_eq!(jobs(&pool, "evt_durable_once", "%").await, 2);
    wait_completed(&pool, &["evt_durable_once"], Duration::from_secs(30)).await;
    eprintln!(
        "both jobs completed within {:?} of the 200",
        answered.elapsed()
    );
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT task_name || ' ' || unique_key || ' ' || attempt FROM bg_jobs ORDER BY task_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        names,
        [
            "send_receipt_email evt_durable_once:send_receipt_email 1",
            "subscribe_mailing_list evt_durable_once:subscribe_mailing_list 1",
        ]
    );

    // Stripe's redelivery of the same event: 200, nothing new.
    let (status, _, json) = post(&client, port, &body).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["duplicate"], true, "{json}");
    assert_eq!(json["enqueued"], serde_json::json!([]));
    assert_eq!(scalar(&pool, recorded, "evt_durable_once").await, 1);
    assert_eq!(jobs(&pool, "evt_durable_once", "%").await, 2);
    assert_eq!(jobs(&pool, "evt_durable_once", "completed").await, 2);

    // The debug listener shows the durable queue beside the in-memory pool.
    let page: serde_json::Value = client
        .get(format!("http://127.0.0.1:{debug_port}/debug/bg.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let queue = &page["durable"]["queues"][0];
    assert_eq!(queue["states"]["completed"], 2, "{page}");

    let (status, _) = demo.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM exits 0: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_loses_nothing() {
    let Some(cluster) = pg::Cluster::start("demo_outage") else {
        return;
    };
    let port = free_port();
    // Jobs take 1.5 s, so the first event's jobs are running when the
    // database goes away and must record their completion after it is back.
    let demo = demo(port, &cluster.url, 1_500);
    let client = reqwest::Client::new();
    let before = event("evt_before_outage");
    let during = event("evt_during_outage");

    let (status, _, json) = post(&client, port, &before).await;
    assert_eq!(status, 200, "{json}");

    cluster.down();
    let asked = Instant::now();
    let (status, retry_after, json) = post(&client, port, &during).await;
    let answered = asked.elapsed();
    assert_eq!(status, 503, "{json}");
    let retry_after: u64 = retry_after
        .expect("a 503 says when to retry")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(json["code"], "database_unavailable", "{json}");
    assert!(json["error"].is_string(), "{json}");
    eprintln!("503 after {answered:?} with the database down");
    assert!(answered < Duration::from_secs(10), "{answered:?}");

    cluster.up();
    let back = Instant::now();
    // The sender retries the refused event: now it is recorded.
    let (status, _, json) = post(&client, port, &during).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["duplicate"], false, "{json}");
    let pool = pg::pool(&cluster.url, 2).await;
    wait_completed(
        &pool,
        &["evt_before_outage", "evt_during_outage"],
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "all four jobs completed within {:?} of the database's return",
        back.elapsed()
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 2);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM bg_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 4, "one row per event and task, none twice");

    let (status, _) = demo.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM exits 0: {status}");
}
