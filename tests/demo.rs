//! The demo's router without a server (`oneshot`), its configuration, and a
//! property test over hostile webhook bodies.

mod common;
#[path = "../examples/support/demo.rs"]
mod demo;
#[path = "../examples/support/signature.rs"]
mod signature;
#[path = "../examples/support/throttle.rs"]
mod throttle;

use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use demo::{AppState, Config};
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use tower::ServiceExt as _;

/// Unsigned webhooks accepted (no secret), no delay, no failures.
fn state(capacity: usize) -> AppState {
    let config = Config::from_lookup(|name| match name {
        "DEMO_EMAIL_DELAY_MS" | "DEMO_FAILURE_RATE" => Some("0".to_owned()),
        _ => None,
    })
    .unwrap();
    let bg = bg_queue::Builder::new("demo-test")
        .capacity(capacity)
        .parallelism(1)
        .build()
        .unwrap();
    AppState::new(bg, &config)
}

async fn post(state: &AppState, body: impl Into<Body>) -> (StatusCode, serde_json::Value) {
    post_as(state, "application/json", body).await
}

async fn post_as(
    state: &AppState,
    content_type: &str,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let app = demo::public_router(state.clone());
    let mut request = Request::post("/webhooks/stripe");
    if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    let response = app
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn a_checkout_event_enqueues_both_tasks() {
    let state = state(16);
    let (status, body) = post(&state, demo::checkout_event(1).to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["enqueued"],
        serde_json::json!(["send_receipt_email", "subscribe_mailing_list"])
    );
    state.bg.idle().await;
    let snapshot = state.bg.snapshot();
    assert_eq!((snapshot.spawned, snapshot.completed), (2, 2));
}

#[tokio::test]
async fn malformed_json_is_a_400_with_a_message_and_enqueues_nothing() {
    let state = state(16);
    for body in [
        "{",
        "",
        "[]",
        "null",
        r#"{"id": 5, "type": "x", "data": {}}"#,
    ] {
        let (status, json) = post(&state, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(
            json["error"].as_str().unwrap().starts_with("malformed"),
            "{json}"
        );
    }
    let wrong_types = serde_json::json!({
        "id": "evt", "type": "checkout.session.completed",
        "data": {"object": {"id": "cs", "customer_email": "a@b.c", "amount_total": "many"}}
    });
    assert_eq!(
        post(&state, wrong_types.to_string()).await.0,
        StatusCode::BAD_REQUEST
    );
    let no_email = serde_json::json!({
        "id": "evt", "type": "checkout.session.completed", "data": {"object": {"id": "cs"}}
    });
    let (status, json) = post(&state, no_email.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("email"));
    assert_eq!(state.bg.snapshot().spawned + state.bg.snapshot().dropped, 0);
}

#[tokio::test]
async fn a_body_over_64_kib_is_a_413_with_a_json_error_and_enqueues_nothing() {
    let state = state(16);
    let mut event = demo::checkout_event(1);
    event["padding"] = serde_json::Value::String("x".repeat(demo::MAX_BODY_BYTES));
    let (status, json) = post(&state, event.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["code"], "body_too_large", "{json}");
    assert!(json["error"].as_str().unwrap().contains("64 KiB"), "{json}");
    // Without a content length (streamed), the limit holds while reading.
    let chunks = futures_chunks(event.to_string().into_bytes());
    let (status, json) = post(&state, Body::from_stream(chunks)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["code"], "body_too_large", "{json}");
    // Exactly at the limit is still read (and is then not a valid event).
    let (status, json) = post(&state, vec![b' '; demo::MAX_BODY_BYTES]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    let snapshot = state.bg.snapshot();
    assert_eq!(snapshot.spawned + snapshot.dropped, 0);
}

/// `bytes` as a stream of 1 KiB chunks (a body with no content length).
fn futures_chunks(
    bytes: Vec<u8>,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<_> = bytes.chunks(1024).map(|c| Ok(c.to_vec())).collect();
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn a_content_type_other_than_json_is_a_415_with_a_json_error_and_enqueues_nothing() {
    let state = state(16);
    let event = demo::checkout_event(1).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "",
    ] {
        let (status, json) = post_as(&state, content_type, event.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(json["code"], "unsupported_media_type", "{json}");
        assert!(json["error"].as_str().unwrap().contains("application/json"));
    }
    let snapshot = state.bg.snapshot();
    assert_eq!(snapshot.spawned + snapshot.dropped, 0);
    // JSON with parameters, in any case, is JSON.
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let (status, json) = post_as(&state, content_type, event.clone()).await;
        assert_eq!(status, StatusCode::OK, "{content_type:?}: {json}");
    }
}

#[tokio::test]
async fn an_unknown_event_type_is_acknowledged_and_ignored() {
    let state = state(16);
    let event = serde_json::json!({"id": "evt_2", "type": "invoice.paid", "data": {"object": {}}});
    let (status, body) = post(&state, event.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ignored"], "invoice.paid");
    assert_eq!(state.bg.snapshot().spawned, 0);
}

#[tokio::test]
async fn drops_are_reported_in_the_response() {
    let state = state(1);
    // Capacity 1, runner not started yet: the second task is dropped.
    let (status, body) = post(&state, demo::checkout_event(1).to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["enqueued"], serde_json::json!(["send_receipt_email"]));
    assert_eq!(body["dropped"][0]["reason"], "queue_full");
    assert_eq!(state.bg.snapshot().dropped_by_reason.queue_full, 1);
}

#[tokio::test]
async fn debug_routes_are_on_the_debug_router_only() {
    let state = state(16);
    for (path, public, debug) in [
        ("/healthz", StatusCode::OK, StatusCode::OK),
        ("/debug/bg", StatusCode::NOT_FOUND, StatusCode::OK),
        ("/debug/bg.json", StatusCode::NOT_FOUND, StatusCode::OK),
        (
            "/webhooks/stripe",
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::NOT_FOUND,
        ),
        ("/nope", StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
    ] {
        for (router, status) in [
            (demo::public_router(state.clone()), public),
            (
                demo::debug_router(&state, "http://jaeger.test:16686"),
                debug,
            ),
        ] {
            let response = router
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{path}");
        }
    }
}

#[test]
fn configuration_defaults_and_errors_name_the_variable() {
    let config = Config::from_lookup(|_| None).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
    assert_eq!(config.debug_listen.to_string(), "127.0.0.1:3001");
    assert_eq!((config.capacity, config.parallelism), (1024, 8));
    assert_eq!(config.webhook_secret, None);
    assert_eq!(config.webhook_concurrency, 256);
    let cases = [
        ("BG_CAPACITY", "0"),
        ("BG_CAPACITY", "lots"),
        ("BG_PARALLELISM", "-1"),
        ("BG_SHUTDOWN_GRACE_SECS", "soon"),
        ("DEMO_EMAIL_DELAY_MS", "1.5"),
        ("DEMO_FAILURE_RATE", "2"),
        ("LISTEN_ADDR", "localhost"),
        ("JAEGER_UI_URL", "jaeger:16686"),
        ("DEBUG_LISTEN_ADDR", "3001"),
        ("WEBHOOK_CONCURRENCY", "0"),
        ("STRIPE_WEBHOOK_SECRET", " "),
    ];
    for (name, value) in cases {
        let error = Config::from_lookup(|key| (key == name).then(|| value.to_owned())).unwrap_err();
        assert!(error.starts_with(&format!("{name}: ")), "{error}");
        assert!(error.contains(value), "{error}");
        assert!(!error.contains('\n'));
    }
}

#[test]
fn the_built_demo_exits_non_zero_on_bad_settings_before_binding() {
    let demo = common::process::example("webhook");
    for (name, value) in [
        ("BG_CAPACITY", "0"),
        ("LISTEN_ADDR", "nowhere"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
    ] {
        let proc = common::process::Proc::spawn(
            "demo",
            Command::new(&demo)
                .env(name, value)
                .env("OTEL_SDK_DISABLED", "true"),
        );
        let line = proc.wait_for_line("error:", Duration::from_secs(20));
        assert!(line.starts_with(&format!("error: {name}: ")), "{line}");
        let (status, _) = proc.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{name}={value}");
    }
}

/// Arbitrary JSON-ish values, including deep nesting and huge numbers.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        "[a-z@.]{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z_]{1,16}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Random bytes.
        prop::collection::vec(any::<u8>(), 0..512),
        // Random JSON in the event's place, and in the session's place.
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|object| serde_json::json!({
            "id": "evt", "type": "checkout.session.completed", "data": {"object": object}
        }).to_string().into_bytes()),
        // Deep nesting past serde_json's recursion limit.
        (100usize..3000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        // Numbers far beyond i64.
        "[0-9]{20,400}".prop_map(|digits| format!(
            r#"{{"id":"e","type":"checkout.session.completed","data":{{"object":{{"id":"c","customer_email":"a@b.c","amount_total":{digits}}}}}}}"#
        ).into_bytes()),
        // Oversized.
        (65_537usize..70_000).prop_map(|n| vec![b' '; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn hostile_bodies_get_a_4xx_never_a_5xx_and_enqueue_nothing_when_invalid(body in hostile_body()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, accepted) = runtime.block_on(async {
            let state = state(16);
            let (status, _) = post(&state, body.clone()).await;
            let snapshot = state.bg.snapshot();
            (status, snapshot.spawned + snapshot.dropped)
        });
        prop_assert!(!status.is_server_error(), "{status} for {:?}", String::from_utf8_lossy(&body));
        if status.is_success() {
            // Only a valid checkout session enqueues, and always two tasks;
            // anything else that succeeds is an ignored event type.
            prop_assert!(accepted == 2 || accepted == 0);
        } else {
            prop_assert!(status.is_client_error());
            prop_assert_eq!(accepted, 0);
        }
    }
}

/// A signature computed outside this code (`openssl dgst -sha256 -hmac`,
/// as docs/demo.md's example request does), so `sign` and `verify` are
/// checked against Stripe's scheme, not only against each other.
#[test]
fn signatures_match_an_independent_hmac_sha256() {
    const SECRET: &str = "whsec_known_answer";
    const T: u64 = 1_700_000_000;
    let body = br#"{"id":"evt_kat","type":"checkout.session.completed"}"#;
    let v1 = "49c5df6a4edb1ff08ed824dcca76d6008596b266dc16e3b9e7545ac51798ddd0";
    assert_eq!(
        signature::sign(&[SECRET], T, body),
        format!("t={T},v1={v1}")
    );
    let header = format!("t={T},v0=ignored,v1={},v1={v1}", "0".repeat(64));
    assert_eq!(
        signature::verify(Some(header.as_bytes()), body, SECRET, T + 299),
        Ok(())
    );
    assert_eq!(
        signature::verify(Some(header.as_bytes()), body, SECRET, T + 301),
        Err(signature::SignatureError::Expired { skew_secs: 301 })
    );
    assert_eq!(
        signature::verify(Some(header.as_bytes()), &body[1..], SECRET, T),
        Err(signature::SignatureError::Mismatch)
    );
    let uppercase = format!("t={T},v1={}", v1.to_uppercase());
    assert_eq!(
        signature::verify(Some(uppercase.as_bytes()), body, SECRET, T),
        Ok(()),
        "hex digits in either case"
    );
    for malformed in ["", "t=1", "v1=00", "t=1,t=2,v1=00", "t=-5,v1=00", "garbage"] {
        assert!(
            matches!(
                signature::verify(Some(malformed.as_bytes()), body, SECRET, T),
                Err(signature::SignatureError::Malformed(_))
            ),
            "{malformed:?}"
        );
    }
    assert_eq!(
        signature::verify(None, body, SECRET, T),
        Err(signature::SignatureError::Missing)
    );
}

#[test]
fn the_log_throttle_lets_one_through_per_interval_and_counts_the_rest() {
    let throttle = throttle::LogThrottle::new(Duration::from_secs(5));
    let start = std::time::Instant::now();
    assert_eq!(throttle.admit_at(start), Some(0));
    for ms in [1, 1000, 4999] {
        assert_eq!(throttle.admit_at(start + Duration::from_millis(ms)), None);
    }
    assert_eq!(throttle.admit_at(start + Duration::from_secs(5)), Some(3));
    assert_eq!(throttle.admit_at(start + Duration::from_secs(6)), None);
    assert_eq!(throttle.admit_at(start + Duration::from_secs(11)), Some(1));
}

#[test]
fn the_two_listeners_must_differ() {
    let error = Config::from_lookup(|key| match key {
        "LISTEN_ADDR" | "DEBUG_LISTEN_ADDR" => Some("127.0.0.1:4000".to_owned()),
        _ => None,
    })
    .unwrap_err();
    assert!(error.starts_with("DEBUG_LISTEN_ADDR: "), "{error}");
    let secret = Config::from_lookup(|key| {
        (key == "STRIPE_WEBHOOK_SECRET").then(|| "whsec_do_not_print".to_owned())
    })
    .unwrap();
    assert!(!format!("{secret:?}").contains("whsec_do_not_print"));
}
