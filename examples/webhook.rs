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

#[path = "support/demo.rs"]
mod demo;
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
    // Then drain the pool within the grace period (the report logs itself)
    // and flush telemetry, so the last spans and the final counts leave.
    let report = bg.shutdown(config.shutdown_grace).await;
    println!("{report}");
    if let Err(error) = telemetry.shutdown().await {
        eprintln!("telemetry shutdown: {error}");
    }
    ExitCode::SUCCESS
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
