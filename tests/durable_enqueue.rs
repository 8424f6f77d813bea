//! Enqueue: in the caller's transaction, outside one, batches, run_at,
//! unique keys, and the NOTIFY that wakes workers.
#![cfg(feature = "postgres")]

#[path = "common/postgres.rs"]
mod pg;

use std::time::{Duration, SystemTime};

use bg_queue::durable::{Client, EnqueueBatch, EnqueueOptions, Job, RunAt};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, Row};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Email {
    to: String,
}

impl Job for Email {
    const NAME: &'static str = "send_receipt_email";
}

#[derive(Serialize, Deserialize)]
struct Subscribe {
    list: String,
}

impl Job for Subscribe {
    const NAME: &'static str = "subscribe_mailing_list";
}

fn email(to: &str) -> Email {
    Email { to: to.into() }
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_job_and_a_committed_one_leaves_it() {
    let Some(db) = pg::test_db("enqueue_tx").await else {
        return;
    };
    let client = Client::new(db.schema.clone());

    let mut tx = db.pool.begin().await.unwrap();
    let id = client
        .enqueue(&mut *tx, &email("a@example.com"), EnqueueOptions::new())
        .await
        .unwrap();
    assert!(id.is_some());
    // Visible inside the transaction only.
    let inside: i64 = sqlx::query(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        db.table("bg_jobs")
    )))
    .fetch_one(&mut *tx)
    .await
    .unwrap()
    .get(0);
    assert_eq!(inside, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.bg_jobs").await, 0);
    tx.rollback().await.unwrap();
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.bg_jobs").await, 0);

    let mut tx = db.pool.begin().await.unwrap();
    let id = client
        .enqueue(&mut *tx, &email("b@example.com"), EnqueueOptions::new())
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT task_name, args::text, state::text, attempt, max_attempts, queue,
                run_at = enqueued_at AS immediate
         FROM {} WHERE id = $1",
        db.table("bg_jobs")
    )))
    .bind(id.0)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "send_receipt_email");
    let args: Email = serde_json::from_str(&row.get::<String, _>(1)).unwrap();
    assert_eq!(args, email("b@example.com"));
    assert_eq!(row.get::<String, _>(2), "available");
    assert_eq!(row.get::<i32, _>(3), 0);
    assert_eq!(row.get::<i32, _>(4), 20);
    assert_eq!(row.get::<String, _>(5), "default");
    assert!(row.get::<bool, _>(6));
}

#[tokio::test]
async fn notify_is_delivered_at_commit_not_before() {
    let Some(db) = pg::test_db("enqueue_notify").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener
        .listen(&format!("bg_jobs.{}", db.schema.name()))
        .await
        .unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    client
        .enqueue(
            &mut *tx,
            &email("a@example.com"),
            EnqueueOptions::new().queue("mail"),
        )
        .await
        .unwrap();
    // Nothing before the commit: a notification would have arrived on the
    // listener's socket by the time this round trip returns.
    sqlx::query("SELECT 1").execute(&db.pool).await.unwrap();
    assert!(listener.next_buffered().is_none());
    let early = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(early.is_err(), "notified before commit: {early:?}");
    tx.commit().await.unwrap();
    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("notified within 5 s of the commit")
        .unwrap();
    assert_eq!(notification.payload(), "mail");
}

#[tokio::test]
async fn a_taken_unique_key_enqueues_nothing_until_the_row_is_discarded() {
    let Some(db) = pg::test_db("enqueue_unique").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let options = || EnqueueOptions::new().unique_key("evt_1");
    let first = client
        .enqueue(&db.pool, &email("a@x"), options())
        .await
        .unwrap();
    assert!(first.is_some());
    let again = client
        .enqueue(&db.pool, &email("a@x"), options())
        .await
        .unwrap();
    assert_eq!(again, None);
    // Another job name may use the same key.
    let other = client
        .enqueue(
            &db.pool,
            &Subscribe {
                list: "news".into(),
            },
            options(),
        )
        .await
        .unwrap();
    assert!(other.is_some());
    // Completed rows still block (the dedupe window is the retention).
    db.scalar("WITH u AS (UPDATE {s}.bg_jobs SET state = 'completed', finished_at = now() RETURNING 1) SELECT count(*) FROM u").await;
    let after_completion = client
        .enqueue(&db.pool, &email("a@x"), options())
        .await
        .unwrap();
    assert_eq!(after_completion, None);
    // A discarded row no longer does.
    db.scalar("WITH u AS (UPDATE {s}.bg_jobs SET state = 'discarded' WHERE task_name = 'send_receipt_email' RETURNING 1) SELECT count(*) FROM u").await;
    let after_discard = client
        .enqueue(&db.pool, &email("a@x"), options())
        .await
        .unwrap();
    assert!(after_discard.is_some());
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.bg_jobs").await, 3);
}

#[tokio::test]
async fn a_batch_inserts_every_job_in_one_statement_skipping_taken_keys() {
    let Some(db) = pg::test_db("enqueue_batch").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    client
        .enqueue(
            &db.pool,
            &email("dup"),
            EnqueueOptions::new().unique_key("k1"),
        )
        .await
        .unwrap();
    let mut batch = EnqueueBatch::new();
    for i in 0..100 {
        batch
            .push(&email(&format!("user{i}")), EnqueueOptions::new())
            .unwrap();
    }
    batch
        .push(
            &Subscribe {
                list: "news".into(),
            },
            EnqueueOptions::new(),
        )
        .unwrap();
    batch
        .push(&email("dup"), EnqueueOptions::new().unique_key("k1"))
        .unwrap();
    // Two of the same key in one batch: one is kept.
    batch
        .push(&email("twin"), EnqueueOptions::new().unique_key("k2"))
        .unwrap();
    batch
        .push(&email("twin"), EnqueueOptions::new().unique_key("k2"))
        .unwrap();
    assert_eq!(batch.len(), 104);
    let mut tx = db.pool.begin().await.unwrap();
    let ids = client.enqueue_batch(&mut *tx, batch).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 102);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids in insertion order"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.bg_jobs").await, 103);
    assert_eq!(
        db.scalar("SELECT count(*) FROM {s}.bg_jobs WHERE task_name = 'subscribe_mailing_list'")
            .await,
        1
    );
    assert!(client
        .enqueue_batch(&db.pool, EnqueueBatch::new())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn run_at_schedules_on_the_database_clock_and_bad_options_are_refused() {
    let Some(db) = pg::test_db("enqueue_run_at").await else {
        return;
    };
    let client = Client::new(db.schema.clone());
    let delayed = client
        .enqueue(
            &db.pool,
            &email("later"),
            EnqueueOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap()
        .unwrap();
    let at = SystemTime::now() + Duration::from_secs(7200);
    let timed = client
        .enqueue(
            &db.pool,
            &email("at"),
            EnqueueOptions::new().run_at(RunAt::At(at)),
        )
        .await
        .unwrap()
        .unwrap();
    let past = client
        .enqueue(
            &db.pool,
            &email("past"),
            EnqueueOptions::new().run_at(RunAt::At(SystemTime::now() - Duration::from_secs(60))),
        )
        .await
        .unwrap()
        .unwrap();
    let query = |id: i64| {
        let sql = format!(
            "SELECT state::text, extract(epoch FROM run_at - enqueued_at)::float8 FROM {} WHERE id = {id}",
            db.table("bg_jobs")
        );
        let pool = db.pool.clone();
        async move {
            let row = sqlx::query(AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap();
            (row.get::<String, _>(0), row.get::<f64, _>(1))
        }
    };
    let (state, ahead) = query(delayed.0).await;
    assert_eq!(state, "scheduled");
    assert!(
        (ahead - 3600.0).abs() < 0.01,
        "delay measured from the insert's now(): {ahead}"
    );
    let (state, ahead) = query(timed.0).await;
    assert_eq!(state, "scheduled");
    assert!((ahead - 7200.0).abs() < 60.0, "{ahead}");
    let (state, _) = query(past.0).await;
    assert_eq!(state, "available");

    let error = client
        .enqueue(&db.pool, &email("x"), EnqueueOptions::new().max_attempts(0))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("max_attempts"), "{error}");
    assert_eq!(db.scalar("SELECT count(*) FROM {s}.bg_jobs").await, 3);
}
