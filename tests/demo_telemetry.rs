//! The demo's telemetry wiring, against the built `webhook` example and an
//! in-process OTLP receiver: the OpenTelemetry layer's own filter, the
//! per-signal throttle on export failures, plain (uncoloured) logs into a
//! pipe, and `OTEL_SDK_DISABLED`.

mod common;

use std::time::Duration;

use common::otlp::Receiver;
use common::process::{free_port, start_demo, Proc};

async fn post_webhook(client: &reqwest::Client, port: u16, id: u64) -> u16 {
    let body = serde_json::json!({
        "id": format!("evt_tel_{id}"), "type": "checkout.session.completed",
        "data": {"object": {"id": format!("cs_tel_{id}"), "customer_email": "a@example.com"}}
    });
    client
        .post(format!("http://127.0.0.1:{port}/webhooks/stripe"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn settings(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("DEMO_EMAIL_DELAY_MS", "0".to_owned()),
        ("DEMO_FAILURE_RATE", "0".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_warn_quiets_the_log_but_not_the_bg_spans() {
    let receiver = Receiver::start().await;
    let port = free_port();
    let mut settings = settings(&format!("http://{}", receiver.grpc));
    // The demo's own target stays at info for the "listening" line.
    settings.push(("RUST_LOG", "warn,webhook=info".to_owned()));
    let demo = start_demo(port, &settings);
    let client = reqwest::Client::new();
    assert_eq!(post_webhook(&client, port, 1).await, 200);
    let spans = receiver
        .wait_until("the webhook's bg spans", Duration::from_secs(20), |r| {
            let spans = r.spans();
            ["bg send_receipt_email", "run subscribe_mailing_list"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
                .then_some(spans)
        })
        .await;
    // Only the service's own spans: none from the exporter's crates.
    let ours = |name: &str| {
        name == "POST /webhooks/stripe"
            || name.starts_with("bg ")
            || name.starts_with("run ")
            || name == "smtp.send"
            || name == "mailing_list.subscribe"
    };
    let foreign: Vec<_> = spans.iter().filter(|s| !ours(&s.name)).collect();
    assert!(
        foreign.is_empty(),
        "spans not from the service: {foreign:?}"
    );
    // ... while the log kept to warnings (bg_queue and tower_http are INFO).
    let info: Vec<_> = demo
        .stderr()
        .into_iter()
        .filter(|l| l.contains(" INFO ") && !l.contains(" webhook:"))
        .collect();
    assert!(info.is_empty(), "INFO lines under RUST_LOG=warn: {info:?}");
}

/// Seconds since midnight of a fmt line's leading RFC 3339 timestamp.
fn seconds_of_day(line: &str) -> f64 {
    let time = line.split('T').nth(1).unwrap().split('Z').next().unwrap();
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

fn export_lines(demo: &Proc, signal: &str) -> Vec<String> {
    demo.stderr()
        .into_iter()
        .filter(|l| l.contains("otel_export") && l.contains(&format!("signal=\"{signal}\"")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_failures_are_logged_once_per_signal_per_interval_in_plain_text() {
    // Nothing listens on the collector's port.
    let closed = free_port();
    let port = free_port();
    let demo = start_demo(port, &settings(&format!("http://127.0.0.1:{closed}")));
    let client = reqwest::Client::new();
    // Keep spans coming (load, paced by the timer) until each signal has
    // logged twice: the second line comes one throttle interval later.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut id = 0;
    while export_lines(&demo, "traces").len() < 2 || export_lines(&demo, "metrics").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than two export lines per signal in 20 s:\n{}",
            demo.stderr().join("\n")
        );
        pace.tick().await;
        id += 1;
        assert_eq!(post_webhook(&client, port, id).await, 200);
    }
    for signal in ["traces", "metrics"] {
        let lines = export_lines(&demo, signal);
        for pair in lines.windows(2) {
            let mut gap = seconds_of_day(&pair[1]) - seconds_of_day(&pair[0]);
            if gap < 0.0 {
                gap += 86_400.0;
            }
            assert!(gap >= 4.9, "{signal}: lines {gap:.2} s apart: {pair:?}");
        }
        assert!(
            lines.iter().skip(1).any(|l| !l.contains("suppressed=0")),
            "{signal}: no line reports held-back failures: {lines:?}"
        );
    }
    let stderr = demo.stderr();
    // Every exporter warning went through the throttle.
    let raw: Vec<_> = stderr
        .iter()
        .filter(|l| l.contains("opentelemetry") && !l.contains("otel_export"))
        .collect();
    assert!(raw.is_empty(), "unthrottled exporter lines: {raw:?}");
    // stderr is a pipe here: no colour codes.
    assert!(
        stderr.iter().all(|l| !l.contains('\u{1b}')),
        "ANSI escapes in piped output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_exports_nothing_and_still_logs() {
    let receiver = Receiver::start().await;
    let port = free_port();
    let mut settings = settings(&format!("http://{}", receiver.grpc));
    settings.push(("OTEL_SDK_DISABLED", "true".to_owned()));
    let demo = start_demo(port, &settings);
    let client = reqwest::Client::new();
    assert_eq!(post_webhook(&client, port, 1).await, 200);
    // Shutdown flushes whatever providers exist; with none, nothing leaves.
    let (status, stdout) = tokio::task::spawn_blocking(move || {
        let stderr_had_listening = demo.stderr().iter().any(|l| l.contains("listening"));
        assert!(stderr_had_listening);
        demo.terminate(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(status.success());
    assert!(stdout.contains("spawned=2"), "{stdout}");
    assert_eq!(receiver.requests(), 0, "something was exported");
}
