//! The bg-queue demo: a Stripe-style webhook that sends the receipt email and
//! the mailing-list subscription through a background pool, traced end to end.
//!
//! Run with
//!
//! ```sh
//! STRIPE_WEBHOOK_SECRET=whsec_local_demo cargo run --example webhook
//! # then: open http://127.0.0.1:3001/debug/bg (the debug listener)
//! STRIPE_WEBHOOK_SECRET=whsec_local_demo cargo run --example loadgen -- --count 10
//! ```
//!
//! Settings (environment): `LISTEN_ADDR`, `DEBUG_LISTEN_ADDR`,
//! `STRIPE_WEBHOOK_SECRET`, `WEBHOOK_CONCURRENCY`, `BG_CAPACITY`,
//! `BG_PARALLELISM`, `BG_SHUTDOWN_GRACE_SECS`, `DEMO_EMAIL_DELAY_MS`,
//! `DEMO_FAILURE_RATE`, `JAEGER_UI_URL`, and the standard `OTEL_*` variables.
//! It runs with no collector at all: export errors are logged at most every
//! 5 s per signal. docs/security.md says what each listener exposes.
//!
//! Durable mode (feature `postgres`): with `DATABASE_URL` set, each event is
//! recorded in `stripe_events` and its two jobs enqueued in `bg_jobs` in one
//! transaction, unique per event id; the answer is 200 after the commit, 503
//! with `Retry-After` while the database is unavailable, and a redelivered
//! event answers 200 and enqueues nothing. A worker in the same process runs
//! the jobs (`BG_JOB_LEASE_SECS`, default 30; `BG_PARALLELISM`);
//! `DEMO_WORKER_ONLY=1` runs the worker alone, without listeners.
//!
//! ```sh
//! ./scripts/pg start /tmp/pg   # prints a DATABASE_URL
//! DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres \
//!   cargo run --features postgres --example webhook
//! ```

#[path = "support/demo.rs"]
mod demo;
#[cfg(feature = "postgres")]
#[path = "support/durable.rs"]
mod durable;
#[path = "support/server.rs"]
mod server;
#[path = "support/signature.rs"]
mod signature;
#[path = "support/telemetry.rs"]
mod telemetry;
#[path = "support/throttle.rs"]
mod throttle;

use std::process::ExitCode;

use demo::{AppState, Config};

fn main() -> ExitCode {
    // Bad settings fail here, in one line, before anything binds; the
    // telemetry check also sets defaults, so it runs before any thread.
    let config = match Config::from_env().and_then(|c| telemetry::check_env().map(|()| c)) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let telemetry = match telemetry::Telemetry::init("bg-queue-demo") {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    // Built after the providers are installed: the pool binds the global
    // meter and tracer now.
    let bg = match bg_queue::Builder::new("default")
        .capacity(config.capacity)
        .parallelism(config.parallelism)
        .build()
    {
        Ok(bg) => bg,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if config.webhook_secret.is_none() {
        tracing::warn!("STRIPE_WEBHOOK_SECRET is not set: webhook signatures are NOT verified (local use only)");
    }
    let state = AppState::new(bg.clone(), &config);
    let (state, worker) = match durable_mode(state, &config).await {
        Ok(durable) => durable,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    if std::env::var("DEMO_WORKER_ONLY").as_deref() == Ok("1") {
        let Some(worker) = worker else {
            eprintln!("error: DEMO_WORKER_ONLY=1 needs DATABASE_URL (the durable mode)");
            return ExitCode::from(2);
        };
        tracing::info!("bg-queue demo: durable worker only, no listeners");
        shutdown_signal().await;
        finish(bg, Some(worker), telemetry, &config).await;
        return ExitCode::SUCCESS;
    }
    let Some(public) = bind("LISTEN_ADDR", config.listen).await else {
        return ExitCode::from(1);
    };
    let Some(debug) = bind("DEBUG_LISTEN_ADDR", config.debug_listen).await else {
        return ExitCode::from(1);
    };
    let address = public.local_addr().unwrap_or(config.listen);
    let debug_address = debug.local_addr().unwrap_or(config.debug_listen);
    tracing::info!(
        %address,
        %debug_address,
        capacity = config.capacity,
        parallelism = config.parallelism,
        signatures = if config.webhook_secret.is_some() { "verified" } else { "NOT verified" },
        "bg-queue demo listening on http://{address}; debug page on http://{debug_address}/debug/bg"
    );

    // Stop accepting on SIGTERM or ctrl-c; in-flight requests finish.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::join!(
        server::serve(public, demo::public_router(state.clone()), stop_rx.clone()),
        server::serve(
            debug,
            demo::debug_router(&state, &config.jaeger_ui_url),
            stop_rx
        ),
        async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        },
    );
    finish(bg, worker, telemetry, &config).await;
    ExitCode::SUCCESS
}

/// The durable worker, when there is one.
#[cfg(feature = "postgres")]
type Worker = bg_queue::durable::WorkerHandle;
#[cfg(not(feature = "postgres"))]
type Worker = std::convert::Infallible;

/// After the listeners stopped: the durable worker returns its unfinished
/// jobs to `available` (another process or the next start runs them), the
/// in-memory pool drains within the grace period (the report logs itself),
/// then telemetry flushes, so the last spans and the final counts leave.
async fn finish(
    bg: bg_queue::BackgroundTx,
    worker: Option<Worker>,
    telemetry: telemetry::Telemetry,
    config: &Config,
) {
    #[cfg(feature = "postgres")]
    if let Some(worker) = worker {
        let report = worker.shutdown(config.shutdown_grace).await;
        tracing::info!(?report, "durable worker stopped");
    }
    #[cfg(not(feature = "postgres"))]
    let _ = worker;
    let report = bg.shutdown(config.shutdown_grace).await;
    println!("{report}");
    if let Err(error) = telemetry.shutdown().await {
        eprintln!("telemetry shutdown: {error}");
    }
}

/// With `DATABASE_URL`: connects, migrates, starts the worker and routes
/// webhooks to the durable store. Without it, `state` unchanged.
#[cfg(feature = "postgres")]
async fn durable_mode(
    state: AppState,
    config: &Config,
) -> Result<(AppState, Option<Worker>), String> {
    let Some(settings) = durable::Settings::from_env()? else {
        return Ok((state, None));
    };
    let pool = durable::connect(&settings).await?;
    let work = durable::Work {
        delay: config.email_delay,
        failure_rate: config.failure_rate,
    };
    let worker = durable::start_worker(pool.clone(), &settings, work)?;
    tracing::info!(
        worker = worker.id(),
        parallelism = settings.parallelism,
        lease_secs = settings.lease.as_secs(),
        "durable mode: events in stripe_events, jobs in bg_jobs"
    );
    let store = Store {
        pool,
        client: bg_queue::durable::Client::new(bg_queue::durable::Schema::default()),
    };
    Ok((state.with_durable(std::sync::Arc::new(store)), Some(worker)))
}

/// Without the `postgres` feature there is no durable mode: refuse
/// `DATABASE_URL` rather than silently run in memory.
#[cfg(not(feature = "postgres"))]
async fn durable_mode(
    state: AppState,
    _config: &Config,
) -> Result<(AppState, Option<Worker>), String> {
    if std::env::var("DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        return Err("DATABASE_URL is set but this build has no durable mode: \
                    cargo run --features postgres --example webhook"
            .to_owned());
    }
    Ok((state, None))
}

/// Records events in `stripe_events` and enqueues their jobs, in one
/// transaction.
#[cfg(feature = "postgres")]
#[derive(Debug)]
struct Store {
    pool: sqlx::PgPool,
    client: bg_queue::durable::Client,
}

#[cfg(feature = "postgres")]
impl Store {
    async fn record_event(&self, event: demo::CheckoutEvent) -> Result<demo::Recorded, String> {
        use bg_queue::durable::{EnqueueBatch, EnqueueOptions};
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        // The primary key decides: a redelivery (even a concurrent one,
        // which waits for the first to commit) inserts nothing.
        let inserted = sqlx::query(
            "INSERT INTO stripe_events (id, type, payload) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&event.event_id)
        .bind(&event.event_type)
        .bind(&event.payload)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?
        .rows_affected();
        if inserted == 0 {
            return Ok(demo::Recorded::Duplicate);
        }
        let unique =
            |task: &str| EnqueueOptions::new().unique_key(format!("{}:{task}", event.event_id));
        let mut batch = EnqueueBatch::new();
        let receipt = durable::SendReceiptEmail {
            to: event.email.clone(),
            session: event.session.clone(),
            amount_total: event.amount_total,
            currency: event.currency.clone(),
        };
        let subscribe = durable::SubscribeMailingList { email: event.email };
        batch
            .push(&receipt, unique("send_receipt_email"))
            .and_then(|batch| batch.push(&subscribe, unique("subscribe_mailing_list")))
            .map_err(|e| e.to_string())?;
        self.client
            .enqueue_batch(&mut *tx, batch)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(demo::Recorded::New {
            enqueued: vec!["send_receipt_email", "subscribe_mailing_list"],
        })
    }
}

#[cfg(feature = "postgres")]
impl demo::DurableSink for Store {
    fn record(
        &self,
        event: demo::CheckoutEvent,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<demo::Recorded, String>> + Send + '_>,
    > {
        Box::pin(self.record_event(event))
    }

    fn show_on(&self, page: bg_queue::DebugPage) -> bg_queue::DebugPage {
        page.durable(self.pool.clone(), bg_queue::durable::Schema::default())
    }
}

/// Binds `address`, or says in one line why not.
async fn bind(name: &str, address: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| eprintln!("error: {name}: cannot listen on {address}: {error}"))
        .ok()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received: no longer accepting requests");
}
