//! `/debug/bg`: a live page for on-call engineers, with no infrastructure.
//!
//! **Keep it off the internet.** The page shows task names and the text of
//! task errors and panics, which may contain personal data (an email
//! address in an SMTP error, say): serve it on a private address or behind
//! your own authentication, never on a listener that faces the internet.
//! Every request also takes each pool's lock briefly.
//!
//! The router is a `Router<S>` for any state `S`, so it merges before or
//! after your own `with_state`:
//!
//! ```no_run
//! # #[derive(Clone)] struct AppState;
//! # async fn run(bg: bg_queue::BackgroundTx, state: AppState) {
//! let app = axum::Router::new()
//!     // ... your routes, using State<AppState> ...
//!     .merge(bg_queue::DebugPage::new().pool(bg).router())
//!     // .layer(your_admin_auth_layer)
//!     .with_state(state);
//! # let _: axum::Router = app;
//! # }
//! ```
//!
//! `GET /debug/bg` serves HTML that renders without scripts and refreshes
//! itself every two seconds when scripts run; `GET /debug/bg.json` serves the
//! same figures as JSON. Both answer `HEAD`, send `Cache-Control: no-store`,
//! and answer other methods with 405. A response's size is bounded: per pool
//! it holds one row per task name, at most 20 drops, 20 failures (each
//! error text cut to 500 characters), 20 slow runs and 300 depth samples.

use axum::extract::{Query, State};
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

#[cfg(feature = "postgres")]
mod durable;

use crate::snapshot::{PoolSnapshot, TaskSnapshot};
use crate::{BackgroundTx, Percentiles};

/// Default Jaeger UI address, used when `JAEGER_UI_URL` is not set.
pub const DEFAULT_JAEGER_UI_URL: &str = "http://localhost:16686";

/// Configures the debug router: which pools to show and where Jaeger is.
#[derive(Debug, Clone)]
#[must_use = "call `router()` to get something to mount"]
pub struct DebugPage {
    pools: Vec<BackgroundTx>,
    jaeger_ui_url: String,
    #[cfg(feature = "postgres")]
    durable: Option<durable::DurableSource>,
}

impl Default for DebugPage {
    fn default() -> Self {
        Self::new()
    }
}

impl DebugPage {
    /// No pools yet; the Jaeger address from `JAEGER_UI_URL`, defaulting to
    /// `http://localhost:16686`.
    pub fn new() -> Self {
        let jaeger_ui_url = std::env::var("JAEGER_UI_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_JAEGER_UI_URL.to_owned());
        DebugPage {
            pools: Vec::new(),
            jaeger_ui_url,
            #[cfg(feature = "postgres")]
            durable: None,
        }
    }

    /// Shows the durable queues of the jobs table in `schema` (feature
    /// `postgres`): counts by state, the oldest due job's age, running
    /// jobs, recent failed attempts and discarded jobs with their errors.
    /// Read on each request; an unreachable database shows as one line.
    #[cfg(feature = "postgres")]
    pub fn durable(mut self, pool: sqlx::PgPool, schema: crate::durable::Schema) -> Self {
        self.durable = Some(durable::DurableSource { pool, schema });
        self
    }

    /// The durable section, or nothing when none is configured.
    async fn durable_section(&self) -> Markup {
        #[cfg(feature = "postgres")]
        if let Some(source) = &self.durable {
            return durable::section(&source.read().await, &self.jaeger_ui_url);
        }
        html! {}
    }

    /// The durable queues as JSON, or `None` when none is configured.
    async fn durable_json(&self) -> Option<serde_json::Value> {
        #[cfg(feature = "postgres")]
        if let Some(source) = &self.durable {
            return Some(match source.read().await {
                Ok(snapshot) => serde_json::to_value(snapshot).unwrap_or_default(),
                Err(error) => serde_json::json!({ "error": error }),
            });
        }
        None
    }

    /// Adds a pool to the page.
    pub fn pool(mut self, pool: BackgroundTx) -> Self {
        self.pools.push(pool);
        self
    }

    /// The Jaeger UI base address trace ids link to. Defaults to
    /// `JAEGER_UI_URL` or `http://localhost:16686`.
    pub fn jaeger_ui_url(mut self, url: impl Into<String>) -> Self {
        self.jaeger_ui_url = url.into();
        self
    }

    /// The router serving `/debug/bg` and `/debug/bg.json`, for any
    /// application state `S` (it carries its own).
    pub fn router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let state = std::sync::Arc::new(self);
        Router::new()
            .route("/debug/bg", get(html_page))
            .route("/debug/bg.json", get(json_page))
            .with_state(state)
    }

    fn snapshots(&self) -> Vec<PoolSnapshot> {
        self.pools.iter().map(BackgroundTx::snapshot).collect()
    }
}

/// Shorthand for `DebugPage::new()` with these pools, then `.router()`.
pub fn debug_router<S>(pools: impl IntoIterator<Item = BackgroundTx>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    pools
        .into_iter()
        .fold(DebugPage::new(), DebugPage::pool)
        .router()
}

type PageState = State<std::sync::Arc<DebugPage>>;

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(serde::Serialize)]
struct JsonBody {
    pools: Vec<PoolSnapshot>,
    /// The durable queues (`{"queues": [...]}`, or `{"error": ...}`), when
    /// the page shows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    durable: Option<serde_json::Value>,
}

async fn json_page(State(page): PageState) -> Response {
    let body = JsonBody {
        pools: page.snapshots(),
        durable: page.durable_json().await,
    };
    // Serializing plain counters and strings cannot fail.
    let json = serde_json::to_vec(&body).unwrap_or_default();
    no_store(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(Deserialize)]
struct PageQuery {
    /// `?partial=1`: only the live part, for the refresh script.
    #[serde(default)]
    partial: Option<String>,
}

async fn html_page(State(page): PageState, Query(query): Query<PageQuery>) -> Response {
    let snapshots = page.snapshots();
    let durable = page.durable_section().await;
    let partial = query.partial.is_some();
    let body = if partial {
        live_part(&snapshots, &durable, &page.jaeger_ui_url)
    } else {
        full_page(&snapshots, &durable, &page.jaeger_ui_url)
    };
    no_store(axum::response::Html(body.into_string()).into_response())
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#fafbfc}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.muted{color:#667085} .pool{background:#fff;border:1px solid #d0d5dd;border-radius:8px;padding:1em;margin:1em 0}
.hot{border-color:#d92d20;box-shadow:0 0 0 2px #fecdca}
.bar{position:relative;height:22px;background:#eaecf0;border-radius:4px;overflow:hidden;margin:.3em 0}
.fill{height:100%;background:#2e90fa} .fill.warn{background:#f79009} .fill.crit{background:#d92d20}
.bar span{position:absolute;left:8px;top:2px;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:1.5em;margin:.6em 0} .fig b{display:block;font-size:1.4em}
.bad b{color:#d92d20}
table{border-collapse:collapse;width:100%;margin:.3em 0} th,td{padding:3px 8px;border-bottom:1px solid #eaecf0;text-align:right}
th:first-child,td:first-child{text-align:left} tr.bad td{background:#fef3f2}
svg{background:#f2f4f7;border-radius:4px}
summary{cursor:pointer;color:#475467;margin:.2em 0 .6em}
table.fold{table-layout:fixed} table.fold th:first-child,table.fold td:first-child{width:16em}
"#;

const SCRIPT: &str = r#"
(function(){
  var live=document.getElementById('live');
  function tick(){
    fetch(location.pathname+'?partial=1',{cache:'no-store'})
      .then(function(r){return r.ok?r.text():Promise.reject(r.status)})
      .then(function(t){
        var open=[].map.call(live.querySelectorAll('details[open]'),function(d){return d.id;});
        live.innerHTML=t;
        open.forEach(function(id){var d=document.getElementById(id);if(d){d.open=true;}});
        document.getElementById('stale').textContent='';})
      .catch(function(){document.getElementById('stale').textContent=' (refresh failed; retrying)';});
  }
  setInterval(tick,2000);
})();
"#;

fn full_page(snapshots: &[PoolSnapshot], durable: &Markup, jaeger: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "bg-queue: background tasks" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Background tasks" }
                p.muted {
                    "Live view of the bg-queue pools in this process. Refreshes every 2 s"
                    span #stale {}
                    ". JSON: " a href="bg.json" { "bg.json" }
                }
                div #live { (live_part(snapshots, durable, jaeger)) }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

fn live_part(snapshots: &[PoolSnapshot], durable: &Markup, jaeger: &str) -> Markup {
    html! {
        @if snapshots.is_empty() {
            p { "No pools registered." }
        }
        @for pool in snapshots {
            (pool_section(pool, jaeger))
        }
        (durable)
    }
}

fn ratio(part: u64, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).min(1.0)
    }
}

fn level(fraction: f64) -> &'static str {
    if fraction >= 0.9 {
        "fill crit"
    } else if fraction >= 0.6 {
        "fill warn"
    } else {
        "fill"
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

fn pool_section(pool: &PoolSnapshot, jaeger: &str) -> Markup {
    let depth = ratio(pool.queued, pool.capacity);
    let busy = ratio(pool.running, pool.parallelism);
    let hot =
        depth >= 0.9 || pool.dropped_by_reason.queue_full > 0 && !pool.recent_drops.is_empty();
    html! {
        section.pool.hot[hot] data-pool=(pool.name) {
            h2 { "Pool " code { (pool.name) } @if !pool.accepting { " (closed)" } }
            div.bar title="queued / capacity" {
                div class=(level(depth)) style=(format!("width:{:.1}%", depth * 100.0)) {}
                span data-field="depth" { "queued " (pool.queued) " / " (pool.capacity) }
            }
            div.bar title="running / parallelism" {
                div class=(level(busy)) style=(format!("width:{:.1}%", busy * 100.0)) {}
                span data-field="running" { "running " (pool.running) " / " (pool.parallelism) }
            }
            div.figs {
                div.fig.bad[pool.oldest_queued_seconds >= 10.0] { b data-field="oldest" { (format!("{:.1} s", pool.oldest_queued_seconds)) } "oldest queued" }
                div.fig { b { (pool.spawned) } "spawned" }
                div.fig { b { (pool.completed) } "completed" }
                div.fig.bad[pool.failed > 0] { b { (pool.failed) } "failed" }
                div.fig.bad[pool.dropped > 0] {
                    b data-field="dropped" { (pool.dropped) }
                    "dropped (full " (pool.dropped_by_reason.queue_full)
                    ", closed " (pool.dropped_by_reason.closed)
                    ", no runtime " (pool.dropped_by_reason.no_runtime) ")"
                }
                div.fig.bad[pool.panicked > 0] { b { (pool.panicked) } "panicked" }
                div.fig.bad[pool.timed_out > 0] { b { (pool.timed_out) } "timed out" }
                div.fig.bad[pool.abandoned > 0] { b { (pool.abandoned) } "abandoned" }
            }
            (depth_chart(&pool.depth_history, pool.queued, pool.capacity))
            h2 { "By task" }
            table {
                thead { tr {
                    th { "task" } th { "queued" } th { "running" } th { "spawned" } th { "completed" }
                    th { "failed" } th { "dropped" } th { "panicked" } th { "timed out" }
                    th { "wait p50 / p99 ms" } th { "run p50 / p99 / max ms" }
                    th { "busy p50 / p99 / max ms" }
                } }
                tbody {
                    @for task in &pool.tasks { (task_row(task)) }
                }
            }
            h2 { "Recent failures" }
            @if pool.recent_failures.is_empty() { p.muted { "None." } } @else {
                (folded_table(
                    &format!("failures-{}", pool.name),
                    html! { th { "at" } th { "task" } th { "outcome" } th { "error" } th { "trace" } },
                    pool.recent_failures.iter().map(|failure| html! { tr.bad {
                        td { (failure.at) } td { (failure.task) } td { (failure.outcome) }
                        td.error { (failure.error) }
                        td { (trace_link(jaeger, failure.trace_id.as_deref())) }
                    } }),
                ))
            }
            h2 { "Recent drops" }
            @if pool.recent_drops.is_empty() { p.muted { "None." } } @else {
                (folded_table(
                    &format!("drops-{}", pool.name),
                    html! { th { "at" } th { "task" } th { "reason" } th { "trace" } },
                    pool.recent_drops.iter().map(|drop| html! { tr.bad {
                        td { (drop.at) } td { (drop.task) } td { (drop.reason) } td { (trace_link(jaeger, drop.trace_id.as_deref())) }
                    } }),
                ))
            }
            h2 { "Slowest recent runs" }
            @if pool.slowest.is_empty() { p.muted { "None yet." } } @else {
                (folded_table(
                    &format!("slowest-{}", pool.name),
                    html! { th { "at" } th { "task" } th { "outcome" } th { "wait ms" } th { "run ms" } th { "trace" } },
                    pool.slowest.iter().map(|slow| html! { tr.bad[slow.outcome != "ok"] {
                        td { (slow.at) } td { (slow.task) } td { (slow.outcome) }
                        td { (format!("{:.1}", slow.wait_ms)) } td { (format!("{:.1}", slow.run_ms)) }
                        td { (trace_link(jaeger, slow.trace_id.as_deref())) }
                    } }),
                ))
            }
        }
    }
}

/// Rows shown before the "more" fold of the drops and slowest tables.
const FOLD_AFTER: usize = 5;

/// A table showing its first [`FOLD_AFTER`] rows, the rest behind a
/// `<details>` fold (no script needed; the refresh script keeps a fold the
/// reader opened open).
fn folded_table(id: &str, head: Markup, rows: impl Iterator<Item = Markup>) -> Markup {
    let rows: Vec<Markup> = rows.collect();
    let (first, rest) = rows.split_at(rows.len().min(FOLD_AFTER));
    html! {
        // Fixed layout: both tables split the width the same way, so the
        // folded rows line up with the ones above them.
        table.fold {
            thead { tr { (head) } }
            tbody { @for row in first { (row) } }
        }
        @if !rest.is_empty() {
            details id=(id) {
                summary { (rest.len()) " more" }
                table.fold { tbody { @for row in rest { (row) } } }
            }
        }
    }
}

fn task_row(task: &TaskSnapshot) -> Markup {
    let bad = task.dropped + task.failed + task.panicked + task.timed_out > 0;
    let pair = |p: &Percentiles| format!("{} / {}", ms(p.p50), ms(p.p99));
    html! {
        tr.bad[bad] {
            td { code { (task.name) } } td { (task.queued) } td { (task.running) } td { (task.spawned) }
            td { (task.completed) } td { (task.failed) } td { (task.dropped) } td { (task.panicked) }
            td { (task.timed_out) } td { (pair(&task.wait_ms)) }
            td { (pair(&task.run_ms)) " / " (ms(task.run_ms.max)) }
            td { (pair(&task.busy_ms)) " / " (ms(task.busy_ms.max)) }
        }
    }
}

fn trace_link(jaeger: &str, trace_id: Option<&str>) -> Markup {
    html! {
        @match trace_id {
            Some(id) => a href=(format!("{}/trace/{}", jaeger.trim_end_matches('/'), id)) { code { (id.get(..16).unwrap_or(id)) "…" } },
            None => span.muted { "–" },
        }
    }
}

/// Depth per second (each second's highest) over the last five minutes as an
/// inline SVG polyline (seconds before the pool existed count as 0), with a
/// dashed line at the capacity when the peak comes near it. The caption's
/// "now" is `queued`, the same figure as the bar above it (the last sample
/// is the current second's highest, which may be above it).
fn depth_chart(samples: &[u32], queued: u64, capacity: usize) -> Markup {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 64.0;
    let window = crate::stats::DEPTH_HISTORY_SECS;
    let padded: Vec<u32> = std::iter::repeat_n(0, window.saturating_sub(samples.len()))
        .chain(samples.iter().copied())
        .collect();
    let peak = padded.iter().copied().max().unwrap_or(0);
    let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
    // Scale to the peak, or to the capacity once the peak nears it.
    let top = if peak * 5 >= capacity * 4 {
        capacity
    } else {
        peak.max(1)
    } as f64;
    let step = WIDTH / (padded.len().max(2) - 1) as f64;
    let y = |depth: u32| HEIGHT - 1.0 - (f64::from(depth).min(top) / top) * (HEIGHT - 4.0);
    let points: String = padded
        .iter()
        .enumerate()
        .map(|(i, depth)| format!("{:.1},{:.1} ", i as f64 * step, y(*depth)))
        .collect();
    html! {
        figure style="margin:.4em 0" {
            svg width=(WIDTH) height=(HEIGHT) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
                aria-label=(format!("queue depth over the last 5 minutes, now {queued}, peak {peak}")) {
                @if top as u32 == capacity {
                    line x1="0" x2=(WIDTH) y1=(y(capacity)) y2=(y(capacity)) stroke="#d92d20" stroke-dasharray="4 3" {}
                }
                polyline fill="none" stroke="#2e90fa" stroke-width="1.5" points=(points) {}
            }
            figcaption.muted {
                "queue depth, last 5 min (now " (queued) ", peak " (peak)
                @if top as u32 == capacity { ", dashed line: capacity " (capacity) }
                ")"
            }
        }
    }
}
