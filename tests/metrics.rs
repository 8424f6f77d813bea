//! Metrics as an application exports them: SDK meter provider, in-memory
//! exporter, a known workload, exact figures.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_queue::{Builder, InstrumentKind, DURATION_BUCKETS_SECONDS, METRICS};
use common::{Metrics, Point};
use opentelemetry::metrics::MeterProvider as _;
use tokio::sync::{mpsc, Semaphore};

fn find<'a>(points: &'a [Point], metric: &str, filters: &[(&str, &str)]) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| p.metric == metric && filters.iter().all(|(k, v)| p.attr(k) == Some(*v)))
        .collect()
}

fn one<'a>(points: &'a [Point], metric: &str, filters: &[(&str, &str)]) -> &'a Point {
    let found = find(points, metric, filters);
    assert_eq!(found.len(), 1, "{metric} {filters:?}: {found:?}");
    found[0]
}

fn kind_name(kind: InstrumentKind) -> &'static str {
    match kind {
        InstrumentKind::Counter => "counter",
        InstrumentKind::UpDownCounter => "updowncounter",
        InstrumentKind::Gauge => "gauge",
        InstrumentKind::Histogram => "histogram",
    }
}

/// Runs a known workload on pool `jobs` (capacity 3, parallelism 2):
/// 2 blockers (20 ms each once released), 3 queued emails, 2 emails dropped
/// (queue full), 1 failed and 1 panicked subscription, 1 drop after shutdown.
/// `configure` adjusts the pool's builder.
async fn known_workload(
    metrics: &Metrics,
    configure: fn(Builder) -> Builder,
) -> (bg_queue::BackgroundTx, Duration) {
    let bg = configure(
        Builder::new("jobs")
            .capacity(3)
            .parallelism(2)
            .meter(metrics.provider.meter("test")),
    )
    .build()
    .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    for _ in 0..2 {
        let gate = gate.clone();
        let started_tx = started_tx.clone();
        bg.spawn("blocker", async move {
            started_tx.send(()).unwrap();
            let _ = gate.acquire().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
    }
    started_rx.recv().await.unwrap();
    started_rx.recv().await.unwrap();
    for _ in 0..5 {
        bg.spawn("email", async {});
    }
    let released = Instant::now();
    gate.add_permits(2);
    bg.idle().await;
    let blocker_time = released.elapsed();
    bg.spawn_fallible("subscribe", async { Err::<(), _>("list API 503") });
    bg.spawn("subscribe", async {
        if true {
            panic!("bad payload")
        }
    });
    bg.idle().await;
    let report = bg.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained);
    bg.spawn("email", async {});
    (bg, blocker_time)
}

#[tokio::test]
async fn exact_counts_after_a_known_workload() {
    let metrics = Metrics::new();
    let (_bg, blocker_time) = known_workload(&metrics, |builder| builder).await;
    check_known_workload(&metrics.collect(), blocker_time);
}

/// The same figures through the SDK's unbound path, which an application
/// whose meter does not bind chooses at run time.
#[cfg(feature = "bound-metrics")]
#[tokio::test]
async fn exact_counts_without_bound_instruments() {
    let metrics = Metrics::new();
    let (_bg, blocker_time) =
        known_workload(&metrics, |builder| builder.bound_metrics(false)).await;
    check_known_workload(&metrics.collect(), blocker_time);
}

fn check_known_workload(points: &[Point], blocker_time: Duration) {
    let task = |name| [("bg.pool.name", "jobs"), ("bg.task.name", name)];

    assert_eq!(one(points, "bg.task.spawned", &task("blocker")).value, 2.0);
    assert_eq!(one(points, "bg.task.spawned", &task("email")).value, 3.0);
    assert_eq!(
        one(points, "bg.task.spawned", &task("subscribe")).value,
        2.0
    );

    let dropped = |reason| {
        let mut f = task("email").to_vec();
        f.push(("bg.drop.reason", reason));
        one(points, "bg.task.dropped", &f).value
    };
    assert_eq!(dropped("queue_full"), 2.0);
    assert_eq!(dropped("closed"), 1.0);
    assert_eq!(find(points, "bg.task.dropped", &task("blocker")).len(), 0);

    let duration = |name, outcome| {
        let mut f = task(name).to_vec();
        f.push(("bg.task.outcome", outcome));
        one(points, "bg.task.duration", &f).clone()
    };
    assert_eq!(duration("email", "ok").count, 3);
    assert_eq!(duration("subscribe", "failed").count, 1);
    assert_eq!(duration("subscribe", "panicked").count, 1);
    let blockers = duration("blocker", "ok");
    assert_eq!(blockers.count, 2);
    // Each blocker ran at least its 20 ms sleep, and no longer than the test
    // measured from its release to the pool going idle (plus the time before
    // the release, which is bounded by the whole test).
    assert!(blockers.value >= 0.040, "{}", blockers.value);
    assert!(blockers.value <= 2.0 * (blocker_time.as_secs_f64() + 1.0));
    // A series only for an outcome that happened: no zero-count points
    // (with `bound-metrics` the SDK exports a set from the moment it is
    // bound, so each is bound at its first record, not all at once).
    let mut series: Vec<(String, String)> = find(points, "bg.task.duration", &[])
        .iter()
        .map(|p| {
            assert!(p.count > 0, "an empty duration series: {p:?}");
            let attr = |key| p.attr(key).unwrap().to_owned();
            (attr("bg.task.name"), attr("bg.task.outcome"))
        })
        .collect();
    series.sort();
    let expected = [
        ("blocker", "ok"),
        ("email", "ok"),
        ("subscribe", "failed"),
        ("subscribe", "panicked"),
    ];
    assert_eq!(series, expected.map(|(n, o)| (n.to_owned(), o.to_owned())));
    assert!(find(points, "bg.task.wait", &[])
        .iter()
        .all(|p| p.count > 0));

    // Every started task recorded its wait once.
    let waits: u64 = find(points, "bg.task.wait", &[("bg.pool.name", "jobs")])
        .iter()
        .map(|p| p.count)
        .sum();
    assert_eq!(waits, 7);
    // And its busy time (the pool was given a meter).
    let busy: u64 = find(points, "bg.task.busy", &[("bg.pool.name", "jobs")])
        .iter()
        .map(|p| p.count)
        .sum();
    assert_eq!(busy, 7);

    for name in ["blocker", "email", "subscribe"] {
        assert_eq!(one(points, "bg.queue.depth", &task(name)).value, 0.0);
        assert_eq!(one(points, "bg.task.active", &task(name)).value, 0.0);
    }
    let pool = [("bg.pool.name", "jobs")];
    assert_eq!(one(points, "bg.queue.capacity", &pool).value, 3.0);
    assert_eq!(one(points, "bg.pool.parallelism", &pool).value, 2.0);
    assert_eq!(one(points, "bg.queue.oldest_age", &pool).value, 0.0);
}

/// With no tracing subscriber, calls refused for a full queue in the same
/// clock tick are counted without the pool's lock. From four threads at
/// once every one of them is still counted, in the snapshot and in the
/// exported `bg.task.dropped`, and snapshots taken meanwhile add up.
#[tokio::test]
async fn a_flood_of_drops_from_four_threads_is_counted_exactly() {
    const PER_THREAD: u64 = 25_000;
    let metrics = Metrics::new();
    let bg = Builder::new("flood")
        .capacity(1)
        .parallelism(1)
        .meter(metrics.provider.meter("test"))
        .build()
        .unwrap();
    // Queued, and it stays queued: this test's thread never yields to the
    // runner until the flood is over.
    bg.spawn("kept", async {});
    std::thread::scope(|scope| {
        let floods: Vec<_> = (0..4)
            .map(|_| {
                let bg = bg.clone();
                scope.spawn(move || {
                    for _ in 0..PER_THREAD {
                        bg.spawn("flood", async {});
                    }
                })
            })
            .collect();
        // Snapshots taken during the flood add up: the pool's total, its
        // reasons and its task rows come from one reading of the counters.
        while !floods.iter().all(|flood| flood.is_finished()) {
            let snapshot = bg.snapshot();
            let reasons = snapshot.dropped_by_reason;
            assert_eq!(
                snapshot.dropped,
                reasons.queue_full + reasons.closed + reasons.shutdown + reasons.no_runtime
            );
            let rows: u64 = snapshot.tasks.iter().map(|t| t.dropped).sum();
            assert_eq!(snapshot.dropped, rows);
        }
    });
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.dropped, 4 * PER_THREAD);
    assert_eq!(snapshot.dropped_by_reason.queue_full, 4 * PER_THREAD);
    let flood = snapshot.tasks.iter().find(|t| t.name == "flood").unwrap();
    assert_eq!(flood.dropped, 4 * PER_THREAD);
    assert_eq!(flood.spawned, 0);
    assert!(!snapshot.recent_drops.is_empty());
    assert!(snapshot
        .recent_drops
        .iter()
        .all(|d| d.task == "flood" && d.reason == "queue_full" && d.trace_id.is_none()));
    let points = metrics.collect();
    let filter = [
        ("bg.pool.name", "flood"),
        ("bg.task.name", "flood"),
        ("bg.drop.reason", "queue_full"),
    ];
    assert_eq!(
        one(&points, "bg.task.dropped", &filter).value,
        (4 * PER_THREAD) as f64
    );
    bg.idle().await;
    assert_eq!(bg.snapshot().completed, 1);
}

#[tokio::test]
async fn exported_metrics_match_the_table_exactly() {
    let metrics = Metrics::new();
    let (_bg, _) = known_workload(&metrics, |builder| builder).await;
    let points = metrics.collect();

    let mut exported: Vec<&str> = points.iter().map(|p| p.metric.as_str()).collect();
    exported.sort_unstable();
    exported.dedup();
    let mut table: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
    table.sort_unstable();
    assert_eq!(exported, table, "exported metrics and METRICS disagree");

    for def in METRICS {
        for point in find(&points, def.name, &[]) {
            assert_eq!(point.unit, def.unit, "{}", def.name);
            assert_eq!(point.kind, kind_name(def.kind), "{}", def.name);
            let keys: Vec<&str> = point.attributes.keys().map(String::as_str).collect();
            let mut expected = def.attributes.to_vec();
            expected.sort_unstable();
            assert_eq!(keys, expected, "{}", def.name);
            if def.kind == InstrumentKind::Histogram {
                assert_eq!(point.bounds, DURATION_BUCKETS_SECONDS.to_vec());
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn depth_active_and_oldest_age_while_the_queue_is_blocked() {
    let metrics = Metrics::new();
    let bg = Builder::new("blocked")
        .parallelism(1)
        .meter(metrics.provider.meter("test"))
        .build()
        .unwrap();
    let gate = common::occupy(&bg, "blocker", 1).await;
    for _ in 0..3 {
        bg.spawn("queued", async {});
    }
    let task = |name| [("bg.pool.name", "blocked"), ("bg.task.name", name)];
    let pool = [("bg.pool.name", "blocked")];

    tokio::time::advance(Duration::from_secs(2)).await;
    let early = metrics.collect();
    assert_eq!(one(&early, "bg.queue.depth", &task("queued")).value, 3.0);
    assert_eq!(one(&early, "bg.task.active", &task("blocker")).value, 1.0);
    let age_early = one(&early, "bg.queue.oldest_age", &pool).value;

    tokio::time::advance(Duration::from_secs(5)).await;
    let late = metrics.collect();
    let age_late = one(&late, "bg.queue.oldest_age", &pool).value;
    assert!((2.0..2.1).contains(&age_early), "{age_early}");
    assert!((7.0..7.1).contains(&age_late), "{age_late}");

    gate.add_permits(1);
    bg.idle().await;
    let after = metrics.collect();
    assert_eq!(one(&after, "bg.queue.depth", &task("queued")).value, 0.0);
    assert_eq!(one(&after, "bg.queue.oldest_age", &pool).value, 0.0);
    let waits = one(&after, "bg.task.wait", &task("queued"));
    assert_eq!(waits.count, 3);
    assert!(waits.value >= 3.0 * 7.0, "{}", waits.value);
}

/// A meter of another implementation than the SDK's: counts the histogram
/// records it gets, by instrument name, unbound and through bound handles
/// apart. (A real one that does not implement `bind` gets the API's
/// default, which drops every record made through the handle.)
#[cfg(feature = "bound-metrics")]
mod counting {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use opentelemetry::metrics::{
        BoundSyncInstrument, Histogram, HistogramBuilder, InstrumentProvider, Meter, SyncInstrument,
    };
    use opentelemetry::KeyValue;

    /// Records by (instrument name, whether through a bound handle).
    pub type Counts = Arc<Mutex<HashMap<(String, bool), u64>>>;

    struct Provider(Counts);
    struct Recorder(Counts, String, bool);

    impl InstrumentProvider for Provider {
        fn f64_histogram(&self, builder: HistogramBuilder<'_, Histogram<f64>>) -> Histogram<f64> {
            Histogram::new(Arc::new(Recorder(
                self.0.clone(),
                builder.name.to_string(),
                false,
            )))
        }
    }

    impl Recorder {
        fn count(&self) {
            let key = (self.1.clone(), self.2);
            *self.0.lock().unwrap().entry(key).or_default() += 1;
        }
    }

    impl SyncInstrument<f64> for Recorder {
        fn measure(&self, _value: f64, _attributes: &[KeyValue]) {
            self.count();
        }

        fn bind(
            &self,
            _attributes: &[KeyValue],
        ) -> Box<dyn BoundSyncInstrument<f64> + Send + Sync> {
            Box::new(Recorder(self.0.clone(), self.1.clone(), true))
        }
    }

    impl BoundSyncInstrument<f64> for Recorder {
        fn measure(&self, _value: f64) {
            self.count();
        }
    }

    pub fn meter() -> (Meter, Counts) {
        let counts = Counts::default();
        (Meter::new(Arc::new(Provider(counts.clone()))), counts)
    }
}

/// `bound_metrics(false)` records every histogram value unbound, which is
/// how an application whose meter does not bind keeps them; by default
/// they go through bound handles. Three runs reach all three histograms
/// either way. This meter runs no collection callbacks, so bound values
/// held in batches reach it at the pool's shutdown.
#[cfg(feature = "bound-metrics")]
#[tokio::test]
async fn bound_metrics_off_records_every_value_unbound() {
    for bound in [false, true] {
        let (meter, counts) = counting::meter();
        let bg = Builder::new(format!("counting-{bound}"))
            .meter(meter)
            .bound_metrics(bound)
            .build()
            .unwrap();
        for _ in 0..3 {
            bg.spawn("email", async {});
        }
        let report = bg.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.abandoned, 0, "{report:?}");
        let counts = counts.lock().unwrap().clone();
        for name in ["bg.task.wait", "bg.task.duration", "bg.task.busy"] {
            let got = |through_bound: bool| {
                let key = (name.to_owned(), through_bound);
                counts.get(&key).copied().unwrap_or(0)
            };
            let expected = if bound { (0, 3) } else { (3, 0) };
            assert_eq!(
                (got(false), got(true)),
                expected,
                "{name}, bound_metrics({bound}), (unbound, bound) records: {counts:?}"
            );
        }
    }
}

/// Bound records wait in per-thread batches before they reach the SDK.
/// Twelve task names (36 histograms, more than a batch shard keeps at
/// once) run from two workers, 100 tasks of a name in a row, so batches
/// fill, are evicted when the name changes, and are left part full. A
/// collection taken while tasks run does not disturb the count; once the
/// pool is idle, every wait, duration and busy value is counted exactly,
/// and a second round lands on top of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_records_are_all_counted_at_every_collection() {
    const NAMES: [&str; 12] = [
        "n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10", "n11",
    ];
    const PER_NAME: u64 = 100;
    let metrics = Metrics::new();
    let bg = Builder::new("batched")
        .meter(metrics.provider.meter("test"))
        .build()
        .unwrap();
    for round in 1..=2u64 {
        for (index, name) in NAMES.iter().enumerate() {
            for _ in 0..PER_NAME {
                let sent = bg.try_spawn(name, async {
                    tokio::task::yield_now().await;
                });
                assert!(sent.is_ok(), "refused: {sent:?}");
            }
            if index == NAMES.len() / 2 {
                // Mid-load: runners record while this collection flushes.
                let _ = metrics.collect();
            }
            bg.idle().await;
        }
        let points = metrics.collect();
        for name in NAMES {
            for metric in ["bg.task.wait", "bg.task.duration", "bg.task.busy"] {
                let counted: u64 = find(&points, metric, &[("bg.task.name", name)])
                    .iter()
                    .map(|point| point.count)
                    .sum();
                assert_eq!(
                    counted,
                    PER_NAME * round,
                    "{metric} of {name} after round {round}"
                );
            }
        }
    }
}

/// A meter that runs no collection callbacks gets every held value at
/// shutdown, the abandoned run's duration included.
#[cfg(feature = "bound-metrics")]
#[tokio::test]
async fn shutdown_hands_over_every_held_value_abandoned_runs_included() {
    let (meter, counts) = counting::meter();
    let bg = Builder::new("held").meter(meter).build().unwrap();
    for _ in 0..2 {
        bg.spawn("quick", async {});
    }
    bg.idle().await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    bg.spawn("stuck", async move {
        let _ = started_tx.send(());
        std::future::pending::<()>().await;
    });
    started_rx.await.unwrap();
    let report = bg.shutdown(Duration::from_millis(20)).await;
    assert_eq!(report.abandoned, 1, "{report:?}");
    assert_eq!(report.running, 0, "{report:?}");
    let counts = counts.lock().unwrap().clone();
    let bound = |name: &str| counts.get(&(name.to_owned(), true)).copied().unwrap_or(0);
    assert_eq!(bound("bg.task.wait"), 3, "{counts:?}");
    assert_eq!(bound("bg.task.duration"), 3, "{counts:?}");
    assert_eq!(bound("bg.task.busy"), 2, "{counts:?}");
}
