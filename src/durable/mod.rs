//! Durable jobs on Postgres (feature `postgres`): work that must survive
//! crashes and deploys, shared by any number of processes.
//!
//! The in-memory [`BackgroundTx`](crate::BackgroundTx) stays the default
//! for fire-and-forget work; a durable job is a row in `bg_jobs`, written
//! in the caller's transaction, so it exists exactly when the caller's own
//! writes do.
//!
//! # Pieces
//!
//! - [`migrate`] creates and upgrades the table (embedded, versioned,
//!   idempotent; run it at start-up from every replica).
//! - A [`Job`] type names itself and serializes its arguments;
//!   [`Client::enqueue`] inserts one in the caller's transaction (or outside
//!   one), [`Client::enqueue_batch`] many, with [`EnqueueOptions`] for the
//!   queue, a delay or time ([`RunAt`]), the attempts and a unique key.
//! - A worker ([`WorkerBuilder`]) serves one queue with `parallelism`
//!   handlers at once.
//! - [`snapshot`] reads the queues for people: counts by state, the oldest
//!   due job's age, running jobs, recent failures, discarded jobs with
//!   their error history (the data of `/debug/bg`'s durable section).
//!
//! # States
//!
//! `available` (due), `scheduled` (enqueued with a later `run_at`),
//! `running` (leased to a worker), `retryable` (failed, due again at
//! `run_at`), `completed`, `discarded` (attempts exhausted, or arguments
//! that do not decode), `cancelled` (set by hand; never run). Workers take
//! `available`, `scheduled` and `retryable` rows whose `run_at` has passed,
//! on the database's clock.
//!
//! # When jobs start
//!
//! An idle worker wakes on the `NOTIFY` of an enqueue (delivered at
//! commit), when its queue's next delayed job or retry comes due, and at
//! least every `poll_interval` (default 1 s; the fallback for
//! notifications lost while its listening connection was down). A due job
//! starts within a few milliseconds on an idle worker.
//!
//! # Delivery: at-least-once
//!
//! A job runs at least once, and more than once when a worker stops
//! without recording the outcome: it was killed or lost the database
//! after the handler's side effects, so the lease expired and the job ran
//! again, or its completion never reached the database. Make handlers
//! idempotent (a unique constraint on what they write, an idempotency key
//! to the email provider). A graceful [`WorkerHandle::shutdown`] returns
//! unfinished jobs at once, without counting the attempt.
//!
//! # Unique keys and the dedupe window
//!
//! [`EnqueueOptions::unique_key`] deduplicates per job name against every
//! retained row that is not `discarded` or `cancelled`, completed ones
//! included, so the dedupe window is the retention
//! ([`WorkerBuilder::retention`], default 24 h). Stripe retries a webhook
//! for up to three days: keep its rows at least that long to dedupe its
//! redeliveries.
//!
//! # Jobs without a handler
//!
//! A worker fetches only the job names it has handlers for. A row whose
//! `task_name` no worker knows stays `available`: during a rolling deploy
//! the newer release may know it, and discarding it would lose it. It shows
//! in `bg.queue.depth` and `bg.queue.oldest_age`, which alert. A row whose
//! arguments do not decode into its job type is discarded at once with a
//! `decode` error (retrying cannot fix it).
//!
//! # Failures and retries
//!
//! An `Err`, a panic (caught) or the attempt timeout appends
//! `{attempt, at, outcome, type, error}` to the row's `errors` and
//! schedules the next attempt after [`Backoff`] (exponential, jittered),
//! until `max_attempts`; then the job is `discarded`, its whole error
//! history kept until pruned.
//!
//! # Database outages
//!
//! Every loop backs off (100 ms doubling to 10 s, jittered) and logs one
//! WARN per operation every 30 s with the count held back; nothing is
//! dropped: completions and failures are retried until written, and jobs
//! whose leases lapsed meanwhile run again (at-least-once).
//!
//! # Telemetry
//!
//! The in-memory pool's names, `bg.pool.name` being the queue; see
//! [`DURABLE_METRICS`] and docs/telemetry.md.

mod attempt;
mod builder;
mod complete;
mod enqueue;
mod error;
mod fetch;
mod job;
mod lease;
mod migrate;
mod notify;
mod retention;
mod retry;
mod snapshot;
mod telemetry;
mod worker;

pub use builder::WorkerBuilder;
pub use enqueue::{
    Client, EnqueueBatch, EnqueueOptions, RunAt, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE,
};
pub use error::{Error, Result};
pub use job::{Job, JobContext, JobId};
pub use migrate::{migrate, Schema, SCHEMA_VERSION};
pub use retry::Backoff;
pub use snapshot::{
    snapshot, DiscardedJob, DurableSnapshot, FailedAttempt, QueueSnapshot, RunningJob, STATES,
};
pub use telemetry::{names, DURABLE_METRICS};
pub use worker::{ShutdownReport, WorkerHandle, WorkerStats};
