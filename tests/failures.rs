//! Failures readable everywhere: every failed, panicked and timed-out run
//! is a `tracing` event a plain `fmt` subscriber prints with its error
//! text, rate-limited per task name; and the snapshot lists recent
//! failures, newest first, with their error text bounded.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bg_queue::{Builder, ERROR_TEXT_MAX_CHARS};

/// A `fmt` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

/// A real `fmt` subscriber (no ANSI), current on this thread.
fn fmt_into(captured: &Captured) -> tracing::subscriber::DefaultGuard {
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_default(subscriber)
}

#[tokio::test(start_paused = true)]
async fn failed_panicked_and_timed_out_runs_are_logged_with_their_error() {
    let captured = Captured::default();
    let _subscriber = fmt_into(&captured);
    let bg = Builder::new("mail")
        .timeout(Duration::from_millis(5))
        .build()
        .unwrap();
    bg.spawn_fallible("send_receipt_email", async {
        Err::<(), _>("smtp said 550")
    });
    bg.spawn("render_invoice", async { panic!("template missing") });
    bg.spawn("call_crm", tokio::time::sleep(Duration::from_secs(60)));
    bg.spawn("fine", async {});
    bg.idle().await;

    let lines = captured.lines();
    let line_of = |task: &str| {
        lines
            .iter()
            .find(|line| line.contains(&format!("bg.task.name=\"{task}\"")))
            .unwrap_or_else(|| panic!("no event for {task} in {lines:#?}"))
            .clone()
    };
    let failed = line_of("send_receipt_email");
    assert!(failed.contains(" WARN "), "{failed}");
    assert!(failed.contains("smtp said 550"), "{failed}");
    assert!(failed.contains("bg.task.outcome=\"failed\""), "{failed}");
    assert!(failed.contains("bg.pool.name=mail"), "{failed}");
    assert!(failed.contains("wait_ms="), "{failed}");
    assert!(failed.contains("run_ms="), "{failed}");

    let panicked = line_of("render_invoice");
    assert!(panicked.contains(" ERROR "), "{panicked}");
    assert!(
        panicked.contains("panicked: template missing"),
        "{panicked}"
    );

    let timed_out = line_of("call_crm");
    assert!(timed_out.contains(" WARN "), "{timed_out}");
    assert!(timed_out.contains("timed out after 5ms"), "{timed_out}");

    assert!(
        !lines
            .iter()
            .any(|line| line.contains("bg.task.name=\"fine\"")),
        "a run that succeeded logged an event: {lines:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_storm_is_summarised_per_task_name() {
    let captured = Captured::default();
    let _subscriber = fmt_into(&captured);
    let bg = Builder::new("storm").build().unwrap();
    let events = |captured: &Captured, task: &str| -> Vec<String> {
        captured
            .lines()
            .into_iter()
            .filter(|line| line.contains(&format!("bg.task.name=\"{task}\"")))
            .collect()
    };
    for _ in 0..50 {
        bg.spawn_fallible("subscribe", async { Err::<(), _>("list API 503") });
    }
    bg.spawn_fallible("other", async { Err::<(), _>("other error") });
    bg.idle().await;
    assert_eq!(
        events(&captured, "subscribe").len(),
        3,
        "a burst of 3 lines"
    );
    assert_eq!(events(&captured, "other").len(), 1, "limited per task name");
    assert_eq!(bg.snapshot().failed, 51, "every failure counted");

    // The next window's first line says how many were held back.
    tokio::time::advance(Duration::from_secs(11)).await;
    bg.spawn_fallible("subscribe", async { Err::<(), _>("list API 503") });
    bg.idle().await;
    let lines = events(&captured, "subscribe");
    assert_eq!(lines.len(), 4);
    assert!(lines[3].contains("suppressed=47"), "{}", lines[3]);
}

#[tokio::test]
async fn recent_failures_are_listed_newest_first_with_bounded_text() {
    let bg = Builder::new("page").parallelism(1).build().unwrap();
    let long = "x".repeat(ERROR_TEXT_MAX_CHARS * 2);
    bg.spawn_fallible("first", async move { Err::<(), _>(long) });
    bg.spawn("second", async { panic!("boom") });
    bg.spawn("fine", async {});
    bg.idle().await;
    let failures = bg.snapshot().recent_failures;
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].task, "second");
    assert_eq!(failures[0].outcome, "panicked");
    assert_eq!(failures[0].error, "panicked: boom");
    assert_eq!(failures[1].task, "first");
    assert_eq!(failures[1].outcome, "failed");
    assert_eq!(failures[1].error.chars().count(), ERROR_TEXT_MAX_CHARS + 1);
    assert!(failures[1].error.ends_with('\u{2026}'));
}

#[tokio::test(start_paused = true)]
async fn drop_summaries_name_tasks_as_values_not_as_field_keys() {
    let captured = Captured::default();
    let _subscriber = fmt_into(&captured);
    let bg = Builder::new("summary")
        .capacity(1)
        .parallelism(1)
        .build()
        .unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    bg.spawn("blocker", async move {
        let _ = released.await;
    });
    tokio::task::yield_now().await;
    bg.spawn("queued", async {});
    // The first drop is summarised at once, the rest 10 s later.
    for _ in 0..100 {
        bg.spawn("send_receipt_email", async {});
    }
    bg.spawn("panics", async {});
    tokio::time::advance(Duration::from_secs(11)).await;
    bg.spawn("send_receipt_email", async {});
    let summaries: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|line| line.contains("dropped since the last summary"))
        .collect();
    assert_eq!(summaries.len(), 2, "{summaries:#?}");
    assert!(
        summaries[0]
            .contains("dropped=1 by_task=\"{send_receipt_email: 1}\" reason=\"queue_full\""),
        "{}",
        summaries[0]
    );
    assert!(
        summaries[1].contains(
            "dropped=101 by_task=\"{send_receipt_email: 100, panics: 1}\" reason=\"queue_full\""
        ),
        "{}",
        summaries[1]
    );
    let _ = release.send(());
    bg.idle().await;
}

#[tokio::test]
async fn an_empty_pool_name_is_an_error_and_a_shared_one_a_warning() {
    for name in ["", "  "] {
        assert_eq!(
            Builder::new(name).build().unwrap_err(),
            bg_queue::BuildError::EmptyName
        );
    }
    let captured = Captured::default();
    let _subscriber = fmt_into(&captured);
    let first = Builder::new("shared-name").build().unwrap();
    assert!(captured.lines().is_empty(), "{:#?}", captured.lines());
    let second = Builder::new("shared-name").build().unwrap();
    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(" WARN "), "{}", lines[0]);
    assert!(lines[0].contains("another live bg-queue pool has this name"));
    drop((first, second));
}

#[test]
fn spawns_outside_a_runtime_are_logged_once_not_per_task() {
    let captured = Captured::default();
    let _subscriber = fmt_into(&captured);
    let bg = bg_queue::spawn_pool();
    for _ in 0..50 {
        bg.spawn("orphan", async {});
    }
    let lines: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|line| line.contains("spawn outside a tokio runtime"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("no_runtime"), "{}", lines[0]);
    assert_eq!(bg.snapshot().dropped_by_reason.no_runtime, 50);
}
