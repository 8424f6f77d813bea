//! The bg-queue demo: a Stripe-style webhook that sends the receipt email and
//! the mailing-list subscription through a background pool, traced end to end.
//!
//! Run with
//!
//! ```sh
//! cargo run --example webhook
//! # then: open http://127.0.0.1:3000/debug/bg
//! curl -s localhost:3000/webhooks/stripe -H 'content-type: application/json' \
//!   -d '{"id":"evt_1","type":"checkout.session.completed","data":{"object":{"id":"cs_1","customer_email":"a@example.com","amount_total":4200,"currency":"eur"}}}'
//! ```
//!
//! Settings (environment): `LISTEN_ADDR`, `BG_CAPACITY`, `BG_PARALLELISM`,
//! `BG_SHUTDOWN_GRACE_SECS`, `DEMO_EMAIL_DELAY_MS`, `DEMO_FAILURE_RATE`,
//! `JAEGER_UI_URL`, and the standard `OTEL_*` variables. It runs with no
//! collector at all: export errors are logged at most every 5 s per exporter.

#[path = "support/demo.rs"]
mod demo;
#[path = "support/telemetry.rs"]
mod telemetry;

use std::process::ExitCode;

use demo::{AppState, Config};
use telemetry::Providers;

#[tokio::main]
async fn main() -> ExitCode {
    // Bad settings fail here, in one line, before anything binds.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    // Checked even when the SDK is disabled: a typo should not wait until
    // the day export is turned on.
    let protocol = match telemetry::protocol_from_env() {
        Ok(protocol) => protocol,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let providers = if telemetry::sdk_disabled() {
        Providers::default()
    } else {
        match Providers::otlp(protocol, "bg-queue-demo") {
            Ok(providers) => providers,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        }
    };
    providers.install();

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
    let state = AppState {
        bg: bg.clone(),
        email_delay: config.email_delay,
        failure_rate: config.failure_rate,
    };
    let app = demo::router(state, &config.jaeger_ui_url);
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "error: LISTEN_ADDR: cannot listen on {}: {error}",
                config.listen
            );
            return ExitCode::from(1);
        }
    };
    let address = listener.local_addr().map_or(config.listen, |a| a);
    tracing::info!(
        %address,
        capacity = config.capacity,
        parallelism = config.parallelism,
        telemetry = if telemetry::sdk_disabled() { "disabled" } else { "otlp" },
        "bg-queue demo listening; open http://{address}/debug/bg"
    );

    // Stop accepting on SIGTERM or ctrl-c; in-flight requests finish.
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        tracing::error!(%error, "server error");
    }
    // Then drain the pool within the grace period (the report logs itself)
    // and flush telemetry, so the last spans and the final counts leave.
    let report = bg.shutdown(config.shutdown_grace).await;
    println!("{report}");
    if let Err(error) = providers.shutdown().await {
        eprintln!("telemetry shutdown: {error}");
    }
    ExitCode::SUCCESS
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
