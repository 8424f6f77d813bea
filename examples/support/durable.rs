//! The demo's durable jobs (feature `postgres`): the two job types, the
//! demo's own table, and the worker serving them. Shared by the webhook's
//! durable mode and the worker-only `durable_worker` example, so both read
//! the same arguments.
#![allow(dead_code)]

use std::time::Duration;

use bg_queue::durable::{migrate, Job, JobContext, Schema, WorkerBuilder, WorkerHandle};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::Instrument as _;

/// The receipt email of a checkout.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendReceiptEmail {
    pub to: String,
    #[serde(default)]
    pub session: String,
    pub amount_total: i64,
    #[serde(default)]
    pub currency: String,
}

impl Job for SendReceiptEmail {
    const NAME: &'static str = "send_receipt_email";
}

/// The mailing-list subscription of a checkout.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubscribeMailingList {
    pub email: String,
}

impl Job for SubscribeMailingList {
    const NAME: &'static str = "subscribe_mailing_list";
}

/// The demo's own table of received events: its primary key is what makes
/// a redelivered event a no-op. Idempotent; run at every start.
pub const STRIPE_EVENTS_DDL: &str = "CREATE TABLE IF NOT EXISTS stripe_events (
    id text PRIMARY KEY,
    type text NOT NULL,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)";

/// Durable settings from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    /// `BG_JOB_LEASE_SECS` (default 30).
    pub lease: Duration,
    /// `BG_PARALLELISM` (default 8): handlers at once.
    pub parallelism: usize,
}

impl Settings {
    /// `None` when `DATABASE_URL` is unset or empty (in-memory mode).
    ///
    /// # Errors
    ///
    /// A one-line message naming the variable and its value.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let number = |key: &str, default: u64, max: u64| match std::env::var(key) {
            Ok(raw) => match raw.trim().parse::<u64>() {
                Ok(value) if (1..=max).contains(&value) => Ok(value),
                _ => Err(format!(
                    "{key}: expected a whole number from 1 to {max}, got {raw:?}"
                )),
            },
            Err(_) => Ok(default),
        };
        Ok(Some(Settings {
            url,
            lease: Duration::from_secs(number("BG_JOB_LEASE_SECS", 30, 86_400)?),
            parallelism: number("BG_PARALLELISM", 8, 1024)? as usize,
        }))
    }
}

/// A pool for the worker and the webhook, migrated: `bg_jobs` and
/// `stripe_events`. Acquiring waits at most 3 s, so a request answers 503
/// well within the request timeout while the database is down, and the
/// worker's loops back off instead of hanging.
///
/// # Errors
///
/// A one-line message when the database cannot be reached or migrated.
pub async fn connect(settings: &Settings) -> Result<PgPool, String> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(settings.parallelism as u32 + 16)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&settings.url)
        .await
        .map_err(|e| format!("cannot connect to the database (DATABASE_URL): {e}"))?;
    migrate(&pool, &Schema::default())
        .await
        .map_err(|e| format!("migrating the jobs table: {e}"))?;
    sqlx::query(STRIPE_EVENTS_DDL)
        .execute(&pool)
        .await
        .map_err(|e| format!("creating stripe_events: {e}"))?;
    Ok(pool)
}

/// The simulated outbound work: latency `delay`, failing at `failure_rate`.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    pub delay: Duration,
    pub failure_rate: f64,
}

impl Work {
    fn fails(self) -> bool {
        self.failure_rate > 0.0 && random_fraction() < self.failure_rate
    }
}

fn random_fraction() -> f64 {
    use rand::Rng as _;
    rand::rng().random::<f64>()
}

/// Starts a worker on the `default` queue with both handlers, on the
/// global meter and tracer (install the telemetry first).
///
/// # Errors
///
/// A one-line message for an invalid option.
pub fn start_worker(pool: PgPool, settings: &Settings, work: Work) -> Result<WorkerHandle, String> {
    WorkerBuilder::new(pool)
        .parallelism(settings.parallelism)
        .lease(settings.lease)
        .register(move |job: SendReceiptEmail, cx: JobContext| {
            let span = tracing::info_span!(
                "smtp.send",
                otel.kind = "client",
                email.session = %job.session,
                email.amount = job.amount_total,
                email.currency = %job.currency,
                email.to_domain = job.to.rsplit('@').next().unwrap_or(""),
                bg.task.attempt = cx.attempt,
            );
            async move {
                tokio::time::sleep(work.delay).await;
                if work.fails() {
                    return Err("smtp: 451 temporary local problem");
                }
                Ok(())
            }
            .instrument(span)
        })
        .and_then(|builder| {
            builder.register(move |job: SubscribeMailingList, _cx: JobContext| {
                let span = tracing::info_span!(
                    "mailing_list.subscribe",
                    otel.kind = "client",
                    list.email_domain = job.email.rsplit('@').next().unwrap_or(""),
                );
                async move {
                    tokio::time::sleep(work.delay / 2).await;
                    if work.fails() {
                        return Err("mailing list API answered 503");
                    }
                    Ok(())
                }
                .instrument(span)
            })
        })
        .and_then(|builder| builder.start())
        .map_err(|e| format!("starting the durable worker: {e}"))
}
