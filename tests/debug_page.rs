//! `/debug/bg` and `/debug/bg.json` through the router (`oneshot`, no
//! server): keys and exact values, escaping, methods, headers.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use bg_queue::{BackgroundTx, Builder, DebugPage};
use http_body_util::BodyExt as _;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

async fn get(
    app: axum::Router,
    method: Method,
    path: &str,
) -> (StatusCode, header::HeaderMap, String) {
    let response = app
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// Pool `mail` (capacity 4, parallelism 1): 1 running blocker, 4 queued
/// emails, 1 email dropped, 1 failed and 1 completed subscription.
async fn known_pool() -> (BackgroundTx, Arc<Semaphore>) {
    let bg = Builder::new("mail")
        .capacity(4)
        .parallelism(1)
        .build()
        .unwrap();
    bg.spawn_fallible("subscribe", async { Err::<(), _>("503") });
    bg.spawn("subscribe", async {});
    bg.idle().await;
    let gate = common::occupy(&bg, "blocker", 1).await;
    // Four fill the queue; the fifth is dropped.
    for _ in 0..5 {
        bg.spawn("send_email", async {});
    }
    (bg, gate)
}

#[tokio::test]
async fn json_has_the_contract_keys_and_exact_values() {
    let (bg, gate) = known_pool().await;
    let app = DebugPage::new().pool(bg.clone()).router();
    let (status, headers, body) = get(app, Method::GET, "/debug/bg.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pool = &json["pools"][0];
    for key in [
        "name",
        "capacity",
        "parallelism",
        "queued",
        "running",
        "oldest_queued_seconds",
        "spawned",
        "completed",
        "failed",
        "dropped",
        "panicked",
        "timed_out",
        "tasks",
        "recent_drops",
        "recent_failures",
        "slowest",
    ] {
        assert!(pool.get(key).is_some(), "missing pool key {key}");
    }
    let failure = &pool["recent_failures"][0];
    assert_eq!(failure["task"], "subscribe");
    assert_eq!(failure["outcome"], "failed");
    assert_eq!(failure["error"], "503");
    for key in ["at", "trace_id"] {
        assert!(failure.get(key).is_some(), "missing failure key {key}");
    }
    assert_eq!(pool["name"], "mail");
    assert_eq!(
        (pool["capacity"].as_u64(), pool["parallelism"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(
        (pool["queued"].as_u64(), pool["running"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(pool["spawned"], 7);
    assert_eq!(pool["completed"], 1);
    assert_eq!(pool["failed"], 1);
    assert_eq!(pool["dropped"], 1);
    assert_eq!(
        (pool["panicked"].as_u64(), pool["timed_out"].as_u64()),
        (Some(0), Some(0))
    );
    let tasks = pool["tasks"].as_array().unwrap();
    let email = tasks.iter().find(|t| t["name"] == "send_email").unwrap();
    for key in [
        "name",
        "queued",
        "running",
        "spawned",
        "completed",
        "failed",
        "dropped",
        "panicked",
        "timed_out",
        "wait_ms",
        "run_ms",
    ] {
        assert!(email.get(key).is_some(), "missing task key {key}");
    }
    for key in ["p50", "p99", "max"] {
        assert!(email["wait_ms"].get(key).is_some() && email["run_ms"].get(key).is_some());
    }
    assert_eq!(
        (
            email["queued"].as_u64(),
            email["spawned"].as_u64(),
            email["dropped"].as_u64()
        ),
        (Some(4), Some(4), Some(1))
    );
    let subscribe = tasks.iter().find(|t| t["name"] == "subscribe").unwrap();
    assert_eq!(
        (
            subscribe["completed"].as_u64(),
            subscribe["failed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert!(subscribe["run_ms"]["p50"].is_number());
    let drop = &pool["recent_drops"][0];
    for key in ["at", "task", "reason", "trace_id"] {
        assert!(drop.get(key).is_some(), "missing drop key {key}");
    }
    assert_eq!(
        (drop["task"].as_str(), drop["reason"].as_str()),
        (Some("send_email"), Some("queue_full"))
    );
    let slow = &pool["slowest"][0];
    for key in ["at", "task", "wait_ms", "run_ms", "trace_id"] {
        assert!(slow.get(key).is_some(), "missing slowest key {key}");
    }
    gate.add_permits(1);
    bg.idle().await;
}

#[tokio::test]
async fn html_shows_depth_tasks_and_links_traces_to_jaeger() {
    let (bg, gate) = known_pool().await;
    let app = DebugPage::new()
        .pool(bg.clone())
        .jaeger_ui_url("http://jaeger.internal:16686/")
        .router();
    let (status, headers, html) = get(app, Method::GET, "/debug/bg").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(html.contains("queued 4 / 4"), "depth bar");
    assert!(html.contains("running 1 / 1"), "running bar");
    assert!(html.contains("<svg"), "depth chart");
    assert!(html.contains("send_email") && html.contains("queue_full"));
    assert!(
        html.contains("class=\"pool hot\""),
        "a full queue with drops stands out"
    );
    assert!(
        !html.contains("<script src") && !html.contains("<link"),
        "no external assets"
    );
    gate.add_permits(1);
    bg.idle().await;
}

#[tokio::test]
async fn drops_link_to_their_trace_in_jaeger() {
    use tracing::Instrument as _;
    let tracing = common::Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = Builder::new("mail")
        .capacity(1)
        .tracer(tracing.tracer())
        .build()
        .unwrap();
    async {
        bg.spawn("send_email", async {});
        bg.spawn("send_email", async {});
    }
    .instrument(tracing::info_span!("webhook"))
    .await;
    let trace_id = format!("{:032x}", tracing.span("webhook").span_context.trace_id());
    let app = DebugPage::new()
        .pool(bg.clone())
        .jaeger_ui_url("http://jaeger.internal:16686/")
        .router();
    let (_, _, html) = get(app, Method::GET, "/debug/bg").await;
    assert!(
        html.contains(&format!(
            "href=\"http://jaeger.internal:16686/trace/{trace_id}\""
        )),
        "no link to {trace_id}"
    );
    bg.idle().await;
}

#[tokio::test]
async fn hostile_names_are_escaped_in_html_and_valid_in_json() {
    let bg = Builder::new("<script>alert('pool')</script>\"")
        .build()
        .unwrap();
    bg.spawn("<img src=x onerror=\"alert(1)\">", async {});
    bg.idle().await;
    let app = DebugPage::new().pool(bg.clone()).router();
    let (_, _, html) = get(app.clone(), Method::GET, "/debug/bg").await;
    assert!(!html.contains("<script>alert"), "pool name not escaped");
    assert!(!html.contains("<img src=x"), "task name not escaped");
    assert!(html.contains("&lt;script&gt;alert('pool')&lt;/script&gt;&quot;"));
    assert!(html.contains("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"));
    let (_, _, json) = get(app, Method::GET, "/debug/bg.json").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["pools"][0]["name"], "<script>alert('pool')</script>\"");
    assert_eq!(
        json["pools"][0]["tasks"][0]["name"],
        "<img src=x onerror=\"alert(1)\">"
    );
}

#[tokio::test]
async fn only_get_and_head_are_allowed() {
    let bg = Builder::new("m").build().unwrap();
    let app = bg_queue::debug_router([bg]);
    for path in ["/debug/bg", "/debug/bg.json"] {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let (status, headers, _) = get(app.clone(), method.clone(), path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let allow = headers[header::ALLOW].to_str().unwrap();
            assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
        }
        let (status, headers, body) = get(app.clone(), Method::HEAD, path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert!(body.is_empty());
    }
}

#[tokio::test]
async fn response_size_is_bounded_under_heavy_drops() {
    // With a subscriber every drop is recorded in full (the ring's worst
    // case; without one, repeated drops in one clock tick are only counted).
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let bg = Builder::new("flood")
        .capacity(1)
        .parallelism(1)
        .build()
        .unwrap();
    for _ in 0..20_000 {
        bg.spawn("flood", async {});
    }
    let app = DebugPage::new().pool(bg.clone()).router();
    let (_, _, json) = get(app.clone(), Method::GET, "/debug/bg.json").await;
    let (_, _, html) = get(app, Method::GET, "/debug/bg").await;
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["pools"][0]["dropped"], 19_999);
    assert_eq!(
        parsed["pools"][0]["recent_drops"].as_array().unwrap().len(),
        20
    );
    assert!(json.len() < 16 * 1024, "json is {} bytes", json.len());
    assert!(html.len() < 64 * 1024, "html is {} bytes", html.len());
    // The 20 recent drops: 5 in view, 15 behind a fold the reader can open.
    let drops =
        &html[html.find("Recent drops").unwrap()..html.find("Slowest recent runs").unwrap()];
    let (shown, folded) = drops.split_at(drops.find("<details").expect("a fold"));
    assert_eq!(shown.matches("<tr class=\"bad\">").count(), 5, "{shown}");
    assert!(
        folded.starts_with("<details id=\"drops-flood\">"),
        "{folded}"
    );
    assert!(folded.contains("<summary>15 more</summary>"), "{folded}");
    assert_eq!(folded.matches("<tr class=\"bad\">").count(), 15, "{folded}");
    bg.idle().await;
}

/// The chart plots each second's highest depth; its caption's "now" is the
/// live depth, the figure the bar above it shows. (On a paused clock the
/// burst below, queued then run, all falls in one second.)
#[tokio::test(start_paused = true)]
async fn the_chart_caption_gives_the_live_depth_not_the_seconds_peak() {
    let bg = Builder::new("burst").parallelism(1).build().unwrap();
    let gate = common::occupy(&bg, "blocker", 1).await;
    for _ in 0..5 {
        bg.spawn("email", async {});
    }
    gate.add_permits(1);
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.queued, 0);
    assert_eq!(snapshot.depth_history.last(), Some(&5), "the second's peak");
    let app = DebugPage::new().pool(bg.clone()).router();
    let (_, _, html) = get(app, Method::GET, "/debug/bg").await;
    assert!(html.contains("queued 0 / 1024"), "depth bar");
    assert!(html.contains("(now 0, peak 5"), "chart caption");
    assert!(html.contains("now 0, peak 5\""), "chart label");
}

/// The application's state type, for the merge-order test.
#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

async fn hello(axum::extract::State(state): axum::extract::State<AppState>) -> &'static str {
    state.greeting
}

/// `router()` is a `Router<S>` for any state: it merges into an app before
/// its `with_state` (axum's usual order) as well as after.
#[tokio::test]
async fn the_router_merges_before_or_after_with_state() {
    let (bg, gate) = known_pool().await;
    let state = AppState { greeting: "hi" };
    let before: axum::Router = axum::Router::new()
        .route("/hello", axum::routing::get(hello))
        .merge(DebugPage::new().pool(bg.clone()).router())
        .with_state(state.clone());
    let after: axum::Router = axum::Router::new()
        .route("/hello", axum::routing::get(hello))
        .with_state(state)
        .merge(bg_queue::debug_router([bg.clone()]));
    for app in [before, after] {
        let (status, _, body) = get(app.clone(), Method::GET, "/hello").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hi"));
        let (status, _, body) = get(app, Method::GET, "/debug/bg.json").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"name\":\"mail\""), "{body}");
    }
    gate.add_permits(1);
}
