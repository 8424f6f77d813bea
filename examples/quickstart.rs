//! The README's quick start, built by CI so that it keeps compiling (a test
//! checks the README shows this code verbatim).
//!
//! Run with
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_SERVICE_NAME=my-app \
//!   cargo run --example quickstart
//! ```

// --- README quick start begins ---
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // OTLP traces + metrics from the OTEL_* variables; a global subscriber.
    let _guard = init_tracing_opentelemetry::TracingConfig::default().init_subscriber()?;
    let bg = bg_queue::spawn_pool(); // after the providers: capacity 1024, parallelism 8

    let checkout = tracing::info_span!("checkout");
    checkout.in_scope(|| {
        bg.spawn("send_receipt_email", async {
            tracing::info!("receipt sent")
        });
    });

    let report = bg.shutdown(std::time::Duration::from_secs(5)).await;
    println!("{report}"); // every task accounted for; dropping _guard flushes exports
    Ok(())
}
// --- README quick start ends ---
