//! The demo end to end: the built `webhook` example as a process, exporting
//! over OTLP to a real collector (`rotel`), which forwards to this test's
//! receiver. Checks what arrives there, `/debug/bg.json`, the load
//! generator's count and the shutdown report, over gRPC and HTTP/protobuf.

mod common;
#[path = "../examples/support/signature.rs"]
mod signature;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::otlp::{Receiver, WirePoint, WireSpan};
use common::process::{
    example, free_port, report_field, rotel_agent, start_demo, start_rotel, Proc,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SECRET: &str = "whsec_e2e_test_secret";

/// The demo's settings for these tests: a small pool, fast exports,
/// signatures checked, the debug page on `debug_port`.
fn demo_settings(endpoint: &str, protocol: &str, debug_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("DEBUG_LISTEN_ADDR", format!("127.0.0.1:{debug_port}")),
        ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
        ("BG_CAPACITY", "4".into()),
        ("BG_PARALLELISM", "1".into()),
        ("BG_SHUTDOWN_GRACE_SECS", "10".into()),
        ("DEMO_EMAIL_DELAY_MS", "100".into()),
        ("DEMO_FAILURE_RATE", "0".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        ("OTEL_SERVICE_NAME", "bg-demo-e2e".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

fn span<'a>(spans: &'a [WireSpan], name: &str) -> &'a WireSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.trace_id == TRACE_ID)
        .collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0]
}

/// The latest value of every series (metric + attributes), in arrival order.
fn latest(points: &[WirePoint]) -> BTreeMap<(String, BTreeMap<String, String>), WirePoint> {
    points
        .iter()
        .map(|p| ((p.metric.clone(), p.attributes.clone()), p.clone()))
        .collect()
}

fn sum_latest(points: &[WirePoint], metric: &str) -> f64 {
    latest(points)
        .values()
        .filter(|p| p.metric == metric && p.service == "bg-demo-e2e")
        .map(|p| p.value)
        .sum()
}

async fn json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn end_to_end(protocol: &str) {
    let agent = rotel_agent();
    if !common::require_tool("rotel", agent.is_some()) {
        return;
    }
    let receiver = Receiver::start().await;
    let (_rotel, rotel_grpc, rotel_http) = start_rotel(&agent.unwrap(), receiver.grpc);
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{rotel_grpc}"),
        _ => format!("http://127.0.0.1:{rotel_http}"),
    };
    let (port, debug_port) = (free_port(), free_port());
    let demo = start_demo(port, &demo_settings(&endpoint, protocol, debug_port));
    let base = format!("http://127.0.0.1:{port}");
    let debug_base = format!("http://127.0.0.1:{debug_port}");
    let client = reqwest::Client::new();

    // One webhook inside the caller's trace.
    let body = serde_json::json!({
        "id": "evt_traced", "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_traced", "customer_email": "a@example.com", "amount_total": 4200}}
    });
    let body = body.to_string();
    let response = client
        .post(format!("{base}/webhooks/stripe"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("content-type", "application/json")
        .header(
            signature::HEADER,
            signature::sign(&[SECRET], signature::unix_now(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["enqueued"].as_array().unwrap().len(), 2, "{answer}");

    let wanted = [
        "POST /webhooks/stripe",
        "bg send_receipt_email",
        "run send_receipt_email",
        "smtp.send",
        "bg subscribe_mailing_list",
        "run subscribe_mailing_list",
        "mailing_list.subscribe",
    ];
    let spans = receiver
        .wait_until("the traced webhook's spans", Duration::from_secs(30), |r| {
            let spans = r.spans();
            wanted
                .iter()
                .all(|name| {
                    spans
                        .iter()
                        .any(|s| s.name == *name && s.trace_id == TRACE_ID)
                })
                .then_some(spans)
        })
        .await;
    let server = span(&spans, "POST /webhooks/stripe");
    assert_eq!(server.parent_span_id, CALLER_SPAN);
    assert_eq!(server.service, "bg-demo-e2e");
    for task in ["send_receipt_email", "subscribe_mailing_list"] {
        let bg = span(&spans, &format!("bg {task}"));
        let run = span(&spans, &format!("run {task}"));
        assert_eq!(bg.parent_span_id, server.span_id, "{task}");
        assert_eq!(run.parent_span_id, bg.span_id, "{task}");
        assert_eq!(bg.attr("bg.task.outcome"), Some("ok"));
        assert_eq!(bg.attr("bg.task.name"), Some(task));
    }
    assert_eq!(
        span(&spans, "smtp.send").parent_span_id,
        span(&spans, "run send_receipt_email").span_id
    );

    // A burst the pool cannot hold: capacity 4, one runner, 100 ms tasks.
    let loadgen = Proc::spawn(
        "loadgen",
        Command::new(example("loadgen"))
            .env("STRIPE_WEBHOOK_SECRET", SECRET)
            .args(["--target", &base, "--rate", "2000", "--count", "30"]),
    );
    let (status, stdout) =
        tokio::task::spawn_blocking(move || loadgen.wait_exit(Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(status.success(), "loadgen: {stdout}");
    let tally: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(tally["sent"], 30);
    assert_eq!(tally["ok"], 30, "{tally}");
    let dropped = tally["dropped"].as_u64().unwrap();
    let enqueued = tally["enqueued"].as_u64().unwrap();
    assert_eq!(dropped + enqueued, 60);
    assert!(dropped > 0, "the burst should overflow the queue: {tally}");

    // Wait for the pool to drain (an external process: poll its page, woken
    // by each metric export in between).
    let mut page = json(&client, &format!("{debug_base}/debug/bg.json")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while page["pools"][0]["queued"] != 0 || page["pools"][0]["running"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool did not drain: {page}"
        );
        let seen = receiver.requests();
        receiver
            .wait_until("another export", Duration::from_secs(5), |r| {
                (r.requests() > seen).then_some(())
            })
            .await;
        page = json(&client, &format!("{debug_base}/debug/bg.json")).await;
    }
    let pool = &page["pools"][0];
    assert_eq!(pool["dropped"].as_u64().unwrap(), dropped, "{pool}");
    assert_eq!(pool["spawned"].as_u64().unwrap(), 2 + enqueued);
    assert_eq!(pool["completed"].as_u64().unwrap(), 2 + enqueued);

    // The exported counter agrees once a collection after the burst arrives.
    receiver
        .wait_until(
            "bg.task.dropped to reach the burst's drops",
            Duration::from_secs(30),
            |r| {
                let points = r.points();
                (sum_latest(&points, "bg.task.dropped") == dropped as f64
                    && sum_latest(&points, "bg.task.spawned") == (2 + enqueued) as f64)
                    .then_some(())
            },
        )
        .await;
    let points = receiver.points();
    let drop_point = points
        .iter()
        .rfind(|p| p.metric == "bg.task.dropped")
        .unwrap();
    assert_eq!(drop_point.attr("bg.drop.reason"), Some("queue_full"));
    assert_eq!(drop_point.attr("bg.pool.name"), Some("default"));
    assert_eq!(drop_point.unit, "{task}");
    let wait = points.iter().rfind(|p| p.metric == "bg.task.wait").unwrap();
    assert_eq!((wait.kind, wait.unit.as_str()), ("histogram", "s"));

    // SIGTERM: exit 0, and the report accounts for every task.
    let (status, stdout) =
        tokio::task::spawn_blocking(move || demo.terminate(Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(status.success(), "exit status {status}");
    let report = stdout
        .lines()
        .find(|l| l.contains("shut down"))
        .unwrap_or_else(|| panic!("no report in {stdout:?}"));
    let spawned = report_field(report, "spawned");
    assert_eq!(spawned, 2 + enqueued);
    assert_eq!(report_field(report, "dropped"), dropped);
    assert_eq!(
        report_field(report, "completed")
            + report_field(report, "failed")
            + report_field(report, "panicked")
            + report_field(report, "timed_out")
            + report_field(report, "abandoned")
            + report_field(report, "running"),
        spawned,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_over_grpc_through_a_collector() {
    end_to_end("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_over_http_protobuf_through_a_collector() {
    end_to_end("http/protobuf").await;
}
