//! The demo's defences, against the built `webhook` example as a process,
//! with real clients over loopback: Stripe signatures, the debug page kept
//! to its own listener, slow clients cut off, and the concurrency bound.
//! What was enqueued is read from `/debug/bg.json` on the debug listener.

mod common;
#[path = "../examples/support/debug_auth.rs"]
mod debug_auth;
#[path = "../examples/support/demo.rs"]
mod demo;
#[path = "../examples/support/server.rs"]
mod server;
#[path = "../examples/support/signature.rs"]
mod signature;
#[path = "../examples/support/throttle.rs"]
mod throttle;

use std::time::{Duration, Instant};

use common::process::{free_port, start_demo, Proc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const SECRET: &str = "whsec_security_test_current";
const OLD_SECRET: &str = "whsec_security_test_previous";

/// The documented limits (docs/security.md; the code's constants are
/// checked against them below).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

struct Demo {
    proc: Proc,
    base: String,
    debug_base: String,
    client: reqwest::Client,
}

impl Demo {
    /// The demo with `STRIPE_WEBHOOK_SECRET` (unless `secret` is `None`),
    /// no telemetry export, instant tasks, and `extra` settings.
    fn start(secret: Option<&str>, extra: &[(&'static str, String)]) -> Demo {
        let (port, debug_port) = (free_port(), free_port());
        let mut settings = vec![
            ("DEBUG_LISTEN_ADDR", format!("127.0.0.1:{debug_port}")),
            ("OTEL_SDK_DISABLED", "true".to_owned()),
            ("DEMO_EMAIL_DELAY_MS", "0".to_owned()),
            ("DEMO_FAILURE_RATE", "0".to_owned()),
        ];
        if let Some(secret) = secret {
            settings.push(("STRIPE_WEBHOOK_SECRET", secret.to_owned()));
        }
        settings.extend(extra.iter().cloned());
        Demo {
            proc: start_demo(port, &settings),
            base: format!("http://127.0.0.1:{port}"),
            debug_base: format!("http://127.0.0.1:{debug_port}"),
            client: reqwest::Client::new(),
        }
    }

    fn public_port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Posts `body` with `signature` (if any); returns status and JSON body.
    async fn post(&self, body: &str, signature: Option<String>) -> (u16, serde_json::Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/stripe", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header(signature::HEADER, signature);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// Pool `default` from `/debug/bg.json` on the debug listener.
    async fn pool(&self) -> serde_json::Value {
        let page: serde_json::Value = self
            .client
            .get(format!("{}/debug/bg.json", self.debug_base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["pools"][0].clone()
    }
}

fn event(id: u64) -> String {
    serde_json::json!({
        "id": format!("evt_sec_{id}"), "type": "checkout.session.completed",
        "data": {"object": {"id": format!("cs_sec_{id}"), "customer_email": "a@example.com",
                            "amount_total": 4200, "currency": "eur"}}
    })
    .to_string()
}

fn sign_now(secrets: &[&str], body: &str) -> String {
    signature::sign(secrets, signature::unix_now(), body.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_signature_enqueues_and_each_refusal_says_why() {
    let demo = Demo::start(Some(SECRET), &[]);
    let now = signature::unix_now();
    let body = event(1);
    let tampered = body.replace("4200", "1");
    assert_ne!(body, tampered);
    let refused = [
        ("missing", body.clone(), None, "signature_missing"),
        (
            "wrong secret",
            body.clone(),
            Some(sign_now(&["whsec_not_ours"], &body)),
            "signature_mismatch",
        ),
        (
            "body changed after signing",
            tampered,
            Some(sign_now(&[SECRET], &body)),
            "signature_mismatch",
        ),
        (
            "expired (6 minutes old)",
            body.clone(),
            Some(signature::sign(&[SECRET], now - 360, body.as_bytes())),
            "signature_expired",
        ),
        (
            "from 6 minutes in the future",
            body.clone(),
            Some(signature::sign(&[SECRET], now + 360, body.as_bytes())),
            "signature_expired",
        ),
        (
            "only the previous secret's",
            body.clone(),
            Some(sign_now(&[OLD_SECRET], &body)),
            "signature_mismatch",
        ),
        (
            "malformed: no v1",
            body.clone(),
            Some(format!("t={now}")),
            "signature_malformed",
        ),
        (
            "malformed: t not a number",
            body.clone(),
            Some(format!("t=yesterday,v1={}", "0".repeat(64))),
            "signature_malformed",
        ),
        (
            "malformed: v1 not hex",
            body.clone(),
            Some(format!("t={now},v1=not-hex")),
            "signature_malformed",
        ),
    ];
    for (what, body, signature, code) in &refused {
        let (status, json) = demo.post(body, signature.clone()).await;
        assert_eq!(status, 400, "{what}: {json}");
        assert_eq!(json["code"], *code, "{what}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}"
        );
    }
    let pool = demo.pool().await;
    assert_eq!(
        (pool["spawned"].as_u64(), pool["dropped"].as_u64()),
        (Some(0), Some(0)),
        "a refused webhook enqueued something: {pool}"
    );

    // A valid signature, and a rotation (old and new secret both signing).
    let (status, json) = demo.post(&body, Some(sign_now(&[SECRET], &body))).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["enqueued"].as_array().map(Vec::len), Some(2), "{json}");
    let rotated = event(2);
    let (status, json) = demo
        .post(&rotated, Some(sign_now(&[OLD_SECRET, SECRET], &rotated)))
        .await;
    assert_eq!(status, 200, "rotation: {json}");
    // Just inside the 5-minute window.
    let late = event(3);
    let (status, json) = demo
        .post(
            &late,
            Some(signature::sign(&[SECRET], now - 290, late.as_bytes())),
        )
        .await;
    assert_eq!(status, 200, "290 s old: {json}");
    assert_eq!(demo.pool().await["spawned"], 6);

    // Every refusal is a WARN, throttled: fewer lines than refusals.
    let lines = demo
        .proc
        .stderr()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("webhook refused"))
        .count();
    assert!(
        (1..refused.len()).contains(&lines),
        "{lines} WARN lines for {} refusals",
        refused.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_page_is_on_the_debug_listener_only() {
    let demo = Demo::start(Some(SECRET), &[]);
    for path in ["/debug/bg", "/debug/bg.json", "/debug/", "/debug/anything"] {
        let public = demo
            .client
            .get(format!("{}{path}", demo.base))
            .send()
            .await
            .unwrap();
        assert_eq!(public.status(), 404, "public {path}");
    }
    for (path, status) in [
        ("/debug/bg", 200),
        ("/debug/bg.json", 200),
        ("/healthz", 200),
        ("/webhooks/stripe", 404),
    ] {
        let debug = demo
            .client
            .get(format!("{}{path}", demo.debug_base))
            .send()
            .await
            .unwrap();
        assert_eq!(debug.status(), status, "debug {path}");
    }
    let health = demo
        .client
        .get(format!("{}/healthz", demo.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_it_runs_and_says_so_in_one_warn_line() {
    let demo = Demo::start(None, &[]);
    let body = event(1);
    let (status, json) = demo.post(&body, None).await;
    assert_eq!(status, 200, "{json}");
    let warnings: Vec<String> = demo
        .proc
        .stderr()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("STRIPE_WEBHOOK_SECRET"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("NOT verified"), "{}", warnings[0]);
}

/// A slowloris client: sends a request line and headers one byte a second
/// and returns how long the server took to close the connection (or
/// answer it), or `None` if it never did within `limit`.
async fn slowloris(port: u16, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut reader, mut writer) = stream.into_split();
    let head =
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
    let write = async move {
        // The timer paces the load; it is not waiting for anything.
        let mut pace = tokio::time::interval(Duration::from_secs(1));
        for byte in head {
            pace.tick().await;
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let read = async move {
        let mut answer = Vec::new();
        // EOF or a reset, with whatever the server said before.
        let _ = reader.read_to_end(&mut answer).await;
        answer
    };
    tokio::select! {
        answer = read => Some((started.elapsed(), answer)),
        () = write => None,
        () = tokio::time::sleep(limit) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_while_normal_requests_succeed() {
    const CLIENTS: usize = 200;
    let demo = Demo::start(Some(SECRET), &[]);
    let port = demo.public_port();
    let limit = HEADER_READ_TIMEOUT + SLACK;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(slowloris(port, limit + SLACK)))
        .collect();
    // Normal webhooks beside them, until every slowloris client is done.
    let mut served = 0u64;
    let mut id = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        id += 1;
        let body = event(id);
        let started = Instant::now();
        let (status, json) = demo.post(&body, Some(sign_now(&[SECRET], &body))).await;
        assert_eq!(status, 200, "request {id} beside the slow clients: {json}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "request {id} took {:?}",
            started.elapsed()
        );
        served += 1;
    }
    let mut cut = Vec::new();
    for client in clients {
        let (after, answer) = client
            .await
            .unwrap()
            .expect("a slowloris client was never cut off");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "a slowloris client got {answer:?}"
        );
        cut.push(after);
    }
    cut.sort();
    let (first, last) = (cut[0], cut[CLIENTS - 1]);
    assert!(
        last <= limit,
        "slowest cut-off after {last:?} (header timeout {HEADER_READ_TIMEOUT:?})"
    );
    assert!(
        first >= HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "cut off after {first:?}, before the header timeout"
    );
    assert!(
        served >= 5,
        "only {served} normal requests while the clients ran"
    );
    assert_eq!(demo.pool().await["spawned"].as_u64(), Some(2 * served));
    println!(
        "slowloris: {CLIENTS} clients cut off after {:.2}-{:.2} s; {served} webhooks served beside them",
        first.as_secs_f64(),
        last.as_secs_f64()
    );
}

/// Sends a webhook's headers and the first `sent` bytes of its body over a
/// raw connection, then stops.
async fn partial_webhook(port: u16, body: &str, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Stripe-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        sign_now(&[SECRET], body),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..sent]).await.unwrap();
    stream
}

/// Reads one response head and body (the demo answers with a length).
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() >= length || n == 0 {
                let status = head[9..12].parse().unwrap();
                return (status, rest.to_owned());
            }
        }
        assert!(n > 0, "connection closed mid-response: {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_or_trickles_gets_a_408() {
    let demo = Demo::start(Some(SECRET), &[]);
    let port = demo.public_port();
    let body = event(1);
    let stalled = async {
        let started = Instant::now();
        let mut stream = partial_webhook(port, &body, 10).await;
        let (status, json) = read_response(&mut stream).await;
        (status, json, started.elapsed())
    };
    let trickled = async {
        let started = Instant::now();
        let mut stream = partial_webhook(port, &body, 10).await;
        let (mut reader, mut writer) = stream.split();
        let bytes = body.as_bytes()[10..].to_vec();
        let write = async {
            // One byte a second: never idle for the body timeout, but
            // never done either; the timer paces the load.
            let mut pace = tokio::time::interval(Duration::from_secs(1));
            for byte in bytes {
                pace.tick().await;
                if writer.write_all(&[byte]).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        let mut answer = String::new();
        tokio::select! {
            _ = reader.read_to_string(&mut answer) => {}
            () = write => {}
        }
        (answer, started.elapsed())
    };
    let ((status, json, stalled_after), (answer, trickled_after)) = tokio::join!(stalled, trickled);
    assert_eq!(status, 408, "{json}");
    assert!(json.contains("body_timeout"), "{json}");
    assert!(
        stalled_after >= BODY_READ_TIMEOUT - Duration::from_secs(1)
            && stalled_after <= BODY_READ_TIMEOUT + SLACK,
        "stalled body answered after {stalled_after:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer:?}");
    assert!(
        trickled_after >= REQUEST_TIMEOUT - Duration::from_secs(1)
            && trickled_after <= REQUEST_TIMEOUT + SLACK,
        "trickled body answered after {trickled_after:?}"
    );
    assert_eq!(demo.pool().await["spawned"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_bound_it_answers_503_and_every_200_is_enqueued() {
    const LIMIT: usize = 2;
    let demo = Demo::start(Some(SECRET), &[("WEBHOOK_CONCURRENCY", LIMIT.to_string())]);
    let port = demo.public_port();
    // Fill the bound with requests whose bodies are half sent.
    let held_bodies: Vec<String> = (0..LIMIT as u64).map(|i| event(1000 + i)).collect();
    let mut held = Vec::new();
    for body in &held_bodies {
        held.push(partial_webhook(port, body, body.len() / 2).await);
    }
    let mut ok = 0u64;
    let mut id = 0;
    // The held requests reach the handler soon after their headers: until
    // then a request may still get in (and is counted).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        id += 1;
        let body = event(id);
        let (status, json) = demo.post(&body, Some(sign_now(&[SECRET], &body))).await;
        match status {
            200 => ok += 1,
            503 => break,
            other => panic!("{other}: {json}"),
        }
        assert!(Instant::now() < deadline, "the bound was never reached");
    }
    // A burst while the bound is full: every request refused at once.
    for (status, retry_after, json) in burst(&demo, 10_000, 50).await {
        assert_eq!(status, 503, "{json}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(json["code"], "overloaded", "{json}");
    }
    // The held requests finish normally.
    for (stream, body) in held.iter_mut().zip(&held_bodies) {
        stream
            .write_all(&body.as_bytes()[body.len() / 2..])
            .await
            .unwrap();
        let (status, json) = read_response(stream).await;
        assert_eq!(status, 200, "{json}");
        ok += 1;
    }
    // A burst with the bound free: some get in, the rest are refused; each
    // 200 said both tasks were enqueued.
    let (mut admitted, mut refused) = (0u64, 0u64);
    for (status, retry_after, json) in burst(&demo, 20_000, 100).await {
        match status {
            200 => {
                assert_eq!(json["enqueued"].as_array().map(Vec::len), Some(2), "{json}");
                admitted += 1;
            }
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                refused += 1;
            }
            other => panic!("{other}: {json}"),
        }
    }
    assert_eq!(admitted + refused, 100);
    assert!(admitted > 0);
    ok += admitted;
    let pool = demo.pool().await;
    assert_eq!(pool["spawned"].as_u64(), Some(2 * ok), "{pool}");
    assert_eq!(pool["dropped"].as_u64(), Some(0), "{pool}");
    println!("concurrency bound {LIMIT}: second burst {admitted} admitted, {refused} refused");
}

/// `count` signed webhooks sent at once; (status, `Retry-After`, body) each.
async fn burst(
    demo: &Demo,
    first: u64,
    count: u64,
) -> Vec<(u16, Option<String>, serde_json::Value)> {
    let url = format!("{}/webhooks/stripe", demo.base);
    let sends: Vec<_> = (first..first + count)
        .map(|id| {
            let (client, url) = (demo.client.clone(), url.clone());
            tokio::spawn(async move {
                let body = event(id);
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header(signature::HEADER, sign_now(&[SECRET], &body))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let json: serde_json::Value = response.json().await.unwrap();
                (status, retry_after, json)
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(sends.len());
    for send in sends {
        answers.push(send.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn the_debug_page_example_wants_the_bearer_token() {
    use tower::ServiceExt as _;
    let token: std::sync::Arc<str> = std::sync::Arc::from("a".repeat(32) + "-token");
    let bg = bg_queue::Builder::new("auth-test").build().unwrap();
    let app = debug_auth::protected_debug_router(bg, token.clone());
    for (authorization, status) in [
        (None, 401),
        (Some("Bearer wrong".to_owned()), 401),
        (Some(format!("Bearer {token}x")), 401),
        (Some(format!("Basic {token}")), 401),
        (Some(format!("Bearer {token}")), 200),
    ] {
        for path in ["/debug/bg", "/debug/bg.json"] {
            let mut request = axum::http::Request::get(path);
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let response = app
                .clone()
                .oneshot(request.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{path} with {authorization:?}");
            if status == 401 {
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
            }
        }
    }
}

#[test]
fn docs_security_md_quotes_the_compiled_auth_example_whole() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let code = std::fs::read_to_string(root.join("examples/support/debug_auth.rs")).unwrap();
    let quoted = doc
        .split_once("```rust\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(block, _)| block)
        .expect("docs/security.md has a rust block");
    assert_eq!(
        quoted, code,
        "docs/security.md and examples/support/debug_auth.rs differ"
    );
}

#[test]
fn docs_security_md_states_the_limits_the_code_has() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    for (limit, documented) in [
        (HEADER_READ_TIMEOUT, "| request line and headers | 5 s"),
        (BODY_READ_TIMEOUT, "| webhook body, between two reads | 5 s"),
        (
            REQUEST_TIMEOUT,
            "| webhook request, headers to answer | 10 s",
        ),
    ] {
        assert!(doc.contains(documented), "{documented}");
        assert!(documented.contains(&format!("| {} s", limit.as_secs())));
    }
    assert_eq!(server::HEADER_READ_TIMEOUT, HEADER_READ_TIMEOUT);
    assert_eq!(demo::BODY_READ_TIMEOUT, BODY_READ_TIMEOUT);
    assert_eq!(demo::REQUEST_TIMEOUT, REQUEST_TIMEOUT);
    assert_eq!(demo::RETRY_AFTER_SECS, 1);
    assert!(doc.contains("| webhook body size | 64 KiB"));
    assert_eq!(demo::MAX_BODY_BYTES, 64 * 1024);
    assert!(doc.contains("`WEBHOOK_CONCURRENCY` (256)"));
    let config = demo::Config::from_lookup(|_| None).unwrap();
    assert_eq!(config.webhook_concurrency, 256);
    assert_eq!(config.debug_listen.to_string(), "127.0.0.1:3001");
}
