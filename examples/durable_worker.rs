//! A worker-only process for durable jobs: serves the `default` queue of
//! the jobs table until SIGTERM or ctrl-c, then shuts down gracefully.
//!
//! Run with
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --features postgres --example durable_worker
//! # ./scripts/pg start /tmp/pg prints a DATABASE_URL for a throwaway cluster
//! ```
//!
//! Settings (environment): `DATABASE_URL` (required), `BG_JOB_LEASE_SECS`
//! (default 30), `BG_PARALLELISM` (default 8), `BG_SHUTDOWN_GRACE_SECS`
//! (default 10), `DEMO_EMAIL_DELAY_MS` (default 50).

use std::process::ExitCode;
use std::time::Duration;

use bg_queue::durable::{migrate, Job, JobContext, Schema, WorkerBuilder};
use serde::{Deserialize, Serialize};

/// The demo's two jobs, as its webhook enqueues them.
#[derive(Serialize, Deserialize)]
struct SendReceiptEmail {
    to: String,
    amount_total: i64,
}

impl Job for SendReceiptEmail {
    const NAME: &'static str = "send_receipt_email";
}

#[derive(Serialize, Deserialize)]
struct SubscribeMailingList {
    email: String,
}

impl Job for SubscribeMailingList {
    const NAME: &'static str = "subscribe_mailing_list";
}

fn env_number(key: &str, default: u64) -> Result<u64, String> {
    match std::env::var(key) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{key}={value:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let settings = (|| {
        let url =
            std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_string())?;
        Ok::<_, String>((
            url,
            env_number("BG_JOB_LEASE_SECS", 30)?,
            env_number("BG_PARALLELISM", 8)?,
            env_number("BG_SHUTDOWN_GRACE_SECS", 10)?,
            env_number("DEMO_EMAIL_DELAY_MS", 50)?,
        ))
    })();
    let (url, lease, parallelism, grace, delay_ms) = match settings {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    // A short acquire timeout: while the database is down, each loop of
    // the worker fails fast and backs off instead of waiting 30 s.
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(parallelism as u32 + 4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("error: cannot connect to the database: {error}");
            return ExitCode::from(1);
        }
    };
    if let Err(error) = migrate(&pool, &Schema::default()).await {
        eprintln!("error: migrating the jobs table: {error}");
        return ExitCode::from(1);
    }
    let delay = Duration::from_millis(delay_ms);
    let worker = WorkerBuilder::new(pool)
        .parallelism(parallelism as usize)
        .lease(Duration::from_secs(lease))
        .register(move |job: SendReceiptEmail, cx: JobContext| async move {
            // Stands in for the SMTP call.
            tokio::time::sleep(delay).await;
            tracing::info!(to = %job.to, amount = job.amount_total, attempt = cx.attempt, "receipt sent");
            Ok::<(), String>(())
        })
        .and_then(|builder| {
            builder.register(move |job: SubscribeMailingList, _cx: JobContext| async move {
                tokio::time::sleep(delay).await;
                tracing::info!(email = %job.email, "subscribed");
                Ok::<(), String>(())
            })
        })
        .and_then(|builder| builder.start());
    let worker = match worker {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(worker = worker.id(), "durable worker started");
    shutdown_signal().await;
    let report = worker.shutdown(Duration::from_secs(grace)).await;
    tracing::info!(?report, "durable worker stopped");
    ExitCode::SUCCESS
}

/// SIGTERM (what orchestrators send) or ctrl-c.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
