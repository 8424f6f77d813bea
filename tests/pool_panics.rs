//! Panics anywhere (in a task, in a task future's `Drop`, in the
//! application's `tracing` subscriber) are contained and counted, and the
//! pool keeps running.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bg_queue::{Builder, SpawnError};
use common::pool::{occupy, Gate};
use tokio::sync::oneshot;

#[tokio::test]
async fn panics_are_isolated_counted_and_release_the_runner() {
    let bg = Builder::new("panics").parallelism(1).build().unwrap();
    let (tx, rx) = oneshot::channel();
    bg.spawn("explodes", async {
        if true {
            panic!("boom")
        }
    });
    bg.spawn("after", async move {
        tx.send(()).unwrap();
    });
    rx.await.expect("the single runner survived the panic");
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.panicked, 1);
    assert_eq!(snapshot.task("explodes").unwrap().panicked, 1);
    assert_eq!(snapshot.completed, 1);
    assert!(snapshot.is_consistent());
}

/// A task future whose `Drop` panics: once it has completed, or (when
/// `ready` is false) whenever it is dropped unfinished.
struct PanicsOnDrop {
    ready: bool,
}

impl std::future::Future for PanicsOnDrop {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.ready {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("connection guard poisoned");
    }
}

/// A panic in a task future's `Drop` is contained wherever the future is
/// dropped: after it completed (counted `panicked`), at its timeout (counted
/// `timed_out`), when refused (`spawn` does not panic) and when abandoned at
/// the shutdown deadline. The pool keeps running, with full parallelism.
/// Before, the panic unwound into the runner, and the runner's exit was
/// taken for the runtime going away: the pool abandoned its queue and
/// refused every later task as `no_runtime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_task_futures_drop_is_contained() {
    // Run to completion, and cancelled at the timeout.
    let bg = Builder::new("drop-panics")
        .parallelism(1)
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    bg.spawn("finishes", PanicsOnDrop { ready: true });
    bg.spawn("hangs", PanicsOnDrop { ready: false });
    bg.idle().await;
    let (tx, rx) = oneshot::channel();
    bg.spawn("after", async move {
        let _ = tx.send(());
    });
    rx.await.expect("a task after the panicking drops ran");
    // The task ran; its end is counted once its runner records it.
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("finishes").unwrap().panicked, 1);
    assert_eq!(snapshot.task("hangs").unwrap().timed_out, 1);
    assert_eq!(snapshot.task("after").unwrap().completed, 1);
    assert!(snapshot.accepting);
    assert!(snapshot.is_consistent());

    // Refused, and abandoned at the shutdown deadline.
    let bg = Builder::new("drop-panics-queued")
        .parallelism(1)
        .capacity(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    occupy(&bg, 1, &gate).await;
    bg.spawn("queued", PanicsOnDrop { ready: false });
    bg.spawn("queued", PanicsOnDrop { ready: false });
    assert_eq!(
        bg.try_spawn("refused", PanicsOnDrop { ready: true }),
        Err(SpawnError::QueueFull)
    );
    let report = bg.shutdown(Duration::from_millis(50)).await;
    assert_eq!(
        (report.abandoned, report.dropped),
        (3, 1),
        "the blocker and the two queued; the refused one: {report:?}"
    );
    assert!(report.is_consistent());
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("queued").unwrap().abandoned, 2);
    assert_eq!(snapshot.task("refused").unwrap().dropped, 1);
    assert_eq!(snapshot.dropped_by_reason.no_runtime, 0);
}

/// A `tracing` layer with a bug: it panics the first time a span with this
/// name is created.
struct PanicsOnceOnSpan {
    name: &'static str,
    fired: std::sync::atomic::AtomicBool,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicsOnceOnSpan {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == self.name && !self.fired.swap(true, Ordering::SeqCst) {
            panic!("layer bug");
        }
    }
}

/// A panic in the application's subscriber while a runner starts a task's
/// span is contained: that task is counted `panicked`, another runner takes
/// the queue over, and the pool stays open. Before, the runner's end was
/// taken for the runtime going away (queue abandoned, every later task
/// refused as `no_runtime`), and the task stayed counted as running.
#[tokio::test]
async fn a_panic_in_the_subscriber_does_not_take_the_pool_down() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(PanicsOnceOnSpan {
            name: "bg.run",
            fired: std::sync::atomic::AtomicBool::new(false),
        }));
    let bg = Builder::new("layer-bug").parallelism(1).build().unwrap();
    let (tx, rx) = oneshot::channel();
    // Both queued before the runner starts: the second waits behind the one
    // whose span panics.
    bg.spawn("first", async {});
    bg.spawn("second", async move {
        let _ = tx.send(());
    });
    let ran = rx.await;
    assert!(ran.is_ok(), "the second task ran: {:?}", bg.snapshot());
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("first").unwrap().panicked, 1);
    assert_eq!(snapshot.task("second").unwrap().completed, 1);
    assert_eq!((snapshot.running, snapshot.queued), (0, 0));
    assert!(snapshot.accepting);
    assert!(snapshot.is_consistent());
    assert_eq!(bg.try_spawn("later", async {}), Ok(()));
    bg.idle().await;
}

/// A `tracing` layer that panics every time a span with this name is
/// entered.
struct PanicsOnEnter(&'static str);

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>
    tracing_subscriber::Layer<S> for PanicsOnEnter
{
    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if ctx.span(id).is_some_and(|span| span.name() == self.0) {
            panic!("layer bug on enter");
        }
    }
}

/// The same with a subscriber that panics on every entry into `bg.run`:
/// while that panic unwinds, the task's scope must not enter the span again
/// (a second panic during unwinding aborts the process). Every task is
/// counted `panicked` and the pool goes on.
#[tokio::test]
async fn a_subscriber_that_panics_on_every_enter_does_not_abort_the_process() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(PanicsOnEnter("bg.run")),
    );
    let bg = Builder::new("enter-bug").parallelism(2).build().unwrap();
    for _ in 0..3 {
        bg.spawn("doomed", async {});
    }
    bg.idle().await;
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.task("doomed").unwrap().panicked, 3);
    assert!(snapshot.accepting);
    assert!(snapshot.is_consistent());
}
