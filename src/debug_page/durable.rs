//! The durable queues' part of `/debug/bg` (feature `postgres`): counts by
//! state, the oldest due job's age, running jobs, recent failed attempts
//! with their errors, and discarded jobs with their error history.
//!
//! Read from the jobs table on each request (five read-only statements,
//! see [`durable::snapshot`](crate::durable::snapshot)). A database that
//! does not answer within [`READ_LIMIT`] gives the page a one-line error in
//! place of the section; the in-memory pools are shown regardless.

use std::time::Duration;

use maud::{html, Markup};
use sqlx::PgPool;

use super::{folded_table, trace_link};
use crate::durable::{self, DurableSnapshot, QueueSnapshot, Schema, STATES};

/// How long a request waits for the jobs table before it shows the error.
const READ_LIMIT: Duration = Duration::from_secs(2);
/// Running jobs, failures and discarded jobs listed per queue.
const LISTED: usize = 20;

/// Where the durable queues live.
#[derive(Debug, Clone)]
pub(super) struct DurableSource {
    pub(super) pool: PgPool,
    pub(super) schema: Schema,
}

impl DurableSource {
    /// The queues, or why they could not be read.
    pub(super) async fn read(&self) -> Result<DurableSnapshot, String> {
        match tokio::time::timeout(
            READ_LIMIT,
            durable::snapshot(&self.pool, &self.schema, LISTED),
        )
        .await
        {
            Ok(Ok(snapshot)) => Ok(snapshot),
            Ok(Err(error)) => Err(format!("the jobs table could not be read: {error}")),
            Err(_) => Err(format!(
                "the jobs table did not answer within {} s",
                READ_LIMIT.as_secs()
            )),
        }
    }
}

/// The section: one block per queue.
pub(super) fn section(read: &Result<DurableSnapshot, String>, jaeger: &str) -> Markup {
    html! {
        h2 { "Durable queues (Postgres)" }
        @match read {
            Err(error) => p.bad { (error) },
            Ok(snapshot) if snapshot.queues.is_empty() => p.muted { "No jobs in the table." },
            Ok(snapshot) => @for queue in &snapshot.queues { (queue_section(queue, jaeger)) },
        }
    }
}

fn queue_section(queue: &QueueSnapshot, jaeger: &str) -> Markup {
    let count = |state: &str| queue.states.get(state).copied().unwrap_or(0);
    html! {
        section.pool.durable {
            h2 { "Queue " code { (queue.name) } }
            table {
                thead { tr { @for state in STATES { th { (state) } } th { "oldest due" } } }
                tbody { tr {
                    @for state in STATES {
                        td.bad[state == "discarded" && count(state) > 0] { (count(state)) }
                    }
                    td { (format!("{:.1} s", queue.oldest_available_seconds)) }
                } }
            }
            h2 { "Running" }
            @if queue.running.is_empty() { p.muted { "None." } } @else {
                (folded_table(
                    &format!("durable-running-{}", queue.name),
                    html! { th { "id" } th { "task" } th { "attempt" } th { "worker" } th { "running s" } th { "lease left s" } },
                    queue.running.iter().map(|job| html! { tr.bad[job.lease_left_seconds < 0.0] {
                        td { (job.id) } td { (job.task) } td { (job.attempt) " / " (job.max_attempts) }
                        td { (job.worker.as_deref().unwrap_or("–")) }
                        td { (format!("{:.1}", job.running_seconds)) }
                        td { (format!("{:.1}", job.lease_left_seconds)) }
                    } }),
                ))
            }
            h2 { "Recent failed attempts" }
            @if queue.recent_failures.is_empty() { p.muted { "None." } } @else {
                (folded_table(
                    &format!("durable-failures-{}", queue.name),
                    html! { th { "at" } th { "id" } th { "task" } th { "attempt" } th { "outcome" } th { "error" } th { "trace" } },
                    queue.recent_failures.iter().map(|failure| html! { tr.bad {
                        td { (failure.at) } td { (failure.id) } td { (failure.task) } td { (failure.attempt) }
                        td { (failure.outcome) } td.error { (failure.error) }
                        td { (trace_link(jaeger, failure.trace_id.as_deref())) }
                    } }),
                ))
            }
            h2 { "Discarded" }
            @if queue.discarded.is_empty() { p.muted { "None." } } @else {
                (folded_table(
                    &format!("durable-discarded-{}", queue.name),
                    html! { th { "finished" } th { "id" } th { "task" } th { "attempts" } th { "errors, oldest first" } th { "trace" } },
                    queue.discarded.iter().map(|job| html! { tr.bad {
                        td { (job.finished_at) } td { (job.id) } td { (job.task) } td { (job.attempts) }
                        td.error { (error_history(&job.errors)) }
                        td { (trace_link(jaeger, job.trace_id.as_deref())) }
                    } }),
                ))
            }
        }
    }
}

/// A discarded job's `errors` as one line per attempt.
fn error_history(errors: &serde_json::Value) -> Markup {
    let entries = errors.as_array().map(Vec::as_slice).unwrap_or_default();
    html! {
        @for entry in entries {
            div {
                "#" (entry.get("attempt").map(ToString::to_string).unwrap_or_default()) " "
                (entry.get("outcome").and_then(serde_json::Value::as_str).unwrap_or("")) ": "
                (entry.get("error").and_then(serde_json::Value::as_str).unwrap_or(""))
            }
        }
    }
}
