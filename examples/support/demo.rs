//! The demo service's parts: configuration from the environment, the
//! router, the webhook handler and the simulated email work. Kept apart from
//! `webhook.rs` (which wires and runs them) so tests can drive the router
//! with `oneshot` and no server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bg_queue::BackgroundTx;
use rand::Rng as _;
use serde::Deserialize;
use serde_json::json;
use tower_http::trace::TraceLayer;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Largest accepted webhook body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Settings read from the environment; every one has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub capacity: usize,
    pub parallelism: usize,
    pub shutdown_grace: Duration,
    pub email_delay: Duration,
    pub failure_rate: f64,
    pub jaeger_ui_url: String,
}

impl Config {
    /// Reads `LISTEN_ADDR`, `BG_CAPACITY`, `BG_PARALLELISM`,
    /// `BG_SHUTDOWN_GRACE_SECS`, `DEMO_EMAIL_DELAY_MS`, `DEMO_FAILURE_RATE`
    /// and `JAEGER_UI_URL`.
    ///
    /// # Errors
    ///
    /// A one-line message naming the variable, its value and what it takes.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Same, from any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        fn parse<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            name: &str,
            default: T,
            what: &str,
            valid: impl Fn(&T) -> bool,
        ) -> Result<T, String> {
            match get(name) {
                None => Ok(default),
                Some(raw) => match raw.trim().parse::<T>() {
                    Ok(value) if valid(&value) => Ok(value),
                    _ => Err(format!("{name}: expected {what}, got {raw:?}")),
                },
            }
        }
        let listen = parse(
            &get,
            "LISTEN_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 3000)),
            "an address like 127.0.0.1:3000",
            |_| true,
        )?;
        let capacity = parse(
            &get,
            "BG_CAPACITY",
            bg_queue::DEFAULT_CAPACITY,
            "a whole number from 1 to 16777216",
            |v| (1..=bg_queue::MAX_CAPACITY).contains(v),
        )?;
        let parallelism = parse(
            &get,
            "BG_PARALLELISM",
            bg_queue::DEFAULT_PARALLELISM,
            "a whole number from 1 to 1024",
            |v| (1..=1024).contains(v),
        )?;
        let grace: f64 = parse(
            &get,
            "BG_SHUTDOWN_GRACE_SECS",
            10.0,
            "seconds from 0 to 3600",
            |v: &f64| (0.0..=3600.0).contains(v),
        )?;
        let delay: u64 = parse(
            &get,
            "DEMO_EMAIL_DELAY_MS",
            200,
            "milliseconds from 0 to 600000",
            |v| *v <= 600_000,
        )?;
        let failure_rate: f64 = parse(
            &get,
            "DEMO_FAILURE_RATE",
            0.02,
            "a fraction from 0 to 1",
            |v: &f64| (0.0..=1.0).contains(v),
        )?;
        let jaeger_ui_url = get("JAEGER_UI_URL")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| bg_queue::DEFAULT_JAEGER_UI_URL.to_owned());
        if !(jaeger_ui_url.starts_with("http://") || jaeger_ui_url.starts_with("https://")) {
            return Err(format!(
                "JAEGER_UI_URL: expected an http(s) address, got {jaeger_ui_url:?}"
            ));
        }
        Ok(Config {
            listen,
            capacity,
            parallelism,
            shutdown_grace: Duration::from_secs_f64(grace),
            email_delay: Duration::from_millis(delay),
            failure_rate,
            jaeger_ui_url,
        })
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub bg: BackgroundTx,
    pub email_delay: Duration,
    pub failure_rate: f64,
}

/// The demo's routes: the webhook, `/healthz` and the debug page.
pub fn router(state: AppState, jaeger_ui_url: &str) -> Router {
    let debug = bg_queue::DebugPage::new()
        .pool(state.bg.clone())
        .jaeger_ui_url(jaeger_ui_url)
        .router();
    Router::new()
        .route("/webhooks/stripe", post(stripe_webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
        .merge(debug)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(server_span)
                .on_response(
                    |response: &Response, _latency: Duration, span: &tracing::Span| {
                        span.record("http.response.status_code", response.status().as_u16());
                    },
                ),
        )
}

/// An HTTP server span per request, continuing the caller's trace when a
/// W3C `traceparent` header is present.
fn server_span<B>(request: &Request<B>) -> tracing::Span {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        parent: None,
        "http.request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Set at once, before anything enters the span or asks for its context.
    let _ = span.set_parent(parent);
    span
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The parts of a Stripe event the demo reads.
#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct CheckoutSession {
    id: String,
    customer_email: Option<String>,
    customer_details: Option<CustomerDetails>,
    amount_total: Option<i64>,
    currency: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CustomerDetails {
    email: Option<String>,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `POST /webhooks/stripe`: on `checkout.session.completed`, enqueue the
/// receipt email and the mailing-list subscription. The body is parsed here
/// (not by `Json`) so that every malformed body is a 400 with a message.
async fn stripe_webhook(State(state): State<AppState>, body: Bytes) -> Response {
    let event: Event = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => return bad_request(format!("malformed event: {error}")),
    };
    if event.kind != "checkout.session.completed" {
        tracing::info!(event.id = %event.id, event.kind = %event.kind, "event type ignored");
        return Json(json!({ "received": true, "ignored": event.kind })).into_response();
    }
    let session: CheckoutSession = match serde_json::from_value(event.data.object) {
        Ok(session) => session,
        Err(error) => return bad_request(format!("malformed checkout session: {error}")),
    };
    let email = session
        .customer_email
        .or_else(|| session.customer_details.and_then(|d| d.email));
    let Some(email) = email.filter(|e| e.contains('@') && e.len() <= 320) else {
        return bad_request("checkout session has no valid customer email".to_owned());
    };
    if session.amount_total.is_some_and(|a| a < 0) {
        return bad_request("amount_total must not be negative".to_owned());
    }
    let receipt = ReceiptEmail {
        to: email.clone(),
        session: session.id,
        amount: session.amount_total.unwrap_or(0),
        currency: session.currency.unwrap_or_else(|| "usd".to_owned()),
    };
    let mut enqueued = Vec::new();
    let mut dropped = Vec::new();
    let work = Work::from(&state);
    for (name, result) in [
        (
            "send_receipt_email",
            state
                .bg
                .try_spawn_fallible("send_receipt_email", work.send_receipt(receipt)),
        ),
        (
            "subscribe_mailing_list",
            state
                .bg
                .try_spawn_fallible("subscribe_mailing_list", work.subscribe(email)),
        ),
    ] {
        match result {
            Ok(()) => enqueued.push(name),
            Err(error) => dropped.push(json!({ "task": name, "reason": error.reason().as_str() })),
        }
    }
    Json(json!({ "received": true, "event": event.id, "enqueued": enqueued, "dropped": dropped }))
        .into_response()
}

struct ReceiptEmail {
    to: String,
    session: String,
    amount: i64,
    currency: String,
}

/// The simulated outbound work: latency around `delay`, failing at `rate`.
#[derive(Clone, Copy)]
struct Work {
    delay: Duration,
    failure_rate: f64,
}

impl From<&AppState> for Work {
    fn from(state: &AppState) -> Self {
        Work {
            delay: state.email_delay,
            failure_rate: state.failure_rate,
        }
    }
}

/// An error from the simulated SMTP server or list API.
#[derive(Debug)]
pub struct UpstreamError(pub &'static str);

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Work {
    /// The delay with +-25% jitter, and whether this call fails.
    fn roll(self) -> (Duration, bool) {
        let mut rng = rand::rng();
        let jitter = rng.random_range(0.75..=1.25);
        (
            self.delay.mul_f64(jitter),
            rng.random_bool(self.failure_rate),
        )
    }

    fn send_receipt(
        self,
        email: ReceiptEmail,
    ) -> impl std::future::Future<Output = Result<(), UpstreamError>> {
        let (delay, fails) = self.roll();
        async move {
            let span = tracing::info_span!(
                "smtp.send",
                otel.kind = "client",
                email.session = %email.session,
                email.amount = email.amount,
                email.currency = %email.currency,
                email.to_domain = email.to.rsplit('@').next().unwrap_or(""),
            );
            async move {
                tokio::time::sleep(delay).await;
                if fails {
                    Err(UpstreamError("smtp: 451 temporary local problem"))
                } else {
                    Ok(())
                }
            }
            .instrument(span)
            .await
        }
    }

    fn subscribe(
        self,
        email: String,
    ) -> impl std::future::Future<Output = Result<(), UpstreamError>> {
        let (delay, fails) = self.roll();
        async move {
            let span = tracing::info_span!(
                "mailing_list.subscribe",
                otel.kind = "client",
                list.email_domain = email.rsplit('@').next().unwrap_or(""),
            );
            async move {
                tokio::time::sleep(delay / 2).await;
                if fails {
                    Err(UpstreamError("mailing list API answered 503"))
                } else {
                    Ok(())
                }
            }
            .instrument(span)
            .await
        }
    }
}

/// A `checkout.session.completed` event body, as the load generator and the
/// tests send it.
pub fn checkout_event(id: u64) -> serde_json::Value {
    json!({
        "id": format!("evt_{id:016}"),
        "object": "event",
        "type": "checkout.session.completed",
        "data": { "object": {
            "id": format!("cs_test_{id:016}"),
            "object": "checkout.session",
            "customer_email": format!("customer{id}@example.com"),
            "amount_total": 4200,
            "currency": "eur",
        } }
    })
}
