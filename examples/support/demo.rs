//! The demo service's parts: configuration from the environment, the two
//! routers (the public webhook listener and the debug listener), the webhook
//! handler and the simulated email work. Kept apart from `webhook.rs` (which
//! wires and runs them) so tests can drive the routers with `oneshot` and no
//! server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bg_queue::BackgroundTx;
use rand::Rng as _;
use serde::Deserialize;
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::signature;
use crate::throttle::LogThrottle;

/// Largest accepted webhook body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest the body may go without sending a byte once headers are in;
/// past it the webhook answers 408.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one webhook request may take from its headers to its answer,
/// however steadily its body trickles in; past it the answer is 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a sender turned away by the concurrency bound is told to wait, in
/// seconds, before retrying (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

/// At most one signature-rejection line per this interval reaches the log.
pub const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Settings read from the environment; every one has a default.
#[derive(Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub debug_listen: SocketAddr,
    pub capacity: usize,
    pub parallelism: usize,
    pub shutdown_grace: Duration,
    pub email_delay: Duration,
    pub failure_rate: f64,
    pub jaeger_ui_url: String,
    /// `STRIPE_WEBHOOK_SECRET`; `None` means signatures are not checked.
    pub webhook_secret: Option<String>,
    pub webhook_concurrency: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("debug_listen", &self.debug_listen)
            .field("capacity", &self.capacity)
            .field("parallelism", &self.parallelism)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("email_delay", &self.email_delay)
            .field("failure_rate", &self.failure_rate)
            .field("jaeger_ui_url", &self.jaeger_ui_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<set>"),
            )
            .field("webhook_concurrency", &self.webhook_concurrency)
            .finish()
    }
}

impl Config {
    /// Reads `LISTEN_ADDR`, `DEBUG_LISTEN_ADDR`, `BG_CAPACITY`,
    /// `BG_PARALLELISM`, `BG_SHUTDOWN_GRACE_SECS`, `DEMO_EMAIL_DELAY_MS`,
    /// `DEMO_FAILURE_RATE`, `JAEGER_UI_URL`, `STRIPE_WEBHOOK_SECRET` and
    /// `WEBHOOK_CONCURRENCY`.
    ///
    /// # Errors
    ///
    /// A one-line message naming the variable, its value and what it takes
    /// (never the secret's value).
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
        let debug_listen = parse(
            &get,
            "DEBUG_LISTEN_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 3001)),
            "an address like 127.0.0.1:3001",
            |_| true,
        )?;
        if debug_listen == listen && listen.port() != 0 {
            return Err(format!(
                "DEBUG_LISTEN_ADDR: must differ from LISTEN_ADDR, both are {listen}"
            ));
        }
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
        let webhook_concurrency = parse(
            &get,
            "WEBHOOK_CONCURRENCY",
            256,
            "a whole number from 1 to 65536",
            |v| (1..=65_536).contains(v),
        )?;
        let jaeger_ui_url = get("JAEGER_UI_URL")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| bg_queue::DEFAULT_JAEGER_UI_URL.to_owned());
        if !(jaeger_ui_url.starts_with("http://") || jaeger_ui_url.starts_with("https://")) {
            return Err(format!(
                "JAEGER_UI_URL: expected an http(s) address, got {jaeger_ui_url:?}"
            ));
        }
        let webhook_secret = match get("STRIPE_WEBHOOK_SECRET") {
            None => None,
            // Set but blank is a deployment mistake, not a wish to skip
            // verification: refuse rather than run unprotected.
            Some(secret) if secret.trim().is_empty() => {
                return Err(
                    "STRIPE_WEBHOOK_SECRET: set but empty (unset it to run without \
                     signature checks)"
                        .to_owned(),
                )
            }
            Some(secret) => Some(secret),
        };
        Ok(Config {
            listen,
            debug_listen,
            capacity,
            parallelism,
            shutdown_grace: Duration::from_secs_f64(grace),
            email_delay: Duration::from_millis(delay),
            failure_rate,
            jaeger_ui_url,
            webhook_secret,
            webhook_concurrency,
        })
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub bg: BackgroundTx,
    pub email_delay: Duration,
    pub failure_rate: f64,
    /// The endpoint secret; `None` accepts unsigned webhooks (local use).
    pub webhook_secret: Option<Arc<str>>,
    /// Webhook requests handled at once; beyond it, 503 + `Retry-After`.
    pub webhook_concurrency: usize,
    /// Throttles the WARN line logged for each rejected signature.
    pub rejections: Arc<LogThrottle>,
    /// Where events go in durable mode (`DATABASE_URL`); `None` runs
    /// the jobs on the in-memory pool `bg`.
    pub durable: Option<Arc<dyn DurableSink>>,
    /// Throttles the WARN line logged for each 503 of the durable store.
    pub store_errors: Arc<LogThrottle>,
}

/// A checkout event as the durable store records it.
#[derive(Debug, Clone)]
pub struct CheckoutEvent {
    /// Stripe's event id (`evt_...`): the dedupe key.
    pub event_id: String,
    pub event_type: String,
    pub session: String,
    pub email: String,
    pub amount_total: i64,
    pub currency: String,
    /// The event as received, for the record.
    pub payload: serde_json::Value,
}

/// What recording an event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Recorded now, with the jobs enqueued in the same transaction.
    New { enqueued: Vec<&'static str> },
    /// Recorded before (a redelivery): nothing new enqueued.
    Duplicate,
}

/// Durable mode's store: records the event and enqueues its jobs in one
/// transaction, so either all of it is committed or none of it is.
pub trait DurableSink: Send + Sync + std::fmt::Debug {
    /// Records `event`; resolves only after the commit. An `Err` (the
    /// database is unreachable or refused) committed nothing.
    fn record(
        &self,
        event: CheckoutEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Recorded, String>> + Send + '_>>;

    /// Adds the store's queues to the debug page.
    fn show_on(&self, page: bg_queue::DebugPage) -> bg_queue::DebugPage {
        page
    }
}

/// What a sender is told to wait, in seconds, while the database is
/// unavailable (`Retry-After`).
pub const STORE_RETRY_AFTER_SECS: u64 = 5;

impl AppState {
    /// The state for `bg` with the webhook settings of `config`.
    pub fn new(bg: BackgroundTx, config: &Config) -> Self {
        AppState {
            bg,
            email_delay: config.email_delay,
            failure_rate: config.failure_rate,
            webhook_secret: config.webhook_secret.as_deref().map(Arc::from),
            webhook_concurrency: config.webhook_concurrency,
            rejections: Arc::new(LogThrottle::new(REJECTION_LOG_INTERVAL)),
            durable: None,
            store_errors: Arc::new(LogThrottle::new(REJECTION_LOG_INTERVAL)),
        }
    }

    /// The same state, recording events durably in `sink`.
    pub fn with_durable(mut self, sink: Arc<dyn DurableSink>) -> Self {
        self.durable = Some(sink);
        self
    }
}

/// The public listener's routes: `POST /webhooks/stripe` and `/healthz`;
/// anything else, `/debug/*` included, is a 404.
///
/// The webhook route is bounded: at most `state.webhook_concurrency`
/// requests inside it at once (the rest get 503 with `Retry-After` at once,
/// never a queue), each finished within [`REQUEST_TIMEOUT`], its body
/// idle at most [`BODY_READ_TIMEOUT`] and at most [`MAX_BODY_BYTES`] long.
pub fn public_router(state: AppState) -> Router {
    let bounded = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: tower::BoxError| async move {
            if error.is::<tower::timeout::error::Elapsed>() {
                request_timeout()
            } else {
                overloaded()
            }
        }))
        // Refuse at once when every permit is taken, instead of waiting.
        .load_shed()
        .concurrency_limit(state.webhook_concurrency)
        // Inside the bound, so a request that times out frees its permit.
        .timeout(REQUEST_TIMEOUT)
        .layer(RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT));
    let app = Router::new()
        .route("/webhooks/stripe", post(stripe_webhook).layer(bounded))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    traced(app)
}

/// The debug listener's routes: `/debug/bg`, `/debug/bg.json` and
/// `/healthz`. The page shows task names and error text: serve it on a
/// private address, or behind the service's own auth (docs/security.md).
pub fn debug_router(state: &AppState, jaeger_ui_url: &str) -> Router {
    let mut page = bg_queue::DebugPage::new()
        .pool(state.bg.clone())
        .jaeger_ui_url(jaeger_ui_url);
    if let Some(store) = &state.durable {
        page = store.show_on(page);
    }
    let debug = page.router();
    traced(debug.route("/healthz", get(healthz)))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Wraps `app` in the server span layer.
fn traced(app: Router) -> Router {
    app.layer(
        TraceLayer::new_for_http()
            .make_span_with(server_span)
            .on_response(
                |response: &Response, _latency: Duration, span: &tracing::Span| {
                    span.record("http.response.status_code", response.status().as_u16());
                },
            ),
    )
}

/// 408 for a request not done within [`REQUEST_TIMEOUT`].
fn request_timeout() -> Response {
    error(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "request not complete within {} s",
            REQUEST_TIMEOUT.as_secs()
        ),
    )
}

/// 503 with `Retry-After`: the sender (Stripe) retries, so nothing is lost.
fn overloaded() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("too many webhook requests at once; retry in {RETRY_AFTER_SECS} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// 503 with `Retry-After` while the durable store cannot commit: nothing
/// was recorded, and the sender's redelivery will be.
fn store_unavailable() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        format!("the event could not be recorded; retry in {STORE_RETRY_AFTER_SECS} s"),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(STORE_RETRY_AFTER_SECS),
    );
    response
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

/// A JSON error answer: `{"error": message, "code": code}`.
fn error(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, Json(json!({ "error": message, "code": code }))).into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "malformed_event", message)
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the body failed because the sender went quiet for longer than
/// [`BODY_READ_TIMEOUT`].
fn is_body_timeout(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// `POST /webhooks/stripe`: on `checkout.session.completed`, enqueue the
/// receipt email and the mailing-list subscription.
///
/// Checked in order, each failure a JSON error that enqueues nothing: the
/// content type (415), the body's size (413) and arrival (408), the
/// signature when a secret is set (400), the event (400). The body is read
/// as bytes (not by `Json`) because the signature covers the raw bytes and
/// every malformed body must be a 400 with a message.
async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !is_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content-type must be application/json".to_owned(),
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("body over {} KiB", MAX_BODY_BYTES / 1024),
            )
        }
        Err(rejection) if is_body_timeout(&rejection) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("no body bytes for {} s", BODY_READ_TIMEOUT.as_secs()),
            )
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("could not read the body: {}", rejection.body_text()),
            )
        }
    };
    // In memory nothing awaits from here on: the request timeout (which
    // drops this future) strikes before anything is enqueued or not at
    // all. Durably, a dropped future rolls the transaction back, and a
    // commit whose answer was lost is deduplicated on the redelivery.
    if let Some(secret) = &state.webhook_secret {
        let header = headers.get(signature::HEADER).map(HeaderValue::as_bytes);
        if let Err(rejected) = signature::verify(header, &body, secret, signature::unix_now()) {
            if let Some(suppressed) = state.rejections.admit() {
                tracing::warn!(
                    code = rejected.code(),
                    suppressed_since_last = suppressed,
                    "webhook refused: {rejected}"
                );
            }
            return error(
                StatusCode::BAD_REQUEST,
                rejected.code(),
                rejected.to_string(),
            );
        }
    }
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
    if let Some(sink) = &state.durable {
        let event = CheckoutEvent {
            event_id: event.id,
            event_type: event.kind,
            session: session.id,
            email,
            amount_total: session.amount_total.unwrap_or(0),
            currency: session.currency.unwrap_or_else(|| "usd".to_owned()),
            payload: serde_json::from_slice(&body).unwrap_or_default(),
        };
        let id = event.event_id.clone();
        return match sink.record(event).await {
            Ok(Recorded::New { enqueued }) => Json(
                json!({ "received": true, "event": id, "enqueued": enqueued, "duplicate": false }),
            )
            .into_response(),
            Ok(Recorded::Duplicate) => {
                Json(json!({ "received": true, "event": id, "enqueued": [], "duplicate": true }))
                    .into_response()
            }
            Err(message) => {
                if let Some(suppressed) = state.store_errors.admit() {
                    tracing::warn!(
                        event.id = %id,
                        suppressed_since_last = suppressed,
                        "webhook answered 503, the event is not recorded: {message}"
                    );
                }
                store_unavailable()
            }
        };
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
