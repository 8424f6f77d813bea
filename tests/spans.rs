//! Spans as an application sees them: `tracing` + `tracing-opentelemetry` +
//! the SDK, exported into memory.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_queue::{Builder, Propagation, RunSpan};
use common::{attr, attr_str, names, Tracing};
use opentelemetry::trace::{SpanId, Status};
use opentelemetry::Value;
use tokio::sync::{oneshot, Semaphore};
use tracing::Instrument;

fn pool(tracing: &Tracing, propagation: Propagation) -> bg_queue::BackgroundTx {
    Builder::new("mail")
        .parallelism(1)
        .capacity(4)
        .propagation(propagation)
        .tracer(tracing.tracer())
        .build()
        .unwrap()
}

#[tokio::test]
async fn child_mode_chains_caller_task_run_and_user_spans() {
    exports_the_request_tree(RunSpan::Tracing).await;
}

/// `RunSpan::OpenTelemetry`: `bg.run` comes from the tracer, yet the exported
/// tree, names, attributes and statuses are the default mode's, and the
/// task's own `tracing` spans still nest under it.
#[tokio::test]
async fn opentelemetry_run_spans_export_the_same_tree() {
    exports_the_request_tree(RunSpan::OpenTelemetry).await;
}

/// A webhook-like caller spawns a task with nested spans of its own and a
/// failing one; checks parents, attributes, statuses and timing.
async fn exports_the_request_tree(run_span: RunSpan) {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = Builder::new("mail")
        .parallelism(1)
        .capacity(4)
        .run_span(run_span)
        .tracer(tracing.tracer())
        .build()
        .unwrap();

    async {
        bg.spawn("send_receipt_email", async {
            async {
                tracing::info_span!("smtp.rcpt").in_scope(|| {});
            }
            .instrument(tracing::info_span!("smtp.send"))
            .await
        });
        bg.spawn_fallible("subscribe", async { Err::<(), _>("list API answered 503") });
    }
    .instrument(tracing::info_span!("POST /webhooks/stripe"))
    .await;
    bg.idle().await;

    let caller = tracing.span("POST /webhooks/stripe");
    let task = tracing.span("bg send_receipt_email");
    let run = tracing.span("run send_receipt_email");
    let user = tracing.span("smtp.send");
    let nested = tracing.span("smtp.rcpt");
    let trace_id = caller.span_context.trace_id();
    for span in [&task, &run, &user, &nested] {
        assert_eq!(span.span_context.trace_id(), trace_id, "{}", span.name);
    }
    assert_eq!(task.parent_span_id, caller.span_context.span_id());
    assert_eq!(run.parent_span_id, task.span_context.span_id());
    assert_eq!(user.parent_span_id, run.span_context.span_id());
    assert_eq!(nested.parent_span_id, user.span_context.span_id());

    for span in [&task, &run] {
        assert_eq!(attr_str(span, "bg.pool.name").as_deref(), Some("mail"));
        assert_eq!(
            attr_str(span, "bg.task.name").as_deref(),
            Some("send_receipt_email")
        );
        assert_eq!(attr_str(span, "bg.task.outcome").as_deref(), Some("ok"));
        assert_eq!(span.status, Status::Unset);
        assert!(attr(span, "bg.task.wait_ms").is_some());
    }
    assert_eq!(attr(&task, "bg.queue.depth"), Some(Value::I64(1)));
    // bg.task covers the whole life: it starts no later than bg.run and ends
    // no earlier; bg.run covers the user's span.
    assert!(task.start_time <= run.start_time && task.end_time >= run.end_time);
    assert!(run.start_time <= user.start_time && run.end_time >= user.end_time);

    for name in ["bg subscribe", "run subscribe"] {
        let failed = tracing.span(name);
        assert_eq!(
            attr_str(&failed, "bg.task.outcome").as_deref(),
            Some("failed")
        );
        assert_eq!(attr_str(&failed, "error.type").as_deref(), Some("&str"));
        assert_eq!(failed.status, Status::error("list API answered 503"));
    }
}

/// The recorded wait runs from inside `spawn` to the runner's pick-up, so
/// it must lie between two instants the test can read: from just after
/// `spawn` returned to just before the blocker was released (a lower
/// bound), and from just before `spawn` was called to the task's first
/// poll (an upper bound). Both bounds hold however the threads are
/// scheduled; a fixed tolerance did not, on a loaded machine.
#[tokio::test]
async fn wait_ms_matches_the_wait_measured_by_the_test() {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = pool(&tracing, Propagation::Child);
    let gate = Arc::new(Semaphore::new(0));
    {
        let gate = gate.clone();
        bg.spawn("blocker", async move {
            let _ = gate.acquire().await;
        });
    }
    let (started_tx, started_rx) = oneshot::channel();
    let spawned_at = Instant::now();
    bg.spawn("waiter", async move {
        let _ = started_tx.send(Instant::now());
    });
    let returned_at = Instant::now();
    // Let the queue wait a measurable while, then release the blocker.
    let (tick_tx, tick_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = tick_tx.send(());
    });
    tick_rx.await.unwrap();
    let released_at = Instant::now();
    gate.add_permits(1);
    let started_at = started_rx.await.unwrap();
    bg.idle().await;

    let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1000.0;
    let at_least_ms = ms(returned_at, released_at);
    let at_most_ms = ms(spawned_at, started_at);
    let task = tracing.span("bg waiter");
    let Some(Value::F64(recorded_ms)) = attr(&task, "bg.task.wait_ms") else {
        panic!("no wait_ms on {task:?}");
    };
    assert!(at_least_ms >= 30.0);
    // 1 us of slack for rounding (the bounds are exact otherwise).
    assert!(
        at_least_ms - 0.001 <= recorded_ms && recorded_ms <= at_most_ms + 0.001,
        "recorded {recorded_ms} ms, outside [{at_least_ms}, {at_most_ms}] ms"
    );
    let span_wait = task.end_time.duration_since(task.start_time).unwrap();
    assert!(span_wait.as_secs_f64() * 1000.0 >= recorded_ms - 1.0);
}

#[tokio::test]
async fn the_caller_span_is_exported_while_the_task_still_waits() {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = pool(&tracing, Propagation::Child);
    let gate = Arc::new(Semaphore::new(0));
    let task_gate = gate.clone();
    async {
        bg.spawn("slow_email", async move {
            let _ = task_gate.acquire().await;
        });
    }
    .instrument(tracing::info_span!("webhook"))
    .await;
    // The caller is done; its span must be exported now, not when the
    // background task ends.
    let exported = names(&tracing.spans());
    assert_eq!(exported, vec!["webhook".to_owned()]);
    gate.add_permits(1);
    bg.idle().await;
    assert_eq!(tracing.spans().len(), 3);
}

#[tokio::test]
async fn link_mode_starts_a_new_trace_linked_to_the_caller() {
    link_mode_tree(RunSpan::Tracing).await;
}

#[tokio::test]
async fn opentelemetry_run_spans_in_link_mode_start_a_linked_trace() {
    link_mode_tree(RunSpan::OpenTelemetry).await;
}

async fn link_mode_tree(run_span: RunSpan) {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = Builder::new("mail")
        .propagation(Propagation::Link)
        .run_span(run_span)
        .tracer(tracing.tracer())
        .build()
        .unwrap();
    async {
        bg.spawn("digest", async {
            tracing::info_span!("render").in_scope(|| {});
        });
    }
    .instrument(tracing::info_span!("request"))
    .await;
    bg.idle().await;
    let caller = tracing.span("request");
    let task = tracing.span("bg digest");
    let run = tracing.span("run digest");
    let user = tracing.span("render");
    assert_eq!(task.span_context.trace_id(), caller.span_context.trace_id());
    assert_eq!(task.parent_span_id, caller.span_context.span_id());
    assert_ne!(run.span_context.trace_id(), caller.span_context.trace_id());
    assert_eq!(run.parent_span_id, SpanId::INVALID);
    let links: Vec<_> = run.links.iter().map(|l| l.span_context.clone()).collect();
    assert_eq!(links, vec![caller.span_context.clone()]);
    assert_eq!(user.parent_span_id, run.span_context.span_id());
}

#[tokio::test]
async fn none_mode_makes_each_task_its_own_trace() {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = pool(&tracing, Propagation::None);
    async {
        bg.spawn("cleanup", async {});
    }
    .instrument(tracing::info_span!("request"))
    .await;
    bg.idle().await;
    let caller = tracing.span("request");
    let task = tracing.span("bg cleanup");
    let run = tracing.span("run cleanup");
    assert_ne!(task.span_context.trace_id(), caller.span_context.trace_id());
    assert_eq!(task.parent_span_id, SpanId::INVALID);
    assert_eq!(run.parent_span_id, task.span_context.span_id());
}

#[tokio::test]
async fn failed_panicked_and_timed_out_set_error_status_and_type() {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = Builder::new("mail")
        .timeout(Duration::from_millis(20))
        .tracer(tracing.tracer())
        .build()
        .unwrap();
    #[derive(Debug)]
    struct SmtpRefused;
    impl std::fmt::Display for SmtpRefused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("550 mailbox unavailable")
        }
    }
    async {
        bg.spawn_fallible("fails", async { Err::<(), _>(SmtpRefused) });
        bg.spawn("panics", async {
            if true {
                panic!("template missing")
            }
        });
        bg.spawn("hangs", std::future::pending::<()>());
    }
    .instrument(tracing::info_span!("request"))
    .await;
    bg.idle().await;

    let cases = [
        (
            "fails",
            "failed",
            "550 mailbox unavailable",
            std::any::type_name::<SmtpRefused>(),
        ),
        ("panics", "panicked", "panicked: template missing", "panic"),
        ("hangs", "timed_out", "timed out", "timeout"),
    ];
    for (task_name, outcome, message, error_type) in cases {
        for span in [
            tracing.span(&format!("bg {task_name}")),
            tracing.span(&format!("run {task_name}")),
        ] {
            assert_eq!(attr_str(&span, "bg.task.outcome").as_deref(), Some(outcome));
            assert_eq!(span.status, Status::error(message), "{}", span.name);
            assert_eq!(attr_str(&span, "error.type").as_deref(), Some(error_type));
        }
    }
}

#[tokio::test]
async fn a_dropped_task_still_has_its_span_under_the_caller() {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = pool(&tracing, Propagation::Child);
    let gate = Arc::new(Semaphore::new(0));
    async {
        // The runner has not started yet (nothing yielded), so all four
        // are queued and the queue (capacity 4) is full: the fifth drops.
        for _ in 0..4 {
            let gate = gate.clone();
            bg.spawn("send_receipt_email", async move {
                let _ = gate.acquire().await;
            });
        }
        bg.spawn("send_receipt_email", async {});
    }
    .instrument(tracing::info_span!("POST /webhooks/stripe"))
    .await;
    let caller = tracing.span("POST /webhooks/stripe");
    let dropped = tracing.span("bg send_receipt_email");
    assert_eq!(dropped.parent_span_id, caller.span_context.span_id());
    assert_eq!(
        dropped.span_context.trace_id(),
        caller.span_context.trace_id()
    );
    assert_eq!(
        attr_str(&dropped, "bg.task.outcome").as_deref(),
        Some("dropped")
    );
    assert_eq!(
        attr_str(&dropped, "bg.drop.reason").as_deref(),
        Some("queue_full")
    );
    assert_eq!(dropped.status, Status::error("dropped: queue_full"));
    let snapshot = bg.snapshot();
    assert_eq!(
        snapshot.recent_drops[0].trace_id.as_deref(),
        Some(format!("{:032x}", caller.span_context.trace_id()).as_str())
    );
    gate.add_permits(10);
    bg.idle().await;
}

#[tokio::test(start_paused = true)]
async fn tasks_abandoned_at_shutdown_end_their_spans_as_abandoned() {
    let tracing = Tracing::new();
    let _guard = tracing::subscriber::set_default(tracing.subscriber());
    let bg = pool(&tracing, Propagation::Child);
    bg.spawn("stuck", std::future::pending::<()>());
    let report = bg.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.abandoned, 1);
    for name in ["bg stuck", "run stuck"] {
        let span = tracing.span(name);
        assert_eq!(
            attr_str(&span, "bg.task.outcome").as_deref(),
            Some("abandoned")
        );
        assert!(matches!(span.status, Status::Error { .. }));
    }
}

#[tokio::test]
async fn without_a_subscriber_no_span_is_built() {
    let tracing = Tracing::new();
    let bg = pool(&tracing, Propagation::Child);
    bg.spawn("quiet", async {});
    bg.idle().await;
    assert!(tracing.spans().is_empty(), "{:?}", names(&tracing.spans()));
    assert_eq!(bg.snapshot().completed, 1);
}

/// A task future whose `Drop` opens a span, as a connection guard that logs
/// on release would.
struct ReleasesOnDrop {
    finished: bool,
    release: &'static str,
}

impl std::future::Future for ReleasesOnDrop {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.finished {
            return std::task::Poll::Pending;
        }
        self.finished = true;
        std::task::Poll::Ready(())
    }
}

impl Drop for ReleasesOnDrop {
    fn drop(&mut self) {
        tracing::info_span!("release", which = self.release).in_scope(|| {});
    }
}

/// The future's `Drop` runs inside `bg.run` whether the task completed or
/// was cancelled at its timeout, in both span modes: what it logs or traces
/// there belongs to the task.
#[tokio::test]
async fn a_task_futures_drop_runs_inside_its_run_span() {
    for run_span in [RunSpan::Tracing, RunSpan::OpenTelemetry] {
        let tracing = Tracing::new();
        let _guard = tracing::subscriber::set_default(tracing.subscriber());
        let bg = Builder::new("mail")
            .timeout(Duration::from_millis(20))
            .run_span(run_span)
            .tracer(tracing.tracer())
            .build()
            .unwrap();
        bg.spawn(
            "completes",
            ReleasesOnDrop {
                finished: false,
                release: "completed",
            },
        );
        bg.spawn(
            "hangs",
            // Pending forever: cancelled at the timeout.
            ReleasesOnDrop {
                finished: true,
                release: "cancelled",
            },
        );
        bg.idle().await;
        for (task, release) in [("completes", "completed"), ("hangs", "cancelled")] {
            let run = tracing.span(&format!("run {task}"));
            let dropped = tracing
                .spans()
                .into_iter()
                .find(|span| {
                    span.name == "release" && attr_str(span, "which").as_deref() == Some(release)
                })
                .unwrap_or_else(|| panic!("{run_span:?}: no release span for {task}"));
            assert_eq!(
                dropped.parent_span_id,
                run.span_context.span_id(),
                "{run_span:?}: {task}'s drop ran outside bg.run"
            );
        }
    }
}
