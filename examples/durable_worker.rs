//! A worker-only process for durable jobs: serves the `default` queue of
//! the jobs table until SIGTERM or ctrl-c, then shuts down gracefully
//! (unfinished jobs go back to `available` at once). The same handlers as
//! the webhook demo's durable mode (`support/durable.rs`), which also has
//! a worker-only mode with its telemetry: `DEMO_WORKER_ONLY=1`.
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

#[path = "support/durable.rs"]
mod durable;

use std::process::ExitCode;
use std::time::Duration;

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
        let settings =
            durable::Settings::from_env()?.ok_or_else(|| "DATABASE_URL is not set".to_string())?;
        Ok::<_, String>((
            settings,
            env_number("BG_SHUTDOWN_GRACE_SECS", 10)?,
            env_number("DEMO_EMAIL_DELAY_MS", 50)?,
        ))
    })();
    let (settings, grace, delay_ms) = match settings {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let pool = match durable::connect(&settings).await {
        Ok(pool) => pool,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    let work = durable::Work {
        delay: Duration::from_millis(delay_ms),
        failure_rate: 0.0,
    };
    let worker = match durable::start_worker(pool, &settings, work) {
        Ok(worker) => worker,
        Err(message) => {
            eprintln!("error: {message}");
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
